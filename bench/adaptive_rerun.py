"""Reruns only the adaptive part of bench/run.sh (the mixed workload and the
load shift, both MPMs) and writes bench/results/<date>-adaptive.{md,json,
mixed.png}: for a change to the policy after a full run, so that the
figures it affects are measured on the code that has it.  About 6 minutes.
Usage: BENCH_MODULE=... python3 bench/adaptive_rerun.py"""
import json
import os
import subprocess
import sys
import time

sys.argv = [sys.argv[0]]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

t0 = time.time()
load = open("/proc/loadavg").read().split()[:3]
bench.build()
mx = {mpm: bench.mixed(mpm) for mpm in ["event", "prefork"]}
day = time.strftime("%Y-%m-%d", time.gmtime())
out = os.path.join(bench.HERE, "results", f"{day}-adaptive")
bench.mixed_chart(mx, out + ".mixed.png")
targets = []
lines = bench.mixed_section(mx, os.path.basename(out) + ".mixed.png", targets)
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=bench.ROOT).stdout.strip()
L = [f"# mod_libcgi benchmark, adaptive isolation only, {day}", "",
     f"`bench/adaptive_rerun.py` at {rev}: the mixed workload and the load shift of `bench/run.sh`, "
     f"nothing else; load average at the start {' '.join(load)}; {(time.time() - t0) / 60:.1f} minutes.", ""]
L += lines
L += ["## Targets", "", "| target | result | | context |", "|---|---:|---|---|"]
for mpm, r in mx.items():
    ad = r["shift"].get("adaptive")
    if ad:
        end = (ad.get("transitions") or {}).get("domains", {}).get("m00.so", "-")
        targets.append((f"{mpm}: load shift: the old hot script (m00) is split back out", end == "process", end,
                        "its domain at the end of the run", "na", 0, 0, []))
for t in targets:
    L.append(f"| {t[0]} | {t[2]} | {'**met**' if t[1] else '**missed**'} | {t[3]} |")
L.append("")
with open(out + ".md", "w") as f:
    f.write("\n".join(L))
with open(out + ".json", "w") as f:
    json.dump(mx, f)
print(f"[bench] report: {out}.md")
