#!/usr/bin/env python3
"""mod_libcgi against every way an Apache user could serve the same dynamic
response, measured side by side in one run.

Peers (all built here, all mapped to a file so each pays one stat per request,
except mod_proxy_fcgi, which maps to a backend address):
  static      a static file of the same bytes (the paper's upper bound)
  native      a hand-written C handler module (apxs) writing the bytes from memory
  libcgi      mod_libcgi running peer.c as a LibCGI script (lwrite)
  fcgid       peer.c as a FastCGI application (libfcgi) under mod_fcgid
  proxy_fcgi  the same FastCGI application, run by us, behind mod_proxy_fcgi
  cgid        peer.c as a classic CGI program under mod_cgid

Usage: bench/run.sh [--smoke]   (installs what it needs, then runs this)
"""
import datetime
import http.client
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, "work")
RESULTS = os.path.join(HERE, "results")
MODULES = "/usr/lib/apache2/modules"
MODULE = os.path.join(ROOT, "target/release/libmod_libcgi.so")
SIZES = [28, 1024, 10240, 102400]
PEERS = ["static", "native", "libcgi", "fcgid", "proxy_fcgi", "cgid"]
PROXY_PORT_BASE = 19400
SMOKE = "--smoke" in sys.argv
SERVER_CPU, CLIENT_CPU = "0", "1"

# Time budget (full run about 13 minutes on 2 cores).
DUR = 1 if SMOKE else 3              # seconds per measurement (wrk takes whole seconds)
M_SIZES = [28] if SMOKE else SIZES   # sizes measured (all are built and checked)
ROUNDS = 1 if SMOKE else 3           # keep-alive rounds (targets rotated)
CLOSE_ROUNDS = 1                     # rounds without keep-alive
CONNS = 16
CG_REQUESTS = 50 if SMOKE else 2000  # requests counted under callgrind
MANY = 50 if SMOKE else 1000         # scripts in the "many scripts" test


def log(*a):
    print("[bench]", *a, flush=True)


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def url(peer, size):
    return {
        "static": f"/static/s{size}.bin",
        "native": f"/native/n{size}.nat",
        "libcgi": f"/libcgi-bin/b{size}.so",
        "fcgid": f"/fcgid/f{size}.fcgi",
        "proxy_fcgi": f"/pfcgi/{size}",
        "cgid": f"/cgi-bin/c{size}.cgi",
    }[peer]


# ---------------------------------------------------------------- build ----

def build():
    shutil.rmtree(WORK, ignore_errors=True)
    for d in ["static", "native", "libcgi-bin", "fcgid", "cgi-bin", "run", "many", "obj"]:
        os.makedirs(os.path.join(WORK, d))
    inc = os.path.join(ROOT, "include")
    peer = os.path.join(HERE, "peer.c")
    for size in SIZES:
        body = bytes(ord("a") + i % 26 for i in range(size))
        with open(os.path.join(WORK, "static", f"s{size}.bin"), "wb") as f:
            f.write(body)
        open(os.path.join(WORK, "native", f"n{size}.nat"), "w").close()
        sh(["cc", "-O2", "-shared", "-fPIC", f"-DSIZE={size}", "-I", inc, "-o",
            os.path.join(WORK, "libcgi-bin", f"b{size}.so"), peer])
        sh(["cc", "-O2", f"-DSIZE={size}", "-DFCGI_MAIN", "-o",
            os.path.join(WORK, "fcgid", f"f{size}.fcgi"), peer, "-lfcgi"])
        sh(["cc", "-O2", f"-DSIZE={size}", "-DCGI_MAIN", "-o",
            os.path.join(WORK, "cgi-bin", f"c{size}.cgi"), peer])
    # The native module, with apxs like any third-party module.
    src = os.path.join(WORK, "obj", "mod_benchnative.c")
    shutil.copy(os.path.join(HERE, "native", "mod_benchnative.c"), src)
    sh(["apxs", "-c", "-o", os.path.join(WORK, "obj", "mod_benchnative.so"), src])
    for i in range(MANY):
        shutil.copy(os.path.join(WORK, "libcgi-bin", "b28.so"), os.path.join(WORK, "many", f"m{i:04d}.so"))
    # The server runs as www-data: everything readable, the run dir writable.
    for dirpath, dirnames, filenames in os.walk(WORK):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o755)
    if os.geteuid() == 0:
        shutil.chown(os.path.join(WORK, "run"), "www-data", "www-data")
    d = WORK
    while d != "/":
        os.chmod(d, os.stat(d).st_mode | 0o005)
        d = os.path.dirname(d)


def native_so():
    for cand in [os.path.join(WORK, "obj", ".libs", "mod_benchnative.so"), os.path.join(WORK, "obj", "mod_benchnative.so")]:
        if os.path.exists(cand):
            return cand
    raise SystemExit("apxs did not produce mod_benchnative.so")


# --------------------------------------------------------------- server ----

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(mpm, port, single=False):
    w, m = WORK, MODULES
    user = "User www-data\nGroup www-data\n" if os.geteuid() == 0 else ""
    if mpm == "prefork":
        n = 1 if single else 32
        procs = f"StartServers {n}\nMinSpareServers {n}\nMaxSpareServers {n}\nServerLimit {n}\nMaxRequestWorkers {n}\n"
    else:
        s = 1 if single else 2
        procs = (f"StartServers {s}\nServerLimit {s}\nThreadsPerChild 32\nThreadLimit 32\n"
                 f"MinSpareThreads 1\nMaxSpareThreads {32 * s}\nMaxRequestWorkers {32 * s}\n")
    proxies = "".join(
        f"ProxyPass /pfcgi/{size} fcgi://127.0.0.1:{PROXY_PORT_BASE + i}/\n"
        for i, size in enumerate(SIZES))
    return f"""ServerRoot {w}
Listen 127.0.0.1:{port}
ServerName 127.0.0.1
{user}PidFile {w}/run/httpd.pid
DefaultRuntimeDir {w}/run
ErrorLog {w}/run/error.log
LogLevel warn
KeepAlive On
MaxKeepAliveRequests 0
Timeout 30
LoadModule mpm_{mpm}_module {m}/mod_mpm_{mpm}.so
{procs}
LoadModule authz_core_module {m}/mod_authz_core.so
LoadModule mime_module {m}/mod_mime.so
LoadModule alias_module {m}/mod_alias.so
LoadModule cgid_module {m}/mod_cgid.so
LoadModule fcgid_module {m}/mod_fcgid.so
LoadModule proxy_module {m}/mod_proxy.so
LoadModule proxy_fcgi_module {m}/mod_proxy_fcgi.so
LoadModule benchnative_module {native_so()}
LoadModule libcgi_module {MODULE}
TypesConfig /etc/mime.types
ScriptSock {w}/run/cgid.sock
FcgidIPCDir {w}/run/fcgid
FcgidProcessTableFile {w}/run/fcgid_shm
FcgidMaxRequestsPerProcess 0
FcgidMinProcessesPerClass 1
FcgidMaxProcessesPerClass 8
FcgidMaxProcesses 64
DocumentRoot {w}/static
<Directory />
    Require all granted
</Directory>
Alias /static/ {w}/static/
Alias /native/ {w}/native/
<Directory {w}/native>
    AddHandler bench-native .nat
</Directory>
Alias /libcgi-bin/ {w}/libcgi-bin/
Alias /many/ {w}/many/
<Directory {w}/libcgi-bin>
    Options +ExecCGI
    AddHandler libcgi-script .so
</Directory>
<Directory {w}/many>
    Options +ExecCGI
    AddHandler libcgi-script .so
</Directory>
Alias /fcgid/ {w}/fcgid/
<Directory {w}/fcgid>
    Options +ExecCGI
    AddHandler fcgid-script .fcgi
</Directory>
Alias /cgi-bin/ {w}/cgi-bin/
<Directory {w}/cgi-bin>
    Options +ExecCGI
    AddHandler cgi-script .cgi
</Directory>
{proxies}"""


class Server:
    def __init__(self, mpm, single=False, valgrind=False):
        self.mpm, self.port = mpm, free_port()
        conf = os.path.join(WORK, f"httpd-{mpm}{'-cg' if valgrind else ''}.conf")
        with open(conf, "w") as f:
            text = config(mpm, self.port, single)
            if valgrind:
                text = text.replace("User www-data\nGroup www-data\n", "")
            f.write(text)
        for p in ["httpd.pid"]:
            try:
                os.unlink(os.path.join(WORK, "run", p))
            except FileNotFoundError:
                pass
        if valgrind:
            # Run as the server user from the start: apache2 -X started as root
            # would switch user and could not write callgrind's output.
            self.cg_file = os.path.join(WORK, "run", f"callgrind.{self.port}.out")
            for f in ["error.log", "fcgid_shm", os.path.basename(self.cg_file)]:
                try:
                    os.unlink(os.path.join(WORK, "run", f))
                except FileNotFoundError:
                    pass
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.cg_file}",
                   "/usr/sbin/apache2", "-X", "-f", conf]
            if os.geteuid() == 0:
                cmd = ["setpriv", "--reuid=www-data", "--regid=www-data", "--init-groups"] + cmd
        else:
            cmd = ["taskset", "-c", SERVER_CPU, "/usr/sbin/apache2", "-f", conf, "-DFOREGROUND"]
        # Own session: prefork signals its whole process group on shutdown.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.time() + (120 if valgrind else 20)
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"apache2 exited: {self.proc.stderr.read().decode()}{self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                if os.path.exists(os.path.join(WORK, "run", "httpd.pid")) or valgrind:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise SystemExit("apache2 did not come up")
            time.sleep(0.05)

    def error_log(self):
        try:
            return open(os.path.join(WORK, "run", "error.log")).read()
        except FileNotFoundError:
            return ""

    def children(self):
        out = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    stat = open(f"/proc/{pid}/stat").read()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    out.append(int(pid))
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class ProxyBackends:
    """The FastCGI application for mod_proxy_fcgi, run by us (4 processes per
    size, pinned to the server's core like everything server-side)."""

    def __init__(self):
        self.procs = []
        for i, size in enumerate(SIZES):
            env = dict(os.environ, FCGI_PORT=str(PROXY_PORT_BASE + i))
            self.procs.append(subprocess.Popen(
                ["taskset", "-c", SERVER_CPU, os.path.join(WORK, "fcgid", f"f{size}.fcgi")],
                env=env, start_new_session=True, stdin=subprocess.DEVNULL))
        for i in range(len(SIZES)):
            deadline = time.time() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", PROXY_PORT_BASE + i), 0.2).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        raise SystemExit("FastCGI backend did not come up")
                    time.sleep(0.05)

    def stop(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            p.wait()


# ---------------------------------------------------------------- client ---

def fetch(port, path, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    if conn is None:
        c.close()
    return r.status, body


def check_targets(port):
    for peer in PEERS:
        for size in SIZES:
            status, body = fetch(port, url(peer, size))
            want = bytes(ord("a") + i % 26 for i in range(size))
            if status != 200 or body != want:
                raise SystemExit(f"{peer} {size} B: status {status}, {len(body)} bytes (want 200, {size} exact)")


def wrk(port, path, dur, keepalive=True, conns=CONNS, latency=False, script=None):
    cmd = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{conns}", f"-d{dur}s", "--timeout", "10s"]
    if not keepalive:
        cmd += ["-H", "Connection: close"]
    if latency:
        cmd.append("--latency")
    if script:
        cmd += ["-s", script]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    out = sh(cmd)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    bad = int(errs.group(1)) if errs else 0
    if bad:
        raise SystemExit(f"wrk {path}: {bad} non-2xx responses")
    res = {"rps": rps, "socket_errors": sum(map(int, sock.groups())) if sock else 0}
    if latency:
        def us(v, unit):
            return float(v) * {"us": 1, "ms": 1000, "s": 1e6}[unit]
        for pct in ["50", "99"]:
            m = re.search(rf"^\s+{pct}(?:\.0+)?%\s+([\d.]+)(us|ms|s)", out, re.M)
            res[f"p{pct}"] = us(*m.groups())
    return res


# ------------------------------------------------------------ measurements -

def throughput(mpm):
    s = Server(mpm)
    backends = ProxyBackends()
    try:
        check_targets(s.port)
        targets = [(p, z) for p in PEERS for z in M_SIZES]
        log(f"{mpm}: warm-up")
        for p, z in targets:
            wrk(s.port, url(p, z), 1)
        ka = {t: [] for t in targets}
        for rnd in range(ROUNDS):
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
            random.Random(rnd).shuffle(order)
            log(f"{mpm}: keep-alive round {rnd + 1}/{ROUNDS}")
            for p, z in order:
                ka[(p, z)].append(wrk(s.port, url(p, z), DUR)["rps"])
        close = {t: [] for t in targets}
        for rnd in range(CLOSE_ROUNDS):
            order = list(targets)
            random.Random(100 + rnd).shuffle(order)
            log(f"{mpm}: no keep-alive round {rnd + 1}/{CLOSE_ROUNDS}")
            for p, z in order:
                close[(p, z)].append(wrk(s.port, url(p, z), DUR, keepalive=False)["rps"])
        lat = {}
        log(f"{mpm}: latency at concurrency 1")
        for p in PEERS:
            for z in [z for z in [28, 1024] if z in M_SIZES]:
                lat[(p, z)] = wrk(s.port, url(p, z), DUR, conns=1, latency=True)
        crashed = [l for l in s.error_log().splitlines() if "exit signal" in l]
        if crashed:
            raise SystemExit(f"server processes died: {crashed}")
        return ka, close, lat
    finally:
        backends.stop()
        s.stop()


def callgrind_counts():
    """Instructions per request, native module vs mod_libcgi (and the static
    file), 28 B, counted by callgrind in a single-process httpd (apache2 -X):
    reproducible, unlike time.  Each peer is counted twice, with a small and a
    large number of requests after the same warm-up; the difference divided
    by the difference in requests is the cost of one request, with start-up
    and shutdown cancelled out."""
    small, large = CG_REQUESTS // 4, CG_REQUESTS
    results = {}
    for peer in ["static", "native", "libcgi"]:
        counts = []
        for n in [small, large]:
            s = Server("prefork", single=True, valgrind=True)
            try:
                conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=120)
                for _ in range(20):  # loads the script, fills caches
                    fetch(s.port, url(peer, 28), conn)
                for _ in range(n):
                    fetch(s.port, url(peer, 28), conn)
                conn.close()
            finally:
                s.stop()
            total = None
            with open(s.cg_file) as f:
                for line in f:
                    if line.startswith(("summary:", "totals:")):
                        total = int(line.split()[1])
            if total is None:
                raise SystemExit(f"no totals in {s.cg_file}")
            counts.append(total)
        results[peer] = (counts[1] - counts[0]) / (large - small)
    return results


def first_request_and_many():
    """First-request cost (load + initfunc) vs later requests; throughput with
    MANY scripts loaded in the process vs one; resident memory of both."""
    s = Server("event", single=True)
    try:
        pid = s.children()[0]

        def rss():
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

        def timed(path, conn):
            t = time.perf_counter()
            st, _ = fetch(s.port, path, conn)
            assert st == 200, (path, st)
            return (time.perf_counter() - t) * 1e6

        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
        fetch(s.port, "/static/s28.bin", conn)
        firsts, laters = [], []
        for i in range(min(20, MANY)):
            firsts.append(timed(f"/many/m{i:04d}.so", conn))
            laters.extend(timed(f"/many/m{i:04d}.so", conn) for _ in range(20))
        one = "/many/m0000.so"
        rss_one_before = rss()
        # Load every script in this (single) process.
        for i in range(MANY):
            timed(f"/many/m{i:04d}.so", conn)
        rss_many = rss()
        conn.close()
        lua = os.path.join(WORK, "many.lua")
        with open(lua, "w") as f:
            f.write(f"local n = 0\nrequest = function()\n  n = (n + 1) % {MANY}\n"
                    f"  return wrk.format(\"GET\", string.format(\"/many/m%04d.so\", n))\nend\n")
        one_rps, many_rps = [], []
        for _ in range(ROUNDS):
            one_rps.append(wrk(s.port, one, DUR)["rps"])
            many_rps.append(wrk(s.port, "/", DUR, script=lua)["rps"])
        return {
            "first_us": statistics.median(firsts), "later_us": statistics.median(laters),
            "rss_1_kib": rss_one_before, "rss_many_kib": rss_many,
            "one_rps": statistics.median(one_rps), "many_rps": statistics.median(many_rps),
            "one_runs": one_rps, "many_runs": many_rps,
        }
    finally:
        s.stop()


def rss_one_script():
    """Resident memory of a server process with exactly one script loaded."""
    s = Server("event", single=True)
    try:
        pid = s.children()[0]
        for _ in range(5):
            fetch(s.port, "/libcgi-bin/b28.so")
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    finally:
        s.stop()


# ---------------------------------------------------------------- report ---

def machine():
    cpu = "unknown"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(open("/proc/meminfo").readline().split()[1]) // 1024
    apache = sh(["/usr/sbin/apache2", "-v"]).splitlines()[0]
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    rustc = sh(["rustc", "--version"]).strip()
    return (f"{cpu}, {os.cpu_count()} cores, {mem} MiB; {platform.system()} {platform.release()}; "
            f"{apache}; {wrk_v}; {rustc}")


def med(v):
    return statistics.median(v)


def spread(v):
    return f"{min(v):,.0f}-{max(v):,.0f}" if len(v) > 1 else "-"


def fmt_size(z):
    return {28: "28 B", 1024: "1 KiB", 10240: "10 KiB", 102400: "100 KiB"}[z]


def chart(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=False)
    for ax, mpm in zip(axes, results):
        ka = results[mpm][0]
        width = 0.8 / len(PEERS)
        for i, p in enumerate(PEERS):
            xs = [j + i * width for j in range(len(M_SIZES))]
            ax.bar(xs, [med(ka[(p, z)]) for z in M_SIZES], width, label=p)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(M_SIZES))])
        ax.set_xticklabels([fmt_size(z) for z in M_SIZES])
        ax.set_title(f"{mpm} MPM, keep-alive, c={CONNS}")
        ax.set_ylabel("requests/s (median)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def verdict(ok):
    return "**met**" if ok else "**missed**"


def report(results, cg, many, rss1):
    day = datetime.date.today().isoformat()
    name = f"{day}{'-smoke' if SMOKE else ''}"
    png = os.path.join(RESULTS, f"{name}.png")
    chart(results, png)
    L = [f"# mod_libcgi benchmark, {day}{' (smoke run: numbers meaningless)' if SMOKE else ''}", "",
         f"Machine: {machine()}.", "",
         f"Method: one apache2 per MPM with every peer on its own URL, server pinned to CPU {SERVER_CPU}, "
         f"wrk pinned to CPU {CLIENT_CPU}; every target checked for status 200 and exact bytes first; "
         f"warm-up 0.5 s per target; {ROUNDS} keep-alive rounds of {DUR:g} s per target (c={CONNS}, order "
         f"rotated and shuffled each round), {CLOSE_ROUNDS} round(s) without keep-alive; medians, with the "
         f"min-max spread. The machine is shared: expect about 20% run-to-run noise; compare within a table.",
         "", f"![throughput by size]({os.path.basename(png)})", ""]
    targets = []
    for mpm, (ka, close, lat) in results.items():
        L += [f"## {mpm} MPM", "", "Throughput with keep-alive (requests/s, median; spread):", "",
              "| peer | " + " | ".join(fmt_size(z) for z in M_SIZES) + " |",
              "|---|" + "---:|" * len(M_SIZES)]
        for p in PEERS:
            L.append(f"| {p} | " + " | ".join(f"{med(ka[(p, z)]):,.0f} ({spread(ka[(p, z)])})" for z in M_SIZES) + " |")
        L += ["", "Without keep-alive (requests/s):", "",
              "| peer | " + " | ".join(fmt_size(z) for z in M_SIZES) + " |", "|---|" + "---:|" * len(M_SIZES)]
        for p in PEERS:
            L.append(f"| {p} | " + " | ".join(f"{med(close[(p, z)]):,.0f}" for z in M_SIZES) + " |")
        L += ["", "Ratios, mod_libcgi / peer (keep-alive medians):", "",
              "| vs | " + " | ".join(fmt_size(z) for z in M_SIZES) + " |", "|---|" + "---:|" * len(M_SIZES)]
        for p in PEERS:
            if p != "libcgi":
                L.append(f"| {p} | " + " | ".join(f"{med(ka[('libcgi', z)]) / med(ka[(p, z)]):.2f}" for z in M_SIZES) + " |")
        lz = [z for z in [28, 1024] if z in M_SIZES]
        L += ["", "Latency at concurrency 1, keep-alive (microseconds):", "",
              "| peer | " + " | ".join(f"{fmt_size(z)} p50 | {fmt_size(z)} p99" for z in lz) + " |",
              "|---|" + "---:|---:|" * len(lz)]
        for p in PEERS:
            L.append(f"| {p} | " + " | ".join(f"{lat[(p, z)]['p50']:.0f} | {lat[(p, z)]['p99']:.0f}" for z in lz) + " |")
        L.append("")
        r = lambda a, b, z: med(ka[(a, z)]) / med(ka[(b, z)])
        small = [z for z in [28, 1024, 10240] if z in M_SIZES]
        for z in small:
            v = r("libcgi", "native", z)
            targets.append((f"{mpm}, {fmt_size(z)}: mod_libcgi >= 0.97 x native module", v >= 0.97, f"{v:.2f} x"))
        for z in small:
            v = r("libcgi", "static", z)
            targets.append((f"{mpm}, {fmt_size(z)}: mod_libcgi >= 1.4 x static file", v >= 1.4, f"{v:.2f} x"))
        for z in [z for z in [28, 1024] if z in M_SIZES]:
            v = r("libcgi", "fcgid", z)
            targets.append((f"{mpm}, {fmt_size(z)}: mod_libcgi >= 2.5 x mod_fcgid", v >= 2.5, f"{v:.2f} x"))
            v = r("libcgi", "cgid", z)
            targets.append((f"{mpm}, {fmt_size(z)}: mod_libcgi >= 25 x mod_cgid", v >= 25, f"{v:.1f} x"))
    over = cg["libcgi"] / cg["native"] - 1
    targets.append(("instructions per request at 28 B: <= 10% more than the native module", over <= 0.10, f"{over * 100:+.1f}%"))
    mr = many["many_rps"] / many["one_rps"]
    targets.append((f"{MANY} scripts loaded: >= 0.95 x the throughput of one script", mr >= 0.95, f"{mr:.2f} x"))
    L += ["## Cost of the module itself", "",
          f"Instructions per request (valgrind callgrind, `apache2 -X`, {CG_REQUESTS} keep-alive requests of 28 B, "
          "whole process: server, module and script):", "",
          "| target | instructions/request |", "|---|---:|"]
    for p in ["static", "native", "libcgi"]:
        L.append(f"| {p} | {cg[p]:,.0f} |")
    L += ["", f"mod_libcgi / native: {cg['libcgi'] / cg['native']:.3f}.", "",
          f"First request of a script in a process (open, dlopen, bind imports, initfunc, then the request): "
          f"{many['first_us']:.0f} us median; later requests of the same script: {many['later_us']:.0f} us "
          "(single keep-alive connection, event MPM, one process).", "",
          f"Throughput with {MANY} different scripts loaded in the process, requests spread over all of them: "
          f"{many['many_rps']:,.0f} req/s vs {many['one_rps']:,.0f} req/s for one script "
          f"(runs: {', '.join(f'{x:,.0f}' for x in many['many_runs'])} vs {', '.join(f'{x:,.0f}' for x in many['one_runs'])}).", "",
          f"Resident memory of the server process: {rss1:,} KiB with 1 script loaded, {many['rss_many_kib']:,} KiB "
          f"with {MANY} ({(many['rss_many_kib'] - rss1) / max(MANY - 1, 1):.1f} KiB per extra script).", "",
          "## Targets", "", "| target | result | |", "|---|---:|---|"]
    for what, ok, val in targets:
        L.append(f"| {what} | {val} | {verdict(ok)} |")
    L += ["", "Notes: every dynamic peer maps its URL to a file and pays one stat per request, except mod_proxy_fcgi, "
          "which maps to a backend address (4 libfcgi processes per size, pinned to the server's core). "
          "The native module writes with ap_rwrite; mod_libcgi also parses the script's CGI header block "
          "with Apache's parser and runs the script under its fault guard and watchdog.", ""]
    path = os.path.join(RESULTS, f"{name}.md")
    with open(path, "w") as f:
        f.write("\n".join(L))
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
        json.dump({"callgrind": cg, "many": many, "rss_one_kib": rss1,
                   "throughput": {m: {"keepalive": {f"{p}/{z}": v for (p, z), v in r[0].items()},
                                      "close": {f"{p}/{z}": v for (p, z), v in r[1].items()},
                                      "latency": {f"{p}/{z}": v for (p, z), v in r[2].items()}}
                                  for m, r in results.items()}}, f, indent=1)
    return path


def main():
    t0 = time.time()
    if not os.path.exists(MODULE):
        raise SystemExit(f"{MODULE} missing: cargo build --release")
    log("building the peers")
    build()
    results = {}
    for mpm in ["event", "prefork"]:
        results[mpm] = throughput(mpm)
    log("callgrind: instructions per request")
    cg = callgrind_counts()
    log(f"first request, {MANY} scripts, memory")
    many = first_request_and_many()
    rss1 = rss_one_script()
    path = report(results, cg, many, rss1)
    log(f"report: {path} ({time.time() - t0:.0f} s)")
    print(open(path).read())


if __name__ == "__main__":
    main()
