#!/usr/bin/env bash
# Runs the whole benchmark (under 15 minutes) and writes a dated report to
# bench/results/.  `bench/run.sh --smoke` runs every part very briefly (about
# a minute) to show the harness works.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh wrk libapache2-mod-fcgid libfcgi-dev valgrind
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install --quiet matplotlib
cargo build --release
exec python3 bench/bench.py "$@"
