#!/usr/bin/env bash
# The benchmark: the broker's limit for orderflow's message pattern (a minimal
# lapin relay) against orderflow end to end, their ratio, latency at the
# maximum sustainable rate and at half of it, memory, CPU and payment
# scale-out, all on the local broker in vhosts of the bench's own (deleted
# afterwards). Prints a markdown report and writes it to BENCHMARKS-latest.md,
# or to the path given as the first argument. Other arguments go to
# orderflow-bench (see `target/release/orderflow-bench --help`), e.g.
#   scripts/bench.sh                 # full run, a few minutes
#   scripts/bench.sh out.md --reps 5
#   scripts/bench.sh --smoke         # seconds: checks that it runs
set -euo pipefail
cd "$(dirname "$0")/.."
: "${ORDERFLOW_PROFILE:=dist}"  # whole-program optimization (Cargo.toml)
source scripts/lib.sh

report=BENCHMARKS-latest.md
if [[ $# -gt 0 && $1 != -* ]]; then
  report=$1
  shift
fi
for arg in "$@"; do
  [[ $arg == --report || $arg == --report=* ]] && die "give the report path as the first argument, not --report"
done

ensure_broker
[[ ${ORDERFLOW_SKIP_BUILD:-} == 1 ]] || build_release
say "running the benchmark (progress on stderr, report in $report)..."
"$BIN/orderflow-bench" --bin-dir "$BIN" --report "$report" "$@"
