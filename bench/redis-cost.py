#!/usr/bin/env python3
"""What one chat costs Redis, command by command: a count, not a load test (issue 19, point 6).

Starts a fresh redis-server and two chat-server nodes on it (--redis), sets up ROOMS rooms with
the host on node 1 and the guest on node 2 (or both on node 1, --same-node), then runs phases of
CHATS chat messages per room, the two members taking turns, each message sent once the last one
reached both members (so the figures do not depend on the machine's speed):

- `plain`: no client_msg_id;
- `ids`: every chat with a client_msg_id, as the web client sends them;
- `typing`: `typing` before every chat (with a client_msg_id), as a person types.

Before each phase it resets Redis's statistics (CONFIG RESETSTAT); after it, it prints Redis's
`INFO commandstats` per chat sent (calls and microseconds of each command), redis-server's CPU
per chat (`used_cpu_user + used_cpu_sys`), the room events each node received over pub/sub per
chat and the gaps it repaired (its /metrics), and what each member received, as a check. At the end:
Redis's `used_memory` per room, and one room's keys (encoding and `MEMORY USAGE`). The nodes'
beats and sweeps run meanwhile (a few scripts a second), and are counted too.

Usage: bench/redis-cost.py [--rooms 200] [--chats 20] [--same-node] [--phases plain,ids,typing]
Needs: a chat-server build (CHAT_SERVER, target/release/chat-server by default; the counts are
the same with target/debug/chat-server), redis-server and redis-cli, Python's `websockets`.
"""

import argparse
import asyncio
import json
import os
import re
import subprocess
import tempfile
import time
import urllib.request

from benchlib import FLAGS, SERVER, free_port, info, redis_cli, set_up_room, wait_for_port


def redis_cpu(port):
    cpu = info(port, "cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def commandstats(port):
    """{command: (calls, usec)} since the last CONFIG RESETSTAT."""
    stats = {}
    for name, value in info(port, "commandstats").items():
        fields = dict(item.split("=") for item in value.split(","))
        stats[name.removeprefix("cmdstat_")] = (int(fields["calls"]), int(fields["usec"]))
    return stats


def node_counters(ports):
    """Each node's pub/sub room events received and gaps repaired, from its /metrics."""
    counts = []
    for port in ports:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        found = dict(re.findall(r"^(chat_redis_(?:pubsub_events|gaps_repaired)_total) (\d+)",
                                text, re.M))
        counts.append((int(found.get("chat_redis_pubsub_events_total", 0)),
                       int(found.get("chat_redis_gaps_repaired_total", 0))))
    return counts


async def converse(n, host, guest, chats, phase):
    """`chats` messages, the members taking turns; each reaches both before the next."""
    for i in range(chats):
        sender, peer = (host, guest) if i % 2 == 0 else (guest, host)
        if phase == "typing":
            await sender.send({"type": "typing"})
            await peer.expect("typing")
        message = {"type": "chat", "content": f"message {i} of room {n}"}
        if phase != "plain":
            message["client_msg_id"] = f"{phase}-{n}-{i}-0123456789abcdef"
        await sender.send(message)
        await sender.expect("chat")
        await peer.expect("chat")


async def run_phase(pairs, chats, phase):
    await asyncio.gather(*(converse(n, host, guest, chats, phase)
                           for n, (_, host, guest) in enumerate(pairs)))


def report_phase(phase, stats, cpu, seconds, sent, heard):
    print(f"\n== {phase}: {sent} chats in {seconds:.1f} s; redis-server CPU "
          f"{cpu / sent * 1e6:.1f} us per chat")
    events = " + ".join(f"{events / sent:.2f}" for events, _ in heard)
    gaps = sum(repaired for _, repaired in heard)
    print(f"  pub/sub room events received per chat, node 1 + node 2: {events}; "
          f"gaps repaired: {gaps}")
    # A script's own time (evalsha) includes the commands it calls, which are listed too.
    print(f"  {'command':<16} {'calls/chat':>10} {'usec/chat':>10}")
    for name, (calls, usec) in sorted(stats.items(), key=lambda item: -item[1][1]):
        if calls / sent >= 0.001 and name not in ("info", "config|resetstat"):
            print(f"  {name:<16} {calls / sent:>10.3f} {usec / sent:>10.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", type=int, default=200)
    parser.add_argument("--chats", type=int, default=20, help="chats per room, per phase")
    parser.add_argument("--same-node", action="store_true",
                        help="both members of every room on node 1")
    parser.add_argument("--phases", default="plain,ids,typing")
    args = parser.parse_args()
    phases = args.phases.split(",")

    workdir = tempfile.mkdtemp()
    redis_port, ports = free_port(), [free_port() for _ in range(2)]
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", workdir],
                             stdout=subprocess.DEVNULL)
    asyncio.run(wait_for_port(redis_port))
    env = dict(os.environ, RUST_LOG="warn", NO_COLOR="1")
    logs = [open(os.path.join(workdir, f"node{i + 1}.log"), "w") for i in range(2)]
    nodes = [subprocess.Popen([SERVER, "--bind", f"127.0.0.1:{port}", "--redis",
                               f"redis://127.0.0.1:{redis_port}/", *FLAGS],
                              stdout=log, stderr=log, env=env)
             for port, log in zip(ports, logs)]
    try:
        for port in ports:
            asyncio.run(wait_for_port(port))
        time.sleep(1)  # the nodes reach Redis
        asyncio.run(measure(args, phases, redis_port, ports))
    finally:
        for process in nodes + [redis]:
            process.kill()
            process.wait()


async def measure(args, phases, redis_port, ports):
    guest_port = ports[0] if args.same_node else ports[1]
    before = int(info(redis_port, "memory")["used_memory"])
    slots = asyncio.Semaphore(50)
    pairs = await asyncio.gather(*(set_up_room(n, ports[0], guest_port, slots)
                                   for n in range(args.rooms)))
    set_up = int(info(redis_port, "memory")["used_memory"])
    where = "both on node 1" if args.same_node else "host on node 1, guest on node 2"
    print(f"{args.rooms} rooms ({where}), {args.chats} chats per room per phase")
    for phase in phases:
        redis_cli(redis_port, "CONFIG", "RESETSTAT")
        heard = node_counters(ports)
        cpu = redis_cpu(redis_port)
        start = time.monotonic()
        await run_phase(pairs, args.chats, phase)
        seconds = time.monotonic() - start
        stats = commandstats(redis_port)
        cpu = redis_cpu(redis_port) - cpu
        heard = [(events - events_before, repaired - repaired_before)
                 for (events, repaired), (events_before, repaired_before)
                 in zip(node_counters(ports), heard)]
        report_phase(phase, stats, cpu, seconds, args.rooms * args.chats, heard)
    # What each member received: every chat once and in order, and nothing unexpected.
    wrong = 0
    received = {}
    for _, host, guest in pairs:
        for member in (host, guest):
            if member.chats != sorted(set(member.chats)):
                wrong += 1
            for kind, count in member.counts.items():
                received[kind] = received.get(kind, 0) + count
    print(f"\nreceived by all members: {json.dumps(received, sort_keys=True)}; "
          f"members with a chat twice or out of order: {wrong}")
    after = int(info(redis_port, "memory")["used_memory"])
    print(f"Redis used_memory per room: {(set_up - before) / args.rooms:.0f} bytes set up, "
          f"{(after - before) / args.rooms:.0f} bytes after the phases")
    code = pairs[0][0]
    for key in redis_cli(redis_port, "--raw", "KEYS", f"chat:{{{code}}}:*").split():
        kind = redis_cli(redis_port, "TYPE", key)
        encoding = redis_cli(redis_port, "OBJECT", "ENCODING", key)
        usage = redis_cli(redis_port, "MEMORY", "USAGE", key)
        print(f"  {key}: {kind}, {encoding}, {usage} bytes")
    for _, host, guest in pairs:
        await host.ws.close()
        await guest.ws.close()
    if wrong:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
