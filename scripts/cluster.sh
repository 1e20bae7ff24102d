#!/usr/bin/env bash
# A local three-node RabbitMQ cluster on this one host, beside (and
# independent of) the default broker: nodes orderflow1..3@localhost, AMQP on
# 5681..5683, management on 15681..15683, Erlang distribution on
# 25681..25683, data under $ORDERFLOW_CLUSTER_DIR (default
# /var/lib/rabbitmq/orderflow-cluster). Needs Debian's rabbitmq-server
# installed and root (the nodes run as the rabbitmq user and share its
# Erlang cookie, as the nodes of a cluster must).
#
#   scripts/cluster.sh up        start the missing nodes, join them, print their URLs (safe to run twice)
#   scripts/cluster.sh status    each node, running or not, and the cluster's members
#   scripts/cluster.sh urls      the AMQP_URL list for a stack on the cluster (vhost %2f)
#   scripts/cluster.sh stop N    stop node N (1..3) cleanly; `up` starts it again
#   scripts/cluster.sh kill N    kill -9 node N's Erlang VM (a crash)
#   scripts/cluster.sh down      stop every node (add --purge to delete their data)
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=(1 2 3)
BASE=${ORDERFLOW_CLUSTER_DIR:-/var/lib/rabbitmq/orderflow-cluster}
RABBIT_BIN=/usr/lib/rabbitmq/bin

say() { printf '%s\n' "$*" >&2; }
die() { say "cluster.sh: $*"; exit 1; }

node_name() { echo "orderflow$1@localhost"; }
amqp_port() { echo $((5680 + $1)); }
mgmt_port() { echo $((15680 + $1)); }
dist_port() { echo $((25680 + $1)); }

[[ -x $RABBIT_BIN/rabbitmq-server ]] || die "RabbitMQ is not installed (Debian: apt-get install rabbitmq-server)."
[[ $(id -u) == 0 ]] || die "run as root: the nodes run as the rabbitmq user."

# rabbitmqctl against one node of the cluster (as the rabbitmq user, for its
# cookie), given up after CTL_TIMEOUT seconds (default 150).
ctl() {
  local n=$1
  shift
  (cd /var/lib/rabbitmq && timeout "${CTL_TIMEOUT:-150}" su rabbitmq -s /bin/sh -c "$RABBIT_BIN/rabbitmqctl -n $(node_name "$n") $*")
}

running() { CTL_TIMEOUT=30 ctl "$1" status >/dev/null 2>&1; }

# Stops node N cleanly, or kills it when it does not stop within a minute.
stop_node() {
  local n=$1 pid
  running "$n" || return 0
  pid=$(ctl "$n" eval "'os:getpid().'" 2>/dev/null | tr -dc '0-9')
  CTL_TIMEOUT=60 ctl "$n" stop >/dev/null 2>&1 || { [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null; } || true
}

start_node() {
  local n=$1 dir="$BASE/node$1"
  mkdir -p "$dir/mnesia" "$dir/log"
  cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.local = 127.0.0.1:$(amqp_port "$n")
management.tcp.ip = 127.0.0.1
management.tcp.port = $(mgmt_port "$n")
loopback_users = none
EOF
  echo '[rabbitmq_management].' >"$dir/enabled_plugins"
  chown -R rabbitmq:rabbitmq "$BASE"
  (cd /var/lib/rabbitmq && su rabbitmq -s /bin/sh -c "env \
    RABBITMQ_NODENAME=$(node_name "$n") \
    RABBITMQ_DIST_PORT=$(dist_port "$n") \
    RABBITMQ_CONFIG_FILE=$dir/rabbitmq \
    RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins \
    RABBITMQ_MNESIA_BASE=$dir/mnesia \
    RABBITMQ_LOG_BASE=$dir/log \
    RABBITMQ_PID_FILE=$dir/pid \
    $RABBIT_BIN/rabbitmq-server -detached" >/dev/null 2>&1)
}

# Waits until node N answers and has booted (-detached returns before).
await_node() {
  local n=$1
  for _ in $(seq 1 240); do
    running "$n" && break
    sleep 0.5
  done
  ctl "$n" await_startup --timeout 120 >/dev/null \
    || die "node $(node_name "$n") did not start: see $BASE/node$n/log"
}

# Joins node N to node 1's cluster unless it is a member already.
join() {
  local n=$1
  if ctl 1 cluster_status 2>/dev/null | grep -q "$(node_name "$n")"; then return 0; fi
  ctl "$n" stop_app >/dev/null 2>&1
  ctl "$n" reset >/dev/null 2>&1
  ctl "$n" join_cluster "$(node_name 1)" >/dev/null 2>&1 || die "node $n could not join the cluster"
  ctl "$n" start_app >/dev/null 2>&1
}

urls() {
  local list=()
  for n in "${NODES[@]}"; do list+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/${1:-%2f}"); done
  (IFS=,; echo "${list[*]}")
}

case ${1:-status} in
  up)
    # Every missing node at once: a node that was not the last to stop waits
    # at boot for the one that was, so starting them one by one can deadlock.
    started=()
    for n in "${NODES[@]}"; do
      running "$n" || { say "starting $(node_name "$n")"; start_node "$n"; started+=("$n"); }
    done
    for n in "${started[@]}"; do await_node "$n"; done
    for n in 2 3; do join "$n"; done
    for n in "${NODES[@]}"; do
      echo "$(node_name "$n")  amqp://127.0.0.1:$(amqp_port "$n")  http://127.0.0.1:$(mgmt_port "$n")"
    done
    ;;
  status)
    for n in "${NODES[@]}"; do
      if running "$n"; then state=running; else state=stopped; fi
      echo "$(node_name "$n")  $state  amqp://127.0.0.1:$(amqp_port "$n")  http://127.0.0.1:$(mgmt_port "$n")"
    done
    for n in "${NODES[@]}"; do
      if running "$n"; then ctl "$n" cluster_status --formatter json 2>/dev/null | grep -o '"running_nodes":\[[^]]*\]' || true; break; fi
    done
    ;;
  urls) urls "${2:-}" ;;
  stop)
    [[ ${2:-} =~ ^[123]$ ]] || die "stop N: N is 1, 2 or 3"
    stop_node "$2"
    ;;
  kill)
    [[ ${2:-} =~ ^[123]$ ]] || die "kill N: N is 1, 2 or 3"
    pid=$(ctl "$2" eval "'os:getpid().'" 2>/dev/null | tr -dc '0-9')
    [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null || die "node $2 is not running"
    ;;
  down)
    for n in "${NODES[@]}"; do stop_node "$n"; done
    if [[ ${2:-} == --purge ]]; then rm -rf "$BASE"; fi
    ;;
  *) die "usage: scripts/cluster.sh up|status|urls [VHOST]|stop N|kill N|down [--purge]" ;;
esac
