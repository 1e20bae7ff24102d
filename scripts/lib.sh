# Shared by the scripts in this folder (sourced, not run): settings with their
# defaults, and making sure a RabbitMQ broker with its management plugin is up.

: "${AMQP_URL:=amqp://guest:guest@127.0.0.1:5672/%2f}"
: "${ORDERFLOW_RUN_DIR:=$PWD/run}"
: "${ORDERFLOW_HTTP_ADDR:=127.0.0.1:8089}"
: "${ORDERFLOW_MGMT_URL:=http://127.0.0.1:15672}"
export AMQP_URL ORDERFLOW_RUN_DIR ORDERFLOW_HTTP_ADDR ORDERFLOW_MGMT_URL


say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# host and port of AMQP_URL
amqp_host() { local rest=${AMQP_URL#*://}; rest=${rest#*@}; rest=${rest%%/*}; echo "${rest%%:*}"; }
amqp_port() {
  local rest=${AMQP_URL#*://}; rest=${rest#*@}; rest=${rest%%/*}
  if [[ $rest == *:* ]]; then echo "${rest##*:}"; elif [[ $AMQP_URL == amqps://* ]]; then echo 5671; else echo 5672; fi
}

# AMQP_URL without its password (for messages).
redacted_amqp_url() { sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#' <<<"$AMQP_URL"; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

is_local_host() { [[ $1 == 127.0.0.1 || $1 == localhost || $1 == ::1 ]]; }

# The compose broker has no guest account: its administrator is `orderflow`,
# and a stack of up.sh's own goes in a vhost of its own (up.sh creates the
# vhost and its users as that administrator).
COMPOSE_ADVICE="start the compose broker (ORDERFLOW_AMQP_PASSWORD=secret docker compose up -d rabbitmq) \
and run again with AMQP_URL=amqp://orderflow:secret@127.0.0.1:5672/local"

# Makes sure the broker of AMQP_URL answers and, when it is local, that its
# management plugin is on. Starts a local server that is down; installs
# Debian's rabbitmq-server when there is none and we are root.
ensure_broker() {
  local host port
  host=$(amqp_host); port=$(amqp_port)
  if ! port_open "$host" "$port"; then
    is_local_host "$host" || die "RabbitMQ at $host:$port is not reachable (AMQP_URL)."
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
      if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "RabbitMQ is not installed: installing Debian's rabbitmq-server..."
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server >/dev/null \
          || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server >/dev/null; } \
          || die "could not install rabbitmq-server; $COMPOSE_ADVICE"
      else
        die "RabbitMQ is not running and not installed: install rabbitmq-server, or $COMPOSE_ADVICE"
      fi
    fi
    say "starting the local RabbitMQ server..."
    rabbitmq-server -detached >/dev/null 2>&1 || true
    for _ in $(seq 1 60); do port_open "$host" "$port" && break; sleep 1; done
    port_open "$host" "$port" || die "RabbitMQ did not start listening on $host:$port within 60 s."
  fi
  if is_local_host "$host" && command -v rabbitmq-plugins >/dev/null 2>&1; then
    local mgmt_port=${ORDERFLOW_MGMT_URL##*:}; mgmt_port=${mgmt_port%%/*}
    if ! port_open 127.0.0.1 "$mgmt_port"; then
      rabbitmq-plugins enable rabbitmq_management >/dev/null 2>&1 \
        || die "could not enable the management plugin: run 'rabbitmq-plugins enable rabbitmq_management'."
      for _ in $(seq 1 30); do port_open 127.0.0.1 "$mgmt_port" && break; sleep 1; done
      port_open 127.0.0.1 "$mgmt_port" || die "the management UI did not come up on port $mgmt_port."
    fi
  fi
}

# The build the scripts run: `release` (optimized, builds in minutes) for the
# demo and up.sh; scripts/bench.sh and scripts/flamegraph.sh set
# ORDERFLOW_PROFILE=dist (whole-program optimization, a much longer first build).
: "${ORDERFLOW_PROFILE:=release}"
BIN=${ORDERFLOW_BIN_DIR:-$PWD/target/$ORDERFLOW_PROFILE}

# True when every binary is there and no source, manifest or lock file is newer.
release_is_current() {
  [[ -x $BIN/orderflow && -x $BIN/topology && -x $BIN/tracker ]] || return 1
  local newer
  newer=$(find . -path ./target -prune -o -path ./run -prune -o -path ./.git -prune -o \
    \( -name '*.rs' -o -name Cargo.toml -o -name Cargo.lock \) -newer "$BIN/orderflow" -print -quit)
  [[ -z $newer ]]
}

# Builds the binaries with ORDERFLOW_PROFILE when they are missing or older
# than the sources, showing cargo's progress (the first build takes minutes).
build_release() {
  command -v cargo >/dev/null 2>&1 || die "cargo is not installed: install Rust from https://rustup.rs."
  release_is_current && return 0
  say "building orderflow (profile $ORDERFLOW_PROFILE; the first build takes several minutes)..."
  cargo build --profile "$ORDERFLOW_PROFILE" --workspace --bins
  touch "$BIN/orderflow"
}

# The long-running processes of a stack, from the workflow definition
# (`topology processes`): needs the built binaries.
processes() {
  [[ -x $BIN/topology ]] || die "$BIN/topology is missing: build first (cargo build --release --workspace --bins)."
  "$BIN/topology" processes
}
