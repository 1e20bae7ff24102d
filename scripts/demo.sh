#!/usr/bin/env bash
# The demo: starts orderflow, publishes 200 mixed orders (single and
# multi-unit, some declined, some out of stock, some invalid), waits until
# every one is terminal, and prints the summary and where to look.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

scripts/up.sh
ids="$ORDERFLOW_RUN_DIR/demo-ids.txt"
say "publishing 200 mixed orders..."
"$BIN/orderflow" publish --count 200 --mixed >"$ids"
say "waiting until every order is terminal..."
summary=$("$BIN/orderflow" wait --ids "$ids" --timeout "${ORDERFLOW_DEMO_TIMEOUT:-180}")
echo "$summary"
first=$(head -n1 "$ids")
cat >&2 <<TXT

All $(wc -l <"$ids") orders are terminal. Where to look:
  management UI   $ORDERFLOW_MGMT_URL  (guest/guest locally; pick the vhost of AMQP_URL at the top right)
                  Queues: orderflow.intake ... orderflow.shipping, orderflow.audit.tracker, orderflow.dead-letter,
                          orderflow.changes.<node> (7, one per node), orderflow.retry.<node>
                  Exchanges: orderflow.workflow (topic), orderflow.audit, orderflow.changes (fanout), orderflow.dead-letter
  live counts     $BIN/orderflow watch
  one order       $BIN/orderflow status $first
  its JSON        $BIN/orderflow status $first --json
  stop it all     scripts/down.sh
TXT
