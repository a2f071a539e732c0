#!/usr/bin/env bash
# Two builds side by side on the headline rows, to tell a regression from
# the machine's own drift (its speed moves by tens of percent within
# minutes): each row runs BASE and NEW alternately for ROUNDS rounds and
# quotes the median of NEW / BASE.
#
#   BASE=/path/to/old/bin NEW=target/release scripts/bench-compare.sh
#
# BASE and NEW are directories holding busmq, busmq-broker and
# busmq-storage (e.g. a `git worktree` of the old commit built with
# `CARGO_TARGET_DIR=... cargo build --release -p busmq-cli -p busmq-broker
# -p busmq-storage`, its binaries copied aside). Rows: 100 queues on the
# memory, embedded and Redis stores in one process, and split processes
# (embedded) benchmarked from outside. Environment: OUT (logs), DURATION
# (10s), ROUNDS (3), PORT_BASE (17600: a redis-server, then the split pair).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-ratios.sh
. scripts/bench-ratios.sh
: "${BASE:?directory of the baseline binaries}" "${NEW:?directory of the binaries to compare}"
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
PORT_BASE=${PORT_BASE:-17600}
OUT=${OUT:-$(mktemp -d /tmp/busmq-bench-compare.XXXXXX)}
mkdir -p "$OUT"
REDIS_URL=redis://127.0.0.1:$((PORT_BASE + 1))
BROKER=127.0.0.1:$((PORT_BASE + 2))
STORE=127.0.0.1:$((PORT_BASE + 3))

PIDS=()
WORK=$(mktemp -d /tmp/busmq-bench-compare-work.XXXXXX)
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
redis-server --port $((PORT_BASE + 1)) --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$WORK" >"$OUT/redis.log" 2>&1 &
PIDS+=($!)

wait_port 127.0.0.1:$((PORT_BASE + 1))

# bench BIN NAME ARGS...: one in-process run.
bench() {
    local bin=$1 name=$2
    shift 2
    timeout 600 "$bin/busmq" bench --duration "$DURATION" "$@" >"$OUT/$name.txt" 2>&1 ||
        echo "FAILED: $name" >>"$OUT/$name.txt"
}

# split BIN NAME: busmq-storage + busmq-broker, benchmarked from outside.
split() {
    local bin=$1 name=$2 storage broker
    rm -rf "$WORK/data"
    "$bin/busmq-storage" --listen "$STORE" --backend embedded --data-dir "$WORK/data" \
        >"$OUT/$name-storage.log" 2>&1 &
    storage=$!
    PIDS+=("$storage")
    wait_port "$STORE"
    "$bin/busmq-broker" --listen "$BROKER" --storage "http://$STORE" >"$OUT/$name-broker.log" 2>&1 &
    broker=$!
    PIDS+=("$broker")
    wait_port "$BROKER"
    timeout 600 "$bin/busmq" bench --server "http://$BROKER" --duration "$DURATION" \
        >"$OUT/$name.txt" 2>&1 || echo "FAILED: $name" >>"$OUT/$name.txt"
    kill -TERM "$broker" "$storage"
    wait "$broker" "$storage" 2>/dev/null || true
}

for row in memory embedded redis split; do
    for round in $(seq 1 "$ROUNDS"); do
        for side in base new; do
            bin=$BASE
            [ "$side" = new ] && bin=$NEW
            name="$row-$side-$round"
            case $row in
                memory) bench "$bin" "$name" --storage memory ;;
                embedded) bench "$bin" "$name" --storage embedded ;;
                redis) bench "$bin" "$name" --storage "$REDIS_URL" ;;
                split) split "$bin" "$name" ;;
            esac
            echo "$name: $(consumed_in "$OUT/$name.txt") msgs/s consumed"
        done
    done
    for round in $(seq 1 "$ROUNDS"); do
        ratio_of "$(consumed_in "$OUT/$row-new-$round.txt")" "$(consumed_in "$OUT/$row-base-$round.txt")"
    done | summarize "$row, new / base"
done | tee "$OUT/compare.txt"
echo "every run's output is in $OUT"
