#!/usr/bin/env bash
# Stops every orderflow process started by up.sh: SIGTERM to all at once
# (each finishes what it holds), then waits for them together, up to
# ORDERFLOW_STOP_TIMEOUT_S (10) seconds in all, and kills what is left.
# Safe to run twice.
#   scripts/down.sh            # stop the processes
#   scripts/down.sh --purge    # and remove the stack: its broker users, its
#                              # vhost (never /) and the run directory
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

purge=0
for arg in "$@"; do
  case $arg in
    --purge) purge=1 ;;
    -h | --help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $arg (scripts/down.sh [--purge])" ;;
  esac
done

shopt -s nullglob
pidfiles=("$ORDERFLOW_RUN_DIR"/pids/*.pid)
for f in "${pidfiles[@]}"; do kill -TERM "$(cat "$f")" 2>/dev/null || true; done
deadline=$((SECONDS + ${ORDERFLOW_STOP_TIMEOUT_S:-10}))
for f in "${pidfiles[@]}"; do
  pid=$(cat "$f")
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    say "$(basename "$f" .pid) did not stop within ${ORDERFLOW_STOP_TIMEOUT_S:-10} s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
done
say "orderflow is down (${#pidfiles[@]} processes stopped)."

if ((purge)); then
  [[ -x $BIN/topology ]] || die "$BIN/topology is missing: build first (cargo build --release --workspace --bins)."
  ensure_broker
  say "removing the stack of $(redacted_amqp_url): its broker users, its vhost (unless /) and $ORDERFLOW_RUN_DIR..."
  "$BIN/topology" remove --user-prefix "${ORDERFLOW_USER_PREFIX:-orderflow-}" >&2
  rm -rf "$ORDERFLOW_RUN_DIR"
  say "the stack is removed; scripts/up.sh sets up a new one."
fi
