#!/usr/bin/env bash
# The HTTP gateway's three-call flow (POST /message/new, GET /message/next,
# POST /message/{id}/status/done) under wrk, against `busmq serve` (the
# gateway in its process, over STORE) and against the reference ceiling
# (crates/busmq-http/examples/ceiling.rs: the same routes over a VecDeque),
# alternating for ROUNDS rounds; the median busmq / ceiling ratio of flows
# per second is the figure.
#
#   scripts/bench-http.sh
#   STORE=memory ROUNDS=5 DURATION=20s scripts/bench-http.sh
#
# Environment: BIN (directory of busmq and examples/ceiling; default: a
# release build into target/release), STORE (embedded), ROUNDS (3),
# DURATION (10s), THREADS (2), CONNECTIONS (16), PORT (17600; PORT+1 the
# ceiling, PORT+2..4 busmq serve's gRPC, storage and metrics ports).
# Needs wrk (apt-get install wrk).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-ratios.sh
. scripts/bench-ratios.sh
STORE=${STORE:-embedded}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-16}
PORT=${PORT:-17600}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
if [ -z "${BIN:-}" ]; then
    cargo build --release -q -p busmq-cli -p busmq-http --example ceiling
    BIN=target/release
fi
DATA=$(mktemp -d /tmp/busmq-bench-http.XXXXXX)
SERVER=""
stop() {
    if [ -n "$SERVER" ]; then
        kill "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
        SERVER=""
    fi
}
trap 'stop; rm -rf "$DATA"' EXIT

flows() {
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s scripts/http-flow.lua "http://127.0.0.1:$1" \
        | tee -a "$DATA/wrk.txt" | sed -nE 's/^flows .*: ([0-9]+) flows\/s.*/\1/p'
}

run_busmq() {
    rm -rf "$DATA/store"
    "$BIN/busmq" serve --backend "$STORE" --data-dir "$DATA/store" \
        --listen "127.0.0.1:$((PORT + 2))" --storage-listen "127.0.0.1:$((PORT + 3))" \
        --metrics-listen off --http-listen "127.0.0.1:$PORT" >"$DATA/serve.log" 2>&1 &
    SERVER=$!
    wait_port "127.0.0.1:$PORT"
    flows "$PORT"
    stop
}

run_ceiling() {
    "$BIN/examples/ceiling" "127.0.0.1:$((PORT + 1))" >"$DATA/ceiling.log" 2>&1 &
    SERVER=$!
    wait_port "127.0.0.1:$((PORT + 1))"
    flows "$((PORT + 1))"
    stop
}

ratios=()
for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) -eq 1 ]; then
        b=$(run_busmq); c=$(run_ceiling)
    else
        c=$(run_ceiling); b=$(run_busmq)
    fi
    r=$(awk -v b="$b" -v c="$c" 'BEGIN { printf "%.1f", 100 * b / c }')
    echo "round $round: busmq ($STORE) $b flows/s, ceiling $c flows/s: $r%"
    ratios+=("$r")
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{ a[NR] = $1 } END { printf "median busmq / ceiling: %s%% of %d rounds\n", a[int((NR + 1) / 2)], NR }'
