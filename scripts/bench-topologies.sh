#!/usr/bin/env bash
# All-in-one against split processes, the same store and workload in one
# session (issue 4: split processes carry >= 60% of all-in-one).
#
#   scripts/bench-topologies.sh                         # embedded store, 10 s runs
#   STORAGE=memory scripts/bench-topologies.sh --mode reliable
#
# 1. `busmq serve` (storage and broker in one process), and
# 2. `busmq-storage` + `busmq-broker` (two processes, the broker reaching the
#    store over gRPC), alternating for ROUNDS rounds (the median ratio is
#    the figure),
# each benchmarked from outside by `busmq bench --server`, so both runs pay
# the client's gRPC hop and only the broker→storage hop differs. Every
# process runs on loopback ports of its own with a temporary data directory
# and is stopped, by PID, after its run. Extra flags go to `busmq bench`.
# Environment: BIN (directory of busmq, busmq-broker, busmq-storage;
# default: cargo build --release and target/release), STORAGE (embedded),
# PORT_BASE (17400: broker, +1 storage), ROUNDS (3).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-ratios.sh
. scripts/bench-ratios.sh
FLAGS=("$@")
[ ${#FLAGS[@]} -eq 0 ] && FLAGS=(--duration 10s)
STORAGE=${STORAGE:-embedded}
PORT_BASE=${PORT_BASE:-17400}
ROUNDS=${ROUNDS:-3}
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

bench() {
    local name=$1
    echo "== $name"
    "$BIN/busmq" bench --server "http://$BROKER" "${FLAGS[@]}" 2>&1 | tee "$WORK/$name.txt"
    echo
}

all_in_one() {
    "$BIN/busmq" serve --backend "$STORAGE" --data-dir "$WORK/$1" \
        --listen "$BROKER" --storage-listen "$STORE" >"$WORK/$1.log" 2>&1 &
    PIDS+=($!)
    wait_port "$BROKER"
    bench "$1"
    stop
}

split() {
    "$BIN/busmq-storage" --backend "$STORAGE" --data-dir "$WORK/$1" \
        --listen "$STORE" >"$WORK/$1-storage.log" 2>&1 &
    PIDS+=($!)
    wait_port "$STORE"
    "$BIN/busmq-broker" --storage "http://$STORE" --listen "$BROKER" >"$WORK/$1-broker.log" 2>&1 &
    PIDS+=($!)
    wait_port "$BROKER"
    bench "$1"
    stop
}

# Alternating, so that both sides of each round share the machine's state
# (its speed moves by tens of percent within minutes).
for round in $(seq 1 "$ROUNDS"); do
    all_in_one "all-in-one-$round"
    split "split-$round"
done

echo "store $STORAGE, flags: ${FLAGS[*]}"
RATIOS=""
for round in $(seq 1 "$ROUNDS"); do
    one=$(consumed_in "$WORK/all-in-one-$round.txt")
    two=$(consumed_in "$WORK/split-$round.txt")
    ratio=$(ratio_of "$two" "$one")
    echo "round $round: all-in-one ${one:-failed} msgs/s consumed; split ${two:-failed} msgs/s consumed${ratio:+; split / all-in-one $ratio%}"
    if [ -n "$ratio" ]; then RATIOS+="$ratio"$'\n'; fi
done
printf '%s' "$RATIOS" | summarize "split / all-in-one"
