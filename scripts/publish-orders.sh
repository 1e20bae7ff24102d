#!/usr/bin/env bash
# The publish script: injects orders into the running pipeline and prints
# their ids. Arguments go to `orderflow publish`, e.g.
#   scripts/publish-orders.sh --count 1000 --rate 200
#   scripts/publish-orders.sh --file orders.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
[[ -x $BIN/orderflow ]] || build_release
[[ $# -gt 0 ]] || set -- --count 100
exec "$BIN/orderflow" publish "$@"
