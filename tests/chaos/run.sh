#!/usr/bin/env bash
# The chaos soak (issue 10) under prefork and event: see tests/chaos/chaos.py.
#   tests/chaos/run.sh --short   CI form: about a minute per MPM, shorter
#                                intervals so that every kind of chaos happens
#   tests/chaos/run.sh           long form: 100,000 requests per MPM from 64
#                                connections, swap every 2 s, graceful every
#                                15 s, kill -9 every 10 s; the report goes to
#                                tests/chaos/results/<date>/ (commit it)
# Installs what it needs (apache2, gcc, matplotlib), builds the module unless
# CHAOS_MODULE=/path/libmod_libcgi.so is given.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/install-deps.sh
PY=/usr/bin/python3
if ! "$PY" -c 'import matplotlib' 2>/dev/null; then
    SUDO=()
    [[ $(id -u) -ne 0 ]] && SUDO=(sudo)
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends python3-matplotlib >/dev/null
fi
module=${CHAOS_MODULE:-}
if [[ -z "$module" ]]; then
    cargo build --release
    module=$PWD/target/release/libmod_libcgi.so
fi
# A private copy: the parent re-reads its modules at every graceful restart,
# and a rebuild during the soak must not change (or overwrite) what it loads.
mkdir -p target/chaos
cp "$module" target/chaos/mod_libcgi.so.tmp && mv -f target/chaos/mod_libcgi.so.tmp target/chaos/mod_libcgi.so
module=$PWD/target/chaos/mod_libcgi.so
if [[ "${1:-}" == "--short" ]]; then
    out=target/chaos/short
    args=(--requests 20000 --max-seconds 40 --kill-every 3 --graceful-every 7 --swap-every 1)
else
    out=tests/chaos/results/$(date -u +%F)
    args=(--requests 100000 --max-seconds 1500 --require-count)
fi
rm -rf "$out"
mkdir -p "$out"
rc=0
# CHAOS_MPMS chooses the MPMs (default: both).
for mpm in ${CHAOS_MPMS:-prefork event}; do
    "$PY" tests/chaos/chaos.py --mpm "$mpm" --module "$module" --out "$out" "${args[@]}" || rc=1
done
"$PY" tests/chaos/report.py "$out" || rc=1
exit $rc
