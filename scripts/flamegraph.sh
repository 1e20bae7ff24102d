#!/usr/bin/env bash
# A flame graph of a saturated run: every process on the machine (the
# broker, each orderflow process, the bench's publisher), sampled by perf
# (software clock, DWARF call stacks) in the middle of an A/B run of the
# release build against itself; the stacks are rooted at the process, then
# the thread. Needs perf (Debian's linux-perf), inferno
# (`cargo install inferno`) and root (system-wide sampling).
#   scripts/flamegraph.sh [out.svg]     # default docs/flamegraph-saturated.svg
set -euo pipefail
cd "$(dirname "$0")/.."
: "${ORDERFLOW_PROFILE:=dist}"  # whole-program optimization (Cargo.toml)
source scripts/lib.sh
out=${1:-docs/flamegraph-saturated.svg}
command -v perf >/dev/null || die "perf is not installed (apt-get install linux-perf)"
command -v inferno-flamegraph >/dev/null || die "inferno is not installed (cargo install inferno)"
ensure_broker
build_release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say "saturated run with perf sampling 15 s of it..."
"$BIN/orderflow-bench" --bin-dir "$BIN" --compare-bin-dir "$BIN" --reps 1 --orders 14000 \
  --report "$work/run.md" >"$work/run.log" 2>&1 &
bench=$!
for _ in $(seq 1 120); do pgrep -f "$BIN/tracker" >/dev/null && break; sleep 1; done
sleep 20
perf record -a -g --call-graph dwarf,8192 -F 97 -o "$work/perf.data" -- sleep 15 2>"$work/record.log"
wait "$bench"
perf script -i "$work/perf.data" -F comm,pid 2>/dev/null >"$work/threads"
perf script -i "$work/perf.data" -F comm,pid,tid,period,event,ip,sym,dso 2>/dev/null |
  inferno-collapse-perf --pid >"$work/folded"
python3 - "$work/threads" "$work/folded" "$work/by-process" <<'PY'
import sys
threads, folded, out = sys.argv[1:4]
helper = ("sqlx-sqlite-wor", "lapin-io-loop", "tokio-rt-worker")
names = {}
for line in open(threads):
    parts = line.split()
    if len(parts) >= 2 and parts[0] not in helper:
        names[parts[-1]] = parts[0]
with open(out, "w") as sink:
    for line in open(folded):
        stack, count = line.rsplit(" ", 1)
        root, _, rest = stack.partition(";")
        comm, _, pid = root.rpartition("-")
        beam = comm.endswith(("_scheduler", "_sche", "_poller", "_aux")) or "dirty_io" in comm
        process = "rabbitmq (beam.smp)" if beam else names.get(pid, comm)
        process = "idle" if process == "swapper" else process
        sink.write(f"{process};{comm};{rest} {count}" if rest else f"{process};{comm} {count}")
PY
inferno-flamegraph --title "orderflow, saturated: every process on the machine, 15 s at 97 Hz" \
  --minwidth 0.5 "$work/by-process" >"$out"
grep -E "orders/s|CPU s" "$work/run.md" || true
say "flame graph written to $out"
