"""What the benchmark scripts share: free ports, redis-cli, and a chat client that counts what
it receives (bench/redis-cost.py, bench/failover.py)."""

import asyncio
import json
import os
import socket
import subprocess

import websockets

SERVER = os.environ.get("CHAT_SERVER", "target/release/chat-server")
FLAGS = ["--rate-limit", "0", "--max-connections", "0", "--max-connections-per-ip", "0",
         "--max-failed-joins", "0"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], check=True,
                          capture_output=True, text=True).stdout.strip()


def info(port, section):
    """One section of Redis's INFO, as a dict of its lines."""
    lines = redis_cli(port, "INFO", section).splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


async def wait_for_port(port):
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


class Member:
    """One client: what it received, counted by type, and the chats by id."""

    def __init__(self, ws):
        self.ws = ws
        self.counts = {}
        self.chats = []

    async def expect(self, kind):
        while True:
            message = await self.next_message(30)
            if message is None:
                raise SystemExit(f"expected {kind}, got nothing in 30 s")
            if message["type"] == kind:
                return message
            if message["type"] == "error":
                raise SystemExit(f"expected {kind}, got {message}")

    async def next_message(self, timeout=None):
        """The next message, counted; `None` once the connection is closed or `timeout` passed."""
        try:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        except (asyncio.TimeoutError, websockets.ConnectionClosed):
            return None
        self.counts[message["type"]] = self.counts.get(message["type"], 0) + 1
        if message["type"] == "chat":
            self.chats.append(message["id"])
        return message

    async def send(self, message):
        await self.ws.send(json.dumps(message))


async def connect(port):
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None,
                                  ping_interval=None)
    member = Member(ws)
    await member.expect("connected")
    return member


async def set_up_room(n, host_port, guest_port, slots):
    async with slots:
        host = await connect(host_port)
        await host.send({"type": "set_username", "username": f"h{n}"})
        await host.expect("username_set")
        await host.send({"type": "create_room"})
        code = (await host.expect("room_created"))["room_code"]
        guest = await connect(guest_port)
        await guest.send({"type": "set_username", "username": f"g{n}"})
        await guest.expect("username_set")
        await guest.send({"type": "join_room", "room_code": code})
        await guest.expect("room_joined")
        await host.expect("peer_joined")
        return code, host, guest
