#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages mod_libcgi needs to build and test.
# Idempotent: installs only what is missing; uses sudo when not root.
set -euo pipefail

pkgs=(apache2 apache2-dev libclang-dev clang gcc g++ libc6-dev binutils curl)
# tests/metrics.rs: promtool, JSON schema and Prometheus parsers, a headless browser, a tracer.
pkgs+=(prometheus python3-jsonschema python3-prometheus-client chromium bpftrace nghttp2-client)
# tests/isolation.rs: strace holds the isolation manager in fork (a slow manager, deterministically).
pkgs+=(strace)
[[ $# -gt 0 ]] && pkgs+=("$@")

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    SUDO=()
    [[ $(id -u) -ne 0 ]] && SUDO=(sudo)
    echo "install-deps: installing ${missing[*]}" >&2
    "${SUDO[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Debian's postinst starts the packaged server on port 80 where it can; the
# project's tests and example server never use it, so leave it as it is.

if ! command -v cargo >/dev/null 2>&1; then
    echo "install-deps: cargo (Rust) is required: see https://rustup.rs" >&2
    exit 1
fi
