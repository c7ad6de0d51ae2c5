#!/usr/bin/env bash
# Measures chat-server next to the Node reference peer (../shared/peers/node-ws) with the same
# chat-bench scenarios, alternating between the two servers run after run, and prints the
# median of each figure with its spread (min–max) and the ratio chat-server / Node.
#
# Every run gets a freshly started server, so that memory figures start from an empty process
# and no run inherits another's heap, JIT state or TIME_WAIT sockets on its port.
#
# Usage: bench/compare.sh            (RUNS=5 by default; see the settings below)
#        RUNS=1 DURATION=5s bench/compare.sh      a quick look, not figures to publish
#        SCENARIOS=fixed FIXED_RATES="5000 20000" bench/compare.sh   fixed rates only
#        SERVER_BIN=../old/target/release/chat-server bench/compare.sh  another chat-server build
# Output: bench/results/<date>/results.jsonl (one chat-bench report per line, tagged) and
#         bench/results/<date>/summary.md (the table printed at the end).
# Needs: cargo, node and npm, jq.
#
# Multi-node runs (issue #12: several chat-server nodes sharing rooms through Redis) are not
# made by this script. By hand, with each node started on its own port against the same Redis:
#   target/release/chat-bench --url ws://127.0.0.1:9401/ws --url ws://127.0.0.1:9402/ws \
#     --server-pid "$NODE1_PID" --server-pid "$NODE2_PID" --redis-pid "$(pidof redis-server)" \
#     --json --quiet throughput --rooms 1000 --duration 20s --rate 5000
# Room r's host connects to URL r mod N and its guest to URL (r + 1) mod N, so every room spans
# two nodes. The report's .servers has each node's figures, .server their sum, .redis Redis's;
# bench/summarize.jq adds "node N" and "redis-server" rows for such reports.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}                      # runs of each scenario against each server
DURATION=${DURATION:-20s}            # measured window of the throughput scenarios
WARMUP=${WARMUP:-3s}                 # sending before the window (lets V8's JIT settle)
IDLE_ROOMS=${IDLE_ROOMS:-9000}       # connections scenario: 2 x this many sockets
HOLD=${HOLD:-10s}                    # connections scenario: idle hold before reading RSS
BUSY_ROOMS=${BUSY_ROOMS:-1000}       # throughput at many rooms
FEW_ROOMS=${FEW_ROOMS:-20}           # throughput at few rooms
FIXED_RATES=${FIXED_RATES:-5000}     # fixed offered loads, msgs/s over BUSY_ROOMS rooms
SCENARIOS=${SCENARIOS:-idle closed-loop fixed churn}  # which of the scenarios below to run
CHURN_RATE=${CHURN_RATE:-200}        # churn: sessions started per second
CHURN_DURATION=${CHURN_DURATION:-10s}
PEER_SRC=${PEER_SRC:-../shared/peers/node-ws}
PORT=${PORT:-9400}                   # first port; each server start takes the next one
# chat-server's per-client limits (20 msgs/s per connection, 10,000 connections, 64 per address,
# failed joins) would refuse a load test from one address; the Node peer has none. Off, as the
# README advises for load tests on loopback.
CHAT_SERVER_FLAGS=${CHAT_SERVER_FLAGS:---rate-limit 0 --max-connections 0 --max-connections-per-ip 0 --max-failed-joins 0}
OUT=${OUT:-bench/results/$(date -u +%Y%m%dT%H%M%SZ)}

for tool in cargo node npm jq; do
  command -v "$tool" >/dev/null || { echo "compare.sh: $tool is required" >&2; exit 2; }
done
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"

echo "== building release binaries" >&2
cargo build --release -p chat-server -p chat-bench --quiet
SERVER_BIN=${SERVER_BIN:-target/release/chat-server}
BENCH_BIN=target/release/chat-bench

# The Node peer runs from a copy under target/, so that shared/ stays read-only.
NODE_DIR=target/node-ws
if [ ! -d "$NODE_DIR/node_modules" ]; then
  echo "== installing the Node peer's dependencies in $NODE_DIR" >&2
  rm -rf "$NODE_DIR"
  cp -r "$PEER_SRC" "$NODE_DIR"
  (cd "$NODE_DIR" && npm install --no-audit --no-fund --silent)
fi

SERVER_PID=
# Starts server $1 (chat-server or node) on the next port; sets SERVER_PID and URL.
start_server() {
  PORT=$((PORT + 1))
  local log="$OUT/$1-$PORT.log"
  case "$1" in
    # shellcheck disable=SC2086 # the flags are meant to split into words
    chat-server) RUST_LOG=warn "$SERVER_BIN" --bind "127.0.0.1:$PORT" $CHAT_SERVER_FLAGS >"$log" 2>&1 & ;;
    node) node "$NODE_DIR/server.js" --bind "127.0.0.1:$PORT" >"$log" 2>&1 & ;;
  esac
  SERVER_PID=$!
  URL="ws://127.0.0.1:$PORT/ws"
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "compare.sh: $1 did not start listening on port $PORT (see $log)" >&2
  exit 2
}

stop_server() {
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}
trap '[ -n "$SERVER_PID" ] && kill -KILL "$SERVER_PID" 2>/dev/null; true' EXIT

# Runs one scenario ($1 = label, rest = chat-bench arguments) against server $SERVER on a fresh
# server process, and appends the tagged report to results.jsonl.
measure() {
  local label=$1 run=$2
  shift 2
  start_server "$SERVER"
  local load status=0 report
  load=$(cut -d' ' -f1 /proc/loadavg)
  report=$("$BENCH_BIN" --url "$URL" --server-pid "$SERVER_PID" --json --quiet "$@") || status=$?
  stop_server
  if [ -z "$report" ]; then
    echo "   $label on $SERVER: chat-bench failed (exit $status); see above" >&2
    return
  fi
  jq -c --arg target "$SERVER" --arg tag "$label" --argjson run "$run" \
    --arg load "$load" --arg command "chat-bench $*" \
    '{target: $target, label: $tag, run: $run, load_before: ($load | tonumber),
      command: $command, exit: '"$status"'} + .' <<<"$report" >>"$RESULTS"
  echo "   $label on $SERVER: done (exit $status, load before ${load})" >&2
}

{
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
  echo "cpu: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "open files: $(ulimit -n); ephemeral ports: $(tr '\t' '-' </proc/sys/net/ipv4/ip_local_port_range)"
  echo "rustc: $(rustc --version); node: $(node --version); ws: $(jq -r .version "$NODE_DIR/node_modules/ws/package.json")"
  echo "git: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)'); chat-server: $SERVER_BIN"
  echo "scenarios: $SCENARIOS; fixed rates: $FIXED_RATES"
  echo "servers: chat-server --bind 127.0.0.1:PORT $CHAT_SERVER_FLAGS; node server.js --bind 127.0.0.1:PORT"
  echo "started: $(date -u +%FT%TZ); runs: $RUNS"
} | tee "$OUT/machine.txt" >&2

for run in $(seq "$RUNS"); do
  # Alternate which server goes first, so that slow drifts in the machine's load hit both.
  if [ $((run % 2)) -eq 1 ]; then order="chat-server node"; else order="node chat-server"; fi
  echo "== run $run of $RUNS ($order)" >&2
  for SERVER in $order; do
    for scenario in $SCENARIOS; do
      case "$scenario" in
        idle) measure "idle-$IDLE_ROOMS-rooms" "$run" connections --rooms "$IDLE_ROOMS" --hold "$HOLD" ;;
        closed-loop)
          measure "closed-loop-$BUSY_ROOMS-rooms" "$run" throughput --rooms "$BUSY_ROOMS" \
            --duration "$DURATION" --warmup "$WARMUP" --in-flight 1
          measure "closed-loop-$FEW_ROOMS-rooms" "$run" throughput --rooms "$FEW_ROOMS" \
            --duration "$DURATION" --warmup "$WARMUP" --in-flight 1 ;;
        fixed)
          for rate in $FIXED_RATES; do
            measure "fixed-$rate-per-sec-$BUSY_ROOMS-rooms" "$run" throughput --rooms "$BUSY_ROOMS" \
              --duration "$DURATION" --warmup "$WARMUP" --rate "$rate"
          done ;;
        churn) measure "churn-$CHURN_RATE-per-sec" "$run" churn --rate "$CHURN_RATE" \
          --duration "$CHURN_DURATION" ;;
        *) echo "compare.sh: unknown scenario $scenario" >&2; exit 2 ;;
      esac
    done
  done
done

# Two tables: every run, and only the runs during which other programs on the machine used less
# than QUIET % of a core (other engineers' builds make some runs noisy; n says how many are left).
QUIET=${QUIET:-20}
{
  echo "### Every run"
  echo
  jq -rs --argjson quiet null -f bench/summarize.jq "$RESULTS"
  echo
  echo "### Runs with less than $QUIET % of a core used by other programs"
  echo
  jq -rs --argjson quiet "$QUIET" -f bench/summarize.jq "$RESULTS"
} | tee "$OUT/summary.md"
echo >&2
echo "results: $RESULTS; summary: $OUT/summary.md" >&2
