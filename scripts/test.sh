#!/usr/bin/env bash
# The test suite: unit tests and the integration tests against the real local
# broker and real worker processes (each test in its own vhost).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_broker
command -v cargo >/dev/null 2>&1 || die "cargo is not installed: install Rust from https://rustup.rs."
# The integration tests start the worker binaries: build them first.
cargo build --workspace --bins
cargo test --workspace "$@"
