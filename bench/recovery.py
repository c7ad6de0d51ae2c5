#!/usr/bin/env python3
"""What a Redis restart costs the nodes' recovery: the recovery figure of BENCHMARKS.md.

Starts a fresh redis-server (keeping its dump in a directory of its own) and two chat-server
nodes, sets up ROOMS rooms with the host on node 1 and the guest on node 2 (so that both nodes
hear every room), then SAVEs, kills redis-server with SIGKILL and starts it again on its dump.
Every node must then repair each of its rooms once (docs/architecture.md, "Pub/sub loses; the
node repairs"). It reports, from the restart until both nodes have repaired every room:

- how long the recovery took;
- repairs per room per node (`chat_redis_gaps_repaired_total`: 1.0 is the rule);
- script calls per room per node (`EVALSHA` in Redis's `INFO commandstats`, which counts
  everything since the restart, the nodes' beats and sweeps included: a few a second);
- redis-server's CPU per room (from its start, so loading the dump is included).

Usage: bench/recovery.py [ROOMS] [--workers N]     (10000 rooms by default)
Needs: what bench/reap-storm.py needs (it borrows its clients).
"""

import argparse
import asyncio
import importlib.util
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in bench/ for the borrowed module

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("reap_storm", os.path.join(HERE, "reap-storm.py"))
storm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(storm)


async def hold_rooms(rooms, ports, source, pipe):
    slots = asyncio.Semaphore(50)
    pairs = await asyncio.gather(*(storm.set_up_room(n, ports, source, slots, False)
                                   for n in rooms))
    pipe.send("ready")
    await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
    for host, guest in pairs:
        host.transport.abort()
        guest.transport.abort()


def worker(rooms, ports, source, pipe):
    asyncio.run(hold_rooms(rooms, ports, source, pipe))


def repaired(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
        text = response.read().decode()
    found = re.search(r"^chat_redis_gaps_repaired_total (\S+)", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def start_redis(port, workdir):
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", workdir],
                             stdout=subprocess.DEVNULL)
    asyncio.run(storm.wait_for_port(port))
    while storm.redis_cli(port, "PING") != "PONG":  # LOADING while it reads its dump
        time.sleep(0.01)
    return redis


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rooms", type=int, nargs="?", default=10000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    workdir = tempfile.mkdtemp()
    redis_port, ports = storm.free_port(), [storm.free_port() for _ in range(2)]
    redis = start_redis(redis_port, workdir)
    env = dict(os.environ, RUST_LOG="warn", NO_COLOR="1")
    nodes = [subprocess.Popen([storm.SERVER, "--bind", f"127.0.0.1:{port}", "--redis",
                               f"redis://127.0.0.1:{redis_port}/", *storm.FLAGS],
                              stdout=subprocess.DEVNULL, env=env) for port in ports]
    workers = []
    try:
        for port in ports:
            asyncio.run(storm.wait_for_port(port))
        time.sleep(1)  # the nodes reach Redis
        for w in range(args.workers):
            ours, theirs = multiprocessing.Pipe()
            process = multiprocessing.Process(
                target=worker,
                args=(range(w, args.rooms, args.workers), [ports[0], ports[1], ports[1]],
                      f"127.0.0.{2 + w}", theirs))
            process.start()
            workers.append((process, ours))
        for _, pipe in workers:
            if pipe.recv() != "ready":
                raise SystemExit("a worker failed to set up its rooms")
        print(f"{args.rooms} rooms, each on both nodes")

        before = [repaired(port) for port in ports]
        storm.redis_cli(redis_port, "SAVE")
        redis.kill()
        redis.wait()
        restarted = time.monotonic()
        redis = start_redis(redis_port, workdir)
        while any(repaired(port) - b < args.rooms for port, b in zip(ports, before)):
            time.sleep(0.05)
        took = time.monotonic() - restarted
        done = [repaired(port) - b for port, b in zip(ports, before)]
        stats = storm.redis_cli(redis_port, "INFO", "commandstats")
        found = re.search(r"cmdstat_evalsha:calls=(\d+)", stats)
        evalsha = int(found.group(1)) if found else 0
        redis_cpu = storm.cpu_seconds(redis.pid)
        print(f"recovered in {took:.2f} s after the restart")
        print("repairs per room: " + ", ".join(
            f"node {i + 1} {d / args.rooms:.2f}" for i, d in enumerate(done)))
        print(f"script calls (EVALSHA) per room per node: {evalsha / args.rooms / 2:.2f}")
        print(f"redis-server CPU per room: {redis_cpu / args.rooms * 1e6:.1f} µs "
              f"({redis_cpu:.2f} s from its start, loading the dump included)")
    finally:
        for _, pipe in workers:
            pipe.send("end")
        for process, _ in workers:
            process.join(5)
            process.kill()
        for process in nodes + [redis]:
            process.kill()
            process.wait()


if __name__ == "__main__":
    main()
