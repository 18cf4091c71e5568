#!/usr/bin/env bash
# Runs every test of mod_libcgi against a real apache2: installs the Debian
# packages it needs (idempotently), builds the module, runs the suite under
# prefork, worker and event, and the workspace's own tests (the libcgi crate,
# its doc tests, the Rust examples).  Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --workspace
cargo test --release --workspace -- "$@"
