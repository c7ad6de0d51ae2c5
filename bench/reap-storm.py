#!/usr/bin/env python3
"""What it costs when a node dies with many rooms: the reap figures of BENCHMARKS.md.

Starts a fresh redis-server and three chat-server nodes (--redis), sets up ROOMS rooms with the
host on node 1 and the guest on node 2 or 3 (in turn), and with --simulate K lists K times as
many rooms again among node 1's, in Redis alone (copies of a real room: their guests are heard
by nobody, so only Redis and the reaper see them). Then it kills node 1 with SIGKILL and
reports:

- how long until every guest had `peer_disconnected`, from the kill (the death is noticed 5 s
  after node 1's last beat, within a second);
- the reap itself, from the reaper's log: rooms, seconds, rooms per second;
- redis-server's CPU per reaped room, from the kill until the dead node's list is gone (the
  reap, the grace entries, the pub/sub of `disconnected` to the survivors, and a few idle
  seconds of beats, which cost next to nothing);
- what must not happen: a guest told twice or closed (1012 or anything else), a survivor's
  beat missed or the survivor fenced (from their logs).

With --spread, the rooms are spread over the three nodes instead (room n: host on node
1 + n % 3, guest on node 1 + (n + 1) % 3), as a balancer spreads them, and node 1 is killed in
the middle: only the rooms with a member there are reaped, and the members of the other rooms
must hear nothing. This is the figure of the whole: setup time, memory per connection on each
node, Redis memory per room, the time until every peer of node 1's members was told, and each
process's CPU.

The clients are spread over WORKERS processes (each under the 20,000 files a process may
open), each binding its own source address, 127.0.0.(2 + worker).

Usage: bench/reap-storm.py [ROOMS] [--simulate K] [--spread] [--workers N]
       (18000 rooms by default; the issue's figures: 18000, then 18000 --simulate 10;
       and 20000 --spread)
Needs: a release build (cargo build --release -p chat-server), redis-server and redis-cli,
Python's `websockets` (pip install websockets).
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import re
import socket
import subprocess
import tempfile
import time

import websockets

from benchlib import wait_for_port

# CHAT_SERVER=target/debug/chat-server for a smoke test of the script itself.
SERVER = os.environ.get("CHAT_SERVER", "target/release/chat-server")
FLAGS = ["--rate-limit", "0", "--max-connections", "0", "--max-connections-per-ip", "0",
         "--max-failed-joins", "0", "--resume-grace", "300s"]
TICKS = os.sysconf("SC_CLK_TCK")
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
# Copies a room (its hash and its log) to new codes, listed among a node's rooms.
COPY = ("for i = 2, #ARGV do "
        "redis.call('COPY', 'chat:{' .. ARGV[1] .. '}:room', 'chat:{' .. ARGV[i] .. '}:room') "
        "redis.call('COPY', 'chat:{' .. ARGV[1] .. '}:log', 'chat:{' .. ARGV[i] .. '}:log') "
        "redis.call('SADD', KEYS[1], ARGV[i]) end return 1")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """User + system CPU time of a process and all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def redis_cli(port, *args):
    out = subprocess.run(["redis-cli", "-p", str(port), *args], check=True,
                         capture_output=True, text=True).stdout
    return out.strip()


async def expect(ws, kind):
    while True:
        message = json.loads(await ws.recv())
        if message["type"] == kind:
            return message
        if message["type"] == "error":
            raise SystemExit(f"expected {kind}, got {message}")


async def connect(port, source):
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None,
                                  local_addr=(source, 0), ping_interval=None)
    await expect(ws, "connected")
    return ws


def placement(n, spread):
    """Which node (0, 1 or 2) room n's host and guest connect to."""
    if spread:
        return n % 3, (n + 1) % 3
    return 0, 1 + n % 2


async def set_up_room(n, ports, source, slots, spread):
    host_node, guest_node = placement(n, spread)
    async with slots:
        host = await connect(ports[host_node], source)
        await host.send(json.dumps({"type": "set_username", "username": f"h{n}"}))
        await expect(host, "username_set")
        await host.send(json.dumps({"type": "create_room"}))
        code = (await expect(host, "room_created"))["room_code"]
        guest = await connect(ports[guest_node], source)
        await guest.send(json.dumps({"type": "set_username", "username": f"g{n}"}))
        await expect(guest, "username_set")
        await guest.send(json.dumps({"type": "join_room", "room_code": code}))
        await expect(guest, "room_joined")
        await expect(host, "peer_joined")
        return host, guest


async def told(peer, quiet):
    """When `peer` was told `peer_disconnected`, and what else it got within `quiet` s."""
    await expect(peer, "peer_disconnected")
    at = time.monotonic()
    return at, await silent(peer, quiet)


async def silent(ws, quiet):
    """What `ws` got within `quiet` s: nothing, if all is well."""
    extra = []
    try:
        while True:
            extra.append(json.loads(await asyncio.wait_for(ws.recv(), quiet)))
    except asyncio.TimeoutError:
        pass
    except websockets.ConnectionClosed as closed:
        extra.append({"type": "close", "code": closed.rcvd.code if closed.rcvd else None})
    return extra


async def worker_main(rooms, ports, source, pipe, spread):
    slots = asyncio.Semaphore(50)
    pairs = await asyncio.gather(*(set_up_room(n, ports, source, slots, spread) for n in rooms))
    pipe.send("ready")
    pipe.recv()  # node 1 is being killed
    # The peers of node 1's members must hear nothing more within 3 s of their
    # `peer_disconnected`; the members of the other rooms, nothing at all.
    waits = []
    quiet = []
    for n, (host, guest) in zip(rooms, pairs):
        host_node, guest_node = placement(n, spread)
        if host_node == 0:
            waits.append(told(guest, 3.0))
        elif guest_node == 0:
            waits.append(told(host, 3.0))
        else:
            quiet.extend([host, guest])
    results = await asyncio.gather(*waits)
    undisturbed = await asyncio.gather(*(silent(ws, 1.0) for ws in quiet))
    results += [(None, extra) for extra in undisturbed]
    pipe.send(results)
    for host, guest in pairs:
        host.transport.abort()
        guest.transport.abort()


def worker(rooms, ports, source, pipe, spread):
    asyncio.run(worker_main(rooms, ports, source, pipe, spread))


def used_memory(port):
    """Redis's own count of the memory it uses, in bytes."""
    return int(re.search(r"used_memory:(\d+)", redis_cli(port, "INFO", "memory")).group(1))


def rss_kib(pid):
    """Resident memory of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rooms", type=int, nargs="?", default=18000)
    parser.add_argument("--simulate", type=int, default=0, metavar="K")
    parser.add_argument("--spread", action="store_true")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    workdir = tempfile.mkdtemp()
    redis_port, ports = free_port(), [free_port() for _ in range(3)]
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", workdir],
                             stdout=subprocess.DEVNULL)
    asyncio.run(wait_for_port(redis_port))
    env = dict(os.environ, RUST_LOG="info", NO_COLOR="1")
    logs = [open(os.path.join(workdir, f"node{i + 1}.log"), "w") for i in range(3)]
    nodes = [subprocess.Popen([SERVER, "--bind", f"127.0.0.1:{port}", "--redis",
                               f"redis://127.0.0.1:{redis_port}/", *FLAGS],
                              stdout=log, env=env) for port, log in zip(ports, logs)]
    workers = []
    try:
        for port in ports:
            asyncio.run(wait_for_port(port))
        time.sleep(1)  # the nodes reach Redis
        all_pids = [node.pid for node in nodes] + [redis.pid]
        rss_before = [rss_kib(node.pid) for node in nodes]
        redis_before = used_memory(redis_port)
        cpu_setup = [cpu_seconds(pid) for pid in all_pids]
        start = time.monotonic()
        for w in range(args.workers):
            ours, theirs = multiprocessing.Pipe()
            rooms = range(w, args.rooms, args.workers)
            process = multiprocessing.Process(target=worker,
                                              args=(rooms, ports, f"127.0.0.{2 + w}", theirs,
                                                    args.spread))
            process.start()
            workers.append((process, ours))
        for _, pipe in workers:
            if pipe.recv() != "ready":
                raise SystemExit("a worker failed to set up its rooms")
        setup = time.monotonic() - start
        cpu_after_setup = [cpu_seconds(pid) for pid in all_pids]
        connections = [0, 0, 0]
        for n in range(args.rooms):
            for node in placement(n, args.spread):
                connections[node] += 1
        rss_after = [rss_kib(node.pid) for node in nodes]
        redis_after = used_memory(redis_port)
        print(f"{args.rooms} rooms ({2 * args.rooms} connections) set up in {setup:.1f} s")
        for i in range(3):
            per = (rss_after[i] - rss_before[i]) / connections[i] if connections[i] else 0
            print(f"node {i + 1}: {connections[i]} connections, {per:.2f} KiB each "
                  f"(RSS {rss_after[i] / 1024:.0f} MiB), setup CPU "
                  f"{cpu_after_setup[i] - cpu_setup[i]:.1f} s")
        print(f"redis-server: {(redis_after - redis_before) / args.rooms:.0f} bytes per room "
              f"(used_memory {redis_after / 2**20:.0f} MiB), setup CPU "
              f"{cpu_after_setup[3] - cpu_setup[3]:.1f} s")

        lists = redis_cli(redis_port, "--raw", "KEYS", "chat:{node:*}:rooms").split()
        on_node1 = sum(1 for n in range(args.rooms) if 0 in placement(n, args.spread))
        dead_list = next(key for key in lists
                         if int(redis_cli(redis_port, "SCARD", key)) == on_node1)
        if args.simulate:
            template = redis_cli(redis_port, "SRANDMEMBER", dead_list)
            taken = set(redis_cli(redis_port, "--raw", "SMEMBERS", dead_list).split())
            codes = set()
            while len(codes) < args.rooms * args.simulate:
                code = "".join(random.choice(ALPHABET) for _ in range(6))
                if code not in taken:
                    codes.add(code)
            codes = sorted(codes)
            for i in range(0, len(codes), 1000):
                redis_cli(redis_port, "EVAL", COPY, "1", dead_list, template, *codes[i:i + 1000])
            print(f"{len(codes)} more rooms of node 1 in Redis alone")
        total = int(redis_cli(redis_port, "SCARD", dead_list))

        pids = [nodes[1].pid, nodes[2].pid, redis.pid]  # the survivors and Redis
        before = [cpu_seconds(pid) for pid in pids]
        for log in logs:
            log.flush()
        # Only what the survivors log from the kill on counts.
        offsets = [os.path.getsize(log.name) for log in logs]
        killed = time.monotonic()
        nodes[0].kill()
        for _, pipe in workers:
            pipe.send("go")
        while redis_cli(redis_port, "EXISTS", dead_list) == "1":
            time.sleep(0.05)
        reaped = time.monotonic()
        results = [item for _, pipe in workers for item in pipe.recv()]
        after = [cpu_seconds(pid) for pid in pids]

        last_told = max(at for at, _ in results if at is not None) - killed
        extras = [extra for _, extra in results if extra]
        for log in logs:
            log.flush()
        survivor_trouble = []
        reap = None
        for i in (1, 2):
            with open(os.path.join(workdir, f"node{i + 1}.log")) as f:
                f.seek(offsets[i])
                for line in f:
                    if "heartbeat failed" in line or "fenced" in line:
                        survivor_trouble.append(f"node {i + 1}: {line.strip()}")
                    found = re.search(r"reaped a dead node.*rooms=(\d+) seconds=([\d.e-]+)", line)
                    if found:
                        reap = (int(found.group(1)), float(found.group(2)))
        print(f"{total} rooms listed on node 1, {on_node1} with a member connected there")
        print(f"every guest told peer_disconnected {last_told:.2f} s after the kill "
              f"(the death is noticed 5-6 s after node 1's last beat)")
        if reap:
            rooms, seconds = reap
            print(f"the reap: {rooms} rooms in {seconds:.2f} s, {rooms / seconds:.0f} rooms/s")
        print(f"dead node's list gone {reaped - killed:.2f} s after the kill")
        print(f"CPU per reaped room, kill to list gone: node 2 {(after[0] - before[0]) / total * 1e6:.1f} µs, "
              f"node 3 {(after[1] - before[1]) / total * 1e6:.1f} µs, "
              f"redis-server {(after[2] - before[2]) / total * 1e6:.1f} µs")
        print(f"survivors told anything more (twice, or closed, or in a room of nodes 2 and 3): "
              f"{len(extras)}"
              + (f", e.g. {extras[0]}" if extras else ""))
        print(f"survivors' missed beats or fencing: {len(survivor_trouble)}"
              + (f", e.g. {survivor_trouble[0]}" if survivor_trouble else ""))
        if extras or survivor_trouble or not reap:
            raise SystemExit(1)
    finally:
        for process, _ in workers:
            process.kill()
        for process in nodes + [redis]:
            process.kill()
            process.wait()


if __name__ == "__main__":
    main()
