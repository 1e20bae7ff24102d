#!/usr/bin/env bash
# The demo: starts orderflow, publishes 200 mixed orders (single and
# multi-unit, some declined, some out of stock, some invalid, a tenth
# shipped before they are billed and a tenth drop-shipped) and 20 more in
# directed mode (the coordinator calls each node's service), brings a new
# card for one declined order (the others end when their wait runs out), waits until
# every one is terminal, calls intake's service once, loads the data
# domains' seed files and reads a customer at the UK replica, shows a
# backorder released by the distributor's shipment, and prints the summary
# and where to look.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

# A declined card waits for another (awaiting_payment); in the demo for 20 s, not a day.
export ORDERFLOW_PAYMENT_WAIT_S=${ORDERFLOW_PAYMENT_WAIT_S:-20}
scripts/up.sh
say "loading the data domains' seed files (2,000 customers, 506 catalog items, 5 distributors) through their services..."
"$BIN/orderflow" domains seed --dir data/domains
ids="$ORDERFLOW_RUN_DIR/demo-ids.txt"
say "publishing 200 mixed orders..."
"$BIN/orderflow" publish --count 200 --mixed >"$ids"
say "publishing 20 orders in directed mode (the coordinator drives them through the services)..."
directed="$ORDERFLOW_RUN_DIR/demo-directed-ids.txt"
"$BIN/orderflow" publish --count 20 --directed >"$directed"
cat "$directed" >>"$ids"
say "a declined card does not end its order: it waits at payment (awaiting_payment, ${ORDERFLOW_PAYMENT_WAIT_S} s here)."
say "a new card for one of them (orderflow change ID --card-file card.json; payment keeps the number, the change carries a token):"
declined=""
for _ in $(seq 1 30); do
  declined=$("$BIN/orderflow" orders --state awaiting_payment --limit 1 2>/dev/null | awk 'NR == 1 && $1 ~ /-/ {print $1}')
  [[ -n $declined ]] && break
  sleep 0.5
done
if [[ -n $declined ]]; then
  card="$ORDERFLOW_RUN_DIR/demo-card.json"
  echo '{"card_number": "5555555555554444", "expiry": "12/30"}' >"$card"
  "$BIN/orderflow" change "$declined" --card-file "$card" --wait --timeout 30 || true
  "$BIN/orderflow" status "$declined" | grep -E "awaiting_payment|change_applied|charged" || true
fi
say "waiting until every order is terminal (the other declined ones when their wait runs out)..."
summary=$("$BIN/orderflow" wait --ids "$ids" --timeout "${ORDERFLOW_DEMO_TIMEOUT:-180}")
echo "$summary"
say "calling intake's service synchronously with examples/order.json:"
"$BIN/orderflow" call intake --element-file examples/order.json --sync --timeout 10 | sed -n 1,8p
say "a customer, read at the UK replica (fed by the primary's change stream):"
"$BIN/orderflow" customer get C-000002 --region uk
say "an unsolicited receipt: 50 x SKU-0001 \"from\" D-01 against no purchase order (the received-items queue)"
say "is refused, dead-lettered with the reason, and SKU-0001's stock is unchanged:"
"$BIN/orderflow" receive --distributor D-01 --sku SKU-0001 --qty 50 --shipment DEMO-UNSOLICITED-1 >/dev/null
sleep 1
"$BIN/orderflow" dlq list | grep -m1 "unsolicited receipt" || true
"$BIN/orderflow" stock SKU-0001
say "a backorder: two orders of 8 x SKU-0901 (10 in stock). The second waits; its purchase order goes to D-01,"
say "whose shipment (distributor-sim, after ${ORDERFLOW_DISTRIBUTOR_DELAY_MS:-2000} ms) arrives as received items and releases it:"
backorders="$ORDERFLOW_RUN_DIR/demo-backorders.jsonl"
order='{"customer_id": "C-000001", "items": [{"sku": "SKU-0901", "qty": 8}], "shipping_method": "standard",
 "ship_to": {"name": "Ada Lovelace", "line1": "12 St James Square", "city": "London", "postal_code": "SW1Y 4JH", "country": "GB"},
 "payment": {"card_number": "4111111111111111", "expiry": "12/30"}}'
order=$(echo "$order" | tr -d '\n')
printf '%s\n%s\n' "$order" "$order" >"$backorders"
"$BIN/orderflow" publish --file "$backorders" >"$backorders.ids"
sleep 1
"$BIN/orderflow" stock SKU-0901
"$BIN/orderflow" wait --ids "$backorders.ids" --timeout 60 >/dev/null || true
"$BIN/orderflow" status "$(tail -n1 "$backorders.ids")" | grep -E "backordered|reserved|shipped" || true
say "the shipped orders' charges, captured in batches through the orderflow.settlement aggregation queue:"
sleep 2
"$BIN/orderflow" report --last 10m | grep -E "^settlement" || true
say "the domains and each replica's lag:"
"$BIN/orderflow" domains status || true
first=$(head -n1 "$ids")
first_directed=$(head -n1 "$directed")
cat >&2 <<TXT

All $(wc -l <"$ids") orders are terminal. Where to look:
  management UI   $ORDERFLOW_MGMT_URL  (guest/guest locally; pick the vhost of AMQP_URL at the top right)
                  Queues: orderflow.intake ... orderflow.shipping, orderflow.audit.tracker, orderflow.dead-letter,
                          orderflow.changes.<node> (7, one per node), orderflow.retry.<node>,
                          orderflow.service.<node> (each node's service), orderflow.coordinator (directed orders),
                          orderflow.received-items (receiving), orderflow.distributor-shipments (purchase orders),
                          orderflow.settlement (captures, settled in batches)
                  Exchanges: orderflow.workflow (topic), orderflow.audit, orderflow.changes (fanout), orderflow.dead-letter,
                             orderflow.services (calls), orderflow.results (callbacks, polled results)
  live counts     $BIN/orderflow watch
  one order       $BIN/orderflow status $first
  a directed one  $BIN/orderflow status $first_directed     (each step marked "(directed)")
  a new card      $BIN/orderflow change ID --card-file card.json    (an order awaiting_payment: orderflow orders --at payment)
  call a service  $BIN/orderflow call intake --element-file examples/order.json --sync
  its JSON        $BIN/orderflow status $first --json
  a customer      $BIN/orderflow customer get C-000002 --region de    (customer list, add, set-address; catalog get SKU-0007)
  the domains     $BIN/orderflow domains status    (each replica's lag in changes and ms)
  stock           $BIN/orderflow stock SKU-0901    (on hand, reserved, received, backordered; a shipment: orderflow receive --distributor D-01 --sku SKU-0901 --qty 5 --shipment S-1 --po <po_id>)
  stop it all     scripts/down.sh
TXT
