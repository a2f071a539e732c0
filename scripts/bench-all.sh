#!/usr/bin/env bash
# Every figure of issue 4's target table in one session, each run's full
# output kept in OUT, in this order:
#   the disk's synchronous-write latency (what a durable commit costs),
#   busmq beside its peers (scripts/bench-peers.sh: embedded and Redis
#     stores, NATS JetStream, RabbitMQ, raw Redis lists, raw ZeroMQ,
#     redis-benchmark),
#   memory store (with the README's chart), Redis 1 server and 3 shards,
#   1 ordered queue on Redis, reliable+ack against unreliable (embedded and
#   Redis), all-in-one against split processes (embedded), latency at
#   20,000 msgs/s offered (embedded and memory), the queue sweep
#   1 → 10,000 (memory; 100 and 10,000 embedded; memory again bounded per
#   queue only), and the RSS of
#   `busmq serve` holding 10,000 idle queues.
#
#   scripts/bench-all.sh                # 10–20 minutes on 2 cores, after the build
#   HEADLINE=1 scripts/bench-all.sh     # the headline rows only, ~3 minutes:
#       100 queues on memory, embedded and Redis, split vs all-in-one
#
# Environment: OUT (directory for the logs; default a temporary one),
# DURATION (10s), ROUNDS (3: alternating rounds of each ratio target; the
# medians are collected in OUT/ratios.txt), PORT_BASE (17500: four redis-servers on the next ports).
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
PORT_BASE=${PORT_BASE:-17500}
OUT=${OUT:-$(mktemp -d /tmp/busmq-bench-all.XXXXXX)}
mkdir -p "$OUT"
command -v redis-server >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >&2
}
cargo build --release -q -p busmq-cli -p busmq-broker -p busmq-storage
export BUSMQ=target/release/busmq BIN=target/release
B=$BUSMQ

REDIS_PIDS=()
REDIS_DIR=$(mktemp -d /tmp/busmq-bench-redis.XXXXXX)
cleanup() {
    local pid
    for pid in "${REDIS_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${REDIS_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$REDIS_DIR"
}
trap cleanup EXIT
R=()
for i in 1 2 3 4; do
    port=$((PORT_BASE + i))
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$REDIS_DIR" --dbfilename "dump-$port.rdb" >"$OUT/redis-$port.log" 2>&1 &
    REDIS_PIDS+=($!)
    R+=("redis://127.0.0.1:$port")
done
sleep 1
SHARDS="${R[1]},${R[2]},${R[3]}"

# shellcheck source=scripts/bench-ratios.sh
. scripts/bench-ratios.sh

# The ratio NUMERATOR-r / DENOMINATOR-r of each round r's runs, summarized.
ratio_rounds() {
    local label=$1 top=$2 bottom=$3 round t b
    echo
    echo "== $label"
    for round in $(seq 1 "$ROUNDS"); do
        t=$(consumed_in "$OUT/$top-$round.txt")
        b=$(consumed_in "$OUT/$bottom-$round.txt")
        ratio_of "$t" "$b"
    done | summarize "$label" | tee -a "$OUT/ratios.txt"
}

# Runs `busmq bench "$@"`, keeping its output as OUT/$1.txt.
run() {
    local name=$1
    shift
    echo
    echo "== $name: busmq bench $*"
    timeout 600 "$B" bench "$@" 2>&1 | tee "$OUT/$name.txt" || echo "FAILED: $name" | tee -a "$OUT/$name.txt"
}

{
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
    date -u
} | tee "$OUT/session.txt"

echo "== disk: 1,000 synchronous 4 KiB writes (dd oflag=dsync), what one durable commit costs at least"
dd if=/dev/zero of="$OUT/dsync.tmp" bs=4k count=1000 oflag=dsync 2>&1 | tail -n 1 | tee "$OUT/dsync.txt"
rm -f "$OUT/dsync.tmp"

if [ -n "${HEADLINE:-}" ]; then
    run memory --storage memory --duration "$DURATION"
    run redis-1 --storage "${R[0]}" --duration "$DURATION"
    run embedded --storage embedded --duration "$DURATION"
    echo
    ROUNDS=$ROUNDS STORAGE=embedded PORT_BASE=$((PORT_BASE + 10)) scripts/bench-topologies.sh --duration "$DURATION" | tee "$OUT/topologies.txt"
    grep -h "^split / all-in-one: median" "$OUT/topologies.txt" | tee -a "$OUT/ratios.txt" || true
    echo "every run's output is in $OUT"
    exit 0
fi

OUT=$OUT/peers scripts/bench-peers.sh --duration "$DURATION" | tee "$OUT/peers.txt"

run memory --storage memory --duration "$DURATION" --plot docs/bench-memory.png
run redis-1 --storage "${R[0]}" --duration "$DURATION"
run redis-3 --storage "$SHARDS" --duration "$DURATION"
run redis-1-queue --storage "${R[0]}" --duration "$DURATION" --queues 1 --producers 1 --consumers 1
# The ratio targets alternate their two sides for ROUNDS rounds and quote
# the median ratio: this machine's speed moves by tens of percent within
# minutes, more than the effects measured.
for round in $(seq 1 "$ROUNDS"); do
    run "embedded-unreliable-$round" --storage embedded --duration "$DURATION"
    run "embedded-reliable-$round" --storage embedded --duration "$DURATION" --mode reliable
done
ratio_rounds "embedded, reliable / unreliable" embedded-reliable embedded-unreliable
run embedded-lease --storage embedded --duration "$DURATION" --mode lease
for round in $(seq 1 "$ROUNDS"); do
    run "redis-unreliable-$round" --storage "${R[0]}" --duration "$DURATION"
    run "redis-reliable-$round" --storage "${R[0]}" --duration "$DURATION" --mode reliable
done
ratio_rounds "Redis, reliable / unreliable" redis-reliable redis-unreliable

echo
ROUNDS=$ROUNDS STORAGE=embedded PORT_BASE=$((PORT_BASE + 10)) scripts/bench-topologies.sh --duration "$DURATION" | tee "$OUT/topologies.txt"

run latency-embedded-64 --storage embedded --duration "$DURATION" --rate 20000
run latency-embedded-8 --storage embedded --duration "$DURATION" --rate 20000 --batch 8
run latency-memory-64 --storage memory --duration "$DURATION" --rate 20000

run sweep-memory --storage memory --duration 16s --sweep-queues 1,10,100,1000,10000
run sweep-embedded --storage embedded --duration 16s --sweep-queues 100,10000
for round in $(seq 1 "$ROUNDS"); do
    run "sweep-memory-100-10000-$round" --storage memory --duration "$DURATION" --sweep-queues 100,10000
done
echo
echo "== memory, 10,000 / 100 queues, each round one sweep"
for round in $(seq 1 "$ROUNDS"); do
    sed -n 's/^ *10,000 .* \([0-9.]*\)% .*/\1/p' "$OUT/sweep-memory-100-10000-$round.txt"
done | summarize "memory, 10,000 / 100 queues" | tee -a "$OUT/ratios.txt"
# The same sweep bounded per queue only (8 batches in flight per queue, no
# per-producer window): the load offered then grows 100x from 100 to 10,000
# queues, as it did before --window existed.
run sweep-memory-per-queue --storage memory --duration 16s --sweep-queues 100,10000 --window 1000000

echo
PORT_BASE=$((PORT_BASE + 20)) QUEUES=10000 scripts/bench-idle-rss.sh | tee "$OUT/idle-rss.txt"
PORT_BASE=$((PORT_BASE + 20)) QUEUES=10000 scripts/bench-idle-rss.sh --idle-consumers | tee "$OUT/idle-rss-consumers.txt"

grep -h "^split / all-in-one: median" "$OUT/topologies.txt" >>"$OUT/ratios.txt" || true
echo
echo "== ratio targets (median of alternating rounds)"
cat "$OUT/ratios.txt"
echo
echo "every run's output is in $OUT"
