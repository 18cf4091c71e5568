#!/usr/bin/env python3
"""mod_libcgi against every way an Apache user could serve the same dynamic
response, measured side by side in one run.

Peers (all built here; all but mod_proxy_fcgi map the URL to a file, so each
pays one stat per request; mod_proxy_fcgi maps to a backend address):
  static      a static file of the same bytes (the paper's upper bound)
  native      a hand-written C handler module (apxs) writing the bytes from memory
  libcgi      mod_libcgi running peer.c as a LibCGI script (lwrite)
  fcgid       peer.c as a FastCGI application (libfcgi) under mod_fcgid
  proxy_fcgi  the same FastCGI application (spawn-fcgi) behind mod_proxy_fcgi
  cgid        peer.c as a classic CGI program under mod_cgid

Usage: bench/run.sh [--smoke]   (installs what it needs, then runs this)
       bench/bench.py --from-json bench/results/<day>.json   (re-renders a report)
Environment: BENCH_MODULE=/path/libmod_libcgi.so benchmarks that module
instead of target/release/libmod_libcgi.so.
"""
import datetime
import glob
import http.client
import json
import os
import platform
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
MODULE = os.environ.get("BENCH_MODULE") or os.path.join(ROOT, "target/release/libmod_libcgi.so")
SIZES = [28, 1024, 10240, 102400]
PEERS = ["static", "native", "native_hdr", "libcgi", "libcgi_nometrics", "isolated", "fcgid", "proxy_fcgi", "cgid"]
MPMS = ["event", "prefork"]
# mod_proxy_fcgi's backends: free ports picked per run (two runs at once
# must not collide), before the server's configuration names them.
PROXY_PORTS = []
SMOKE = "--smoke" in sys.argv
SERVER_CPU, CLIENT_CPU = "0", "1"

# Time budget: the full run takes about 20 minutes on 2 cores, the smoke run
# about 90 s (the mixed workload only under event).
DUR = 1 if SMOKE else 2               # seconds per measurement (wrk takes whole seconds)
WARM = 0 if SMOKE else 1              # seconds of warm-up per target
M_SIZES = [28] if SMOKE else SIZES    # sizes measured (all are built and checked)
ROUNDS = 1 if SMOKE else 4            # keep-alive rounds (order rotated)
CONNS = 16
LAT_SIZES = [28] if SMOKE else [28, 1024]
# In smoke mode only these peers are measured without keep-alive and at c=1.
SMOKE_PEERS = ["native", "libcgi", "isolated"]
CG_REQUESTS = 20 if SMOKE else 500    # requests per callgrind segment
MANY = 50 if SMOKE else 1000          # scripts in the "many scripts" test
MANY_ROUNDS = 1 if SMOKE else 4
MIXED_SCRIPTS = 21                    # 1 hot + 20 cold
MIXED_SECONDS = 2 if SMOKE else 20    # per mode, in 1 s steps
SHIFT_SECONDS = 2 if SMOKE else 30    # the hot script changes halfway
MIXED_MPMS = ["event"] if SMOKE else MPMS
PP_SAMPLES = 3 if SMOKE else 9        # ping-pong samples per variant


def log(*a):
    print("[bench]", *a, flush=True)


def sh(cmd, **kw):
    p = subprocess.run(cmd, text=True, capture_output=True, **kw)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return p.stdout


def url(peer, size):
    return {
        "static": f"/static/s{size}.bin",
        "native": f"/native/n{size}.nat",
        "native_hdr": f"/nhdr/n{size}.nhd",
        "libcgi": f"/libcgi-bin/b{size}.so",
        # The same script in a second server of the same MPM with the metrics
        # off (LibCGIStatusSlots 0): issue 11's paired throughput rounds.
        "libcgi_nometrics": f"/libcgi-bin/b{size}.so",
        # The same script under LibCGIIsolation process (issue 12).
        "isolated": f"/iso-bin/b{size}.so",
        "fcgid": f"/fcgid/f{size}.fcgi",
        "proxy_fcgi": f"/pfcgi/{size}",
        "cgid": f"/cgi-bin/c{size}.cgi",
    }[peer]


def body_of(size):
    return bytes(ord("a") + i % 26 for i in range(size))


# ---------------------------------------------------------------- build ----

def build():
    shutil.rmtree(WORK, ignore_errors=True)
    for d in ["static", "native", "nhdr", "libcgi-bin", "iso-bin", "fcgid", "cgi-bin", "run", "many", "links", "nmany", "obj",
              "cg", "mixed"]:
        os.makedirs(os.path.join(WORK, d))
    inc = os.path.join(ROOT, "include")
    peer = os.path.join(HERE, "peer.c")
    for size in SIZES:
        with open(os.path.join(WORK, "static", f"s{size}.bin"), "wb") as f:
            f.write(body_of(size))
        open(os.path.join(WORK, "native", f"n{size}.nat"), "w").close()
        open(os.path.join(WORK, "nhdr", f"n{size}.nhd"), "w").close()
        sh(["cc", "-O2", "-shared", "-fPIC", f"-DSIZE={size}", "-I", inc, "-o",
            os.path.join(WORK, "libcgi-bin", f"b{size}.so"), peer])
        shutil.copy(os.path.join(WORK, "libcgi-bin", f"b{size}.so"), os.path.join(WORK, "iso-bin", f"b{size}.so"))
        sh(["cc", "-O2", f"-DSIZE={size}", "-DFCGI_MAIN", "-o",
            os.path.join(WORK, "fcgid", f"f{size}.fcgi"), peer, "-lfcgi"])
        sh(["cc", "-O2", f"-DSIZE={size}", "-DCGI_MAIN", "-o",
            os.path.join(WORK, "cgi-bin", f"c{size}.cgi"), peer])
    # The native module, with apxs like any third-party module.
    src = os.path.join(WORK, "obj", "mod_benchnative.c")
    shutil.copy(os.path.join(HERE, "native", "mod_benchnative.c"), src)
    sh(["apxs", "-c", "-o", os.path.join(WORK, "obj", "mod_benchnative.so"), src])
    # MANY different scripts: separate files, so separate loads.
    for i in range(MANY):
        shutil.copy(os.path.join(WORK, "libcgi-bin", "b28.so"), os.path.join(WORK, "many", f"m{i:04d}.so"))
        # The same number of names for one file: as many registry entries
        # (each with its own initfunc call), but one program in memory.
        os.link(os.path.join(WORK, "many", "m0000.so"), os.path.join(WORK, "links", f"l{i:04d}.so"))
        # The control: as many files for the native module (28 B each).
        open(os.path.join(WORK, "nmany", f"n28-{i:04d}.nat"), "w").close()
    build_script_rows()
    # The mixed workload's 21 scripts: separate files, so separate scripts
    # for the isolation policy.
    for i in range(MIXED_SCRIPTS):
        shutil.copy(os.path.join(WORK, "libcgi-bin", "b28.so"), os.path.join(WORK, "mixed", f"m{i:02d}.so"))
    sh(["cc", "-O2", "-Wall", "-o", os.path.join(WORK, "obj", "pingpong"), os.path.join(HERE, "pingpong.c")])
    # A private copy of the module: the benchmark is immune to a rebuild
    # running at the same time.
    shutil.copy(MODULE, os.path.join(WORK, "obj", "libmod_libcgi.so"))
    # The server runs as www-data: everything readable, the run dirs writable.
    for dirpath, dirnames, filenames in os.walk(WORK):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o755)
    if os.geteuid() == 0:
        for d in ["run", "cg"]:
            shutil.chown(os.path.join(WORK, d), "www-data", "www-data")
    d = WORK
    while d != "/":
        os.chmod(d, os.stat(d).st_mode | 0o005)
        d = os.path.dirname(d)


# The same hello written several ways (callgrind rows beside mod_libcgi's):
# examples/hello.c, examples/rust/hello (the libcgi crate),
# tests/rust-scripts/sdktest's /hello (the same after one getenv, which has
# the module build the request's variables) and examples/rust/http-hello
# (through libcgi's http crate adapter, which reads the variables).
SCRIPT_ROWS = [("c_hello", "/libcgi-bin/chello.so"), ("rust_hello", "/libcgi-bin/rhello.so"),
               ("rust_var", "/libcgi-bin/rvar.so/hello"), ("rust_http", "/libcgi-bin/rhttp.so")]


def build_script_rows():
    d = os.path.join(WORK, "libcgi-bin")
    sh(["cc", "-O2", "-shared", "-fPIC", "-I", os.path.join(ROOT, "include"), "-o", os.path.join(d, "chello.so"),
        os.path.join(ROOT, "examples", "hello.c")])
    sh(["cargo", "build", "--release", "--quiet", "-p", "hello", "-p", "http-hello", "-p", "sdktest"], cwd=ROOT)
    for src, dst in [("libhello.so", "rhello.so"), ("libhttp_hello.so", "rhttp.so"), ("libsdktest.so", "rvar.so")]:
        shutil.copy(os.path.join(ROOT, "target", "release", src), os.path.join(d, dst))


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


def pick_ports(n):
    """n distinct free ports (held open together while picking)."""
    socks = []
    try:
        for _ in range(n):
            so = socket.socket()
            so.bind(("127.0.0.1", 0))
            socks.append(so)
        return [so.getsockname()[1] for so in socks]
    finally:
        for so in socks:
            so.close()


def config(mpm, port, single=False, run="run", extra=""):
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
        f"ProxyPass /pfcgi/{size} fcgi://127.0.0.1:{port}/\n"
        for port, size in zip(PROXY_PORTS, SIZES))
    return f"""ServerRoot {w}
Listen 127.0.0.1:{port}
ServerName 127.0.0.1
{user}PidFile {w}/{run}/httpd.pid
DefaultRuntimeDir {w}/{run}
ErrorLog {w}/{run}/error.log
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
LoadModule libcgi_module {w}/obj/libmod_libcgi.so
{extra}TypesConfig /etc/mime.types
ScriptSock {w}/{run}/cgid.sock
FcgidIPCDir {w}/{run}/fcgid
FcgidProcessTableFile {w}/{run}/fcgid_shm
FcgidMaxRequestsPerProcess 0
FcgidMinProcessesPerClass 1
FcgidMaxProcessesPerClass 8
FcgidMaxProcesses 64
DocumentRoot {w}/static
<Directory />
    AllowOverride None
    Require all granted
</Directory>
Alias /static/ {w}/static/
Alias /native/ {w}/native/
Alias /nmany/ {w}/nmany/
<Directory {w}/native>
    AddHandler bench-native .nat
</Directory>
Alias /nhdr/ {w}/nhdr/
<Directory {w}/nhdr>
    AddHandler bench-native-hdr .nhd
</Directory>
<Directory {w}/nmany>
    AddHandler bench-native .nat
</Directory>
<Location /mark>
    SetHandler bench-mark
</Location>
Alias /libcgi-bin/ {w}/libcgi-bin/
Alias /iso-bin/ {w}/iso-bin/
<Directory {w}/iso-bin>
    Options +ExecCGI
    AddHandler libcgi-script .so
    LibCGIIsolation process
</Directory>
Alias /many/ {w}/many/
<Directory {w}/libcgi-bin>
    Options +ExecCGI
    AddHandler libcgi-script .so
</Directory>
<Directory {w}/many>
    Options +ExecCGI
    AddHandler libcgi-script .so
</Directory>
Alias /links/ {w}/links/
<Directory {w}/links>
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
    """One apache2, in its own session (prefork signals its whole process
    group on shutdown), pinned to SERVER_CPU; or, with valgrind, a
    single-process `apache2 -X` under callgrind."""

    def __init__(self, mpm, single=False, valgrind_args=None, run="run", extra=""):
        """`run`: the directory under WORK for this server's pid file, logs
        and sockets, so that several servers can run side by side."""
        self.mpm, self.port, self.run = mpm, free_port(), run
        rd = os.path.join(WORK, run)
        if not os.path.isdir(rd):
            os.makedirs(rd)
            if os.geteuid() == 0:
                shutil.chown(rd, "www-data", "www-data")
        valgrind = valgrind_args is not None
        conf = os.path.join(WORK, f"httpd-{mpm}{'-cg' if valgrind else ''}-{run}.conf")
        with open(conf, "w") as f:
            text = config(mpm, self.port, single, run, extra)
            if valgrind:
                text = text.replace("User www-data\nGroup www-data\n", "")
            f.write(text)
        for p in ["httpd.pid", "error.log", "fcgid_shm"]:
            try:
                os.unlink(os.path.join(WORK, run, p))
            except FileNotFoundError:
                pass
        if valgrind:
            # Run as the server user from the start: apache2 -X started as root
            # would switch user and could not write callgrind's output.
            cmd = ["valgrind", "--tool=callgrind"] + valgrind_args + ["/usr/sbin/apache2", "-X", "-f", conf]
            if os.geteuid() == 0:
                cmd = ["setpriv", "--reuid=www-data", "--regid=www-data", "--init-groups"] + cmd
            cmd = ["taskset", "-c", SERVER_CPU] + cmd
        else:
            cmd = ["taskset", "-c", SERVER_CPU, "/usr/sbin/apache2", "-f", conf, "-DFOREGROUND"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.time() + (120 if valgrind else 20)
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"apache2 exited: {self.proc.stderr.read().decode()}{self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                if os.path.exists(os.path.join(WORK, run, "httpd.pid")) or valgrind:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                self.stop()
                raise SystemExit("apache2 did not come up")
            time.sleep(0.05)

    def error_log(self):
        try:
            return open(os.path.join(WORK, self.run, "error.log")).read()
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

    def worker(self):
        """The server process that serves requests: the child with the most
        threads (mod_cgid's daemon and mod_fcgid's process manager are
        children of the parent too)."""
        def threads(pid):
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("Threads:"):
                    return int(line.split()[1])
            return 0
        return max(self.children(), key=threads)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class ProxyBackends:
    """The FastCGI application for mod_proxy_fcgi: 4 processes per size on
    127.0.0.1, started by spawn-fcgi when it is installed (else the program
    opens the socket itself with FCGX_OpenSocket and forks), pinned to the
    server's core like everything server-side."""

    def __init__(self):
        self.pids, self.groups = [], []
        spawn = shutil.which("spawn-fcgi")
        self.how = "spawn-fcgi -F 4" if spawn else "FCGX_OpenSocket + 3 forks"
        for i, size in enumerate(SIZES):
            port = PROXY_PORTS[i]
            app = os.path.join(WORK, "fcgid", f"f{size}.fcgi")
            if spawn:
                pidfile = os.path.join(WORK, f"spawn-fcgi-{port}.pid")
                sh(["taskset", "-c", SERVER_CPU, spawn, "-a", "127.0.0.1", "-p", str(port), "-F", "4",
                    "-P", pidfile, "--", app])
                self.pids += [int(x) for x in open(pidfile).read().split()]
            else:
                env = dict(os.environ, FCGI_PORT=str(port))
                p = subprocess.Popen(["taskset", "-c", SERVER_CPU, app], env=env,
                                     start_new_session=True, stdin=subprocess.DEVNULL)
                self.groups.append(p)
        for i in range(len(SIZES)):
            deadline = time.time() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", PROXY_PORTS[i]), 0.2).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        self.stop()
                        raise SystemExit("FastCGI backend did not come up")
                    time.sleep(0.05)

    def stop(self):
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.groups:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            p.wait()


# ---------------------------------------------------------------- client ---

def fetch(port, path, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    if conn is None:
        c.close()
    return r.status, body


def check_targets(port_of):
    """Every target answers 200 with exactly the bytes expected, before
    anything is measured."""
    for peer in PEERS:
        for size in SIZES:
            status, body = fetch(port_of(peer), url(peer, size))
            if status != 200 or body != body_of(size):
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
    if errs and int(errs.group(1)):
        raise SystemExit(f"wrk {path}: {errs.group(1)} non-2xx responses")
    res = {"rps": rps, "socket_errors": sum(map(int, sock.groups())) if sock else 0}
    if latency:
        def us(v, unit):
            return float(v) * {"us": 1, "ms": 1000, "s": 1e6}[unit]
        for pct in ["50", "99"]:
            m = re.search(rf"^\s+{pct}(?:\.0+)?%\s+([\d.]+)(us|ms|s)", out, re.M)
            res[f"p{pct}"] = us(*m.groups())
    return res


# ------------------------------------------------------------ measurements -

def rotated(seq, k):
    k %= len(seq)
    return seq[k:] + seq[:k]


def throughput(mpm):
    """Keep-alive rounds: each round walks the sizes, and for each size all
    peers back to back (so a ratio compares measurements seconds apart), the
    order of sizes and of peers rotated from round to round.  Then one round
    without keep-alive and the latency at concurrency 1."""
    PROXY_PORTS[:] = pick_ports(len(SIZES))
    s = Server(mpm)
    # The metrics-off twin: idle (and pinned to the same CPU) while the
    # others are measured.
    s_nm = Server(mpm, run="run-nm", extra="LibCGIStatusSlots 0\n")
    backends = ProxyBackends()

    def port(p):
        return s_nm.port if p == "libcgi_nometrics" else s.port
    try:
        check_targets(port)
        targets = [(p, z) for z in M_SIZES for p in PEERS]
        if WARM:
            log(f"{mpm}: warm-up")
            for p, z in targets:
                wrk(port(p), url(p, z), WARM)
        ka = {t: [] for t in targets}
        for rnd in range(ROUNDS):
            log(f"{mpm}: keep-alive round {rnd + 1}/{ROUNDS}")
            for z in rotated(M_SIZES, rnd):
                peers = rotated(PEERS, rnd) if rnd % 2 == 0 else list(reversed(rotated(PEERS, rnd)))
                for p in peers:
                    ka[(p, z)].append(wrk(port(p), url(p, z), DUR)["rps"])
        log(f"{mpm}: without keep-alive")
        close = {}
        cpeers = SMOKE_PEERS if SMOKE else PEERS
        for z in M_SIZES:
            for p in cpeers:
                close[(p, z)] = [wrk(port(p), url(p, z), DUR, keepalive=False)["rps"]]
        lat = {}
        log(f"{mpm}: latency at concurrency 1")
        for z in LAT_SIZES:
            for p in cpeers:
                lat[(p, z)] = wrk(port(p), url(p, z), DUR, conns=1, latency=True)
        crashed = [l for l in (s.error_log() + s_nm.error_log()).splitlines() if "exit signal" in l]
        if crashed:
            raise SystemExit(f"server processes died: {crashed}")
        return {"ka": ka, "close": close, "lat": lat, "proxy": backends.how}
    finally:
        backends.stop()
        s_nm.stop()
        s.stop()


# ---- callgrind ----

def parse_events(path):
    """Every event of one callgrind dump (Ir, and with --cache-sim the cache
    misses): the event names, the dump's totals, and the self cost per
    (object, function) as a list in the order of the names."""
    names = {"ob": {}, "fn": {}}
    ob = fn = None
    events, totals, self_fn = [], [], {}
    skip_next = False
    name_re = re.compile(r"^\((\d+)\)(?: (.*))?$")

    def resolve(kind, val):
        table = names["ob" if kind in ("ob", "cob") else "fn"]
        m = name_re.match(val)
        if not m:
            return val
        if m.group(2) is not None:
            table[m.group(1)] = m.group(2)
        return table.get(m.group(1), val)

    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            if line[0].isdigit() or line[0] in "+-*":
                if skip_next:
                    skip_next = False
                    continue
                if fn is not None:
                    # Trailing zero counts are left out of the line.
                    vals = [int(x) for x in line.split()[1:]]
                    cur = self_fn.setdefault((ob, fn), [0] * len(events))
                    for i, v in enumerate(vals[:len(events)]):
                        cur[i] += v
                continue
            key, _, val = line.partition("=")
            if line.startswith("events:"):
                events = line.split()[1:]
            elif key in ("ob", "cob"):
                v = resolve(key, val)
                if key == "ob":
                    ob = v
            elif key in ("fn", "cfn"):
                v = resolve(key, val)
                if key == "fn":
                    fn = v
            elif key == "calls":
                skip_next = True
            elif line.startswith(("summary:", "totals:")):
                totals = [int(x) for x in line.split()[1:]]
    totals += [0] * (len(events) - len(totals))
    return events, totals, self_fn


def inclusive_top(path, n=40):
    """callgrind_annotate's inclusive list for one dump: [(Ir, function)],
    without the frames that enclose the whole segment (main, the MPM loop,
    ap_process_connection), names shortened to `function [object]`."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--auto=no", "--threshold=100", path],
                         capture_output=True, text=True).stdout
    best, order, total = {}, [], None
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(.+?)\s*$", line)
        if not m:
            continue
        ir, what = int(m.group(1).replace(",", "")), m.group(2)
        if what == "PROGRAM TOTALS":
            total = ir
            continue
        if ":" not in what or re.search(r"\(\d+x\)$", what) or (total and ir >= 0.99 * total):
            continue
        fm = re.match(r"^(.*?):(.+?)(?: \[(.+)\])?$", what)
        if not fm:
            continue
        # One function can appear under several source files (inlined
        # code); keep its largest figure, under its object's name.
        fn, ob = fm.group(2), os.path.basename(fm.group(3) or "")
        if fn in best:
            best[fn] = (max(best[fn][0], ir), best[fn][1] or ob)
        else:
            best[fn] = (ir, ob)
            order.append(fn)
    rows = sorted(((best[f][0], f"{f} [{best[f][1]}]" if best[f][1] else f) for f in order), key=lambda r: -r[0])
    return rows[:n]


def callgrind():
    """Instructions per request in one single-process httpd (apache2 -X) under
    callgrind, reproducible where times are not.  The run is cut into
    segments by requests for /mark (callgrind dumps and zeroes its counters
    when bench_mark() is entered), all on one keep-alive connection:

      warm-up | mark | mark | N native | mark | N libcgi | mark | N static |
      mark | first request of a new script | mark | its second request | ...
      load MANY-1 more scripts | mark | N libcgi | mark

    The empty segment (mark, mark) is the cost of one marker request, which
    is subtracted from every other segment."""
    prefix = os.path.join(WORK, "cg", "cg.out")
    s = Server("prefork", single=True,
               valgrind_args=[f"--callgrind-out-file={prefix}", "--dump-before=bench_mark", "--dump-instr=no",
                              # Also simulate the caches: the instruction-cache
                              # misses per request say how much code a request
                              # runs through, which instruction counts do not.
                              "--cache-sim=yes"])
    n = CG_REQUESTS
    plan = []           # (label, requests in the segment)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=300)

        def get(path, times=1):
            for _ in range(times):
                st, body = fetch(s.port, path, conn)
                if st != 200:
                    raise SystemExit(f"callgrind run: {path} answered {st}")

        def segment(label, path, times):
            get(path, times)
            get("/mark")
            plan.append((label, times))

        # Warm-up: every path once loaded, caches and pools at steady state.
        for _ in range(20):
            for p in ["static", "native", "native_hdr", "libcgi"]:
                for z in SIZES:
                    get(url(p, z))
        get("/many/m0000.so", 20)
        for _, path in SCRIPT_ROWS:
            get(path, 20)
        get("/mark")                      # ends start-up + warm-up (discarded)
        plan.append(("warm-up", 0))
        get("/mark")
        plan.append(("marker", 0))
        for rep in range(2):              # twice each, to show the counts repeat
            for p in ["native", "native_hdr", "libcgi", "static"]:
                segment(f"{p}#{rep}", url(p, 28), n)
        for rep in range(2):
            for p, path in SCRIPT_ROWS:
                segment(f"{p}#{rep}", path, n)
        segment("first", "/many/m0001.so", 1)
        segment("second", "/many/m0001.so", 1)
        for z in SIZES[1:]:
            for p in ["native", "libcgi"]:
                segment(f"{p}-{z}", url(p, z), n)
        segment("few-one", "/many/m0000.so", n)
        # Load the rest of the MANY scripts in this process (not counted as a
        # per-request figure), then requests to one of them again.
        for i in range(2, MANY):
            get(f"/many/m{i:04d}.so")
        get("/mark")
        plan.append(("loading", MANY - 2))
        segment("many-one", "/many/m0000.so", n)
        spread = [f"/many/m{(i * 7919) % MANY:04d}.so" for i in range(n)]
        for p in spread:
            get(p)
        get("/mark")
        plan.append(("many-spread", n))
        conn.close()
    finally:
        s.stop()
    dumps = sorted(glob.glob(prefix + ".*"), key=lambda p: int(p.rsplit(".", 1)[1]) if p.rsplit(".", 1)[1].isdigit() else 1 << 30)
    dumps = [d for d in dumps if d.rsplit(".", 1)[1].isdigit()]
    if len(dumps) < len(plan):
        raise SystemExit(f"callgrind: {len(dumps)} dumps for {len(plan)} segments in {prefix}.*")
    seg = {}
    for (label, times), path in zip(plan, dumps):
        # Each dump parsed once: Ir (the first event) for the instruction
        # tables, all events for the cache tables.
        events, totals, fns = parse_events(path)
        self_ob = {}
        for (ob, _), v in fns.items():
            self_ob[ob] = self_ob.get(ob, 0) + v[0]
        seg[label] = {"total": totals[0], "times": times, "path": path, "events": events, "totals": totals,
                      "fns": fns, "self_fn": {k: v[0] for k, v in fns.items()}, "self_ob": self_ob}
    marker = seg["marker"]["total"]

    def per_req(label):
        return (seg[label]["total"] - marker) / seg[label]["times"]

    res = {"requests": n, "marker": marker}
    for p in ["native", "native_hdr", "libcgi", "static"]:
        res[p] = statistics.mean(per_req(f"{p}#{r}") for r in range(2))
        res[p + "_runs"] = [per_req(f"{p}#{r}") for r in range(2)]
    for p, _ in SCRIPT_ROWS:
        res[p] = statistics.mean(per_req(f"{p}#{r}") for r in range(2))
        res[p + "_runs"] = [per_req(f"{p}#{r}") for r in range(2)]
    for label in ["first", "second", "few-one", "many-one", "many-spread"] + \
            [f"{p}-{z}" for z in SIZES[1:] for p in ["native", "libcgi"]]:
        res[label] = per_req(label)
    res["loading"] = (seg["loading"]["total"] - marker) / max(seg["loading"]["times"], 1)

    # Where the instructions go: self cost per object file and per function,
    # per request, native vs mod_libcgi; and callgrind_annotate's inclusive
    # list for both.
    def norm(label):
        t = seg[label]["times"]
        by_ob = {os.path.basename(k or "?"): v / t for k, v in seg[label]["self_ob"].items()}
        by_fn = {f"{fn} [{os.path.basename(ob or '?')}]": v / t for (ob, fn), v in seg[label]["self_fn"].items()}
        return by_ob, by_fn

    res["by_object"] = {p: norm(f"{p}#0")[0] for p in ["native", "libcgi"]}
    res["by_function_10k"] = {p: norm(f"{p}-10240")[1] for p in ["native", "libcgi"]}
    res["by_function"] = {p: norm(f"{p}#0")[1] for p in ["native", "libcgi"]}
    res["inclusive"] = {p: [(ir / n, fn) for ir, fn in inclusive_top(seg[f"{p}#0"]["path"])] for p in ["native", "libcgi"]}
    # Cache simulation: every event per request, and the self I1 misses per
    # function, for the three in-process handlers at 28 B.
    names = seg["marker"]["events"]
    res["events"] = {p: {e: (seg[f"{p}#0"]["totals"][i] - seg["marker"]["totals"][i]) / n for i, e in enumerate(names)}
                     for p in ["native", "native_hdr", "libcgi"]}
    if "I1mr" in names:
        i1 = names.index("I1mr")
        res["i1_by_function"] = {p: {f"{fn} [{os.path.basename(ob or '?')}]": v[i1] / n
                                     for (ob, fn), v in seg[f"{p}#0"]["fns"].items() if v[i1]}
                                 for p in ["native", "native_hdr", "libcgi"]}
    res["inclusive_first"] = [(ir, fn) for ir, fn in inclusive_top(seg["first"]["path"], 15)]
    return res


def callgrind_metrics():
    """The cost of the metrics (issue 11): instructions per mod_libcgi
    request at 28 B with them off (LibCGIStatusSlots 0) and on (the
    default), each in its own single-process httpd under callgrind, cut by
    markers as in callgrind(): warm-up | mark | mark | N | mark | N | mark."""
    res = {"requests": CG_REQUESTS}
    for label, extra in [("off", "LibCGIStatusSlots 0\n"), ("on", "")]:
        d = os.path.join(WORK, f"cg-metrics-{label}")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        if os.geteuid() == 0:
            shutil.chown(d, "www-data", "www-data")
        prefix = os.path.join(d, "cg.out")
        s = Server("prefork", single=True, run=f"run-cgm-{label}", extra=extra,
                   valgrind_args=[f"--callgrind-out-file={prefix}", "--dump-before=bench_mark", "--dump-instr=no"])
        try:
            conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=300)
            for path, times in [(url("libcgi", 28), 50), ("/mark", 1), ("/mark", 1), (url("libcgi", 28), CG_REQUESTS),
                                ("/mark", 1), (url("libcgi", 28), CG_REQUESTS), ("/mark", 1)]:
                for _ in range(times):
                    st, _ = fetch(s.port, path, conn)
                    if st != 200:
                        raise SystemExit(f"callgrind (metrics {label}): {path} answered {st}")
            conn.close()
        finally:
            s.stop()
        dumps = sorted((p for p in glob.glob(prefix + ".*") if p.rsplit(".", 1)[1].isdigit()),
                       key=lambda p: int(p.rsplit(".", 1)[1]))
        if len(dumps) < 4:
            raise SystemExit(f"callgrind (metrics {label}): {len(dumps)} dumps in {d}")
        tot = [parse_events(p)[1][0] for p in dumps[:4]]
        marker = tot[1]
        runs = [(tot[2] - marker) / CG_REQUESTS, (tot[3] - marker) / CG_REQUESTS]
        res[label], res[label + "_runs"] = statistics.mean(runs), runs
    res["over"] = res["on"] / res["off"] - 1
    return res


# ---- first request, many scripts, memory ----

def first_request_and_many():
    """First-request cost (load + initfunc) vs later requests, in time;
    throughput as the number of loaded scripts grows; resident memory with 1
    and MANY scripts loaded.  Three single-process event servers side by
    side, so that their runs can alternate: A has one script loaded, B has
    MANY different script files loaded, C has MANY names (hard links) of one
    file loaded: as many registry entries and initfunc calls as B, but one
    program's code and data in memory."""
    sa = Server("event", single=True, run="run-one")
    sb = Server("event", single=True)
    sc = Server("event", single=True, run="run-links")
    try:
        pids = {sa: sa.worker(), sb: sb.worker(), sc: sc.worker()}

        def rss(srv):
            for line in open(f"/proc/{pids[srv]}/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

        def timed(srv, path, conn):
            t = time.perf_counter()
            st, _ = fetch(srv.port, path, conn)
            if st != 200:
                raise SystemExit(f"{path}: status {st}")
            return (time.perf_counter() - t) * 1e6

        conn = http.client.HTTPConnection("127.0.0.1", sb.port, timeout=30)
        for _ in range(20):
            fetch(sb.port, "/static/s28.bin", conn)
        for _ in range(21):
            fetch(sb.port, "/many/m0000.so", conn)
        rss_one = rss(sb)
        firsts, laters = [], []
        for i in range(1, min(21, MANY)):
            firsts.append(timed(sb, f"/many/m{i:04d}.so", conn))
            laters.extend(timed(sb, f"/many/m{i:04d}.so", conn) for _ in range(20))
        for i in range(MANY):           # every script loaded in B
            timed(sb, f"/many/m{i:04d}.so", conn)
        rss_many = rss(sb)
        conn.close()
        for i in range(MANY):           # every name loaded in C, every native file seen by A
            fetch(sc.port, f"/links/l{i:04d}.so")
            fetch(sa.port, f"/nmany/n28-{i:04d}.nat")
        for _ in range(20):
            fetch(sa.port, "/many/m0000.so")

        def lua(count, pattern):
            p = os.path.join(WORK, f"many{count}-{pattern[1:3]}.lua")
            with open(p, "w") as f:
                # The same client work for one file and for MANY.
                f.write(f"local n = 0\nrequest = function()\n  n = (n + 7919) % {count}\n"
                        f"  return wrk.format(\"GET\", string.format(\"{pattern}\", n))\nend\n")
            return p

        cases = {
            "one": (sa, lua(1, "/many/m%04d.so")),               # one script loaded, requests to it
            "many_one": (sb, lua(1, "/many/m%04d.so")),          # MANY loaded, requests to one of them
            "links": (sc, lua(MANY, "/links/l%04d.so")),         # MANY entries, one program, spread
            "many": (sb, lua(MANY, "/many/m%04d.so")),           # MANY programs, spread
            "native_one": (sa, lua(1, "/nmany/n28-%04d.nat")),
            "native_many": (sa, lua(MANY, "/nmany/n28-%04d.nat")),
        }
        if WARM:
            for srv, script in cases.values():
                wrk(srv.port, "/", WARM, script=script)
        tck = os.sysconf("SC_CLK_TCK")

        def cpu(srv):
            f = open(f"/proc/{pids[srv]}/stat").read().rsplit(")", 1)[1].split()
            return int(f[11]), int(f[12])        # utime, stime in ticks

        # CPU time of the server process per request, user and system: less
        # exposed to the other tenants of the machine than requests/s.
        runs = {k: [] for k in cases}
        cost = {k: [0, 0, 0.0] for k in cases}
        for rnd in range(MANY_ROUNDS):
            order = list(cases) if rnd % 2 == 0 else list(cases)[::-1]
            for k in order:
                srv, script = cases[k]
                u0, s0 = cpu(srv)
                rps = wrk(srv.port, "/", DUR, script=script)["rps"]
                u1, s1 = cpu(srv)
                runs[k].append(rps)
                cost[k][0] += u1 - u0
                cost[k][1] += s1 - s0
                cost[k][2] += rps * DUR
        cpu_us = {k: {"user": u / tck * 1e6 / max(n, 1), "sys": st / tck * 1e6 / max(n, 1)}
                  for k, (u, st, n) in cost.items()}
        crashed = [l for srv in pids for l in srv.error_log().splitlines() if "exit signal" in l]
        if crashed:
            raise SystemExit(f"server processes died: {crashed}")

        def ratio(k, base="one"):
            return med([a / b for a, b in zip(runs[k], runs[base])])

        return {
            "cpu_us": cpu_us, "runs": runs,
            "native_one_runs": runs["native_one"], "native_many_runs": runs["native_many"],
            "native_ratio": ratio("native_many", "native_one"),
            "ratio": ratio("many"), "ratio_many_one": ratio("many_one"), "ratio_links": ratio("links"),
            "first_us": statistics.median(firsts), "later_us": statistics.median(laters),
            "rss_1_kib": rss_one, "rss_many_kib": rss_many,
            "one_rps": statistics.median(runs["one"]), "many_rps": statistics.median(runs["many"]),
            "one_runs": runs["one"], "many_runs": runs["many"],
        }
    finally:
        for srv in (sa, sb, sc):
            srv.stop()


# ---- transport: ping-pong, callgrind of an isolated request ----

def pingpong():
    """The transport's floor (bench/pingpong.c): round trips between two
    processes, futex in shared memory (what mod_libcgi uses), futex with
    spinning first, eventfd and pipe; both on the server's CPU (where the
    benchmark puts the server and its workers) and across the two CPUs."""
    exe = os.path.join(WORK, "obj", "pingpong")
    one, two = [SERVER_CPU, SERVER_CPU], [SERVER_CPU, CLIENT_CPU]
    scale = 10 if SMOKE else 1
    plan = [("futex", one, 20000), ("futex", two, 2000), ("spin", one, 50), ("spin", two, 20000),
            ("eventfd", one, 20000), ("eventfd", two, 2000), ("pipe", one, 20000), ("pipe", two, 2000)]
    res = []
    for how, cpus, n in plan:
        out = sh([exe, how, cpus[0], cpus[1], str(max(n // scale, 10)), str(PP_SAMPLES)])
        d = json.loads(out)
        d["placement"] = "one CPU" if cpus[0] == cpus[1] else "two CPUs"
        res.append(d)
    return res


# Functions of the server side of an isolated request whose inclusive cost
# the report lists (callgrind names; a prefix matches).
ISO_PARTS = [
    ("the whole isolated call (client::run)", "mod_libcgi::isolation::client::run"),
    ("environment: ap_add_common_vars", "ap_add_common_vars"),
    ("environment: ap_add_cgi_vars", "ap_add_cgi_vars"),
    ("environment into the slot, as ap_create_environment makes it (Vars::put)",
     "mod_libcgi::isolation::client::Vars::put"),
    ("output: rs_lwrite (header parser, brigade)", "mod_libcgi::request::rs_lwrite"),
    ("header parser: ap_scan_script_header_err_core_ex", "ap_scan_script_header_err_core_ex"),
    ("end of the response: finish_body", "mod_libcgi::request::Request::finish_body"),
    ("futex syscalls (libc syscall())", "syscall"),
    ("copies (memcpy/memmove)", "__memmove"),
    ("claim a slot (client::claim)", "mod_libcgi::isolation::client::claim"),
    ("getpid", "getpid"),
]


def callgrind_isolated():
    """Instructions per isolated request at 28 B, server side and worker
    side, in one `apache2 -X` under callgrind (its manager and workers are
    forks, so callgrind runs in them too, one output file per process).
    Server: segments cut by /mark as in callgrind(): N isolated requests, N
    in-process requests, both twice.  Worker: a dump before each
    processfunc, so each dump is one whole request cycle in the worker."""
    d = os.path.join(WORK, "cg-iso")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    if os.geteuid() == 0:
        shutil.chown(d, "www-data", "www-data")
    prefix = os.path.join(d, "cg.out")
    n = CG_REQUESTS
    s = Server("prefork", single=True, run="run-cgiso", extra="LibCGIIsolationWorkers 2\n",
               valgrind_args=[f"--callgrind-out-file={prefix}.%p", "--dump-before=bench_mark",
                              "--dump-before=processfunc", "--dump-instr=no"])
    server_pid = s.proc.pid
    plan = []
    try:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=300)

        def get(path, times=1):
            for _ in range(times):
                st, body = fetch(s.port, path, conn)
                if st != 200:
                    raise SystemExit(f"callgrind (isolated): {path} answered {st}")

        # Isolated requests only: an in-process one would run processfunc in
        # this process and cut its segments (see callgrind() for those).
        get(url("isolated", 28), 30)
        get("/mark")
        plan.append(("warm-up", 0))
        get("/mark")
        plan.append(("marker", 0))
        for rep in range(2):
            get(url("isolated", 28), n)
            get("/mark")
            plan.append((f"isolated#{rep}", n))
        conn.close()
    finally:
        s.stop()
    files = glob.glob(prefix + ".*")
    by_pid = {}
    for f in files:
        parts = os.path.basename(f).split(".")
        # cg.out.<pid>[.<n>]
        if len(parts) >= 3 and parts[2].isdigit():
            by_pid.setdefault(int(parts[2]), []).append(f)
    mine = sorted((f for f in by_pid.get(server_pid, []) if f.rsplit(".", 1)[1].isdigit() and f.count(".") >= 3),
                  key=lambda f: int(f.rsplit(".", 1)[1]))
    if len(mine) < len(plan):
        raise SystemExit(f"callgrind (isolated): {len(mine)} server dumps for {len(plan)} segments in {d}")
    seg = {}
    for (label, times), path in zip(plan, mine):
        seg[label] = {"total": parse_events(path)[1][0], "times": times, "path": path}
    marker = seg["marker"]["total"]

    def per_req(label):
        return (seg[label]["total"] - marker) / seg[label]["times"]

    res = {"requests": n}
    res["isolated_runs"] = [per_req(f"isolated#{r}") for r in range(2)]
    res["isolated"] = statistics.mean(res["isolated_runs"])
    inc = {fn: ir / n for ir, fn in inclusive_top(seg["isolated#1"]["path"], 400)}
    parts = []
    for label, prefix_fn in ISO_PARTS:
        hits = [(v, f) for f, v in inc.items() if f.split(" [")[0].startswith(prefix_fn)]
        if hits:
            v, f = max(hits)
            parts.append((label, v, f))
        else:
            parts.append((label, None, prefix_fn))
    res["server_parts"] = parts
    res["server_top"] = sorted(((v, f) for f, v in inc.items()), reverse=True)[:25]
    # The worker that served the requests: the process with the most dumps
    # besides the server (dumps before processfunc, one per request).
    workers = [(len(v), pid) for pid, v in by_pid.items() if pid != server_pid]
    if workers:
        _, wpid = max(workers)
        dumps = sorted((f for f in by_pid[wpid] if f.count(".") >= 3 and f.rsplit(".", 1)[1].isdigit()),
                       key=lambda f: int(f.rsplit(".", 1)[1]))
        # The first dumps hold the worker's start and the script's load.
        steady = dumps[5:]
        totals, self_ob, self_fn = [], {}, {}
        for f in steady:
            _, tot, fns = parse_events(f)
            totals.append(tot[0])
            for (ob, fn), v in fns.items():
                k = os.path.basename(ob or "?")
                self_ob[k] = self_ob.get(k, 0) + v[0]
                kf = f"{fn} [{k}]"
                self_fn[kf] = self_fn.get(kf, 0) + v[0]
        if totals:
            res["worker"] = statistics.median(totals)
            res["worker_spread"] = [min(totals), max(totals)]
            res["worker_requests"] = len(totals)
            res["worker_by_object"] = {k: v / len(totals) for k, v in self_ob.items()}
            res["worker_top"] = sorted(((v / len(totals), f) for f, v in self_fn.items()), reverse=True)[:15]
    return res


# ---- mixed workload and load shift (issue 12, under LibCGIIsolation) ----

def mixed_lua(hot):
    """90% of the requests to script `hot`, 10% spread over the other 20."""
    p = os.path.join(WORK, f"mixed-hot{hot:02d}.lua")
    cold = [i for i in range(MIXED_SCRIPTS) if i != hot]
    with open(p, "w") as f:
        f.write("local n = 0\nlocal cold = {" + ", ".join(str(c) for c in cold) + "}\n"
                "request = function()\n  n = n + 1\n  local i = " + str(hot) + "\n"
                "  if n % 10 == 0 then i = cold[(n / 10) % #cold + 1] end\n"
                "  return wrk.format(\"GET\", string.format(\"/mixed/m%02d.so\", i))\nend\n")
    return p


def mixed_extra(mode):
    """`split`: the best split fixed by configuration (the hot script m00
    in process, the 20 cold ones isolated), what adaptive can at most
    reach while 20 of 21 stay isolated."""
    w = WORK
    if mode == "split":
        return mixed_extra("process") + "<Location /mixed/m00.so>\n    LibCGIIsolation inprocess\n</Location>\n"
    # One script per worker: enough workers for 21 scripts and 16
    # connections, or cold requests would mostly replace workers.
    return (f"LibCGIIsolationWorkers 48\nAlias /mixed/ {w}/mixed/\n<Directory {w}/mixed>\n    Options +ExecCGI\n    AddHandler libcgi-script .so\n"
            f"    LibCGIIsolation {mode}\n</Directory>\n<Location /libcgi-status>\n    SetHandler libcgi-status\n"
            "</Location>\n")


def adaptive_available():
    """Whether this module takes `LibCGIIsolation adaptive` (helper
    `adaptive`'s branch): a configuration test, no server started."""
    os.makedirs(os.path.join(WORK, "run-adcheck"), exist_ok=True)
    conf = os.path.join(WORK, "httpd-adaptive-check.conf")
    with open(conf, "w") as f:
        f.write(config("event", free_port(), True, "run-adcheck", mixed_extra("adaptive")))
    p = subprocess.run(["/usr/sbin/apache2", "-t", "-f", conf], capture_output=True, text=True)
    return p.returncode == 0, (p.stderr.strip().splitlines() or [""])[-1]


def isolated_count(port, mode):
    """Scripts of /mixed/ running isolated now: the status page's `domain`
    per script when the module reports it (adaptive), else what the fixed
    mode says."""
    try:
        st, body = fetch(port, "/libcgi-status?json")
        rows = json.loads(body).get("scripts", []) if st == 200 else []
    except (OSError, ValueError):
        rows = []
    rows = [r for r in rows if "/mixed/" in r.get("script", "")]
    if rows and all("domain" in r for r in rows):
        return sum(1 for r in rows if r["domain"] == "process"), "status page"
    return {"process": MIXED_SCRIPTS, "split": MIXED_SCRIPTS - 1}.get(mode, 0), "fixed mode"


def mixed_run(mpm, mode, seconds, hots):
    """Throughput per second and isolated scripts per second; `hots`: the
    hot script for each half (one entry: no shift)."""
    s = Server(mpm, run=f"run-mixed-{mode}", extra=mixed_extra(mode))
    try:
        for i in range(MIXED_SCRIPTS):
            st, body = fetch(s.port, f"/mixed/m{i:02d}.so")
            if st != 200 or body != body_of(28):
                raise SystemExit(f"mixed ({mode}): m{i:02d}.so answered {st}")
        series = []
        t0 = time.time()
        for sec in range(seconds):
            hot = hots[0] if sec < seconds // len(hots) or len(hots) == 1 else hots[1]
            rps = wrk(s.port, "/", 1, script=mixed_lua(hot))["rps"]
            n_iso, source = isolated_count(s.port, mode)
            series.append({"t": round(time.time() - t0, 2), "rps": rps, "isolated": n_iso, "hot": hot,
                           "source": source})
        transitions = None
        try:
            st, body = fetch(s.port, "/libcgi-status?json")
            rows = [r for r in json.loads(body).get("scripts", []) if "/mixed/" in r.get("script", "")]
            if rows and all("transitions" in r for r in rows):
                transitions = {os.path.basename(r["script"]): r["transitions"] for r in rows}
                domains = {os.path.basename(r["script"]): r.get("domain") for r in rows}
                transitions = {"per_script": transitions, "domains": domains}
        except (OSError, ValueError):
            pass
        crashed = [l for l in s.error_log().splitlines() if "exit signal" in l]
        if crashed:
            raise SystemExit(f"server processes died: {crashed}")
        return {"series": series, "transitions": transitions}
    finally:
        s.stop()


def mixed(mpm):
    """The mixed workload (1 hot script 90% of requests, 20 cold ones 10%)
    and the load shift (the hot script changes halfway) under each mode:
    all in process (the reference), all isolated, and adaptive when the
    module has it.  The modes alternate within one MPM's run."""
    ok, why = adaptive_available()
    modes = ["inprocess", "process"] + (["adaptive"] if ok else [])
    res = {"modes": modes, "adaptive": ok, "adaptive_why": why, "steady": {}, "shift": {}}
    # The fixed best split only in the steady workload: after the shift it
    # would pin the wrong script.
    for mode in modes[:2] + ["split"] + modes[2:]:
        log(f"{mpm}: mixed workload, {mode}")
        res["steady"][mode] = mixed_run(mpm, mode, MIXED_SECONDS, [0])
    for mode in modes:
        log(f"{mpm}: load shift, {mode}")
        res["shift"][mode] = mixed_run(mpm, mode, SHIFT_SECONDS, [0, 1])
    return res


def mixed_chart(mx, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    mpms = list(mx)
    fig, axes = plt.subplots(2, 2 * len(mpms), figsize=(6 * 2 * len(mpms), 7), sharex="col")
    for j, mpm in enumerate(mpms):
        for k, kind in enumerate(["steady", "shift"]):
            col = 2 * j + k
            top, bottom = axes[0][col], axes[1][col]
            for mode, r in mx[mpm][kind].items():
                ts = [p["t"] for p in r["series"]]
                top.plot(ts, [p["rps"] for p in r["series"]], marker=".", label=mode)
                bottom.step(ts, [p["isolated"] for p in r["series"]], where="post", label=mode)
            what = "mixed workload (90% to 1 of 21 scripts)" if kind == "steady" else "load shift (hot script changes halfway)"
            top.set_title(f"{mpm}: {what}", fontsize=9)
            top.set_ylabel("requests/s (1 s steps)")
            bottom.set_ylabel("isolated scripts (of 21)")
            bottom.set_xlabel("seconds")
            bottom.set_ylim(-1, MIXED_SCRIPTS + 1)
            if kind == "shift":
                half = r["series"][len(r["series"]) // 2]["t"]
                for ax in (top, bottom):
                    ax.axvline(half, color="grey", linestyle=":")
            top.grid(alpha=0.3)
            bottom.grid(alpha=0.3)
            top.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# ---------------------------------------------------------------- report ---

def machine():
    cpu = "unknown"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(open("/proc/meminfo").readline().split()[1]) // 1024
    apache = sh(["/usr/sbin/apache2", "-v"]).splitlines()[0].split(":", 1)[1].strip()
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0].split(" [")[0]
    try:
        rustc = sh(["rustc", "--version"]).strip()
    except (SystemExit, FileNotFoundError):
        rustc = "rustc unknown"
    vg = sh(["valgrind", "--version"]).strip()
    affinity = len(os.sched_getaffinity(0))
    load = open("/proc/loadavg").read().split()[:3]
    return (f"{cpu}, {os.cpu_count()} CPUs ({affinity} usable), {mem:,} MiB RAM; {platform.system()} "
            f"{platform.release()}; {apache}; {wrk_v}; {vg}; {rustc}; load average at the start "
            f"{' '.join(load)}")


def med(v):
    return statistics.median(v)


def spread(v):
    return f"{min(v):,.0f}-{max(v):,.0f}" if len(v) > 1 else "-"


def fmt_size(z):
    return {28: "28 B", 1024: "1 KiB", 10240: "10 KiB", 102400: "100 KiB"}[z]


def paired(ka, a, b, z):
    """libcgi/peer ratios round by round (measured seconds apart)."""
    return [x / y for x, y in zip(ka[(a, z)], ka[(b, z)])]


def chart(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.8))
    if len(results) == 1:
        axes = [axes]
    for ax, mpm in zip(axes, results):
        ka = results[mpm]["ka"]
        width = 0.8 / len(PEERS)
        for i, p in enumerate(PEERS):
            xs = [j + i * width for j in range(len(M_SIZES))]
            meds = [med(ka[(p, z)]) for z in M_SIZES]
            err = [[m - min(ka[(p, z)]) for m, z in zip(meds, M_SIZES)],
                   [max(ka[(p, z)]) - m for m, z in zip(meds, M_SIZES)]]
            ax.bar(xs, meds, width, label=p, yerr=err, capsize=2)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(M_SIZES))])
        ax.set_xticklabels([fmt_size(z) for z in M_SIZES])
        ax.set_title(f"{mpm} MPM, keep-alive, c={CONNS} (median, min-max)")
        ax.set_ylabel("requests/s")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def verdict(ok):
    return "**met**" if ok else "**missed**"


def short_fn(name, width=90):
    name = re.sub(r"::h[0-9a-f]{16}", "", name)
    return name if len(name) <= width else name[:width - 1] + "…"


def transport_section(tr, cg):
    L = ["", "## Transport of an isolated call", ""]
    pp = tr.get("pingpong")
    if pp:
        L += ["Ping-pong between two processes (`bench/pingpong.c`): microseconds per round trip, median and min-max "
              f"of {len(pp[0]['us'])} samples. `futex`: a word in shared memory, each side stores, wakes and waits "
              "(what `LibCGIIsolation process` does); `spin`: the same, polling the word up to 20,000 times before "
              "each wait; `eventfd`, `pipe`: a pair each way. One CPU: both pinned to the server's CPU (as the "
              "benchmark pins apache2, its manager and its workers); two CPUs: one on each.", "",
              "| transport | placement | round trips/sample | us per round trip | min-max |", "|---|---|---:|---:|---|"]
        for d in pp:
            L.append(f"| {d['how']} | {d['placement']} | {d['round_trips']:,} | {med(d['us']):.2f} | "
                     f"{min(d['us']):.2f}-{max(d['us']):.2f} |")
        L.append("")
    ci = tr.get("cg_iso")
    if ci:
        L += [f"Callgrind, 28 B (`apache2 -X`, prefork, `LibCGIIsolationWorkers 2`; {ci['requests']} requests per "
              "segment, twice): instructions per request of the server process, isolated vs in process; kernel "
              "time (the futex syscalls and the two context switches per round trip) is not in these counts.", "",
              "| 28 B | server process, instructions/request | runs |", "|---|---:|---|"]
        L.append(f"| in process (the callgrind section above) | {cg['libcgi']:,.0f} | "
                 f"{' / '.join(f'{x:,.0f}' for x in cg['libcgi_runs'])} |")
        L.append(f"| isolated (server side) | {ci['isolated']:,.0f} | "
                 f"{' / '.join(f'{x:,.0f}' for x in ci['isolated_runs'])} |")
        if "worker" in ci:
            L.append(f"| isolated (worker side, one whole request cycle) | {ci['worker']:,.0f} | "
                     f"{ci['worker_spread'][0]:,.0f}-{ci['worker_spread'][1]:,.0f} over {ci['worker_requests']} "
                     "requests |")
        L += ["", "Server side by part (inclusive instructions per isolated request; a part's count includes "
              "what it calls, so the rows overlap; blank: not seen, e.g. inlined):", "",
              "| part | function | instructions/request |", "|---|---|---:|"]
        for label, v, f in ci["server_parts"]:
            L.append(f"| {label} | `{short_fn(f, 70)}` | {'' if v is None else f'{v:,.0f}'} |")
        if "worker_by_object" in ci:
            L += ["", "Worker side, self instructions per request by object:", "", "| object | instructions |",
                  "|---|---:|"]
            for o, v in sorted(ci["worker_by_object"].items(), key=lambda x: -x[1]):
                if v >= 10:
                    L.append(f"| {o} | {v:,.0f} |")
            L += ["", "Worker side, top functions by self cost:", "", "| function [object] | instructions |",
                  "|---|---:|"]
            for v, f in ci["worker_top"]:
                L.append(f"| `{short_fn(f)}` | {v:,.0f} |")
        L.append("")
    return L


def mixed_section(mx, png, targets):
    L = ["", "## Mixed workload and load shift", "",
         f"{MIXED_SCRIPTS} scripts (copies of the 28 B script), wrk with 16 connections and a Lua generator sending 90% "
         "of the requests to one hot script and 10% round-robin to the 20 others; throughput and the number of "
         f"isolated scripts sampled every second ({MIXED_SECONDS} s; the load shift: {SHIFT_SECONDS} s, the hot "
         "script changes from m00 to m01 halfway); one event or prefork server per mode, `LibCGIIsolationWorkers 48` (a worker serves one script: 21 scripts and 16 connections need more than the default 16). Isolated scripts are read from the status page's `domain` "
         "where the module reports it (adaptive), else they follow from the fixed mode.", "",
         f"![mixed workload]({png})", ""]
    for mpm, r in mx.items():
        if not r["adaptive"]:
            L += [f"{mpm}: `LibCGIIsolation adaptive` is not in this build ({r['adaptive_why']}): only the fixed "
                  "modes ran.", ""]
        base = None
        L += [f"{mpm}, mixed workload (requests/s, median over the seconds from 10 s on, or the second half of a short "
              "run; isolated scripts at the end):", "",
              "| mode | requests/s | min-max | vs all in process | isolated at the end |", "|---|---:|---|---:|---:|"]
        seen = {}
        for mode, run in r["steady"].items():
            ser = run["series"]
            tail = [p for p in ser if p["t"] >= 10] or ser[len(ser) // 2:]
            v = med([p["rps"] for p in tail])
            seen[mode] = v
            if mode == "inprocess":
                base = v
            L.append(f"| {mode} | {v:,.0f} | {spread([p['rps'] for p in tail])} | "
                     f"{v / base if base else float('nan'):.2f} | {ser[-1]['isolated']} |")
            if mode == "adaptive" and base:
                ok = v / base >= 0.9 and all(p["isolated"] >= MIXED_SCRIPTS - 1 for p in tail)
                targets.append((f"{mpm}: adaptive, mixed workload: >= 0.9 x all in process within 10 s, 20 of 21 "
                                "isolated", ok, f"{v / base:.2f} x, {min(p['isolated'] for p in tail)} isolated",
                                "from 10 s on", "na", 0.9, v / base, []))
        if base and "process" in seen:
            iso = seen["process"] / base
            L += ["", f"Reading: with the cold 10% at the all-isolated ratio ({iso:.2f} x), the best any split can reach "
                  f"with 20 of 21 isolated is 1 / (0.9 + 0.1 / {iso:.2f}) = {1 / (0.9 + 0.1 / iso):.2f} x; the split "
                  "fixed by configuration (`split`: hot in process, cold isolated) measures what it gives in fact "
                  "(cold workers are also colder here: each serves one request in 200)."
                  + (f" Adaptive / split: {seen['adaptive'] / seen['split']:.2f}."
                     if seen.get("split") and seen.get("adaptive") else "")]
        if not r["adaptive"]:
            targets.append((f"{mpm}: adaptive, mixed workload: >= 0.9 x all in process within 10 s, 20 of 21 "
                            "isolated", False, "not measured", "LibCGIIsolation adaptive not in this build", "na", 0.9,
                            0, []))
        L += ["", f"{mpm}, load shift (requests/s, median per half; isolated scripts at the end of each half; the "
              "old hot script's domain at the end):", "",
              "| mode | first half | second half | isolated (1st / 2nd half end) | m00 at the end |",
              "|---|---:|---:|---:|---|"]
        for mode, run in r["shift"].items():
            ser = run["series"]
            h = len(ser) // 2
            a, b = ser[:h], ser[h:]
            end = (run.get("transitions") or {}).get("domains", {}).get("m00.so", "-")
            L.append(f"| {mode} | {med([p['rps'] for p in a]):,.0f} | {med([p['rps'] for p in b]):,.0f} | "
                     f"{a[-1]['isolated']} / {b[-1]['isolated']} | {end} |")
        L.append("")
    return L


def report(results, cg, many, elapsed=None, name=None, machine_desc=None, transport=None, mx=None):
    """Writes <name>.md and <name>.png to RESULTS (name: today's date, or the
    name of the JSON file being re-rendered)."""
    day = datetime.date.today().isoformat()
    if name is None:
        name = f"{day}{'-smoke' if SMOKE else ''}"
    else:
        day = name[:10]
    os.makedirs(RESULTS, exist_ok=True)
    png = os.path.join(RESULTS, f"{name}.png")
    chart(results, png)
    proxy_how = next(iter(results.values())).get("proxy", "?")
    L = [f"# mod_libcgi benchmark, {day}{' (SMOKE RUN: numbers meaningless)' if SMOKE else ''}", "",
         f"Machine: {machine_desc or machine()}.", "",
         "Method: one apache2 per MPM with every peer on its own URL (so peers are compared in the same "
         f"server, minutes apart at most); apache2 pinned to CPU {SERVER_CPU} (with every FastCGI/CGI "
         f"process it starts), wrk pinned to CPU {CLIENT_CPU}; every target checked for status 200 and the "
         f"exact bytes before it is measured; warm-up {WARM} s per target; {ROUNDS} keep-alive rounds of "
         f"{DUR} s per target, c={CONNS}; within a round each size's peers run back to back, and the order "
         "of sizes and of peers rotates from round to round; tables give the median and the min-max of the "
         f"rounds. Without keep-alive (`Connection: close`) and latency (c=1): one {DUR} s run per target. "
         "The machine is shared with other engineers' test runs: expect about 20% run-to-run noise; "
         "compare within a table, and read the ratio columns (paired, same round) rather than absolute numbers.",
         "", "Server setup: event = 2 processes x 32 threads, prefork = 32 processes; KeepAlive On, "
         "MaxKeepAliveRequests 0. mod_fcgid: up to 8 processes per program (`FcgidMaxRequestsPerProcess 0`); "
         f"mod_proxy_fcgi: 4 backend processes per program ({proxy_how}).", "",
         f"![throughput by size]({os.path.basename(png)})", ""]
    if elapsed:
        L.insert(4, f"Run time: {elapsed / 60:.1f} minutes.\n")
    targets = []
    for mpm, r in results.items():
        ka, close, lat = r["ka"], r["close"], r["lat"]
        L += [f"## {mpm} MPM", "", "Throughput with keep-alive (requests/s, median of rounds; min-max):", "",
              "| peer | " + " | ".join(fmt_size(z) for z in M_SIZES) + " |",
              "|---|" + "---:|" * len(M_SIZES)]
        for p in PEERS:
            L.append(f"| {p} | " + " | ".join(f"{med(ka[(p, z)]):,.0f} ({spread(ka[(p, z)])})" for z in M_SIZES) + " |")
        L += ["", "mod_libcgi / peer, keep-alive: median of the per-round ratios (min-max):", "",
              "| vs | " + " | ".join(fmt_size(z) for z in M_SIZES) + " |", "|---|" + "---:|" * len(M_SIZES)]
        for p in PEERS:
            if p != "libcgi":
                cells = []
                for z in M_SIZES:
                    pr = paired(ka, "libcgi", p, z)
                    cells.append(f"{med(pr):.2f}" + (f" ({min(pr):.2f}-{max(pr):.2f})" if len(pr) > 1 else ""))
                L.append(f"| {p} | " + " | ".join(cells) + " |")
        cp = [p for p in PEERS if (p, M_SIZES[0]) in close]
        L += ["", "Without keep-alive (requests/s, one run):", "",
              "| peer | " + " | ".join(fmt_size(z) for z in M_SIZES) + " |", "|---|" + "---:|" * len(M_SIZES)]
        for p in cp:
            L.append(f"| {p} | " + " | ".join(f"{med(close[(p, z)]):,.0f}" for z in M_SIZES) + " |")
        lz = [z for z in LAT_SIZES if (cp[0], z) in lat]
        L += ["", "Latency at concurrency 1, keep-alive (microseconds, wrk's percentiles):", "",
              "| peer | " + " | ".join(f"{fmt_size(z)} p50 | {fmt_size(z)} p99" for z in lz) + " |",
              "|---|" + "---:|---:|" * len(lz)]
        for p in cp:
            L.append(f"| {p} | " + " | ".join(f"{lat[(p, z)]['p50']:.0f} | {lat[(p, z)]['p99']:.0f}" for z in lz) + " |")
        L.append("")
        small = [z for z in [28, 1024, 10240] if z in M_SIZES]
        for peer, goal, sizes in [("native", 0.97, small), ("static", 1.4, small),
                                  ("fcgid", 2.5, [z for z in [28, 1024] if z in M_SIZES]),
                                  ("cgid", 25, [z for z in [28, 1024] if z in M_SIZES])]:
            for z in sizes:
                pr = paired(ka, "libcgi", peer, z)
                v = med(pr)
                ctx = f"rounds {min(pr):.2f}-{max(pr):.2f}"
                if peer == "native" and "native_hdr" in PEERS:
                    ctx += (f"; vs the native module with Apache's CGI header parsing: "
                            f"{med(paired(ka, 'libcgi', 'native_hdr', z)):.2f} x")
                if peer != "native":
                    ctx += f"; native module itself: {med(paired(ka, 'native', peer, z)):.2f} x"
                targets.append((f"{mpm}, {fmt_size(z)}: mod_libcgi >= {goal} x {peer}", v >= goal,
                                f"{v:.2f} x", ctx, peer, goal, v, pr))
        if "isolated" in PEERS:
            # Issue 12's targets for the isolated domain, beside the ratios.
            L += ["Isolated (`LibCGIIsolation process`, the same script) / peer, keep-alive: median of the per-round "
                  "ratios (min-max), target in brackets:", "",
                  "| vs | " + " | ".join(fmt_size(z) for z in M_SIZES) + " |", "|---|" + "---:|" * len(M_SIZES)]
            for peer, goal in [("libcgi", 0.6), ("fcgid", 2.0), ("proxy_fcgi", None), ("cgid", None)]:
                cells = []
                for z in M_SIZES:
                    pr = paired(ka, "isolated", peer, z)
                    g = f" [>= {goal}]" if goal and z <= 10240 else ""
                    cells.append(f"{med(pr):.2f}" + (f" ({min(pr):.2f}-{max(pr):.2f})" if len(pr) > 1 else "") + g)
                L.append(f"| {peer} | " + " | ".join(cells) + " |")
            L.append("")
            for peer, goal in [("libcgi", 0.6), ("fcgid", 2.0)]:
                for z in [z for z in [28, 1024, 10240] if z in M_SIZES]:
                    pr = paired(ka, "isolated", peer, z)
                    v = med(pr)
                    targets.append((f"{mpm}, {fmt_size(z)}: isolated >= {goal} x {'in process' if peer == 'libcgi' else peer}",
                                    v >= goal, f"{v:.2f} x", f"rounds {min(pr):.2f}-{max(pr):.2f}", f"iso-{peer}", goal,
                                    v, pr))
        if "libcgi_nometrics" in PEERS:
            # Issue 11: "throughput within noise" of the metrics-off twin.
            # Noise here: the spread of the paired per-round ratios, and at
            # least 3% (what two servers of identical code differ by).
            for z in [z for z in [28, 1024] if z in M_SIZES]:
                pr = paired(ka, "libcgi", "libcgi_nometrics", z)
                v = med(pr)
                noise = max(0.03, (max(pr) - min(pr)) / 2 if len(pr) > 1 else 0.03)
                targets.append((f"{mpm}, {fmt_size(z)}: metrics on within noise of off (paired throughput)",
                                v >= 1 - noise, f"{v:.3f} x", f"rounds {min(pr):.3f}-{max(pr):.3f}; noise "
                                f"taken as {noise * 100:.1f}%", "libcgi_nometrics", 1 - noise, v, pr))
    over = cg["libcgi"] / cg["native"] - 1
    targets.append(("instructions per request at 28 B: <= 10% more than the native module", over <= 0.10,
                    f"{over * 100:+.1f}%", "callgrind, reproducible", "cg", 0.10, over, []))
    if "rust_hello" in cg:
        over_rs = cg["rust_hello"] / cg["c_hello"] - 1
        targets.append(("instructions per request: Rust hello (libcgi crate) <= 2% more than the C hello",
                        over_rs <= 0.02, f"{over_rs * 100:+.1f}%", "callgrind, reproducible; examples/rust/hello vs "
                        "examples/hello.c", "cg", 0.02, over_rs, []))
    if "metrics" in cg:
        cm = cg["metrics"]
        targets.append(("instructions per request at 28 B with metrics on: <= 1% more than off", cm["over"] <= 0.01,
                        f"{cm['over'] * 100:+.2f}%", f"callgrind; off {cm['off']:,.0f}, on {cm['on']:,.0f} "
                        f"(runs {', '.join(f'{x:,.0f}' for x in cm['off_runs'] + cm['on_runs'])})", "cg", 0.01,
                        cm["over"], []))
    mr = many.get("ratio", many["many_rps"] / many["one_rps"])
    targets.append((f"{MANY} scripts loaded: >= 0.95 x the throughput of one script", mr >= 0.95, f"{mr:.2f} x",
                    f"runs {', '.join(f'{a / b:.2f}' for a, b in zip(many['many_runs'], many['one_runs']))}; "
                    + (f"{MANY} loaded, requests to one: {many['ratio_many_one']:.2f} x; spread over {MANY} names of "
                       f"one program: {many['ratio_links']:.2f} x; " if "ratio_links" in many else "") +
                    f"native module over {MANY} files vs 1: {many['native_ratio']:.2f} x; "
                    + (f"CPU time/request {sum(many['cpu_us']['many'].values()) / max(sum(many['cpu_us']['one'].values()), 1e-9):.3f} x; "
                       if "cpu_us" in many else "") +
                    f"instructions/request {cg['many-spread'] / cg['few-one']:.3f} x", "many", 0.95, mr, []))

    # ---- cost of the module itself
    L += ["## Cost of the module itself (callgrind)", "",
          f"One `apache2 -X` (prefork, one process) under valgrind's callgrind; all requests on one keep-alive "
          f"connection; segments of {cg['requests']} requests cut by a marker request (`--dump-before=bench_mark`), "
          "the marker's own cost subtracted; whole process (Apache, module, script, libc, kernel excluded). "
          "Each segment was run twice; the two counts are shown.", "",
          "| target, 28 B | instructions/request | runs |", "|---|---:|---|"]
    for p in ["static", "native", "native_hdr", "libcgi"]:
        if p not in cg:
            continue
        L.append(f"| {p} | {cg[p]:,.0f} | {' / '.join(f'{x:,.0f}' for x in cg[p + '_runs'])} |")
    L += ["", f"mod_libcgi / native at 28 B: **{cg['libcgi'] / cg['native']:.3f}** "
          f"({cg['libcgi'] - cg['native']:+,.0f} instructions per request)."]
    if "native_hdr" in cg:
        L += ["", f"Of that difference, Apache's CGI header parser by itself (the native module handing the same "
              f"header block to `ap_scan_script_header_err_strs_ex`, `native_hdr`) accounts for "
              f"{cg['native_hdr'] - cg['native']:+,.0f}; mod_libcgi over `native_hdr`: "
              f"**{cg['libcgi'] / cg['native_hdr']:.3f}** ({cg['libcgi'] - cg['native_hdr']:+,.0f}: the registry, "
              "the fault guard and watchdog, the callbacks and the output brigade)."]
    if "rust_hello" in cg:
        c = cg["c_hello"]
        L += ["", "Scripts in Rust: the same hello (`Content-Type: text/plain`, 22 bytes) as `examples/hello.c` (C, "
              "two `lputs`), `examples/rust/hello` (the libcgi crate: `Response::header`, `write_all`, one "
              "`lwrite`), the same after one `getenv` (`tests/rust-scripts/sdktest`, `/hello`) and "
              "`examples/rust/http-hello` (an `http` crate handler through libcgi's adapter):", "",
              "| script | instructions/request | runs | vs C hello |", "|---|---:|---|---:|"]
        for p, label in [("c_hello", "C hello"), ("rust_hello", "Rust hello (libcgi)"),
                         ("rust_var", "Rust hello after one `getenv`"), ("rust_http", "Rust hello (http adapter)")]:
            if p not in cg:
                continue
            L.append(f"| {label} | {cg[p]:,.0f} | {' / '.join(f'{x:,.0f}' for x in cg[p + '_runs'])} | "
                     f"{cg[p] / c:.3f} ({cg[p] - c:+,.0f}) |")
        if "rust_var" in cg:
            L += ["", f"The first `getenv` of a request has the module build the request's variables with Apache's "
                  f"`ap_add_common_vars`/`ap_add_cgi_vars` (a script that never calls it never pays): "
                  f"{cg['rust_var'] - cg['rust_hello']:+,.0f} instructions. The http adapter reads the method, URI, "
                  f"version and 32 header variables and builds an `http::Request` and its header map, "
                  f"then writes the `http::Response` back: {cg['rust_http'] - cg['rust_var']:+,.0f} instructions "
                  f"per request over that (the adapter's own cost), "
                  f"{cg['rust_http'] - cg['rust_hello']:+,.0f} over the native Rust API in all."]
    L += ["",
          "By size (instructions per request):", "", "| size | native | mod_libcgi | ratio | difference |",
          "|---|---:|---:|---:|---:|"]
    for z in SIZES:
        a, b = (cg["native"], cg["libcgi"]) if z == 28 else (cg[f"native-{z}"], cg[f"libcgi-{z}"])
        L.append(f"| {fmt_size(z)} | {a:,.0f} | {b:,.0f} | {b / a:.3f} | {b - a:+,.0f} |")
    L.append("")
    bo = cg["by_object"]
    objs = sorted(set(bo["native"]) | set(bo["libcgi"]), key=lambda o: -(bo["libcgi"].get(o, 0) + bo["native"].get(o, 0)))
    L += ["Self instructions per request by object file (28 B):", "",
          "| object | native | mod_libcgi | difference |", "|---|---:|---:|---:|"]
    for o in objs:
        a, b = bo["native"].get(o, 0), bo["libcgi"].get(o, 0)
        if a >= 20 or b >= 20:
            L.append(f"| {o} | {a:,.0f} | {b:,.0f} | {b - a:+,.0f} |")
    bf = cg["by_function"]
    diffs = sorted(set(bf["native"]) | set(bf["libcgi"]),
                   key=lambda f: -abs(bf["libcgi"].get(f, 0) - bf["native"].get(f, 0)))
    L += ["", "Functions whose self cost differs most between the two (instructions per request, 28 B):", "",
          "| function [object] | native | mod_libcgi | difference |", "|---|---:|---:|---:|"]
    for f in diffs[:20]:
        a, b = bf["native"].get(f, 0), bf["libcgi"].get(f, 0)
        L.append(f"| `{short_fn(f)}` | {a:,.0f} | {b:,.0f} | {b - a:+,.0f} |")
    bf = cg["by_function_10k"]
    diffs = sorted(set(bf["native"]) | set(bf["libcgi"]),
                   key=lambda f: -abs(bf["libcgi"].get(f, 0) - bf["native"].get(f, 0)))
    L += ["", "The same at 10 KiB (the ten largest differences):", "",
          "| function [object] | native | mod_libcgi | difference |", "|---|---:|---:|---:|"]
    for f in diffs[:10]:
        a, b = bf["native"].get(f, 0), bf["libcgi"].get(f, 0)
        L.append(f"| `{short_fn(f)}` | {a:,.0f} | {b:,.0f} | {b - a:+,.0f} |")
    inc = {p: {fn: ir for ir, fn in cg["inclusive"][p]} for p in ["native", "libcgi"]}
    names = sorted(set(inc["native"]) | set(inc["libcgi"]),
                   key=lambda f: -max(inc["native"].get(f, 0), inc["libcgi"].get(f, 0)))
    L += ["", "Top functions by inclusive cost (instructions per request, 28 B; frames enclosing the whole "
          "request loop left out; `'2` is callgrind's mark for a recursive call; blank = below the list's cut-off):",
          "", "| function [object] | native | mod_libcgi |", "|---|---:|---:|"]
    for f in names[:30]:
        a, b = inc["native"].get(f), inc["libcgi"].get(f)
        L.append(f"| `{short_fn(f)}` | {'' if a is None else f'{a:,.0f}'} | {'' if b is None else f'{b:,.0f}'} |")
    if "events" in cg:
        evs = cg["events"]
        names = [e for e in evs["native"] if not e.startswith(("IL", "DL"))]
        L += ["", "Simulated cache events per request (callgrind `--cache-sim=yes`, the host's L1 geometry; "
              "Ir instructions, Dr/Dw data reads/writes, I1mr/D1mr/D1mw first-level misses; the last-level "
              "misses are about 0 for all):", "",
              "| handler, 28 B | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for p in ["native", "native_hdr", "libcgi"]:
            L.append(f"| {p} | " + " | ".join(f"{evs[p][e]:,.1f}" for e in names) + " |")
        if "i1_by_function" in cg:
            i1 = cg["i1_by_function"]

            def ours(f):
                return f.endswith(("[libmod_libcgi.so]", "[b28.so]"))

            d_all = evs["libcgi"]["I1mr"] - evs["native"]["I1mr"]
            d_own = sum(v for f, v in i1["libcgi"].items() if ours(f))
            d_hdr = evs["native_hdr"]["I1mr"] - evs["native"]["I1mr"]
            L += ["", f"Instruction-cache misses per request, mod_libcgi over the native module: {d_all:+,.1f} "
                  f"({d_all / max(evs['native']['I1mr'], 1) * 100:+.0f}%). In mod_libcgi's own code and the "
                  f"script: {d_own:,.1f}. Apache's CGI header parser by itself (native_hdr over native): "
                  f"{d_hdr:+,.1f}. The rest is Apache's and the libraries' own code missing more often, evicted by "
                  "the extra code a request runs through. A first-level miss costs on the order of 10-20 cycles, so "
                  "these misses weigh more in time than their instruction counts suggest.", "",
                  "Functions whose instruction-cache misses differ most (self, per request, 28 B):", "",
                  "| function [object] | native | native_hdr | mod_libcgi | mod_libcgi - native |",
                  "|---|---:|---:|---:|---:|"]
            fs = sorted(set(i1["native"]) | set(i1["libcgi"]),
                        key=lambda f: -abs(i1["libcgi"].get(f, 0) - i1["native"].get(f, 0)))
            for f in fs[:15]:
                a, h, b = i1["native"].get(f, 0), i1["native_hdr"].get(f, 0), i1["libcgi"].get(f, 0)
                L.append(f"| `{short_fn(f)}` | {a:,.1f} | {h:,.1f} | {b:,.1f} | {b - a:+,.1f} |")
    if transport:
        L += transport_section(transport, cg)
    if mx:
        mpng = os.path.join(RESULTS, f"{name}.mixed.png")
        mixed_chart(mx, mpng)
        L += mixed_section(mx, os.path.basename(mpng), targets)
    L += ["", "## First request, many scripts, memory", "",
          f"First request of a script in a process (open, dlopen, bind the imports, initfunc, then the request): "
          f"**{cg['first']:,.0f} instructions** vs {cg['second']:,.0f} for its second request "
          f"({cg['first'] / cg['second']:.1f} x); loading each further script while {MANY} get loaded: "
          f"{cg['loading']:,.0f} instructions on average. In time (event MPM, one process, one keep-alive "
          f"connection, medians over 20 scripts): {many['first_us']:.0f} us for the first request vs "
          f"{many['later_us']:.0f} us for later ones (client round trip included).", "",
          "Top functions by inclusive cost in the first request:", "", "| inclusive | function |", "|---:|---|"]
    for ir, fn in cg["inclusive_first"][:12]:
        L.append(f"| {ir:,.0f} | `{short_fn(fn)}` |")
    L += ["", f"Registry growth (callgrind, requests for `/many/m0000.so`): {cg['few-one']:,.0f} instructions per "
          f"request with 6 scripts loaded, {cg['many-one']:,.0f} with {MANY} loaded; "
          f"{cg['many-spread']:,.0f} when the requests are spread over all {MANY}.", ""]
    if "runs" in many:
        runs, c = many["runs"], many["cpu_us"]
        L += [f"Throughput as scripts are added (event, one process of 32 threads per server; three servers side by "
              f"side: A with one script loaded, B with {MANY} different script files loaded, C with {MANY} names "
              f"(hard links) of one file loaded, i.e. {MANY} registry entries and initfunc calls but one program "
              f"in memory; wrk with the same Lua request generator in every case; the cases alternate, "
              f"{MANY_ROUNDS} rounds of {DUR} s; ratio = median of the per-round ratios; CPU time of the server "
              "process per request from /proc/<pid>/stat, coarse 10 ms ticks):", "",
              "| case | server | req/s (median) | ratio | runs | CPU user us | system us | total us |",
              "|---|---|---:|---:|---|---:|---:|---:|"]
        rows = [("one", "A", "mod_libcgi, one script loaded, requests to it", "one"),
                ("many_one", "B", f"mod_libcgi, {MANY} loaded, requests to one of them", "one"),
                ("links", "C", f"mod_libcgi, requests spread over {MANY} names of one program", "one"),
                ("many", "B", f"mod_libcgi, requests spread over {MANY} different scripts", "one"),
                ("native_one", "A", "native module, one file", "native_one"),
                ("native_many", "A", f"native module, requests spread over {MANY} files", "native_one")]
        for k, srv, what, base in rows:
            ratio = med([a / b for a, b in zip(runs[k], runs[base])])
            L.append(f"| {what} | {srv} | {med(runs[k]):,.0f} | {ratio:.2f} | "
                     f"{', '.join(f'{x:,.0f}' for x in runs[k])} | {c[k]['user']:.1f} | {c[k]['sys']:.1f} | "
                     f"{c[k]['user'] + c[k]['sys']:.1f} |")
        L.append("")
    else:
        L += [f"Throughput: {many['many_rps']:,.0f} req/s spread over {MANY} scripts vs {many['one_rps']:,.0f} "
              f"req/s for one script, ratio **{mr:.2f}**; native module over {MANY} files vs one: "
              f"{many['native_ratio']:.2f}.", ""]
    L += [
          f"Resident memory of the server process (VmRSS): **{many['rss_1_kib']:,} KiB** with 1 script loaded, "
          f"**{many['rss_many_kib']:,} KiB** with {MANY} "
          f"({(many['rss_many_kib'] - many['rss_1_kib']) / max(MANY - 1, 1):.1f} KiB per extra script; "
          "the scripts are 16 KiB shared objects, each mapped separately).", ""]

    # ---- targets
    L += ["## Targets", "", "| target | result | | by how much | context |", "|---|---:|---|---:|---|"]
    for what, ok, val, ctx, peer, goal, v, pr in targets:
        if peer == "cg":
            by = f"{(goal - v) * 100:+.1f} points"
        elif peer == "na":
            by = "-"
        else:
            by = f"{(v / goal - 1) * 100:+.0f}%"
        L.append(f"| {what} | {val} | {verdict(ok)} | {by} | {ctx} |")
    ceiling = [t for t in targets if not t[1] and t[4] in ("static", "fcgid", "cgid")
               and med(paired(results[t[0].split(",")[0]]["ka"], "native", t[4],
                              {"28 B": 28, "1 KiB": 1024, "10 KiB": 10240}[t[0].split(", ")[1].split(":")[0]])) < t[5]]
    def size_of(t):
        return {"28 B": 28, "1 KiB": 1024, "10 KiB": 10240}[t[0].split(", ")[1].split(":")[0]]

    # Misses against the native module, read against the native module that
    # also runs Apache's CGI header parser (when this run has it).
    parse = [t for t in targets if not t[1] and t[4] == "native" and "native_hdr" in PEERS and "native_hdr" in cg]
    noise = [t for t in targets if not t[1] and t[4] == "native" and max(t[7]) >= t[5] and t not in parse]
    L += ["", "Reading the misses:", ""]
    if parse:
        parts = []
        for t in parse:
            ka = results[t[0].split(",")[0]]["ka"]
            z = size_of(t)
            parts.append(f"{t[0].split(':')[0]}: native_hdr {med(paired(ka, 'native_hdr', 'native', z)):.2f} x native, "
                         f"mod_libcgi {med(paired(ka, 'libcgi', 'native_hdr', z)):.2f} x native_hdr")
        L.append("- Against the native module: a CGI response has to go through Apache's CGI header parser "
                 "(`ap_scan_script_header_err_*`, as under mod_cgi), which the plain native module skips. The native "
                 "module made to hand the same header block to that parser (`native_hdr`) shows what the parser "
                 "costs by itself, and mod_libcgi is best compared with it: " + "; ".join(parts) + ". In instructions "
                 f"per request (28 B): the parser {cg['native_hdr'] - cg['native']:+,.0f}, mod_libcgi over "
                 f"native_hdr {cg['libcgi'] - cg['native_hdr']:+,.0f}; the rest of mod_libcgi's time is its "
                 "instruction-cache misses (the table in the callgrind section): its code is one more shared "
                 "object, the script another, and the request path runs through both.")
    if ceiling:
        L.append("- Beyond the in-process ceiling in this run: the hand-written C module itself stays below the "
                 "goal against the same peer in the same rounds, so no in-process handler meets it on this machine: "
                 + "; ".join(t[0] for t in ceiling) + ".")
    if noise:
        L.append("- Against the native module, within this machine's noise (at least one round meets the goal): "
                 + "; ".join(t[0] for t in noise) + f". The reproducible measure of the module's own cost is the "
                 f"instruction count: {over * 100:+.1f}% per request at 28 B.")
    spreadcost = [t for t in targets if not t[1] and t[4] == "many" and "ratio_links" not in many
                  and many["native_ratio"] <= mr]
    if spreadcost:
        L.append(f"- {MANY} scripts: the control (the native module over {MANY} files vs one) loses as much or "
                 f"more ({many['native_ratio']:.2f} x vs {mr:.2f} x): the loss is what spreading requests over "
                 f"{MANY} files costs any handler, not the registry, whose instruction count per request does not "
                 f"change ({cg['few-one']:,.0f} with 6 scripts, {cg['many-spread']:,.0f} spread over {MANY}).")
    programs = [t for t in targets if not t[1] and t[4] == "many" and "ratio_links" in many]
    if programs:
        c = many["cpu_us"]

        def tot(k):
            return c[k]["user"] + c[k]["sys"]

        L.append(f"- {MANY} scripts: the size of the registry costs nothing measurable: with {MANY} scripts loaded, "
                 f"requests to one of them run at {many['ratio_many_one']:.2f} x, and the instructions per request "
                 f"are the same with 6 or {MANY} loaded and whether the requests go to one script or to all "
                 f"({cg['few-one']:,.0f}, {cg['many-one']:,.0f}, {cg['many-spread']:,.0f}). Spreading the requests "
                 f"is what costs: over {MANY} files for the native module {many['native_ratio']:.2f} x (another path "
                 f"and file each time, colder caches); over {MANY} registry entries that share one program "
                 f"{many['ratio_links']:.2f} x; over {MANY} different programs {mr:.2f} x, with the CPU time per "
                 f"request going from {tot('one'):.1f} to {tot('many'):.1f} us (user {c['one']['user']:.1f} to "
                 f"{c['many']['user']:.1f}, system {c['one']['sys']:.1f} to {c['many']['sys']:.1f}). The last step "
                 "is each request running another program's own code and reading its own data (text, PLT, GOT, "
                 "data: about five pages and a handful of cache lines per script), which no longer stay in the "
                 "second-level cache and the TLB, so the server's own working set is evicted too (system time rises "
                 "as well). Callgrind has no model of either (same instructions, same first-level misses) and this "
                 "machine has no hardware counters, so that step is inferred, not counted. No registry change can "
                 "remove it: it is the cost of serving that many different programs from one process.")
    other = [t for t in targets if not t[1] and t not in ceiling and t not in noise and t not in spreadcost
             and t not in programs and t not in parse]
    if other:
        L.append("- Other misses: " + "; ".join(t[0] for t in other) + ".")
    if not (ceiling or noise or other or spreadcost or programs or parse):
        L.append("- None.")
    L += ["", "## Notes", "",
          "- Fairness: every dynamic peer maps its URL to a file and pays one stat per request (the native module "
          "is an AddHandler on empty `.nat` files and takes the size from the name), except mod_proxy_fcgi, which "
          "maps to a backend address and pays none. The static file is served by the default handler (sendfile "
          "for the larger sizes). The LibCGI, FastCGI and CGI peers are one program (`bench/peer.c`) built three "
          "ways: a Content-Type header and the body from memory, made once per process (initfunc, main). The "
          "native module writes the body with `ap_rwrite` from a buffer it also fills in each server process "
          "(child_init: filled before the fork, one copy would be shared by every prefork child and stay in the "
          "CPU caches, worth 10-20% at 10-100 KiB), and sets the content type directly (`native`) or hands the "
          "header block to Apache's CGI header parser (`native_hdr`); mod_libcgi also parses the script's header "
          "block with Apache's parser and runs the script under its fault guard and watchdog.",
          "- Instruction counts are the server process's user-space instructions (callgrind cannot see the "
          "kernel): the socket work every peer shares is not in them, so the ratio overstates the difference "
          "in total CPU time.", "- Raw numbers: the JSON next to this report; "
          "`bench/bench.py --from-json <file>` re-renders it.", ""]
    path = os.path.join(RESULTS, f"{name}.md")
    with open(path, "w") as f:
        f.write("\n".join(L))
    return path, name


def dump_json(name, results, cg, many, elapsed, machine_desc, transport=None, mx=None):
    def keyed(d):
        return {f"{p}/{z}": v for (p, z), v in d.items()}
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
        json.dump({"smoke": SMOKE, "elapsed": elapsed, "machine": machine_desc, "callgrind": cg, "many": many,
                   "transport": transport, "mixed": mx,
                   "throughput": {m: {"ka": keyed(r["ka"]), "close": keyed(r["close"]),
                                      "lat": keyed(r["lat"]), "proxy": r["proxy"]}
                                  for m, r in results.items()}}, f, indent=1)


def from_json(path):
    """Re-renders a report from the raw numbers of an earlier run."""
    global SMOKE, M_SIZES, LAT_SIZES, PEERS
    d = json.load(open(path))
    SMOKE = d.get("smoke", False)

    def keyed(m):
        return {(k.split("/")[0], int(k.split("/")[1])): v for k, v in m.items()}
    results = {mpm: {"ka": keyed(r["ka"]), "close": keyed(r["close"]), "lat": keyed(r["lat"]), "proxy": r["proxy"]}
               for mpm, r in d["throughput"].items()}
    first = next(iter(results.values()))
    M_SIZES = sorted({z for (_, z) in first["ka"]})
    LAT_SIZES = sorted({z for (_, z) in first["lat"]})
    # Earlier runs may have had fewer peers.
    PEERS = [p for p in PEERS if any(q == p for (q, _) in first["ka"])]
    name = os.path.splitext(os.path.basename(path))[0]
    return report(results, d["callgrind"], d["many"], d.get("elapsed"), name=name, machine_desc=d.get("machine"),
                  transport=d.get("transport"), mx=d.get("mixed"))[0]


def main():
    if "--from-json" in sys.argv:
        print(open(from_json(sys.argv[sys.argv.index("--from-json") + 1])).read())
        return
    t0 = time.time()
    machine_desc = machine()            # the load average before the run
    if not os.path.exists(MODULE):
        raise SystemExit(f"{MODULE} missing: cargo build --release (or set BENCH_MODULE)")
    log(f"building the peers (module: {MODULE})")
    build()
    results = {}
    for mpm in MPMS:
        results[mpm] = throughput(mpm)
    log("callgrind: instructions per request")
    cg = callgrind()
    log("callgrind: metrics off vs on")
    cg["metrics"] = callgrind_metrics()
    log("transport: ping-pong")
    transport = {"pingpong": pingpong()}
    log("callgrind: an isolated request, server and worker side")
    transport["cg_iso"] = callgrind_isolated()
    log(f"first request, {MANY} scripts, memory")
    many = first_request_and_many()
    mx = {}
    for mpm in MIXED_MPMS:
        mx[mpm] = mixed(mpm)
    elapsed = time.time() - t0
    path, name = report(results, cg, many, elapsed, machine_desc=machine_desc, transport=transport, mx=mx)
    dump_json(name, results, cg, many, elapsed, machine_desc, transport, mx)
    log(f"report: {path} ({elapsed:.0f} s)")
    print(open(path).read())


if __name__ == "__main__":
    main()
