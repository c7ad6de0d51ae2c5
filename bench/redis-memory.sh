#!/usr/bin/env bash
# Measures what Redis keeps per stored chat message: two chat-server nodes on a fresh
# redis-server, chat-bench sending at a fixed rate over rooms that span both nodes, and Redis's
# used_memory sampled twice while the rooms' logs grow. The figure of docs/scaling.md.
#
# Usage: bench/redis-memory.sh            (1000 rooms, 5000 msgs/s, 64-byte messages)
#        SIZE=1000 bench/redis-memory.sh  longer messages
# Needs: cargo, redis-server, redis-cli.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOMS=${ROOMS:-1000}
RATE=${RATE:-5000}
SIZE=${SIZE:-64}
PORT=${PORT:-9600}
REDIS_PORT=${REDIS_PORT:-6579}
FLAGS="--rate-limit 0 --max-connections 0 --max-connections-per-ip 0 --max-failed-joins 0"

cargo build --release -p chat-server -p chat-bench --quiet
dir=$(mktemp -d)
pids=()
trap 'kill -KILL "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
  --logfile "$dir/redis.log" &
pids+=($!)
for node in 1 2; do
  # shellcheck disable=SC2086 # the flags are meant to split into words
  RUST_LOG=warn target/release/chat-server --bind "127.0.0.1:$((PORT + node))" \
    --redis "redis://127.0.0.1:$REDIS_PORT/" $FLAGS >"$dir/node$node.log" 2>&1 &
  pids+=($!)
done
sleep 2

cli() { redis-cli -p "$REDIS_PORT" "$@"; }
used() { cli info memory | tr -d '\r' | awk -F: '/^used_memory:/ {print $2}'; }
stored() {
  cli --scan --pattern 'chat:*:log' | sed 's/^/LLEN /' | cli | awk '{n += $1} END {print n + 0}'
}

target/release/chat-bench --url "ws://127.0.0.1:$((PORT + 1))/ws" \
  --url "ws://127.0.0.1:$((PORT + 2))/ws" --quiet \
  throughput --rooms "$ROOMS" --rate "$RATE" --size "$SIZE" --warmup 1s --duration 14s \
  >"$dir/bench.txt" &
bench=$!
sleep 4
used1=$(used) stored1=$(stored)
sleep 8
used2=$(used) stored2=$(stored)
wait "$bench"

echo "rooms $ROOMS, $RATE msgs/s, $SIZE-byte messages"
echo "messages stored: $stored1 -> $stored2; used_memory: $used1 -> $used2 bytes"
awk -v u="$((used2 - used1))" -v m="$((stored2 - stored1))" \
  'BEGIN {printf "Redis memory per stored message: %.0f bytes\n", u / m}'
