"""Live load for the chaos harness: client threads sending checked requests, and the ledger of every one.

Each request has a unique id and its send and reply times are kept. A reply is checked against what
the op must answer (`ping` -> "pong", `info` -> the agent's own name, `echo` -> the payload sent), so
a misrouted or corrupted answer counts as wrong, not as success. The ledger also notices a second reply
to the same id: exactly one reply per request is what the harness verifies.
"""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import zmq

from sunsetd.client import Client

REPLY_SLACK_S = 2.0  # beyond its deadline plus this, a request without a reply counts as lost


@dataclass(slots=True)
class Record:
    id: str
    kind: str  # load | probe | flood | fault
    agent: str
    op: str
    sent: float  # seconds since the harness started
    timeout_s: float
    expected: Any = None
    replied: float | None = None
    code: str | None = None  # "ok" or the error code
    correct: bool | None = None
    pid: int | None = None  # from `info` replies: which incarnation answered
    replies: int = 0


@dataclass(frozen=True)
class Target:
    agent: str
    op: str  # ping | info | echo | sleep | tools/list (an MCP server)


def expected_body(target: Target, rng: random.Random) -> tuple[Any, Any]:
    """(request body, expected reply or None when only a predicate applies)."""
    if target.op == "echo":
        payload = {"n": rng.randrange(1 << 30), "s": "x" * rng.randrange(1, 64)}
        return payload, payload
    if target.op == "ping":
        return None, "pong"
    if target.op == "sleep":  # work that takes time (10 ms), so that a flood really exceeds a capacity
        return 0.01, 0.01
    return None, None  # info: checked by name


class Ledger:
    def __init__(self, t0: float):
        self.t0 = t0
        self.lock = threading.Lock()
        self.records: dict[str, Record] = {}
        self.duplicates = 0
        self.unknown_replies = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def add(self, record: Record) -> None:
        with self.lock:
            self.records[record.id] = record

    def settle(self, reply: dict) -> Record | None:
        """Record a reply; check it. Returns the record (None for a reply to no request of ours)."""
        now = self.now()
        with self.lock:
            record = self.records.get(reply.get("id"))
            if record is None:
                self.unknown_replies += 1
                return None
            record.replies += 1
            if record.replies > 1:
                self.duplicates += 1
                return record
            record.replied = now
            if reply.get("ok"):
                record.code = "ok"
                body = reply.get("body")
                if record.op == "info":
                    record.correct = isinstance(body, dict) and body.get("name") == record.agent
                    record.pid = body.get("pid") if isinstance(body, dict) else None
                elif record.op == "tools/list":  # an MCP server's own answer (its info is sunsetd's)
                    record.correct = isinstance(body, dict) and isinstance(body.get("tools"), list) \
                        and bool(body["tools"])
                elif record.expected is not None:
                    record.correct = body == record.expected
                else:
                    record.correct = True
            else:
                record.code = str((reply.get("error") or {}).get("code"))
            return record

    def snapshot(self) -> list[Record]:
        with self.lock:
            return list(self.records.values())


class Sender:
    """One DEALER with many outstanding requests, for one thread."""

    def __init__(self, name: str, runtime_dir: Path, ledger: Ledger, context: zmq.Context):
        self.name = name
        self.ledger = ledger
        self.client = Client(runtime_dir, context)
        self.seq = 0
        self.outstanding: dict[str, Record] = {}

    def send(self, kind: str, agent: str, op: str, body: Any, expected: Any, timeout_s: float) -> Record:
        self.seq += 1
        record = Record(f"{self.name}-{self.seq}", kind, agent, op, self.ledger.now(), timeout_s, expected)
        self.ledger.add(record)
        self.client.send(agent, op, body, timeout=timeout_s, rid=record.id)
        self.outstanding[record.id] = record
        return record

    def receive(self, wait_s: float) -> list[Record]:
        """Replies that arrive within `wait_s` (then whatever else is already there)."""
        settled = []
        reply = self.client.recv(wait_s)
        while reply is not None:
            record = self.ledger.settle(reply)
            if record is not None:
                self.outstanding.pop(record.id, None)
                settled.append(record)
            reply = self.client.recv(0)
        now = self.ledger.now()
        for rid, record in list(self.outstanding.items()):
            if now > record.sent + record.timeout_s + REPLY_SLACK_S:
                del self.outstanding[rid]  # stays in the ledger with no reply: lost, unless explained
        return settled

    def drain(self) -> None:
        deadline = time.monotonic() + max([r.timeout_s for r in self.outstanding.values()] + [0]) + REPLY_SLACK_S
        while self.outstanding and time.monotonic() < deadline:
            self.receive(0.05)

    def close(self) -> None:
        self.client.close()


class LoadClient(threading.Thread):
    """Paced requests (`rate` per second, up to `window` outstanding) to targets chosen at random."""

    def __init__(self, name: str, kind: str, runtime_dir: Path, ledger: Ledger, targets: Callable[[], list[Target]],
                 rate: float, window: int, timeout_s: float, seed: int, context: zmq.Context):
        super().__init__(name=name, daemon=True)
        self.sender = Sender(name, runtime_dir, ledger, context)
        self.kind = kind
        self.targets = targets
        self.rate = rate
        self.window = window
        self.timeout_s = timeout_s
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()

    def run(self) -> None:
        interval = 1.0 / self.rate
        next_send = time.monotonic()
        try:
            while not self.stop_event.is_set():
                now = time.monotonic()
                if now >= next_send and len(self.sender.outstanding) < self.window:
                    choices = self.targets()
                    if choices:
                        target = self.rng.choice(choices)
                        body, expected = expected_body(target, self.rng)
                        self.sender.send(self.kind, target.agent, target.op, body, expected, self.timeout_s)
                    next_send = max(next_send + interval, now - 1.0)  # no burst to catch up after a stall
                self.sender.receive(max(0.0, min(next_send - time.monotonic(), 0.05)))
            self.sender.drain()
        finally:
            self.sender.close()

    def stop(self) -> None:
        self.stop_event.set()
