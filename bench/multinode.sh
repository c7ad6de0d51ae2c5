#!/usr/bin/env bash
# Measures chat-server as two nodes sharing rooms through Redis (--redis) beside the Node
# multi-node peer (../shared/peers/node-ws/server-redis.js), and, in the same run, each of them
# as one process keeping everything in memory: the figures of issue #12 in BENCHMARKS.md.
#
# Every room spans the two nodes: chat-bench puts room r's host on node r mod 2 and its guest on
# node r + 1 mod 2. Each run gets a fresh redis-server and fresh nodes. Targets alternate run
# after run, so that slow drifts in the machine's load hit all of them.
#
# With TARGETS including chat-server-cluster and node-cluster, the same two nodes run on a
# local Redis Cluster of six redis-servers (three masters, each with a replica), and Redis CPU
# is the masters' together: read from /proc around the whole chat-bench run (setup and warmup
# included, so a little above what the window alone would give) and divided by the messages
# delivered over the window and the warmup, counted at the window's rate.
#
# Usage: bench/multinode.sh                (RUNS=3)
#        RUNS=1 DURATION=5s SCENARIOS=fixed bench/multinode.sh     a quick look
# Output: bench/results/<date>-multinode/results.jsonl and summary.md.
# Needs: cargo, node and npm, jq, redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DURATION=${DURATION:-20s}
WARMUP=${WARMUP:-3s}
ROOMS=${ROOMS:-1000}                 # fixed-rate scenario: rooms, each spanning both nodes
RATE=${RATE:-5000}                   # fixed-rate scenario: messages a second, offered
IDLE_ROOMS=${IDLE_ROOMS:-9000}       # idle scenario: 2 x this many connections over the nodes
HOLD=${HOLD:-10s}
SCENARIOS=${SCENARIOS:-fixed idle}    # and fixed-ids: the fixed-rate scenario, every chat with a client_msg_id
TARGETS=${TARGETS:-chat-server-redis node-redis chat-server node}
# An earlier chat-server build to measure the in-memory mode against (target chat-server-before),
# e.g. TARGETS="... chat-server-before" BEFORE_BIN=../old/target/release/chat-server.
BEFORE_BIN=${BEFORE_BIN:-}
PEER_SRC=${PEER_SRC:-../shared/peers/node-ws}
PORT=${PORT:-9500}
REDIS_PORT=${REDIS_PORT:-6479}
CHAT_SERVER_FLAGS=${CHAT_SERVER_FLAGS:---rate-limit 0 --max-connections 0 --max-connections-per-ip 0 --max-failed-joins 0}
OUT=${OUT:-bench/results/$(date -u +%Y%m%dT%H%M%SZ)-multinode}
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac

for tool in cargo node npm jq redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "multinode.sh: $tool is required" >&2; exit 2; }
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
if [ ! -d "$NODE_DIR/node_modules/ioredis" ] || [ ! -f "$NODE_DIR/server-redis.js" ]; then
  echo "== installing the Node peer's dependencies in $NODE_DIR" >&2
  rm -rf "$NODE_DIR"
  cp -r "$PEER_SRC" "$NODE_DIR"
  (cd "$NODE_DIR" && npm install --no-audit --no-fund --silent)
fi

PIDS=()
REDIS_PID=
CLUSTER_PIDS=()
MASTER_PIDS=()
cleanup() {
  for pid in "${PIDS[@]}" $REDIS_PID "${CLUSTER_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

wait_for_port() {
  for _ in $(seq 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "multinode.sh: nothing listens on port $1" >&2
  exit 2
}

start_redis() {
  local dir="$OUT/redis"
  rm -rf "$dir" && mkdir -p "$dir"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
    --logfile "$dir/redis.log" &
  REDIS_PID=$!
  wait_for_port "$REDIS_PORT"
}

# A Redis Cluster of six redis-servers on REDIS_PORT..REDIS_PORT+5 (bus ports +10000): three
# masters and their replicas, formed by redis-cli. Sets SEEDS (the masters' URLs) and MASTER_PIDS.
start_cluster() {
  local ports=() p
  CLUSTER_PIDS=()
  for i in 0 1 2 3 4 5; do
    p=$((REDIS_PORT + i))
    local dir="$OUT/cluster-$p"
    rm -rf "$dir" && mkdir -p "$dir"
    redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
      --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" --cluster-node-timeout 5000 \
      --logfile "$dir/redis.log" &
    CLUSTER_PIDS+=($!)
    ports+=("127.0.0.1:$p")
    wait_for_port "$p"
  done
  redis-cli --cluster create "${ports[@]}" --cluster-replicas 1 --cluster-yes >"$OUT/cluster-create.log" 2>&1
  until redis-cli -p "$REDIS_PORT" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
  SEEDS=
  MASTER_PIDS=()
  for i in 0 1 2 3 4 5; do
    p=$((REDIS_PORT + i))
    if [ "$(redis-cli -p "$p" role | head -1)" = master ]; then
      SEEDS="${SEEDS:+$SEEDS,}redis://127.0.0.1:$p/"
      MASTER_PIDS+=("${CLUSTER_PIDS[$i]}")
    fi
  done
}

# CPU seconds (user + system) the processes $@ have used so far.
cpu_seconds() {
  local ticks=0 pid fields
  for pid in "$@"; do
    read -ra fields <"/proc/$pid/stat"
    ticks=$((ticks + fields[13] + fields[14]))
  done
  awk -v ticks="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", ticks / hz }'
}

# Starts one node of target $1 on the next port; appends its pid to PIDS and its URL to URLS.
start_node() {
  PORT=$((PORT + 1))
  local log="$OUT/$1-$PORT.log"
  local redis="redis://127.0.0.1:$REDIS_PORT/"
  case "$1" in
    # shellcheck disable=SC2086
    chat-server-cluster) RUST_LOG=warn "$SERVER_BIN" --bind "127.0.0.1:$PORT" --redis "$SEEDS" \
      $CHAT_SERVER_FLAGS >"$log" 2>&1 & ;;
    node-cluster) node "$NODE_DIR/server-redis.js" --bind "127.0.0.1:$PORT" --redis "$SEEDS" \
      >"$log" 2>&1 & ;;
    # shellcheck disable=SC2086 # the flags are meant to split into words
    chat-server-redis) RUST_LOG=warn "$SERVER_BIN" --bind "127.0.0.1:$PORT" --redis "$redis" \
      $CHAT_SERVER_FLAGS >"$log" 2>&1 & ;;
    # shellcheck disable=SC2086
    chat-server) RUST_LOG=warn "$SERVER_BIN" --bind "127.0.0.1:$PORT" $CHAT_SERVER_FLAGS \
      >"$log" 2>&1 & ;;
    # shellcheck disable=SC2086
    chat-server-before) RUST_LOG=warn "$BEFORE_BIN" --bind "127.0.0.1:$PORT" $CHAT_SERVER_FLAGS \
      >"$log" 2>&1 & ;;
    node-redis) node "$NODE_DIR/server-redis.js" --bind "127.0.0.1:$PORT" --redis "$redis" \
      >"$log" 2>&1 & ;;
    node) node "$NODE_DIR/server.js" --bind "127.0.0.1:$PORT" >"$log" 2>&1 & ;;
  esac
  PIDS+=($!)
  URLS+=("ws://127.0.0.1:$PORT/ws")
  wait_for_port "$PORT"
}

stop_all() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$REDIS_PID" ]; then
    kill -TERM "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
  fi
  for pid in "${CLUSTER_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${CLUSTER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
  REDIS_PID=
  CLUSTER_PIDS=()
  MASTER_PIDS=()
}

# Runs one scenario ($1 = label, $2 = run, rest = chat-bench arguments) against $TARGET.
measure() {
  local label=$1 run=$2
  shift 2
  URLS=()
  local args=()
  case "$TARGET" in
    *-redis)
      start_redis
      start_node "$TARGET"
      start_node "$TARGET"
      args+=(--redis-pid "$REDIS_PID") ;;
    *-cluster)
      start_cluster
      start_node "$TARGET"
      start_node "$TARGET"
      ;;
    *) start_node "$TARGET" ;;
  esac
  # A node answers on its port before it has reached Redis; give it a moment to.
  sleep 1
  for i in "${!URLS[@]}"; do args+=(--url "${URLS[$i]}" --server-pid "${PIDS[$i]}"); done
  local load status=0 report masters_before=0 masters_after=0
  load=$(cut -d' ' -f1 /proc/loadavg)
  if [ ${#MASTER_PIDS[@]} -gt 0 ]; then masters_before=$(cpu_seconds "${MASTER_PIDS[@]}"); fi
  report=$("$BENCH_BIN" "${args[@]}" --json --quiet "$@") || status=$?
  if [ ${#MASTER_PIDS[@]} -gt 0 ]; then
    masters_after=$(cpu_seconds "${MASTER_PIDS[@]}")
    local warmup_secs=${WARMUP%s}
    report=$(jq -c --argjson cpu "$(awk -v a="$masters_after" -v b="$masters_before" 'BEGIN { printf "%.3f", a - b }')" \
      --argjson warmup "$warmup_secs" \
      '. + {redis: {cpu_secs: $cpu, cpu_us_per_message:
        ($cpu * 1e6 / (.messages.delivered * (1 + $warmup / .messages.window_secs)))}}' \
      <<<"$report")
  fi
  stop_all
  if [ -z "$report" ]; then
    echo "   $label on $TARGET: chat-bench failed (exit $status)" >&2
    return
  fi
  jq -c --arg target "$TARGET" --arg tag "$label" --argjson run "$run" \
    --arg load "$load" --arg command "chat-bench $*" \
    '{target: $target, label: $tag, run: $run, load_before: ($load | tonumber),
      command: $command, exit: '"$status"'} + .' <<<"$report" >>"$RESULTS"
  echo "   $label on $TARGET: done (exit $status, load before ${load})" >&2
}

{
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
  echo "rustc: $(rustc --version); node: $(node --version); redis: $(redis-server --version | cut -d' ' -f3)"
  echo "git: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
  echo "targets: $TARGETS; scenarios: $SCENARIOS; rate $RATE over $ROOMS rooms; idle $IDLE_ROOMS rooms"
  echo "started: $(date -u +%FT%TZ); runs: $RUNS"
} | tee "$OUT/machine.txt" >&2

read -ra order <<<"$TARGETS"
for run in $(seq "$RUNS"); do
  echo "== run $run of $RUNS (${order[*]})" >&2
  for TARGET in "${order[@]}"; do
    for scenario in $SCENARIOS; do
      case "$scenario" in
        fixed) measure "fixed-$RATE-per-sec-$ROOMS-rooms" "$run" throughput --rooms "$ROOMS" \
          --duration "$DURATION" --warmup "$WARMUP" --rate "$RATE" ;;
        fixed-ids) measure "fixed-$RATE-per-sec-$ROOMS-rooms-with-ids" "$run" throughput \
          --rooms "$ROOMS" --duration "$DURATION" --warmup "$WARMUP" --rate "$RATE" \
          --client-msg-ids ;;
        idle) measure "idle-$IDLE_ROOMS-rooms" "$run" connections --rooms "$IDLE_ROOMS" \
          --hold "$HOLD" ;;
        *) echo "multinode.sh: unknown scenario $scenario" >&2; exit 2 ;;
      esac
    done
  done
  # The next run starts with another target.
  order=("${order[@]:1}" "${order[0]}")
done

# Two tables, each chat-server beside Node: two nodes on Redis, and one process in memory.
{
  echo "### Two nodes sharing Redis (chat-server --redis, node server-redis.js)"
  echo
  jq -c 'select(.target | endswith("-redis")) | .target |= rtrimstr("-redis")' "$RESULTS" |
    jq -rs --argjson quiet null -f bench/summarize.jq
  echo
  if grep -q '"target":"[a-z-]*-cluster"' "$RESULTS"; then
    echo "### Two nodes on a Redis Cluster of three masters (Redis CPU: the masters together)"
    echo
    jq -c 'select(.target | endswith("-cluster")) | .target |= rtrimstr("-cluster")' "$RESULTS" |
      jq -rs --argjson quiet null -f bench/summarize.jq
    echo
  fi
  echo "### One process, in memory (chat-server, node server.js)"
  echo
  jq -c 'select(.target == "chat-server" or .target == "node")' "$RESULTS" |
    jq -rs --argjson quiet null -f bench/summarize.jq
  if [ -n "$BEFORE_BIN" ]; then
    echo
    echo "### In memory, this build beside $BEFORE_BIN (the \"Node\" columns)"
    echo
    jq -c 'select(.target == "chat-server" or .target == "chat-server-before")
      | if .target == "chat-server-before" then .target = "node" else . end' "$RESULTS" |
      jq -rs --argjson quiet null -f bench/summarize.jq
  fi
} | tee "$OUT/summary.md"
echo >&2
echo "results: $RESULTS; summary: $OUT/summary.md" >&2
