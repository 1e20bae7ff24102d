#!/usr/bin/env bash
# Starts orderflow: makes sure RabbitMQ (with its management UI) is up,
# builds in release mode when the binaries are missing or stale (with
# cargo's progress), applies the topology (creating AMQP_URL's vhost if
# missing), and starts every worker and the tracker in the background, with
# pids and logs in the run directory. Safe to run twice: a second run starts
# only what is not running.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_broker
[[ ${ORDERFLOW_SKIP_BUILD:-} == 1 ]] || build_release
# Stores, logs and secrets are for the stack's owner alone (0600 files, 0700 folders).
umask 077
mkdir -p "$ORDERFLOW_RUN_DIR/pids" "$ORDERFLOW_RUN_DIR/logs"
running() { # pid file -> true if its process is alive and is that binary
  local pid
  [[ -f $1 ]] || return 1
  pid=$(cat "$1")
  kill -0 "$pid" 2>/dev/null && grep -q "$2" "/proc/$pid/cmdline" 2>/dev/null
}

started=0
started_pidfiles=()
# Each process serves Prometheus metrics on a port of its own, counted up
# from ORDERFLOW_METRICS_PORT_BASE in the order processes start (the same
# port for the same process on every run); ORDERFLOW_METRICS_PORT_BASE=0:
# none. The default range, 29101 and up, is clear of the ports common
# Prometheus exporters use (9100-9999) and below Linux's ephemeral ports.
metrics_base=${ORDERFLOW_METRICS_PORT_BASE:-29100}
metrics_ports=()
mapfile -t PROCESSES < <(processes)

# " by <who listens on port $1>", when `ss` can tell.
by() {
  local who=""
  command -v ss >/dev/null 2>&1 && who=$(ss -ltnpH "sport = :$1" 2>/dev/null | grep -o 'users:(([^)]*))' | head -1)
  [[ -n $who ]] && echo " by $who"
  return 0
}

# Stops what this run started and exits 1.
abandon() {
  for f in "${started_pidfiles[@]}"; do kill -TERM "$(cat "$f")" 2>/dev/null || true; done
  sleep 1
  for f in "${started_pidfiles[@]}"; do kill -KILL "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; done
  die "$1 (the ${#started_pidfiles[@]} processes this run started are stopped)"
}

# Plan: each process's instances, binary, region and metrics port; refuse a
# taken port before anything starts.
plan=()
port=$metrics_base
for node in "${PROCESSES[@]}"; do
  # A process runs the binary of its name (distributor-sim); a domain's
  # replica (customer-uk) runs the domain's binary, told its region.
  binary=$node
  region=""
  if [[ ! -x "$BIN/$node" ]]; then
    binary=${node%%-*}
    region="${node#*-}"
  fi
  var="ORDERFLOW_INSTANCES_${node^^}"
  var=${var//-/_}
  instances=${!var:-1}
  for i in $(seq 1 "$instances"); do
    port=$((port + 1))
    pidfile="$ORDERFLOW_RUN_DIR/pids/$node-$i.pid"
    if [[ $metrics_base != 0 ]]; then
      metrics_ports+=("$node-$i http://127.0.0.1:$port/metrics")
      if ! running "$pidfile" "$binary" && port_open 127.0.0.1 "$port"; then
        die "port $port, the metrics port of $node-$i (ORDERFLOW_METRICS_PORT_BASE=$metrics_base + $((port - metrics_base))), is taken$(by "$port"): set ORDERFLOW_METRICS_PORT_BASE to a free range (another stack on this machine: its base plus 100), or 0 for no metrics."
      fi
    fi
    plan+=("$node $i $binary ${region:--} $port")
  done
done
tracker_host=${ORDERFLOW_HTTP_ADDR%:*} tracker_port=${ORDERFLOW_HTTP_ADDR##*:}
if ! running "$ORDERFLOW_RUN_DIR/pids/tracker-1.pid" tracker && port_open "$tracker_host" "$tracker_port"; then
  die "ORDERFLOW_HTTP_ADDR=$ORDERFLOW_HTTP_ADDR, the tracker's address, is taken$(by "$tracker_port"): set ORDERFLOW_HTTP_ADDR to a free address (another stack on this machine: another port)."
fi

# Each node and the tracker connect as their own least-privilege user of this
# stack (named after the vhost, so stacks never share users); the passwords
# are generated once into $ORDERFLOW_RUN_DIR/secrets (mode 0600). A user that
# exists without its password here belongs to another run directory: apply
# refuses rather than change its password under the processes using it.
secrets="$ORDERFLOW_RUN_DIR/secrets"
: "${ORDERFLOW_USER_PREFIX:=orderflow-}"
if [[ ${ORDERFLOW_NODE_USERS:-1} == 1 ]]; then
  "$BIN/topology" apply --create-vhost --create-users --secrets-dir "$secrets" --user-prefix "$ORDERFLOW_USER_PREFIX" >/dev/null \
    || die "could not apply the topology and users (the reason is above; the management user must be an administrator)."
else
  "$BIN/topology" apply --create-vhost >/dev/null || die "could not apply the topology."
fi

for entry in "${plan[@]}"; do
  read -r node i binary region port <<<"$entry"
  pidfile="$ORDERFLOW_RUN_DIR/pids/$node-$i.pid"
  if running "$pidfile" "$binary"; then continue; fi
  metrics=()
  [[ $metrics_base != 0 ]] && metrics=(ORDERFLOW_METRICS_ADDR="127.0.0.1:$port")
  regions=()
  [[ $region != - ]] && regions=(ORDERFLOW_REGION="$region")
  credentials=()
  if [[ ${ORDERFLOW_NODE_USERS:-1} == 1 ]]; then
    # This stack's own user of the role (named after the vhost) and its password file.
    mapfile -t credentials < <("$BIN/topology" credentials "$node" --secrets-dir "$secrets" --user-prefix "$ORDERFLOW_USER_PREFIX")
  fi
  env "${credentials[@]}" "${metrics[@]}" "${regions[@]}" ORDERFLOW_INSTANCE_ID="$node-$i" nohup "$BIN/$binary" >>"$ORDERFLOW_RUN_DIR/logs/$node-$i.log" 2>&1 &
  echo $! >"$pidfile"
  started_pidfiles+=("$pidfile")
  started=$((started + 1))
done

# Up means every process is alive and consumes its queue, and the tracker
# answers; a process that exits first fails the start, naming it.
deadline=$((SECONDS + ${ORDERFLOW_START_TIMEOUT_S:-60}))
waiting="$ORDERFLOW_RUN_DIR/logs/up-waiting.txt"
while :; do
  for f in "${started_pidfiles[@]}"; do
    if ! kill -0 "$(cat "$f")" 2>/dev/null; then
      name=$(basename "$f" .pid)
      say "$name exited at start; the last lines of $ORDERFLOW_RUN_DIR/logs/$name.log:"
      tail -n 15 "$ORDERFLOW_RUN_DIR/logs/$name.log" >&2 || true
      rm -f "$f"
      abandon "orderflow did not start: $name exited"
    fi
  done
  if "$BIN/topology" ready 2>"$waiting" && "$BIN/orderflow" watch --once >/dev/null 2>&1; then
    break
  fi
  if ((SECONDS >= deadline)); then
    cat "$waiting" >&2
    abandon "orderflow did not start within ${ORDERFLOW_START_TIMEOUT_S:-60} s: the processes above do not consume their queues (or the tracker does not answer at $ORDERFLOW_HTTP_ADDR)"
  fi
  sleep 0.5
done
rm -f "$waiting"

say "orderflow is up: ${#PROCESSES[@]} processes, each consuming its queue ($started started now; logs in $ORDERFLOW_RUN_DIR/logs)."
say "  management UI: $ORDERFLOW_MGMT_URL  (queues: #/queues, exchanges: #/exchanges)"
say "  tracker API:   http://$ORDERFLOW_HTTP_ADDR/stats"
if [[ ${#metrics_ports[@]} -gt 0 ]]; then
  say "  metrics (Prometheus):"
  for line in "${metrics_ports[@]}"; do say "    $line"; done
fi
