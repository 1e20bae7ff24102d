#!/usr/bin/env bash
# The test suite: unit tests and the integration tests against the real local
# broker and real worker processes (each test in its own vhost).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_broker
command -v cargo >/dev/null 2>&1 || die "cargo is not installed: install Rust from https://rustup.rs."
# The PostgreSQL tests (tests/pipeline/postgres*.rs) create a database each on the local server.
port_open 127.0.0.1 5432 \
  || die "PostgreSQL is not answering on 127.0.0.1:5432 (the tests connect as postgres, trust auth): start it (Debian: service postgresql start)."
# A client no one here wrote places orders in the tests: Python's pika.
if ! python3 -c 'import pika' 2>/dev/null; then
  python3 -m pip install --quiet --user pika 2>/dev/null || python3 -m pip install --quiet pika 2>/dev/null \
    || say "note: could not install Python's pika; the outside-client test will say it skipped pika"
fi
# The dashboard test drives headless Chromium through ChromeDriver (Debian's packages).
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing chromium and chromium-driver for the dashboard test (apt-get)..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
      || say "note: could not install chromium; the dashboard test will say it skipped the browser"
  else
    say "note: no chromium/chromedriver (install Debian's chromium and chromium-driver); the dashboard test will skip the browser"
  fi
fi
# The integration tests start the worker binaries: build them first.
cargo build --workspace --bins
# Every test stack's logs are scanned before its run directory goes
# (harness::log_scan): a card token, an email, an address or a card number
# in any log fails the suite.
scan="${CARGO_TARGET_DIR:-$PWD/target}/log-scan.txt"
rm -f "$scan"
ORDERFLOW_LOG_SCAN_FILE="$scan" cargo test --workspace "$@"
if [[ -s $scan ]]; then
  head -n 20 "$scan" >&2
  die "$(wc -l <"$scan") log lines of the test stacks hold a token, an email, an address or a card number (all in $scan)."
fi
say "the logs of every test stack were scanned: no token, email, address or card number."
