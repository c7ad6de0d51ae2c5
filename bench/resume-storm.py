#!/usr/bin/env python3
"""What a storm of resumes costs two nodes on Redis: the figure of docs/scaling.md.

Starts a fresh redis-server and two chat-server nodes (--redis), sets up ROOMS rooms with the
host on node 1 and the guest on node 2, then drops every host's connection at once (no close
handshake, as when a node or a network goes) and resumes each host on node 2. It reports how
long the storm took until every host had `resumed` and every guest `peer_reconnected`, and the
CPU time (from /proc) of each node and of redis-server per resume, up to a second after the
last one (what follows it, node 1's own drops, counts; an idle second costs the processes next
to nothing).

Usage: bench/resume-storm.py [ROOMS]        (3000 by default; 3 storms, fresh processes each)
Needs: a release build (cargo build --release -p chat-server), redis-server, Python's
`websockets` (pip install websockets).
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import websockets

from benchlib import wait_for_port

ROOMS = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
RUNS = 3
SERVER = "target/release/chat-server"
FLAGS = ["--rate-limit", "0", "--max-connections", "0", "--max-connections-per-ip", "0",
         "--max-failed-joins", "0", "--resume-grace", "60s"]
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """User + system CPU time of a process and all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def expect(ws, kind):
    while True:
        message = json.loads(await ws.recv())
        if message["type"] == kind:
            return message
        if message["type"] == "error":
            raise SystemExit(f"expected {kind}, got {message}")


async def connect(port):
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None)
    connected = await expect(ws, "connected")
    return ws, connected["session_token"]


async def set_up_room(n, ports, slots):
    async with slots:
        host, token = await connect(ports[0])
        await host.send(json.dumps({"type": "set_username", "username": f"h{n}"}))
        await expect(host, "username_set")
        await host.send(json.dumps({"type": "create_room"}))
        code = (await expect(host, "room_created"))["room_code"]
        guest, _ = await connect(ports[1])
        await guest.send(json.dumps({"type": "set_username", "username": f"g{n}"}))
        await expect(guest, "username_set")
        await guest.send(json.dumps({"type": "join_room", "room_code": code}))
        await expect(guest, "room_joined")
        await expect(host, "peer_joined")
        return host, token, guest


async def resume(token, port, guest):
    ws, _ = await connect(port)
    await ws.send(json.dumps({"type": "resume", "session_token": token, "last_id": 0}))
    await expect(ws, "resumed")
    await expect(guest, "peer_reconnected")
    return ws


async def storm():
    workdir = tempfile.mkdtemp()
    redis_port, ports = free_port(), [free_port(), free_port()]
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", workdir],
                             stdout=subprocess.DEVNULL)
    await wait_for_port(redis_port)
    env = dict(os.environ, RUST_LOG="warn")
    nodes = [subprocess.Popen([SERVER, "--bind", f"127.0.0.1:{port}", "--redis",
                               f"redis://127.0.0.1:{redis_port}/", *FLAGS],
                              stdout=subprocess.DEVNULL, env=env) for port in ports]
    try:
        for port in ports:
            await wait_for_port(port)
        await asyncio.sleep(1)  # the nodes reach Redis
        slots = asyncio.Semaphore(50)
        rooms = await asyncio.gather(*(set_up_room(n, ports, slots) for n in range(ROOMS)))
        pids = [node.pid for node in nodes] + [redis.pid]
        before = [cpu_seconds(pid) for pid in pids]
        start = time.monotonic()
        for host, _, _ in rooms:
            host.transport.abort()  # no close frame, no FIN handshake: the network went
        resumed = await asyncio.gather(*(resume(token, ports[1], guest)
                                         for _, token, guest in rooms))
        took = time.monotonic() - start
        await asyncio.sleep(1)  # what the nodes finish after the last answer (node 1's drops)
        after = [cpu_seconds(pid) for pid in pids]
        for ws in resumed:
            ws.transport.abort()
        for _, _, guest in rooms:
            guest.transport.abort()
        return took, [(b - a) / ROOMS * 1e6 for a, b in zip(before, after)]
    finally:
        for process in nodes + [redis]:
            process.kill()
            process.wait()


def main():
    print(f"{ROOMS} rooms: host on node 1, guest on node 2; every host drops and resumes on node 2")
    for run in range(1, RUNS + 1):
        took, per = asyncio.run(storm())
        print(f"run {run}: {took:.2f} s until all resumed; CPU per resume: node 1 {per[0]:.0f} µs "
              f"(its connections dropped), node 2 {per[1]:.0f} µs (the resumes), "
              f"redis-server {per[2]:.0f} µs")


if __name__ == "__main__":
    main()
