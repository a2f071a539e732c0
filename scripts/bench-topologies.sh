#!/usr/bin/env bash
# All-in-one against split processes, the same store and workload in one
# session (issue 4: split processes carry >= 60% of all-in-one).
#
#   scripts/bench-topologies.sh                         # embedded store, 10 s runs
#   STORAGE=memory scripts/bench-topologies.sh --mode reliable
#
# 1. `busmq serve` (storage and broker in one process), and
# 2. `busmq-storage` + `busmq-broker` (two processes, the broker reaching the
#    store over gRPC),
# each benchmarked from outside by `busmq bench --server`, so both runs pay
# the client's gRPC hop and only the broker→storage hop differs. Every
# process runs on loopback ports of its own with a temporary data directory
# and is stopped, by PID, after its run. Extra flags go to `busmq bench`.
# Environment: BIN (directory of busmq, busmq-broker, busmq-storage;
# default: cargo build --release and target/release), STORAGE (embedded),
# PORT_BASE (17400: broker, +1 storage).
set -euo pipefail

cd "$(dirname "$0")/.."
FLAGS=("$@")
[ ${#FLAGS[@]} -eq 0 ] && FLAGS=(--duration 10s)
STORAGE=${STORAGE:-embedded}
PORT_BASE=${PORT_BASE:-17400}
BROKER=127.0.0.1:$PORT_BASE
STORE=127.0.0.1:$((PORT_BASE + 1))
if [ -z "${BIN:-}" ]; then
    cargo build --release -q -p busmq-cli -p busmq-broker -p busmq-storage
    BIN=target/release
fi

WORK=$(mktemp -d /tmp/busmq-topologies.XXXXXX)
PIDS=()
stop() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap 'stop; rm -rf "$WORK"' EXIT

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    exit 1
}

bench() {
    local name=$1
    echo "== $name"
    "$BIN/busmq" bench --server "http://$BROKER" "${FLAGS[@]}" 2>&1 | tee "$WORK/$name.txt"
    echo
}

"$BIN/busmq" serve --storage "$STORAGE" --data-dir "$WORK/one" \
    --listen "$BROKER" --storage-listen "$STORE" >"$WORK/serve.log" 2>&1 &
PIDS+=($!)
wait_port "$BROKER"
bench all-in-one
stop

"$BIN/busmq-storage" --backend "$STORAGE" --data-dir "$WORK/split" \
    --listen "$STORE" >"$WORK/storage.log" 2>&1 &
PIDS+=($!)
wait_port "$STORE"
"$BIN/busmq-broker" --storage "http://$STORE" --listen "$BROKER" >"$WORK/broker.log" 2>&1 &
PIDS+=($!)
wait_port "$BROKER"
bench split
stop

consumed() { sed -n 's/^median of steady cycles: .*consumed \([0-9,]*\)\/s.*/\1/p' "$WORK/$1.txt" | tr -d ,; }
one=$(consumed all-in-one)
split=$(consumed split)
echo "store $STORAGE, flags: ${FLAGS[*]}"
echo "all-in-one: ${one:-failed} msgs/s consumed; split: ${split:-failed} msgs/s consumed"
if [ -n "$one" ] && [ -n "$split" ] && [ "$one" -gt 0 ]; then
    awk -v s="$split" -v o="$one" 'BEGIN { printf "split / all-in-one: %.1f%%\n", 100 * s / o }'
fi
