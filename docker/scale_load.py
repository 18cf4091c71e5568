#!/usr/bin/env python3
"""Bounded GET load through the balancer, with one replica stopped midway.

Standard library only.  Used by docker/scale-test.sh; it can also run alone
against any 127.0.0.1 URL.

- Sends exactly --requests GETs from --concurrency threads (keep-alive
  connections, one per thread), paced at --rate requests/s so the load spans
  the stop and the balancer's reaction instead of finishing before them.
- After --stop-after responses, runs --stop-cmd (e.g. `docker stop CID`) in
  the background and polls HAProxy's CSV stats until --victim is no longer UP.
- Every response must be 200 with exactly --expect-body.
- The whole run is bounded by --deadline seconds.

Exit status 0 only if every request succeeded, the victim was taken out
within --max-detect seconds, and the deadline was met.
"""

import argparse
import csv
import http.client
import io
import json
import shlex
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="http://127.0.0.1:PORT/path")
    p.add_argument("--expect-body", required=True, help="exact body every response must have")
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rate", type=float, default=250.0, help="requests/s overall; 0 = as fast as possible")
    p.add_argument("--deadline", type=float, default=120.0, help="seconds for the whole run")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    p.add_argument("--stats-url", help="HAProxy stats CSV URL (http://127.0.0.1:PORT/stats;csv)")
    p.add_argument("--backend", default="libcgi")
    p.add_argument("--victim", help="HAProxy server name of the replica to stop")
    p.add_argument("--stop-cmd", help="command that stops the victim (run once, midway)")
    p.add_argument("--stop-after", type=int, help="responses before stopping (default: half)")
    p.add_argument("--max-detect", type=float, default=15.0,
                   help="fail if the balancer has not taken the victim out this many s after the stop began")
    p.add_argument("--json", help="also write the report here")
    a = p.parse_args()
    host = urllib.parse.urlsplit(a.url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        p.error("--url must point at the loopback interface")
    if a.stop_cmd and not (a.stats_url and a.victim):
        p.error("--stop-cmd needs --stats-url and --victim")
    if a.stop_after is None:
        a.stop_after = a.requests // 2
    return a


def read_stats(url, timeout=2.0):
    """HAProxy 'show stat' CSV -> {(pxname, svname): row}."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        text = r.read().decode()
    text = text.lstrip("# ")
    return {(row["pxname"], row["svname"]): row for row in csv.DictReader(io.StringIO(text))}


class Load:
    def __init__(self, a):
        self.a = a
        u = urllib.parse.urlsplit(a.url)
        self.host, self.port = u.hostname, u.port or 80
        self.path = (u.path or "/") + (("?" + u.query) if u.query else "")
        self.expect = a.expect_body.encode()
        self.lock = threading.Lock()
        self.next_index = 0
        self.done = 0
        self.ok = 0
        self.errors = []          # (index, time, description)
        self.latencies = []
        self.served_by = {}       # server -> count
        self.served_after_down = {}  # server -> count of responses started after victim DOWN
        self.start = None
        self.deadline_hit = False
        self.stop_started = None
        self.stop_finished = None
        self.stop_rc = None
        self.stop_output = ""
        self.victim_down_at = None
        self.victim_status = None
        self.stop_event = threading.Event()

    # --- load -----------------------------------------------------------------
    def take_index(self):
        with self.lock:
            if self.next_index >= self.a.requests:
                return None
            i = self.next_index
            self.next_index += 1
            return i

    def worker(self):
        conn = None
        end = self.start + self.a.deadline
        while True:
            i = self.take_index()
            if i is None:
                break
            if self.a.rate > 0:
                # Pacing (rate limit), not synchronisation: request i is due
                # at start + i/rate.
                due = self.start + i / self.a.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if time.monotonic() > end:
                with self.lock:
                    self.deadline_hit = True
                break
            t0 = time.monotonic()
            victim_was_down = self.victim_down_at is not None
            err, server = None, None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=self.a.timeout)
                conn.request("GET", self.path, headers={"User-Agent": "libcgi-scale-test"})
                resp = conn.getresponse()
                body = resp.read()
                server = resp.getheader("X-Served-By")
                if resp.status != 200:
                    err = f"status {resp.status} from {server}: {body[:200]!r}"
                elif body != self.expect:
                    err = f"body mismatch from {server}: {body[:200]!r}"
                if resp.will_close:
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001 - every failure is a result
                err = f"{type(e).__name__}: {e}"
                if conn is not None:
                    conn.close()
                conn = None
            dt = time.monotonic() - t0
            with self.lock:
                self.done += 1
                self.latencies.append(dt)
                if server:
                    self.served_by[server] = self.served_by.get(server, 0) + 1
                    if victim_was_down:
                        self.served_after_down[server] = self.served_after_down.get(server, 0) + 1
                if err:
                    self.errors.append((i, round(t0 - self.start, 3), err))
                else:
                    self.ok += 1
                done = self.done
            if self.a.stop_cmd and done == self.a.stop_after:
                threading.Thread(target=self.stop_victim, daemon=True).start()
        if conn is not None:
            conn.close()

    # --- the stop and the balancer's reaction ---------------------------------
    def stop_victim(self):
        self.stop_started = time.monotonic()
        threading.Thread(target=self.watch_victim, daemon=True).start()
        try:
            p = subprocess.run(shlex.split(self.a.stop_cmd), capture_output=True, text=True, timeout=60)
            self.stop_rc, self.stop_output = p.returncode, (p.stdout + p.stderr).strip()
        except Exception as e:  # noqa: BLE001
            self.stop_rc, self.stop_output = -1, str(e)
        self.stop_finished = time.monotonic()

    def watch_victim(self):
        """Poll the stats page (every 50 ms) until the victim is not UP."""
        limit = self.stop_started + self.a.max_detect
        while time.monotonic() < limit and not self.stop_event.is_set():
            try:
                row = read_stats(self.a.stats_url).get((self.a.backend, self.a.victim))
            except Exception:  # noqa: BLE001 - stats page busy; poll again
                row = None
            if row is not None:
                self.victim_status = row["status"]
                if not row["status"].startswith("UP"):  # "UP 1/2" is still UP
                    self.victim_down_at = time.monotonic()
                    return
            time.sleep(0.05)

    def run(self):
        self.start = time.monotonic()
        threads = [threading.Thread(target=self.worker) for _ in range(self.a.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.a.deadline + self.a.timeout + 5)
        # The stop may still be running (docker stop waits for the container);
        # give it and the watcher a bounded while to finish.
        if self.a.stop_cmd:
            limit = time.monotonic() + 30
            while (self.stop_finished is None or (self.victim_down_at is None and
                   self.stop_started + self.a.max_detect > time.monotonic())) and time.monotonic() < limit:
                time.sleep(0.05)
        self.stop_event.set()
        self.elapsed = time.monotonic() - self.start

    # --- report ---------------------------------------------------------------
    def report(self):
        lat = sorted(self.latencies) or [0.0]

        def pct(p):
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1)

        rel = (lambda t: None if t is None else round(t - self.start, 3))
        r = {
            "url": self.a.url,
            "requests_planned": self.a.requests,
            "requests_done": self.done,
            "ok": self.ok,
            "errors": len(self.errors) + (self.a.requests - self.done),
            "deadline_hit": self.deadline_hit,
            "elapsed_s": round(self.elapsed, 3),
            "rate_rps": round(self.done / self.elapsed, 1) if self.elapsed else 0,
            "latency_ms": {"p50": pct(0.50), "p99": pct(0.99), "max": pct(1.0)},
            "served_by": self.served_by,
            "served_after_victim_down": self.served_after_down,
        }
        if self.a.stop_cmd:
            r["victim"] = self.a.victim
            r["stop_cmd"] = self.a.stop_cmd
            r["stop_started_at_s"] = rel(self.stop_started)
            r["stop_returned_at_s"] = rel(self.stop_finished)
            r["stop_rc"] = self.stop_rc
            r["victim_down_at_s"] = rel(self.victim_down_at)
            r["victim_last_status"] = self.victim_status
            r["detect_s_from_stop_start"] = (None if self.victim_down_at is None
                                             else round(self.victim_down_at - self.stop_started, 3))
            if self.a.stats_url:
                try:
                    be = read_stats(self.a.stats_url).get((self.a.backend, "BACKEND"), {})
                    r["haproxy_backend"] = {k: be.get(k) for k in
                                            ("stot", "hrsp_2xx", "hrsp_5xx", "econ", "eresp", "wretr", "wredis")}
                except Exception as e:  # noqa: BLE001
                    r["haproxy_backend"] = f"unreadable: {e}"
        r["first_errors"] = self.errors[:10]
        return r


def main():
    a = parse_args()
    load = Load(a)
    load.run()
    r = load.report()
    failures = []
    if r["errors"]:
        failures.append(f"{r['errors']} request(s) failed")
    if r["deadline_hit"]:
        failures.append(f"deadline of {a.deadline} s hit")
    if a.stop_cmd:
        if r["stop_rc"] != 0:
            failures.append(f"stop command failed (rc {r['stop_rc']}): {load.stop_output[:300]}")
        if r["detect_s_from_stop_start"] is None:
            failures.append(f"balancer did not take {a.victim} out within {a.max_detect} s "
                            f"(last status {r['victim_last_status']})")
    r["result"] = "FAIL" if failures else "PASS"
    r["failures"] = failures

    print(json.dumps(r, indent=2))
    print(f"scale-out: requests={r['requests_done']}/{a.requests} ok={r['ok']} errors={r['errors']} "
          f"elapsed={r['elapsed_s']}s rate={r['rate_rps']}/s p50={r['latency_ms']['p50']}ms "
          f"p99={r['latency_ms']['p99']}ms max={r['latency_ms']['max']}ms", file=sys.stderr)
    if a.stop_cmd:
        print(f"scale-out: stopped {a.victim} at t={r['stop_started_at_s']}s (docker stop returned at "
              f"t={r['stop_returned_at_s']}s); balancer marked it {r['victim_last_status']} at "
              f"t={r['victim_down_at_s']}s => taken out {r['detect_s_from_stop_start']}s after the stop began; "
              f"haproxy retries/redispatches: {r.get('haproxy_backend')}", file=sys.stderr)
    for f in failures:
        print(f"scale-out: FAIL: {f}", file=sys.stderr)
    for e in r["first_errors"]:
        print(f"scale-out:   request {e[0]} at t={e[1]}s: {e[2]}", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
