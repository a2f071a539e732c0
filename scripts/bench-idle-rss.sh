#!/usr/bin/env bash
# What idle queues cost `busmq serve` in memory (issue 4: RSS with 10,000
# idle queues <= 150 MiB).
#
#   scripts/bench-idle-rss.sh                   # 10,000 queues, embedded store
#   QUEUES=1000 STORAGE=memory scripts/bench-idle-rss.sh
#   scripts/bench-idle-rss.sh --idle-consumers  # a consumer waits on each too
#
# Starts `busmq serve` on loopback ports of its own with a temporary data
# directory, reads its RSS (VmRSS, and the peak VmHWM) when it is ready,
# lets `busmq bench --idle-queues` attach the queues (one message each) and
# hold them, reads the RSS again while they are held, and stops the server
# it started, by PID. Extra flags go to `busmq bench`.
# Environment: BUSMQ (binary; default: cargo build --release and
# target/release/busmq), QUEUES (10000), STORAGE (embedded), PORT_BASE
# (17300: broker, +1 storage).
set -euo pipefail

cd "$(dirname "$0")/.."
QUEUES=${QUEUES:-10000}
STORAGE=${STORAGE:-embedded}
PORT_BASE=${PORT_BASE:-17300}
if [ -z "${BUSMQ:-}" ]; then
    cargo build --release -q -p busmq-cli
    BUSMQ=target/release/busmq
fi

WORK=$(mktemp -d /tmp/busmq-idle-rss.XXXXXX)
SERVER=""
cleanup() {
    if [ -n "$SERVER" ] && kill -0 "$SERVER" 2>/dev/null; then
        kill -TERM "$SERVER"
        wait "$SERVER" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

rss() { awk -v k="$2:" '$1 == k { printf "%.1f MiB", $2 / 1024 }' "/proc/$1/status"; }

"$BUSMQ" serve --backend "$STORAGE" --data-dir "$WORK/data" \
    --listen "127.0.0.1:$PORT_BASE" --storage-listen "127.0.0.1:$((PORT_BASE + 1))" \
    >"$WORK/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT_BASE") 2>/dev/null && break
    kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/serve.log" >&2; exit 1; }
    sleep 0.1
done
sleep 1
echo "busmq serve --backend $STORAGE (pid $SERVER), ready: RSS $(rss "$SERVER" VmRSS)"

"$BUSMQ" bench --server "http://127.0.0.1:$PORT_BASE" --idle-queues "$QUEUES" \
    --duration 10s "$@" >"$WORK/bench.log" 2>&1 &
BENCH=$!
until grep -q "idle queues ready" "$WORK/bench.log"; do
    if ! kill -0 "$BENCH" 2>/dev/null; then
        cat "$WORK/bench.log" >&2
        exit 1
    fi
    sleep 0.2
done
grep "idle queues ready" "$WORK/bench.log"
sleep 3
echo "holding $QUEUES idle queues: RSS $(rss "$SERVER" VmRSS), peak $(rss "$SERVER" VmHWM)"
wait "$BENCH"
sleep 1
echo "after closing them: RSS $(rss "$SERVER" VmRSS)"
