#!/usr/bin/env bash
# Stops every orderflow process started by up.sh (SIGTERM: each finishes what
# it holds), then removes their pid files. Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

shopt -s nullglob
pidfiles=("$ORDERFLOW_RUN_DIR"/pids/*.pid)
for f in "${pidfiles[@]}"; do kill -TERM "$(cat "$f")" 2>/dev/null || true; done
for f in "${pidfiles[@]}"; do
  pid=$(cat "$f")
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    say "$(basename "$f" .pid) did not stop within 10 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
done
say "orderflow is down (${#pidfiles[@]} processes stopped)."
