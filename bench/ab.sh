#!/usr/bin/env bash
# A/B: runs two chat-server binaries one after the other, alternating, RUNS times, at a fixed
# offered rate over 1,000 rooms, and prints each run's server CPU per delivered message and
# p99 latency. For "did this change move the hot path?", where noise between separate
# compare.sh sessions would hide a few per cent.
#
# Usage: bench/ab.sh OLD_BINARY NEW_BINARY     (RATE=20000 RUNS=3 DURATION=15s by default)
# Needs: jq, and target/release/chat-bench (cargo build --release -p chat-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: bench/ab.sh OLD_BINARY NEW_BINARY" >&2; exit 2; }
RATE=${RATE:-20000}
RUNS=${RUNS:-3}
DURATION=${DURATION:-15s}
PORT=${PORT:-9700}
BENCH_BIN=target/release/chat-bench
FLAGS="--rate-limit 0 --max-connections 0 --max-connections-per-ip 0 --max-failed-joins 0"
for run in $(seq "$RUNS"); do
  for name in old new; do
    if [ "$name" = old ]; then binary=$1; else binary=$2; fi
    PORT=$((PORT + 1))
    # shellcheck disable=SC2086 # the flags are meant to split into words
    RUST_LOG=warn "$binary" --bind "127.0.0.1:$PORT" $FLAGS >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 100); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
      sleep 0.1
    done
    "$BENCH_BIN" --url "ws://127.0.0.1:$PORT/ws" --server-pid "$pid" --json --quiet \
      throughput --rooms 1000 --duration "$DURATION" --warmup 3s --rate "$RATE" |
      jq -r --arg name "$name" --argjson run "$run" \
        '"run \($run) \($name): \(.server.cpu_us_per_message * 100 | round / 100) µs CPU per delivered message, p99 \(.latency_us.p99_us / 1000) ms, errors \(.errors.total)"'
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  done
done
