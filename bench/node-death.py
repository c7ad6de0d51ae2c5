#!/usr/bin/env python3
"""Three nodes on Redis at scale, and one of them killed: the figures of issue 18.

Starts a fresh redis-server and three chat-server nodes (--redis), and sets up ROOMS rooms from
WORKERS client processes, each with a source address of its own (127.0.0.10, .11, ...): a
process may hold at most 20,000 open files, and one source address reaches one port through at
most 28,232 ephemeral ports. Room i has its host on node i % 3 and its guest on node (i + 1) % 3,
so every room spans two nodes and each node holds 2/3 of ROOMS connections.

Then it kills node 0 with SIGKILL (no goodbye: a crash, or a machine that went away) and waits
until every member whose peer was on node 0 has been told `peer_disconnected`. It reports:
- the setup: how long it took, each node's memory per connection (RSS after the setup less
  RSS before, over the connections it holds), Redis's memory per room (used_memory likewise);
- the death: the time from the kill until the first and the last member was told (the first is
  when the survivors noticed the death and began to reap; the last, when reaping was done), and
  how many were told once, more than once, or never;
- that nothing else happened: no connection on a surviving node was closed, and no member of a
  room with both members on the survivors heard anything;
- the CPU time of each surviving node and of redis-server from the kill until a second after the
  last member was told, per reaped room.

Usage: bench/node-death.py [ROOMS] [--workers N] [--runs N]   (20000 rooms, 4 workers, 1 run)
Needs: a release build (cargo build --release -p chat-server; CHAT_SERVER=path runs another
binary), redis-server, Python's
`websockets` (pip install websockets). 20,000 rooms take about 2 GiB of client memory.
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import tempfile
import time

import websockets

SERVER = os.environ.get("CHAT_SERVER", "target/release/chat-server")
NODES = 3
# No limits (this is a load test on loopback), and a grace period long enough that a held seat
# does not become `peer_left` while the benchmark watches.
FLAGS = ["--rate-limit", "0", "--max-connections", "0", "--max-connections-per-ip", "0",
         "--max-failed-joins", "0", "--resume-grace", "120s"]
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
# How long after the kill a member may take to be told before it counts as never told.
PATIENCE_S = 60
# How long to keep listening after the last member was told, for repeats and stray events.
LINGER_S = 3


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """User + system CPU time of a process and all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def redis_used_memory(port):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"INFO memory\r\n")
        data = b""
        while b"used_memory:" not in data or not data.endswith(b"\r\n"):
            data += s.recv(65536)
    for line in data.decode().splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1])
    raise SystemExit("redis INFO without used_memory")


def wait_for_port(port):
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


# The client side: one process for the rooms i with i % workers == k.

async def expect(ws, kind):
    while True:
        message = json.loads(await ws.recv())
        if message["type"] == kind:
            return message
        if message["type"] == "error":
            raise SystemExit(f"expected {kind}, got {message}")


async def connect(port, source):
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None,
                                  ping_interval=None, compression=None, open_timeout=60,
                                  local_addr=(source, 0))
    await expect(ws, "connected")
    return ws


async def named(port, source, name):
    ws = await connect(port, source)
    await ws.send(json.dumps({"type": "set_username", "username": name}))
    await expect(ws, "username_set")
    return ws


async def set_up_room(i, ports, source, slots):
    async with slots:
        host = await named(ports[i % NODES], source, f"h{i}")
        await host.send(json.dumps({"type": "create_room"}))
        code = (await expect(host, "room_created"))["room_code"]
        guest = await named(ports[(i + 1) % NODES], source, f"g{i}")
        await guest.send(json.dumps({"type": "join_room", "room_code": code}))
        await expect(guest, "room_joined")
        await expect(host, "peer_joined")
        return host, guest


async def watch(ws, log):
    """Records every message a surviving member gets, with when, and whether it was closed."""
    try:
        async for text in ws:
            log.append((time.time(), json.loads(text)["type"]))
    except websockets.ConnectionClosed:
        pass
    log.append((time.time(), "closed"))


async def client(k, workers, rooms, ports, pipe):
    source = f"127.0.0.{10 + k}"
    mine = range(k, rooms, workers)
    slots = asyncio.Semaphore(64)
    start = time.time()
    pairs = await asyncio.gather(*(set_up_room(i, ports, source, slots) for i in mine))
    pipe.send(("ready", len(mine), time.time() - start))
    # Watch every member that is not on node 0: those whose peer is there must be told once;
    # the others (rooms on nodes 1 and 2) must hear nothing and stay open.
    watched = []
    for i, (host, guest) in zip(mine, pairs):
        for ws, node in ((host, i % NODES), (guest, (i + 1) % NODES)):
            if node != 0:
                affected = (i % NODES) == 0 or ((i + 1) % NODES) == 0
                log = []
                watched.append((affected, log, asyncio.create_task(watch(ws, log))))
    killed_at = await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
    deadline = killed_at + PATIENCE_S
    while time.time() < deadline:
        if all(any(kind == "peer_disconnected" for _, kind in log)
               for affected, log, _ in watched if affected):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(LINGER_S)
    told, repeated, never, closed, stray = [], 0, 0, 0, 0
    for affected, log, _ in watched:
        kinds = [kind for _, kind in log]
        closed += "closed" in kinds
        if affected:
            times = [t for t, kind in log if kind == "peer_disconnected"]
            if times:
                told.append(times[0] - killed_at)
                repeated += len(times) > 1
            else:
                never += 1
            stray += sum(kind not in ("peer_disconnected", "closed") for kind in kinds)
        else:
            stray += len(kinds)
    pipe.send(("done", told, repeated, never, closed, stray))
    for _, _, task in watched:
        task.cancel()
    for host, guest in pairs:
        host.transport.abort()
        guest.transport.abort()


def client_process(k, workers, rooms, ports, pipe):
    asyncio.run(client(k, workers, rooms, ports, pipe))


def run(rooms, workers):
    workdir = tempfile.mkdtemp()
    redis_port, ports = free_port(), [free_port() for _ in range(NODES)]
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", workdir],
                             stdout=subprocess.DEVNULL)
    wait_for_port(redis_port)
    env = dict(os.environ, RUST_LOG="warn")
    nodes = [subprocess.Popen([SERVER, "--bind", f"127.0.0.1:{port}", "--redis",
                               f"redis://127.0.0.1:{redis_port}/", *FLAGS],
                              stdout=subprocess.DEVNULL, env=env) for port in ports]
    processes = []
    try:
        for port in ports:
            wait_for_port(port)
        time.sleep(1)  # the nodes reach Redis and beat once
        rss_before = [rss_bytes(node.pid) for node in nodes]
        redis_before = redis_used_memory(redis_port)
        pipes = []
        for k in range(workers):
            ours, theirs = multiprocessing.Pipe()
            process = multiprocessing.Process(target=client_process,
                                              args=(k, workers, rooms, ports, theirs))
            process.start()
            processes.append(process)
            pipes.append(ours)
        ready = [pipe.recv() for pipe in pipes]
        setup_s = max(r[2] for r in ready)
        time.sleep(2)  # settle: the last steps of the setup, the nodes' bookkeeping
        per_node = [2 * rooms / NODES] * NODES
        rss = [(rss_bytes(node.pid) - before) / count / 1024
               for node, before, count in zip(nodes, rss_before, per_node)]
        redis_per_room = (redis_used_memory(redis_port) - redis_before) / rooms
        survivors = [node.pid for node in nodes[1:]] + [redis.pid]
        cpu_before = [cpu_seconds(pid) for pid in survivors]
        killed_at = time.time()
        os.kill(nodes[0].pid, signal.SIGKILL)
        for pipe in pipes:
            pipe.send(killed_at)
        done = [pipe.recv() for pipe in pipes]
        cpu_after = [cpu_seconds(pid) for pid in survivors]
        told = sorted(t for d in done for t in d[1])
        repeated, never, closed, stray = (sum(d[i] for d in done) for i in range(2, 6))
        reaped = rooms - rooms // NODES  # the rooms with a member on node 0
        return {
            "setup_s": setup_s, "rss_kib": rss, "redis_per_room": redis_per_room,
            "first_s": told[0] if told else None, "last_s": told[-1] if told else None,
            "median_s": told[len(told) // 2] if told else None,
            "told": len(told), "expected": reaped, "repeated": repeated, "never": never,
            "closed": closed, "stray": stray,
            "cpu_us_per_reaped_room": [(b - a) / reaped * 1e6
                                       for a, b in zip(cpu_before, cpu_after)],
        }
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
        for process in nodes + [redis]:
            if process.poll() is None:
                process.kill()
            process.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rooms", nargs="?", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    print(f"{args.rooms} rooms over {NODES} nodes ({2 * args.rooms} connections, "
          f"{args.workers} client processes); node 0 killed with SIGKILL")
    for n in range(1, args.runs + 1):
        r = run(args.rooms, args.workers)
        print(f"run {n}: setup {r['setup_s']:.1f} s; memory per connection "
              + " / ".join(f"{kib:.2f}" for kib in r["rss_kib"]) + " KiB (nodes 0/1/2); "
              f"Redis {r['redis_per_room']:.0f} bytes per room")
        print(f"  killed: {r['told']} of {r['expected']} members told, first after "
              f"{r['first_s']:.2f} s, median {r['median_s']:.2f} s, last {r['last_s']:.2f} s; "
              f"told twice {r['repeated']}, never told {r['never']}; "
              f"connections closed on the survivors {r['closed']}, stray messages {r['stray']}")
        cpu = r["cpu_us_per_reaped_room"]
        print(f"  CPU per reaped room from the kill until all were told (+{LINGER_S} s): "
              f"node 1 {cpu[0]:.0f} µs, node 2 {cpu[1]:.0f} µs, redis-server {cpu[2]:.0f} µs")


if __name__ == "__main__":
    main()
