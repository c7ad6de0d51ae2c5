#!/usr/bin/env python3
"""What a Redis Cluster costs per room, and what its failover costs the rooms (issue 19, point 7).

Starts a local Redis Cluster (three masters, each with a replica; `--cluster-node-timeout
TIMEOUT`), two chat-server nodes on it, and ROOMS rooms, each with its host on one node and its
guest on the other. Then:

1. Memory: the masters' `used_memory`, summed, before the rooms, after them, and after each
   room holds CHATS messages of 64 bytes: bytes per room, and per stored message.
2. A failover: every host sends a chat every INTERVAL seconds, and the master that holds the
   most rooms (or, with --beats, the one of the first of the three boards the nodes beat on) is
   killed with SIGKILL (or, with --manual, its replica takes over with `CLUSTER FAILOVER`). For each room on that master: how long after the kill its host's chats were
   accepted again (their echo came back); for the rooms on the other masters, the longest pause
   between two accepted chats. Every guest must receive every chat its host had accepted, once
   and in order: the script counts those lost or repeated, and exits with 1 if there are any.

The cluster runs with `cluster-require-full-coverage no`, as docs/scaling.md advises: with
Redis's default (`yes`, --full-coverage here), every master refuses every command from the
moment a master is marked failed until its replica takes over.

Usage: bench/failover.py [--rooms 300] [--timeout 1000] [--interval 0.5] [--manual]
                         [--beats] [--full-coverage]
Needs: a chat-server build (CHAT_SERVER, target/release/chat-server by default), redis-server
and redis-cli 7, Python's `websockets`.
"""

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

from benchlib import FLAGS, SERVER, free_port, info, redis_cli, set_up_room, wait_for_port


def start_cluster(workdir, timeout, full_coverage):
    """Six redis-servers made into a cluster of three masters and three replicas."""
    ports = []
    while len(ports) < 6:
        # A cluster node listens on its port + 10,000 too: both free, below 32768.
        port = random.randrange(12000, 22000)
        if port not in ports and is_free(port) and is_free(port + 10000):
            ports.append(port)
    servers = {
        port: subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir, "--cluster-enabled", "yes",
             "--cluster-config-file", f"nodes-{port}.conf",
             "--cluster-node-timeout", str(timeout), "--repl-diskless-sync-delay", "0",
             "--cluster-require-full-coverage", "yes" if full_coverage else "no",
             "--logfile", os.path.join(workdir, f"redis-{port}.log")])
        for port in ports
    }
    for port in ports:
        asyncio.run(wait_for_port(port))
    subprocess.run(["redis-cli", "--cluster", "create",
                    *[f"127.0.0.1:{port}" for port in ports],
                    "--cluster-replicas", "1", "--cluster-yes"],
                   check=True, capture_output=True)
    for _ in range(300):
        if all("cluster_state:ok" in redis_cli(port, "CLUSTER", "INFO") for port in ports):
            return servers
        time.sleep(0.1)
    raise SystemExit("the cluster did not come up")


def is_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def slot_owners(port):
    """{master port: [(first slot, last slot)]}, from CLUSTER NODES as `port` sees it."""
    owners = {}
    for line in redis_cli(port, "CLUSTER", "NODES").splitlines():
        fields = line.split()
        flags = fields[2].split(",")
        if "master" not in flags or "fail" in flags:
            continue
        master = int(fields[1].split("@")[0].rsplit(":", 1)[1])
        for span in fields[8:]:
            if span.startswith("["):
                continue  # a slot being migrated
            first, _, last = span.partition("-")
            owners.setdefault(master, []).append((int(first), int(last or first)))
    return owners


def owner_of(owners, slot):
    for master, spans in owners.items():
        if any(first <= slot <= last for first, last in spans):
            return master
    return None


def masters_memory(owners):
    return sum(int(info(port, "memory")["used_memory"]) for port in owners)


class Probe:
    """A room's host chatting every `interval` seconds, and when each chat was accepted."""

    def __init__(self, host, n, interval):
        self.host, self.n, self.interval = host, n, interval
        self.sent = []  # when each chat was sent, by its number
        self.accepted = []  # (when it was sent, when its echo came, its id)
        self.refused = 0
        self.stop = False

    async def send(self):
        while not self.stop:
            self.sent.append(time.monotonic())
            await self.host.send({"type": "chat", "content": f"probe {len(self.sent) - 1}"})
            await asyncio.sleep(self.interval)

    async def read(self):
        while True:
            message = await self.host.next_message()
            if message is None:
                return
            if message["type"] == "chat" and message["content"].startswith("probe "):
                sent = self.sent[int(message["content"].split()[1])]
                self.accepted.append((sent, time.monotonic(), message["id"]))
            elif message["type"] == "error":
                self.refused += 1


async def guest_reads(guest):
    """Everything a guest receives until cancelled (its chats are in `guest.chats`)."""
    while await guest.next_message() is not None:
        pass


async def measure(args, servers, node_ports):
    ports = list(servers)
    owners = slot_owners(ports[0])
    before = masters_memory(owners)
    slots = asyncio.Semaphore(32)
    pairs = await asyncio.gather(*(set_up_room(n, node_ports[n % 2], node_ports[(n + 1) % 2],
                                                slots) for n in range(args.rooms)))
    set_up = masters_memory(owners)
    for i in range(args.chats):
        content = f"{i:04} " + "x" * 59  # 64 bytes
        await asyncio.gather(*(host.send({"type": "chat", "content": content})
                               for _, host, _ in pairs))
        await asyncio.gather(*(host.expect("chat") for _, host, _ in pairs))
        await asyncio.gather(*(guest.expect("chat") for _, _, guest in pairs))
    stored = masters_memory(owners)
    print(f"{args.rooms} rooms on {len(owners)} masters: {(set_up - before) / args.rooms:.0f} "
          f"bytes of the masters' memory per room set up, "
          f"{(stored - set_up) / (args.rooms * args.chats):.0f} per stored 64-byte message")

    where = {}
    for n, (code, _, _) in enumerate(pairs):
        slot = int(redis_cli(ports[0], "CLUSTER", "KEYSLOT", f"chat:{{{code}}}:room"))
        where[n] = owner_of(owners, slot)
    beats = owner_of(owners, int(redis_cli(ports[0], "CLUSTER", "KEYSLOT", "chat:{board:0}:live")))
    victim = beats if args.beats else max(owners, key=lambda m: list(where.values()).count(m))
    hit = [n for n, master in where.items() if master == victim]
    spared = [n for n in where if n not in hit]
    print(f"the first board of the nodes' beats (chat:{{board:0}}:live) is on 127.0.0.1:{beats}"
          f"{', the master killed' if beats == victim else ''}")
    print(f"the master 127.0.0.1:{victim} holds {len(hit)} of the rooms; "
          f"cluster-node-timeout {args.timeout} ms, cluster-require-full-coverage "
          f"{'yes' if args.full_coverage else 'no'}; a chat every {args.interval} s per room")

    probes = [Probe(host, n, args.interval) for n, (_, host, _) in enumerate(pairs)]
    sent_before = {n: len(pairs[n][2].chats) for n in range(args.rooms)}
    tasks = [asyncio.create_task(task) for probe in probes for task in (probe.send(), probe.read())]
    readers = [asyncio.create_task(guest_reads(guest)) for _, _, guest in pairs]
    await asyncio.sleep(1.0)
    killed = time.monotonic()
    if args.manual:
        replica = next(port for port in ports
                       if info(port, "replication").get("master_port") == str(victim))
        redis_cli(replica, "CLUSTER", "FAILOVER")
        print(f"t = 0: CLUSTER FAILOVER on the replica 127.0.0.1:{replica}")
    else:
        servers[victim].send_signal(signal.SIGKILL)
        print("t = 0: the master killed with SIGKILL")
    deadline = killed + 120
    while time.monotonic() < deadline:
        if all(any(sent > killed for sent, _, _ in probes[n].accepted) for n in hit):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    for probe in probes:
        probe.stop = True
    await asyncio.sleep(3.0)  # the last chats' echoes, and their copies to the guests
    for task in [*tasks, *readers]:
        task.cancel()

    # A room is back once a chat sent after the kill is accepted.
    back = [min((at for sent, at, _ in probes[n].accepted if sent > killed), default=None)
            for n in hit]
    if None in back:
        print(f"{back.count(None)} rooms on that master took no chat in 120 s")
    waits = sorted(at - killed for at in back if at is not None)
    if waits:
        print(f"its rooms took chats again after: median {statistics.median(waits):.2f} s, "
              f"min {waits[0]:.2f} s, max {waits[-1]:.2f} s; "
              f"chats refused meanwhile: {sum(probes[n].refused for n in hit)}")
    longest, since = 0.0, 0.0
    for n in spared:
        times = [killed] + [at for _, at, _ in probes[n].accepted if at > killed]
        for a, b in zip(times, times[1:]):
            if b - a > longest:
                longest, since = b - a, a - killed
    print(f"the other {len(spared)} rooms: longest pause between accepted chats "
          f"{longest * 1000:.0f} ms, from t = {since:.2f} s (one chat every "
          f"{args.interval * 1000:.0f} ms)")
    # Every chat a host had accepted reached its guest, once and in order.
    lost = repeated = 0
    for n, (_, _, guest) in enumerate(pairs):
        heard = guest.chats[sent_before[n]:]
        accepted = [chat_id for _, _, chat_id in probes[n].accepted]
        repeated += len(heard) - len(set(heard)) + sum(1 for a, b in zip(heard, heard[1:]) if b <= a)
        lost += len(set(accepted) - set(heard))
    print(f"chats accepted: {sum(len(p.accepted) for p in probes)}; lost on the way to the "
          f"guest: {lost}; repeated or out of order: {repeated}")
    return lost == 0 and repeated == 0


def wait_until_serving(port):
    """Until the node's first beat is recorded (`/healthz` 200): before, it takes no member."""
    for _ in range(300):
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz").status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the node on port {port} never reached the cluster")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", type=int, default=300)
    parser.add_argument("--chats", type=int, default=20, help="messages per room, for memory")
    parser.add_argument("--timeout", type=int, default=1000, help="cluster-node-timeout, ms")
    parser.add_argument("--interval", type=float, default=0.5,
                        help="seconds between a host's chats (all rooms: at most ~2,000 a "
                             "second, which one Python process can send and read)")
    parser.add_argument("--manual", action="store_true", help="CLUSTER FAILOVER, not SIGKILL")
    parser.add_argument("--beats", action="store_true",
                        help="kill the master of the first board of beats, not the one with most rooms")
    parser.add_argument("--full-coverage", action="store_true",
                        help="cluster-require-full-coverage yes (Redis's default): while a "
                             "master is down, every master refuses every command")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp()
    servers = start_cluster(workdir, args.timeout, args.full_coverage)
    node_ports = [free_port() for _ in range(2)]
    seeds = ",".join(f"redis://127.0.0.1:{port}/" for port in list(servers)[:3])
    env = dict(os.environ, RUST_LOG="warn", NO_COLOR="1")
    logs = [open(os.path.join(workdir, f"node{i + 1}.log"), "w") for i in range(2)]
    nodes = [subprocess.Popen([SERVER, "--bind", f"127.0.0.1:{port}", "--redis", seeds, *FLAGS],
                              stdout=log, stderr=log, env=env)
             for port, log in zip(node_ports, logs)]
    ok = False
    try:
        for port in node_ports:
            asyncio.run(wait_for_port(port))
            wait_until_serving(port)
        ok = asyncio.run(measure(args, servers, node_ports))
    finally:
        for process in [*nodes, *servers.values()]:
            process.kill()
            process.wait()
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
