"""Fuzzed frames for both of the daemon's sockets (tests/test_fuzz_sockets.py): not a reference agent.

`front_frames` and `agent_frames` make deterministic streams of hostile multipart messages from a seed:
random bytes, random msgpack, valid messages with one field broken, deep nesting, odd sizes and frame
counts. `Fuzzer` is an agent that sends `agent_frames` on its own, admitted and proven, connection to the
agents socket: the position of a compromised child of sunsetd, the only one that gets past the gate.
"""
from __future__ import annotations

import random
import threading
import time
from typing import Any, Iterator

import msgpack

from sunsetd.agent import Agent

KINDS = [b"HELLO", b"READY", b"HEARTBEAT", b"REPLY", b"REQUEST", b"STOP"]
ERROR_CODES = ["timeout", "agent_error", "agent_crashed", "unavailable", "overloaded", "bad_request", "nope", 7]


def value(rng: random.Random, depth: int = 0) -> Any:
    """Any msgpack value, sometimes an awkward one."""
    roll = rng.random()
    if depth > 3 or roll < 0.45:
        return rng.choice([None, True, False, 0, -1, 1, 2**63 - 1, -2**63, 2**64 - 1, 1.5, float("nan"),
                           float("inf"), "", "x" * rng.randrange(200), "\u2603", b"", b"\x00\xff" * 8,
                           rng.randrange(-2**31, 2**31), rng.random()])
    if roll < 0.7:
        return [value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {rng.choice(["id", "v", "to", "op", "body", "timeout_ms", "ok", "error", "code", "message",
                        "secret", "retry", "deadline", 1, b"k", None]): value(rng, depth + 1)
            for _ in range(rng.randrange(6))}


def nested(depth: int) -> bytes:
    """A msgpack array `depth` deep, built by hand (msgpack.packb would refuse)."""
    return b"\x91" * depth + b"\xc0"


def pack(v: Any) -> bytes:
    return msgpack.packb(v, use_bin_type=True)


def payload(rng: random.Random, valid: dict) -> bytes:
    """One body: the valid message with a field broken, random msgpack, or bytes that are not msgpack."""
    roll = rng.random()
    if roll < 0.35:
        broken = dict(valid)
        key = rng.choice(list(broken) + ["extra"])
        if rng.random() < 0.5:
            broken.pop(key, None)
        else:
            broken[key] = value(rng)
        return pack(broken)
    if roll < 0.6:
        return pack(value(rng))
    if roll < 0.7:
        return nested(rng.choice([10, 100, 1000, 100_000]))
    if roll < 0.8:  # truncated or padded msgpack
        good = pack(valid)
        return good[:rng.randrange(len(good))] if rng.random() < 0.5 else good + bytes([rng.randrange(256)])
    if roll < 0.85:  # a declared length far beyond the frame (a bin32 and an array32 header)
        return rng.choice([b"\xc6\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xdf\x7f\xff\xff\xff"])
    if roll < 0.9:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    if roll < 0.901:  # rare: each is megabytes through the socket
        return b"\x00" * rng.choice([1024 * 1024 + 1, 2 * 1024 * 1024])  # over the daemon's frame limit
    return b""


def front_frames(seed: int, n: int, agent: str) -> Iterator[list[bytes]]:
    """n messages for the front socket."""
    rng = random.Random(seed)
    for i in range(n):
        valid = {"v": 1, "id": rng.choice([i, str(i), b"x", -i]), "to": rng.choice([agent, "sunsetd", "Nobody", ""]),
                 "op": rng.choice(["echo", "status", "restart", "stop", "nope", ""]), "body": value(rng),
                 "timeout_ms": rng.choice([1, 50, 1000, 0, -5])}
        if valid["to"] == "sunsetd" and valid["op"] in ("restart", "stop"):
            valid["op"] = "status"  # the fuzz attacks parsing, not the operator's verbs
        count = rng.choice([1, 1, 1, 1, 2, 3, 5])
        yield [payload(rng, valid) for _ in range(count)]


def agent_frames(seed: int, n: int, name: str, incarnation: int) -> Iterator[list[bytes]]:
    """n messages for the agents socket, as an agent's connection would send them."""
    rng = random.Random(seed)
    bodies = {b"HELLO": {"name": name, "pid": 1, "incarnation": incarnation, "secret": b"\0" * 32},
              b"READY": {}, b"HEARTBEAT": {},
              b"REPLY": {"id": 0, "ok": True, "body": None},
              b"REQUEST": {"id": 1, "op": "x", "body": None, "deadline": 0.0}, b"STOP": {}}
    for i in range(n):
        kind = rng.choice(KINDS + [b"", b"reply", b"\xff" * 40])
        valid = dict(bodies.get(kind, {}))
        if kind == b"REPLY":
            valid["id"] = rng.choice([i, 0, -1, 2**40, 2**64 - 1])
            if rng.random() < 0.4:
                valid.update(ok=False, error={"code": rng.choice(ERROR_CODES), "message": value(rng)})
        count = rng.choice([0, 1, 1, 1, 1, 2, 4])
        yield [kind] + [payload(rng, valid) for _ in range(count)]


class Fuzzer(Agent):
    """Sends `agent_frames` down its own connection to the daemon, from its I/O thread (the only one that
    may use that socket): a handler thread posts them through the runtime's inbox, as it posts replies."""

    RAW = b"fuzz-raw"

    def setup(self) -> None:
        runtime = self._runtime
        original = runtime._on_inbox

        def on_inbox(frames: list[bytes]) -> int | None:
            if frames[0] != self.RAW:
                return original(frames)
            try:
                runtime.sock.send_multipart(frames[1:], flags=runtime.zmq.NOBLOCK)
            except runtime.zmq.Again:
                self.dropped += 1
            return None

        runtime._on_inbox = on_inbox  # this process's own runtime: the compromised child of the test
        self.dropped = 0

    def handle_fuzz(self, body: Any) -> bool:
        """Begin sending body["n"] fuzzed messages made from body["seed"], in a thread of its own: the
        forged replies may answer this very request, or the ones asking how far it got."""
        launch = self._runtime.launch
        frames = agent_frames(int(body["seed"]), int(body["n"]), launch.name, launch.incarnation)
        self.posted, self.done = 0, False
        threading.Thread(target=self._send_all, args=(frames,), daemon=True).start()
        return True

    def _send_all(self, frames: Iterator[list[bytes]]) -> None:
        dropped = self.dropped
        for message in frames:
            self._runtime._post([self.RAW] + message)
            self.posted += 1
            if self.posted % 50 == 0:
                # at most about 25,000 a second, and slower while the daemon lags: a full send queue
                # would drop this agent's own heartbeats too, and the daemon would rightly call it hung
                time.sleep(0.002 if self.dropped == dropped else 0.05)
                dropped = self.dropped
        self.done = True

    def handle_progress(self, body: Any) -> dict:
        return {"posted": getattr(self, "posted", 0), "done": getattr(self, "done", False), "dropped": self.dropped}
