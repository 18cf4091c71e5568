#!/usr/bin/env bash
# Runs the whole benchmark (about 20 minutes on 2 cores) and writes a dated
# report to bench/results/.  `bench/run.sh --smoke` runs every part very
# briefly (about 90 s plus the build) to show the harness works.
#
# Installs what it needs (idempotently, with sudo when not root): apache2,
# apache2-dev (apxs), wrk, mod_fcgid, libfcgi, spawn-fcgi, valgrind and
# matplotlib.  BENCH_MODULE=/path/libmod_libcgi.so benchmarks that module and
# skips `cargo build`.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=()
[[ $(id -u) -ne 0 ]] && SUDO=(sudo)

# Debian packages; spawn-fcgi only where the distribution has it (the
# benchmark falls back to the FastCGI program opening its own socket).
extra=(wrk libapache2-mod-fcgid libfcgi-dev valgrind util-linux)
if apt-cache show spawn-fcgi >/dev/null 2>&1 || { "${SUDO[@]}" apt-get update -q >/dev/null && apt-cache show spawn-fcgi >/dev/null 2>&1; }; then
    extra+=(spawn-fcgi)
fi
scripts/install-deps.sh "${extra[@]}"

# A python3 that has matplotlib: the one on PATH, else Debian's package for
# /usr/bin/python3, else pip.
PY=python3
if ! "$PY" -c 'import matplotlib' 2>/dev/null; then
    if /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
        PY=/usr/bin/python3
    else
        DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends python3-matplotlib >/dev/null 2>&1 || true
        if /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
            PY=/usr/bin/python3
        else
            "$PY" -m pip install --quiet matplotlib 2>/dev/null ||
                "$PY" -m pip install --quiet --break-system-packages matplotlib
        fi
    fi
fi

if [[ -z "${BENCH_MODULE:-}" ]]; then
    cargo build --release
fi
exec "$PY" bench/bench.py "$@"
