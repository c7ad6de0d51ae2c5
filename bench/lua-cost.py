#!/usr/bin/env python3
"""What each part of a chat's script costs Redis, measured inside Redis (issue 19, point 6).

A load test's figure for Redis (CPU per delivered message) mixes the script with the network,
pub/sub and, on a 2-core machine, the cost of sharing the cores with the nodes and chat-bench.
This takes the script alone: it starts a redis-server of its own, seeds one room (two seats),
and runs `room_chat.lua` (with `prelude.lua`, as the store loads it) ITERATIONS times in a loop
inside one `EVAL`, timed by Redis's own clock. Then the same with the body cut short at each
of its steps, and single calls for reference. Each variant runs RUNS times; the table gives the
fastest run (the one least disturbed by the rest of the machine) and the median.

What the loop pays once is the call itself: looking the script up, making its `KEYS` and
`ARGV`, and running the prelude's definitions. A second table measures that, call by call:
`redis-benchmark` sends CALLS calls of a script that does nothing (`return 1`), without the
prelude, with all of it, and with the part of it that `room_chat.lua` is given (the definitions
it uses, as `src/store/redis/prelude.rs` picks them), and of a Redis Function that does nothing in a library that defines the
prelude once (`FCALL`), and the table gives redis-server's CPU per call (user + system, from
/proc), the least of RUNS runs and the median. `bench/redis-cost.py` counts whole chats.

Usage: bench/lua-cost.py [--iterations 10000] [--runs 6] [--calls 300000]
Needs: redis-server, redis-cli and redis-benchmark (Redis 7: functions).
"""

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time

from benchlib import free_port, redis_cli

HERE = os.path.dirname(os.path.abspath(__file__))
LUA = os.path.join(HERE, "..", "src", "store", "redis", "lua")
ROOM, LOG = "chat:{ABC123}:room", "chat:{ABC123}:log"
# ARGV of room_chat.lua: tok conn tail client_msg_id max_messages max_bytes floor ends_typing.
TAIL = ',"from":"ada","content":"hello there, how are you doing today?","timestamp":1700000000000}'
ARGV = ["TOKA", "CONNA", TAIL, "", "200", "1000000", "0", "0"]


def read(name):
    with open(os.path.join(LUA, name)) as f:
        return f.read()


def cut_before(body, marker):
    """The body up to `marker` (a line of room_chat.lua), then a plain answer."""
    at = body.find(marker)
    if at < 0:
        raise SystemExit(f"lua-cost.py: room_chat.lua no longer has {marker!r}: update the cuts")
    return body[:at] + "\nreturn {'OK', 1}\n"


def variants(body):
    return [
        ("nothing (the loop itself)", "return {'OK', 1}"),
        ("one HGET", "redis.call('HGET', KEYS[1], 'last') return 1"),
        ("one HMGET of 6 fields",
         "redis.call('HMGET', KEYS[1], 'm1', 'm2', 'TOKA:c', 'TOKA:h', 'last', 'bytes') return 1"),
        ("one HSET of 2 fields", "redis.call('HSET', KEYS[1], 'x', '1', 'y', '2') return 1"),
        ("one PUBLISH (no subscriber)", "redis.call(PUBLISH, 'elsewhere', '" + "x" * 120 + "') return 1"),
        ("chat: the check (HMGET)", cut_before(body, "local id = last + 1")),
        ("chat: + the log (RPUSH, LPOP)", cut_before(body, "local writes = {'last', id, 'bytes', bytes}")),
        ("chat: + the room's counters (HSET)", cut_before(body, "local kind = 'C'")),
        ("chat: all of it (+ PUBLISH)", body),
    ]


def loop(prelude, inner, iterations):
    return (f"local PUBLISH = 'PUBLISH'\n{prelude}\nlocal function chat()\n{inner}\nend\n"
            "local t0 = redis.call('TIME')\n"
            f"for _ = 1, {iterations} do chat() end\n"
            "local t1 = redis.call('TIME')\n"
            "return (tonumber(t1[1]) - tonumber(t0[1])) * 1000000 + tonumber(t1[2]) - tonumber(t0[2])\n")


def chat_prelude(prelude, body):
    """The prelude's definitions that `body` uses, as `src/store/redis/prelude.rs` picks them
    (its rules, written again here: a definition is a top-level `local`, with the comment
    lines above it; names in lines that are comments do not count)."""
    lines = prelude.splitlines(keepends=True)
    starts = []
    for at, line in enumerate(lines):
        found = re.match(r"local (?:function )?(\w+)\s*[(=]", line)
        if found:
            first = at
            while first > 0 and lines[first - 1].startswith("--"):
                first -= 1
            starts.append((first, found.group(1)))
    ends = [first for first, _ in starts[1:]] + [len(lines)]
    definitions = [(name, "".join(lines[first:end])) for (first, name), end in zip(starts, ends)]

    def names(text):
        return {word for line in text.splitlines() if not line.lstrip().startswith("--")
                for word in re.findall(r"\w+", line)}

    needed, used = names(body), []
    for name, text in reversed(definitions):
        if name in needed:
            used.insert(0, text)
            needed |= names(text)
    return "".join(used)


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime and stime, fields 14 and 15 of stat


def per_call(port, pid, prelude, body, calls, runs):
    """redis-server's CPU per call of a script that does nothing, four ways (see above)."""
    bare = redis_cli(port, "SCRIPT", "LOAD", "return 1")
    with_prelude = redis_cli(port, "SCRIPT", "LOAD", f"local PUBLISH = 'PUBLISH'\n{prelude}\nreturn 1")
    with_chats = redis_cli(port, "SCRIPT", "LOAD",
                           f"local PUBLISH = 'PUBLISH'\n{chat_prelude(prelude, body)}\nreturn 1")
    library = ("#!lua name=luacost\nlocal PUBLISH = 'PUBLISH'\n" + prelude +
               "\nredis.register_function('nothing', function(keys, args) return 1 end)\n")
    redis_cli(port, "FUNCTION", "LOAD", "REPLACE", library)
    cases = [
        ("EVALSHA of `return 1`", ["EVALSHA", bare, "1", ROOM]),
        ("EVALSHA of the prelude and `return 1`", ["EVALSHA", with_prelude, "1", ROOM]),
        ("EVALSHA of a chat's part of it, `return 1`", ["EVALSHA", with_chats, "1", ROOM]),
        ("FCALL of a function that returns 1", ["FCALL", "nothing", "1", ROOM]),
    ]
    hz = os.sysconf("SC_CLK_TCK")
    times = {name: [] for name, _ in cases}
    for _ in range(runs):
        for name, command in cases:
            before = cpu_ticks(pid)
            subprocess.run(["redis-benchmark", "-p", str(port), "-n", str(calls), "-c", "1",
                            "-P", "100", "-q", *command], check=True, stdout=subprocess.DEVNULL)
            times[name].append((cpu_ticks(pid) - before) / hz * 1e6 / calls)
    print(f"µs of redis-server CPU per call, {calls} calls a run (pipelined 100 deep), {runs} "
          "runs: least, median")
    for name, _ in cases:
        print(f"  {name:40s} {min(times[name]):6.2f}  {statistics.median(times[name]):6.2f}")


def seed(port):
    redis_cli(port, "FLUSHALL")
    redis_cli(port, "HSET", ROOM, "m1", "TOKA", "m2", "TOKB", "TOKA:c", "CONNA", "TOKB:c", "CONNB",
              "last", "0", "bytes", "0", "ev", "0")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--calls", type=int, default=300000)
    args = parser.parse_args()
    prelude, body = read("prelude.lua"), read("room_chat.lua")
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly",
                                  "no", "--dir", scratch, "--lua-time-limit", "60000"],
                                 stdout=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    redis_cli(port, "PING")
                    break
                except subprocess.CalledProcessError:
                    time.sleep(0.05)
            cases = variants(body)
            times = {name: [] for name, _ in cases}
            for _ in range(args.runs):  # Runs interleaved, so that a slow spell hits all cases.
                for name, inner in cases:
                    seed(port)
                    micros = int(redis_cli(port, "EVAL", loop(prelude, inner, args.iterations), "2",
                                           ROOM, LOG, *ARGV))
                    times[name].append(micros / args.iterations)
            print(f"µs per iteration, {args.iterations} iterations a run, {args.runs} runs: "
                  "fastest run, median")
            for name, _ in cases:
                print(f"  {name:40s} {min(times[name]):6.2f}  {statistics.median(times[name]):6.2f}")
            per_call(port, redis.pid, prelude, body, args.calls, args.runs)
        finally:
            redis.kill()
            redis.wait()


if __name__ == "__main__":
    main()
