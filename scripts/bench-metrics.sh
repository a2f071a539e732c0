#!/usr/bin/env bash
# What metrics cost: `busmq bench` (in-process broker, the headline rows'
# workload: 100 queues, unreliable) with metrics off against the same run
# with the Prometheus exporter on and scraped every second, alternating for
# ROUNDS rounds per store (off first in odd rounds, on first in even ones);
# the median on / off ratio is the figure.
#
#   scripts/bench-metrics.sh                  # memory and embedded, 10 s runs
#   STORES=embedded scripts/bench-metrics.sh --mode reliable
#   TRACES=1 scripts/bench-metrics.sh         # "on" also exports every trace
#
# With TRACES=1 the "on" runs also export traces over OTLP/gRPC
# (OTEL_EXPORTER_OTLP_ENDPOINT) to scripts/otlp-sink.py, an endpoint that
# accepts and drops them, so the figure is what metrics and tracing cost
# together with an exporter configured. It needs a python with grpcio
# (TRACE_PYTHON; default target/py/bin/python, the test suite's virtualenv).
#
# Extra flags go to `busmq bench`. Environment: BIN (directory of busmq;
# default: cargo build --release and target/release), STORES ("memory
# embedded"), ROUNDS (3), PORT (17490: the metrics port of the "on" runs;
# PORT+1 the trace sink's),
# OUT (the runs' output; default a temporary directory).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-ratios.sh
. scripts/bench-ratios.sh
FLAGS=("$@")
[ ${#FLAGS[@]} -eq 0 ] && FLAGS=(--duration 10s)
STORES=${STORES:-memory embedded}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-17490}
OUT=${OUT:-$(mktemp -d /tmp/busmq-bench-metrics.XXXXXX)}
mkdir -p "$OUT"
if [ -z "${BIN:-}" ]; then
    cargo build --release -q -p busmq-cli
    BIN=target/release
fi

SCRAPER=""
stop_scraper() {
    if [ -n "$SCRAPER" ]; then
        kill "$SCRAPER" 2>/dev/null || true
        wait "$SCRAPER" 2>/dev/null || true
        SCRAPER=""
    fi
}

run() {
    local name=$1
    shift
    echo "== $name"
    "$BIN/busmq" bench "$@" "${FLAGS[@]}" 2>&1 | tee "$OUT/$name.txt"
    echo
}

SINK=""
stop_sink() {
    if [ -n "$SINK" ]; then
        kill "$SINK" 2>/dev/null || true
        wait "$SINK" 2>/dev/null || true
        SINK=""
    fi
}
trap 'stop_scraper; stop_sink' EXIT
TRACE_ENV=()
if [ -n "${TRACES:-}" ]; then
    "${TRACE_PYTHON:-target/py/bin/python}" scripts/otlp-sink.py --listen "127.0.0.1:$((PORT + 1))" \
        >"$OUT/otlp-sink.txt" 2>&1 &
    SINK=$!
    sleep 1
    kill -0 "$SINK" || { cat "$OUT/otlp-sink.txt"; exit 1; }
    TRACE_ENV=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$((PORT + 1))")
fi

on() {
    # A scrape a second, as a Prometheus with a short interval would.
    (
        while sleep 1; do
            curl -s -o /dev/null "http://127.0.0.1:$PORT/metrics" || true
        done
    ) &
    SCRAPER=$!
    echo "== $1-on-$2${TRACES:+ (traces exported)}"
    env "${TRACE_ENV[@]}" "$BIN/busmq" bench --storage "$1" --metrics-listen "127.0.0.1:$PORT" "${FLAGS[@]}" 2>&1 |
        tee "$OUT/$1-on-$2.txt"
    echo
    stop_scraper
}

# Odd rounds run off first, even rounds on first: the machine drifts
# within minutes, and a fixed order would hand the drift to one side.
for store in $STORES; do
    for round in $(seq 1 "$ROUNDS"); do
        if [ $((round % 2)) -eq 1 ]; then
            run "$store-off-$round" --storage "$store"
            on "$store" "$round"
        else
            on "$store" "$round"
            run "$store-off-$round" --storage "$store"
        fi
    done
done

echo "flags: ${FLAGS[*]}"
for store in $STORES; do
    RATIOS=""
    for round in $(seq 1 "$ROUNDS"); do
        off=$(consumed_in "$OUT/$store-off-$round.txt")
        on=$(consumed_in "$OUT/$store-on-$round.txt")
        ratio=$(ratio_of "$on" "$off")
        echo "$store round $round: off ${off:-failed} msgs/s consumed; on ${on:-failed} msgs/s consumed${ratio:+; on / off $ratio%}"
        if [ -n "$ratio" ]; then RATIOS+="$ratio"$'\n'; fi
    done
    printf '%s' "$RATIOS" | summarize "$store, metrics${TRACES:+ and traces} on / off"
done
stop_sink
[ -z "${TRACES:-}" ] || cat "$OUT/otlp-sink.txt"
echo "every run's output is in $OUT"
