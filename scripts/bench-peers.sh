#!/usr/bin/env bash
# busmq beside its peers, one session (issue 4): busmq (embedded store and
# Redis store) and NATS JetStream, RabbitMQ, raw Redis and raw ZeroMQ driven
# by the same `busmq bench` workload with the same flags, then one
# comparison table.
#
#   scripts/bench-peers.sh                      # defaults: --duration 10s
#   scripts/bench-peers.sh --duration 20s --queues 10
#
# Every flag is passed to every run. Installs `nats-server` and
# `rabbitmq-server` from Debian's packages when missing (needs root), starts
# each server (and a redis-server) on loopback ports of its own with
# temporary data directories, and stops every server it started, by PID, on
# exit. ZeroMQ needs no server: `busmq bench --peer zmq` binds its own PULL
# sockets, one loopback port per queue counting up from PORT_BASE + 6.
# Environment: BUSMQ (binary; default: cargo build --release and
# target/release/busmq), PORT_BASE (default 17100; uses the next 5 ports for
# the servers and, for ZeroMQ, one per queue from PORT_BASE + 6: 17106-17205
# with the default 100 queues), OUT (directory for the runs' logs and JSON;
# default a temporary one).
set -euo pipefail

cd "$(dirname "$0")/.."
FLAGS=("$@")
[ ${#FLAGS[@]} -eq 0 ] && FLAGS=(--duration 10s)

PORT_BASE=${PORT_BASE:-17100}
REDIS_PORT=$((PORT_BASE + 1))
NATS_PORT=$((PORT_BASE + 2))
AMQP_PORT=$((PORT_BASE + 3))
DIST_PORT=$((PORT_BASE + 4))
EPMD_PORT=$((PORT_BASE + 5))
# The first of ZeroMQ's PULL ports (one per queue; a port in use fails the
# zmq run only, with "Address already in use").
ZMQ_PORT=$((PORT_BASE + 6))

WORK=$(mktemp -d /tmp/busmq-bench-peers.XXXXXX)
OUT=${OUT:-$WORK/out}
mkdir -p "$OUT"
PIDS=()

stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do
        # Each server runs in a session (and process group) of its own,
        # led by the PID recorded here.
        kill -TERM -- "-$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    rm -rf "$WORK/redis" "$WORK/nats" "$WORK/rabbitmq"
    echo "stopped the servers; logs and reports in $OUT" >&2
}
trap stop_all EXIT

# Starts "$@" in a session of its own; records its PID.
start() {
    local log=$1
    shift
    setsid "$@" >"$log" 2>&1 &
    PIDS+=($!)
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 what=$2 tries=$3
    for _ in $(seq 1 "$tries"); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.5
    done
    echo "$what did not open 127.0.0.1:$port" >&2
    return 1
}

for port in $REDIS_PORT $NATS_PORT $AMQP_PORT $DIST_PORT $EPMD_PORT; do
    port_free "$port" || { echo "port $port is in use; set PORT_BASE" >&2; exit 1; }
done

missing=()
command -v nats-server >/dev/null || missing+=(nats-server)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

if [ -z "${BUSMQ:-}" ]; then
    cargo build --release -q -p busmq-cli
    BUSMQ=target/release/busmq
fi

# Redis: the busmq Redis store's server and the raw baseline, no persistence.
mkdir -p "$WORK/redis"
start "$OUT/redis-server.log" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
    --save "" --appendonly no --dir "$WORK/redis"
wait_port "$REDIS_PORT" redis-server 20

# NATS with JetStream, file storage in its own directory.
mkdir -p "$WORK/nats"
start "$OUT/nats-server.log" nats-server -js -sd "$WORK/nats" -a 127.0.0.1 -p "$NATS_PORT"
wait_port "$NATS_PORT" nats-server 20

# RabbitMQ: its own node name, data, logs, config, cookie (HOME) and epmd,
# every listener on loopback.
R=$WORK/rabbitmq
mkdir -p "$R/mnesia" "$R/log" "$R/home"
echo '[].' >"$R/enabled_plugins"
echo "listeners.tcp.default = 127.0.0.1:$AMQP_PORT" >"$R/rabbitmq.conf"
start "$OUT/epmd.log" epmd -address 127.0.0.1 -port "$EPMD_PORT"
wait_port "$EPMD_PORT" epmd 20
(
    cd "$R"
    export HOME=$R/home ERL_EPMD_PORT=$EPMD_PORT ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_NODENAME=busmqbench$PORT_BASE@localhost
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$AMQP_PORT
    export RABBITMQ_DIST_PORT=$DIST_PORT
    export RABBITMQ_MNESIA_BASE=$R/mnesia RABBITMQ_LOG_BASE=$R/log
    export RABBITMQ_ENABLED_PLUGINS_FILE=$R/enabled_plugins
    export RABBITMQ_CONFIG_FILE=$R/rabbitmq.conf
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    exec setsid /usr/lib/rabbitmq/bin/rabbitmq-server
) >"$OUT/rabbitmq-server.log" 2>&1 &
PIDS+=($!)
# The Erlang VM takes a few seconds to boot.
wait_port "$AMQP_PORT" rabbitmq-server 120

versions() {
    echo "busmq: $("$BUSMQ" --version 2>/dev/null || echo "$BUSMQ")"
    echo "redis-server: $(redis-server --version | awk '{print $3}')"
    echo "nats-server: $(nats-server --version)"
    echo "rabbitmq-server: $(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null || echo '?')," \
        "Erlang $(dpkg-query -W -f '${Version}' erlang-base 2>/dev/null || echo '?')"
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo);" \
        "load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
}
versions | tee "$OUT/versions.txt"
echo "flags: ${FLAGS[*]}"

ROWS=()
run() {
    local name=$1 label=$2
    shift 2
    echo
    echo "== $label"
    # A run that fails keeps its row (with no figures), and the others run.
    timeout "${RUN_TIMEOUT:-300}" "$BUSMQ" bench "$@" "${FLAGS[@]}" --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.txt" ||
        echo "FAILED: $label" | tee -a "$OUT/$name.txt"
    ROWS+=("$name|$label")
}

run busmq-embedded "busmq, embedded store (SQLite, fsync per commit)" --storage embedded
run busmq-redis "busmq, Redis store" --storage "redis://127.0.0.1:$REDIS_PORT"
run nats "NATS JetStream (file store, publish acks, explicit acks)" \
    --peer nats --peer-url "nats://127.0.0.1:$NATS_PORT"
run rabbitmq "RabbitMQ (durable, persistent, confirms, manual acks)" \
    --peer rabbitmq --peer-url "amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"
run redis "Redis lists (LPUSH / RPOP, no broker, no acks)" \
    --peer redis --peer-url "redis://127.0.0.1:$REDIS_PORT"
run zmq "ZeroMQ PUSH→PULL (libzmq, no broker, no storage, no acks)" \
    --peer zmq --peer-url "tcp://127.0.0.1:$ZMQ_PORT"

echo
echo "== redis-benchmark -t lpush,rpop -d 32 -P 64 (the store's own ceiling)"
redis-benchmark -p "$REDIS_PORT" -t lpush,rpop -d 32 -P 64 -n 2000000 -q | tr '\r' '\n' |
    grep -E '^(LPUSH|RPOP): [0-9.]+ requests per second' | tee "$OUT/redis-benchmark.txt"

# The comparison table, from the lines each run printed.
field() { sed -n "s/.*$2 \([0-9,.]*\).*/\1/p" "$OUT/$1.txt" | head -n 1; }
echo
echo "| system | median pushed msgs/s | median consumed msgs/s | backlog when producers stopped | p50 / p99 push→delivery |"
echo "| --- | ---: | ---: | ---: | --- |"
for row in "${ROWS[@]}"; do
    name=${row%%|*}
    label=${row#*|}
    summary=$(grep '^median of steady cycles' "$OUT/$name.txt" || echo failed)
    pushed=$(sed -n 's/.*pushed \([0-9,]*\)\/s.*/\1/p' <<<"$summary")
    consumed=$(sed -n 's/.*consumed \([0-9,]*\)\/s.*/\1/p' <<<"$summary")
    backlog=$(field "$name" "backlog when producers stopped")
    p50=$(field "$name" "p50")
    p99=$(field "$name" "p99")
    echo "| $label | $pushed | $consumed | $backlog | $p50 / $p99 ms |"
done
while read -r op rate _; do
    echo "| \`redis-benchmark\` ${op%:} \`-P 64 -d 32\` | | $rate (requests/s) | | |"
done <"$OUT/redis-benchmark.txt"
