#!/usr/bin/env python3
"""Writes DIR/report.md from the per-MPM results chaos.py left in DIR."""
import json
import os
import sys

out = sys.argv[1]
rows, notes = [], []
for mpm in ("prefork", "event"):
    p = os.path.join(out, f"{mpm}.json")
    if not os.path.exists(p):
        notes.append(f"- {mpm}: no result (the run did not finish)")
        continue
    d = json.load(open(p))
    c = d["counts"]
    rows.append(
        f"| {mpm} | {c['requests']:,} | {d['duration_s']:.0f} | {c['exact']:,} | {c['fault']:,} | {c.get('fault_busy', 0):,} | {c['hostile']:,} "
        f"| {c['explained']:,} | **{c['unexplained']}** | {d['unexplained_log_count']} | {d['kills']} ({d['kill_ports']} conns) "
        f"| {d['gracefuls']} | {d['swaps']} | {d['rss_max_process_mib']} / {d['rss_total_max_mib']} "
        f"| {d['fd_max_parent']} / {d['fd_max_child']} / {d.get('file_fd_max_child')} | {d['before']['session_procs']} / {d['after']['session_procs']} "
        f"| {d['before']['parent_fds']} / {d['after']['parent_fds']} | {d['before']['child_fds']} / {d['after']['child_fds']} "
        f"| {d['stop_seconds']} | {'none' if not d['problems'] else '; '.join(d['problems'])} |"
    )
    notes.append(f"### {mpm}\n")
    notes.append(f"![{mpm}]({mpm}.png)\n")
    notes.append("Error-log lines by cause: " + ", ".join(f"{k}: {v}" for k, v in sorted(d["log_classes"].items())) + "\n")
    notes.append("Failed requests explained by a kill, by kind: " + (", ".join(f"{k}: {v}" for k, v in sorted(d["explained_by_kind"].items())) or "none") + "\n")
    notes.append(f"Swapped script, exact responses per version: {d['swap_versions']}\n")
    notes.append("Outcome per kind: " + "; ".join(f"{k} {v}" for k, v in sorted(d["per_kind"].items())) + "\n")
    if d["unexplained"]:
        notes.append("Unexplained failures (first 20):\n\n```\n" + "\n".join(json.dumps(u) for u in d["unexplained"][:20]) + "\n```\n")
    if d["unexplained_log_lines"]:
        notes.append("Unexplained log lines (first 20):\n\n```\n" + "\n".join(u["line"] for u in d["unexplained_log_lines"][:20]) + "\n```\n")
    if d["after"].get("held"):
        notes.append("Descriptors the idle children held at the end: " + ", ".join(f"{k} x{v}" for k, v in sorted(d["after"]["held"].items())) + "\n")
    a = d["args"]
    notes.append(
        f"Arguments: {a['requests']} requests, concurrency {a['concurrency']}, swap every {a['swap_every']} s, graceful every "
        f"{a['graceful_every']} s, kill -9 every {a['kill_every']} s, never-read clients hold {a['never_read_hold']} s, "
        f"RSS bound {a['rss_bound_mib']} MiB per process, idle-child descriptor slack {a['fd_slack']}.\n"
    )
head = """# mod_libcgi chaos soak

Produced by `tests/chaos/run.sh` (see `tests/chaos/chaos.py` for what every column means).
RSS is the largest single server process / all server processes together (MiB, sampled every 0.5 s);
descriptors are the parent / the largest child (all; connections included) / the largest child's
files (neither sockets nor pipes: a leak of script descriptors shows here) over the run; "before / after" are counted with the
server idle before the load and after it settled.

| MPM | requests | s | exact | faults (500 + 1 log line) | faulted script busy (503 + 1 line) | hostile | explained by a kill | unexplained | unexplained log lines | kill -9 | graceful | swaps | RSS MiB max | fds max: parent / child / child files | procs before/after | parent fds before/after | idle child fds before/after | stop s | problems |
|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|
"""
with open(os.path.join(out, "report.md"), "w") as f:
    f.write(head + "\n".join(rows) + "\n\n" + "\n".join(notes) + "\n")
print(f"[chaos] report: {os.path.join(out, 'report.md')}")
