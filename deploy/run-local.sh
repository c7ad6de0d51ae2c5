#!/usr/bin/env bash
# Runs, on this machine, what a two-node deployment runs: Redis, two chat-server nodes sharing
# it, and nginx (or HAProxy, with HAPROXY=1) spreading connections over them. With CLUSTER=1,
# Redis is a Redis Cluster of six redis-servers (three masters, each with a replica) and the
# nodes are given its seeds. Prints the address to open; Ctrl-C stops everything. See
# deploy/README.md.
#
# Ports can be changed: PORT (the balancer, 8080), NODE1_PORT (8081), NODE2_PORT (8082),
# REDIS_PORT (6379; with CLUSTER=1, the cluster's six ports start there). CHAT_SERVER=path runs that binary instead of building this one. Extra
# arguments are passed to both nodes, e.g. `--resume-grace 10s`.
set -euo pipefail
cd "$(dirname "$0")/.."
# nginx and HAProxy are in /usr/sbin, which an ordinary user's PATH may leave out.
PATH="$PATH:/usr/sbin"

port=${PORT:-8080}
node_ports=("${NODE1_PORT:-8081}" "${NODE2_PORT:-8082}")
redis_port=${REDIS_PORT:-6379}
redis_url="redis://127.0.0.1:$redis_port/"

need() {
  command -v "$1" >/dev/null || {
    echo "run-local.sh: $1 not found (Debian: apt-get install $2)" >&2
    exit 1
  }
}
need redis-server redis-server
need redis-cli redis-tools
if [ -n "${HAPROXY:-}" ]; then need haproxy haproxy; else need nginx nginx; fi

# Everything this run writes (logs, nginx's pid and temporary files, Redis's directory).
run=$(mktemp -d "${TMPDIR:-/tmp}/chat-deploy.XXXXXX")
# What this run started, in order, and the name of each (by pid).
pids=()
declare -A names

# On the way out, whatever the way: stop what this run started, last first.
stop_all() {
  trap - EXIT
  echo
  echo "stopping…"
  # SIGTERM: the nodes close their connections and exit, nginx and Redis stop.
  # Only those still running: the pid of one that stopped may be another process's by now.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    if [ -n "${names[${pids[$i]}]:-}" ]; then kill -TERM "${pids[$i]}" 2>/dev/null || true; fi
  done
  wait || true
  echo "logs are in $run"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits until something accepts connections on 127.0.0.1:$2, for at most 30 s; fails if the
# process $1 (named $3, logging to $4) exits first.
wait_for_port() {
  for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
    if ! kill -0 "$1" 2>/dev/null; then
      echo "run-local.sh: $3 exited; its log ($4):" >&2
      tail -n 20 "$4" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "run-local.sh: $3 does not listen on port $2 after 30 s; its log is $4" >&2
  exit 1
}

# Redis: with CLUSTER=1, a cluster of six fresh redis-servers, formed with redis-cli, with the
# two settings docs/scaling.md advises (a node timeout of 1 s, and the other masters serving
# while one is down); otherwise one that already runs on the port is used as it is (Debian's
# package starts one on 6379), or a fresh one that keeps nothing on disk.
if [ -n "${CLUSTER:-}" ]; then
  cluster_nodes=()
  seeds=()
  for i in 0 1 2 3 4 5; do
    p=$((redis_port + i))
    mkdir -p "$run/redis-$p"
    redis-server --bind 127.0.0.1 --port "$p" --dir "$run/redis-$p" --save "" --appendonly no \
      --cluster-enabled yes --cluster-config-file "$run/redis-$p/nodes.conf" \
      --cluster-node-timeout 1000 --cluster-require-full-coverage no \
      >"$run/redis-$p.log" 2>&1 &
    pids+=($!)
    names[$!]="redis-server $p"
    wait_for_port $! "$p" "redis-server $p" "$run/redis-$p.log"
    cluster_nodes+=("127.0.0.1:$p")
    if [ "$i" -lt 3 ]; then seeds+=("redis://127.0.0.1:$p/"); fi
  done
  redis-cli --cluster create "${cluster_nodes[@]}" --cluster-replicas 1 --cluster-yes \
    >"$run/cluster-create.log" 2>&1
  until redis-cli -p "$redis_port" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
  redis_url=$(IFS=,; echo "${seeds[*]}")
  echo "Redis Cluster: 127.0.0.1:$redis_port-$((redis_port + 5)) (logs: $run/redis-*.log)"
elif [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ]; then
  echo "Redis:  using the one already running on 127.0.0.1:$redis_port"
else
  redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$run" --save "" --appendonly no \
    >"$run/redis.log" 2>&1 &
  pids+=($!)
  names[$!]=redis-server
  wait_for_port $! "$redis_port" redis-server "$run/redis.log"
  echo "Redis:  127.0.0.1:$redis_port (log: $run/redis.log)"
fi

# The nodes: the release binary, built if it is not up to date, or CHAT_SERVER if set.
binary=${CHAT_SERVER:-}
if [ -z "$binary" ]; then
  cargo build --release --quiet -p chat-server
  binary="${CARGO_TARGET_DIR:-target}/release/chat-server"
fi
for i in 0 1; do
  node_port=${node_ports[$i]}
  log="$run/node$((i + 1)).log"
  # Behind a proxy every client has the proxy's address: no per-address cap.
  "$binary" --redis "$redis_url" --bind "127.0.0.1:$node_port" --max-connections-per-ip 0 "$@" \
    >"$log" 2>&1 &
  pids+=($!)
  names[$!]="node $((i + 1))"
  wait_for_port $! "$node_port" "node $((i + 1))" "$log"
  echo "node $((i + 1)): http://127.0.0.1:$node_port/ (pid $!, log: $log)"
done

# The balancer, from deploy/'s configuration with this run's ports.
fill_in_ports() {
  sed -e "s/127\.0\.0\.1:8080/127.0.0.1:$port/" \
    -e "s/127\.0\.0\.1:8081/127.0.0.1:${node_ports[0]}/" \
    -e "s/127\.0\.0\.1:8082/127.0.0.1:${node_ports[1]}/" "$1"
}
if [ -n "${HAPROXY:-}" ]; then
  fill_in_ports deploy/haproxy.cfg >"$run/haproxy.cfg"
  haproxy -f "$run/haproxy.cfg" -db >"$run/haproxy.log" 2>&1 &
  pids+=($!)
  names[$!]=haproxy
  wait_for_port $! "$port" haproxy "$run/haproxy.log"
  echo "HAProxy: 127.0.0.1:$port (log: $run/haproxy.log)"
else
  fill_in_ports deploy/nginx.conf >"$run/nginx.conf"
  nginx -p "$run" -c "$run/nginx.conf" -e "$run/error.log" &
  pids+=($!)
  names[$!]=nginx
  wait_for_port $! "$port" nginx "$run/error.log"
  echo "nginx:  127.0.0.1:$port (logs: $run/error.log, $run/access.log)"
fi

echo
echo "Open http://127.0.0.1:$port/ in two browser tabs: their WebSockets go to different nodes."
echo "Stop a node (kill -TERM its pid) to see its tab move to the other. Ctrl-C stops everything."
# Until Ctrl-C. A process that stops meanwhile (a node you stopped, to watch its tabs move to
# the other) is reported, and the others carry on. (`wait -n -p`: bash 5.1 or later.)
while [ ${#names[@]} -gt 0 ]; do
  exited=
  wait -n -p exited "${!names[@]}" || true
  [ -n "$exited" ] || break
  echo "run-local.sh: ${names[$exited]} (pid $exited) stopped; its log is in $run" >&2
  unset "names[$exited]"
done
