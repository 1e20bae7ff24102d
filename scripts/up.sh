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
# Each node and the tracker connect as their own least-privilege user of this
# stack (named after the vhost, so stacks never share users); the passwords
# are generated once into $ORDERFLOW_RUN_DIR/secrets (mode 0600). A user that
# exists without its password here belongs to another run directory: apply
# refuses rather than change its password under the processes using it.
secrets="$ORDERFLOW_RUN_DIR/secrets"
: "${ORDERFLOW_USER_PREFIX:=orderflow-}"
if [[ ${ORDERFLOW_NODE_USERS:-1} == 1 ]]; then
  "$BIN/topology" apply --create-vhost --create-users --secrets-dir "$secrets" --user-prefix "$ORDERFLOW_USER_PREFIX" >/dev/null \
    || die "could not apply the topology and users (the management user must be an administrator; or set ORDERFLOW_NODE_USERS=0)."
else
  "$BIN/topology" apply --create-vhost >/dev/null || die "could not apply the topology."
fi

running() { # pid file -> true if its process is alive and is that binary
  local pid
  [[ -f $1 ]] || return 1
  pid=$(cat "$1")
  kill -0 "$pid" 2>/dev/null && grep -q "$2" "/proc/$pid/cmdline" 2>/dev/null
}

started=0
# Each process serves Prometheus metrics on a port of its own, counted up
# from ORDERFLOW_METRICS_PORT_BASE in the order processes start (the same
# port for the same process on every run); ORDERFLOW_METRICS_PORT_BASE=0: none.
metrics_base=${ORDERFLOW_METRICS_PORT_BASE:-9100}
metrics_ports=()
port=$metrics_base
mapfile -t PROCESSES < <(processes)
for node in "${PROCESSES[@]}"; do
  # A process runs the binary of its name (distributor-sim); a domain's
  # replica (customer-uk) runs the domain's binary, told its region.
  binary=$node
  region=()
  if [[ ! -x "$BIN/$node" ]]; then
    binary=${node%%-*}
    region=(ORDERFLOW_REGION="${node#*-}")
  fi
  var="ORDERFLOW_INSTANCES_${node^^}"
  var=${var//-/_}
  instances=${!var:-1}
  for i in $(seq 1 "$instances"); do
    port=$((port + 1))
    metrics=()
    if [[ $metrics_base != 0 ]]; then
      metrics=(ORDERFLOW_METRICS_ADDR="127.0.0.1:$port")
      metrics_ports+=("$node-$i http://127.0.0.1:$port/metrics")
    fi
    pidfile="$ORDERFLOW_RUN_DIR/pids/$node-$i.pid"
    if running "$pidfile" "$binary"; then continue; fi
    credentials=()
    if [[ ${ORDERFLOW_NODE_USERS:-1} == 1 ]]; then
      # This stack's own user of the role (named after the vhost) and its password file.
      mapfile -t credentials < <("$BIN/topology" credentials "$node" --secrets-dir "$secrets" --user-prefix "$ORDERFLOW_USER_PREFIX")
    fi
    env "${credentials[@]}" "${metrics[@]}" "${region[@]}" ORDERFLOW_INSTANCE_ID="$node-$i" nohup "$BIN/$binary" >>"$ORDERFLOW_RUN_DIR/logs/$node-$i.log" 2>&1 &
    echo $! >"$pidfile"
    started=$((started + 1))
  done
done

# The tracker answers once it is up.
for _ in $(seq 1 100); do
  "$BIN/orderflow" watch --once >/dev/null 2>&1 && break
  sleep 0.1
done
"$BIN/orderflow" watch --once >/dev/null 2>&1 || die "the tracker did not start: see $ORDERFLOW_RUN_DIR/logs/tracker-1.log"

say "orderflow is up ($started processes started; logs in $ORDERFLOW_RUN_DIR/logs)."
say "  management UI: $ORDERFLOW_MGMT_URL  (queues: #/queues, exchanges: #/exchanges)"
say "  tracker API:   http://$ORDERFLOW_HTTP_ADDR/stats"
if [[ ${#metrics_ports[@]} -gt 0 ]]; then
  say "  metrics (Prometheus):"
  for line in "${metrics_ports[@]}"; do say "    $line"; done
fi
