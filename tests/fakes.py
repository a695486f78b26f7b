"""Doubles of the world around the supervisor, for tests that need no daemon: a clock, a spawner whose
processes are driven by hand, an agent channel that records frames, and a harness that wires the real
Supervisor to the real RequestBook as the daemon does, with every decision recorded.

Only the OS and the sockets are faked: the lifecycle, the book, the verdicts and the reload logic under
test are the real ones.
"""
from __future__ import annotations

import itertools
import random
import signal
from dataclasses import dataclass, field
from typing import Any

from sunsetd.policy import State, Transition
from sunsetd.profile import AgentSpec, Backoff, Intensity, Profile
from sunsetd.protocol import Kind, Request
from sunsetd.requestbook import AgentView, Control, Forward, Reply, RequestBook, StartAgent
from sunsetd.spawner import Exited, Memory, Output, SpawnFailed, Started, describe_exit
from sunsetd.supervisor import LAZY_START, Supervisor
from sunsetd.timers import Timers


class Clock:
    """Time that moves only when told to, running every timer that falls due on the way."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers = Timers(lambda: self.now)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        self.timers.run_due()
        while True:
            wait = self.timers.timeout(cap=float("inf"))
            if self.now + wait > end:
                break
            self.now += wait
            self.timers.run_due()
        self.now = end
        self.timers.run_due()


_pids = itertools.count(5000)


class FakeHandle:
    def __init__(self, spawner: "FakeSpawner", spec: AgentSpec, incarnation: int, listener: Any):
        self.spawner = spawner
        self.name = spec.name
        self.spec = spec
        self.incarnation = incarnation
        self.listener = listener
        self.pid: int | None = None
        self.started_at: float | None = None
        self.signals: list[str] = []
        self.rss: int | None = None
        self.exited = False
        self.written: list[bytes] = []
        self.input_closed = False
        self.unread_input = 0
        self.stamped = spawner.stamped  # a Python agent with a stamp page (sunsetd.stamps): set `stamp`
        self.stamp: float | None = None
        self.idle = False  # what its stamp says: idle, the next one comes IDLE_STAMP_S later
        self.stopped_since: float | None = None

    def __repr__(self) -> str:
        return f"<FakeHandle {self.name}#{self.incarnation}>"

    def heard(self) -> tuple[float, bool] | None:
        return None if self.stamp is None else (self.stamp, self.idle)

    # what the supervisor may ask
    def terminate(self) -> None:
        self.signals.append("TERM")

    def kill(self) -> None:
        self.signals.append("KILL")

    def signal(self, sig: int) -> None:
        self.signals.append(signal.Signals(sig).name.removeprefix("SIG"))

    def pause(self) -> None:
        self.signals.append("STOP")

    def resume(self) -> None:
        self.signals.append("CONT")

    def memory(self, fresh: bool = False) -> int | None:
        return self.rss

    # its stdin (an MCP server's): what was written, and how much it has not read (set by a test)
    def write(self, data: bytes) -> bool:
        if self.input_closed:
            return False
        self.written.append(data)
        return True

    def close_input(self) -> None:
        self.input_closed = True

    def input_backlog(self) -> int:
        return self.unread_input

    # what the test makes the process do
    def start(self) -> "FakeHandle":
        self.pid = next(_pids)
        self.started_at = self.spawner.clock.now
        self.listener(Started(self))
        return self

    def exit(self, code: int = 0) -> None:
        assert not self.exited, f"{self} exited twice"
        self.exited = True
        self.listener(Exited(self, code, describe_exit(code)))

    def fail_to_spawn(self, error: str = "ENOMEM") -> None:
        self.exited = True
        self.listener(SpawnFailed(self, error))

    def print(self, line: str, stream: str = "stdout") -> None:
        self.listener(Output(self, stream, line))

    def use_memory(self, mb: float) -> None:
        self.rss = int(mb * (1 << 20))
        self.listener(Memory(self, self.rss))


class FakeSpawner:
    def __init__(self, clock: Clock):
        self.clock = clock
        self.spawned: list[FakeHandle] = []
        self.stamped = False  # True: its handles are Python agents with stamp pages, as the real ones

    def spawn(self, spec: AgentSpec, incarnation: int, listener: Any) -> FakeHandle:
        handle = FakeHandle(self, spec, incarnation, listener)
        self.spawned.append(handle)
        return handle

    def close(self) -> None:
        pass

    def latest(self, name: str) -> FakeHandle:
        return [h for h in self.spawned if h.name == name][-1]

    def names(self) -> list[str]:
        return [f"{h.name}#{h.incarnation}" for h in self.spawned]


class FakeChannel:
    def __init__(self) -> None:
        self.sent: list[tuple[str, int, Kind, Any]] = []
        self.unread = False

    def send(self, name: str, incarnation: int, kind: Kind, body: Any = None) -> bool:
        self.sent.append((name, incarnation, kind, body))
        return True

    def kinds(self, name: str) -> list[Kind]:
        return [k for n, _, k, _ in self.sent if n == name]


def spec(name: str, **overrides: Any) -> AgentSpec:
    base = dict(run="agents.testing:Echo", heartbeat_ms=100, liveness=3, start_timeout_s=5.0, stop_timeout_s=2.0,
                stable_s=10.0, backoff=Backoff(initial_ms=100, max_ms=1000, multiplier=2.0, jitter="none"),
                intensity=Intensity(max_restarts=3, within_s=60.0, cooldown_s=30.0))
    base.update(overrides)
    return AgentSpec(name=name, **base)


def profile(*specs: AgentSpec, name: str = "test", memory_mb: int | None = None) -> Profile:
    by_name = {s.name: s for s in specs}
    level: dict[str, int] = {}

    def depth(n: str) -> int:
        if n not in level:
            level[n] = 1 + max((depth(d) for d in by_name[n].depends_on), default=-1)
        return level[n]

    for s in specs:
        depth(s.name)
    levels = tuple(tuple(s.name for s in specs if level[s.name] == i) for i in range(max(level.values()) + 1))
    from pathlib import Path

    return Profile(name, Path(f"/profiles/{name}.yaml"), "", memory_mb, tuple(specs), levels)


@dataclass
class Harness:
    """The supervisor and the request book wired as the daemon wires them, minus the sockets."""

    profile: Profile
    clock: Clock = field(default_factory=Clock)

    def __post_init__(self) -> None:
        self.spawner = FakeSpawner(self.clock)
        self.channel = FakeChannel()
        self.book = RequestBook(lambda: self.sup.profile.name)
        self.replies: list[Reply] = []
        self.forwards: list[Forward] = []
        self.transitions: list[tuple[str, int, Transition]] = []
        self.gone: list[tuple[str, int, str, float]] = []
        self.lazy_starts: list[tuple[str, float]] = []
        self.ready_calls = 0
        self.settled: list[Any] = []
        self._deadline = None
        self.sup = Supervisor(self.profile, self.spawner, self.channel, self.clock.timers, self.book, self,
                              random.Random(7))

    # ---- the daemon's wiring: the supervisor's listener feeds the book
    def agent_view(self, name: str, view: AgentView | None) -> None:
        self.execute(self.book.update(name, view) if view is not None else
                     self.book.unlist(name, f"{name} was removed from the profile"))

    def agent_gone(self, name: str, incarnation: int, description: str, grace_s: float) -> None:
        self.gone.append((name, incarnation, description, grace_s))
        self.execute(self.book.gone(name, incarnation, description, self.clock.now, grace_s))

    def agent_transition(self, name: str, incarnation: int, t: Transition) -> None:
        self.transitions.append((name, incarnation, t))

    def lazy_started(self, name: str, seconds: float) -> None:
        self.lazy_starts.append((name, seconds))

    def all_ready(self) -> None:
        self.ready_calls += 1

    def execute(self, decisions: list) -> None:
        for d in decisions:
            if isinstance(d, Reply):
                self.replies.append(d)
            elif isinstance(d, Forward):
                self.forwards.append(d)
            elif isinstance(d, StartAgent):
                refusal = self.sup.start_agent(d.agent, LAZY_START)
                if refusal is not None:
                    self.execute(self.book.start_refused(d.agent, refusal))
            elif isinstance(d, Control):
                raise AssertionError("no control ops in these tests")
        when = self.book.next_deadline()  # as the router does: one timer for the book's next deadline
        if when is not None and (self._deadline is None or self._deadline.cancelled or when < self._deadline.when):
            self.clock.timers.cancel(self._deadline)
            self._deadline = self.clock.timers.call_at(when, self._expire)

    def _expire(self) -> None:
        self._deadline = None
        self.execute(self.book.expire(self.clock.now))

    # ---- what the world does
    def start(self) -> "Harness":
        self.sup.start()
        return self

    def request(self, to: str, op: str = "echo", timeout_ms: int = 5000, retry: bool = False, cid: Any = None) -> None:
        self.execute(self.book.accept([b"client"], Request(cid, to, op, None, timeout_ms, retry), self.clock.now))

    def reply(self, forward: Forward, body: Any = "ok") -> None:
        self.execute(self.book.replied(forward.request.to, forward.incarnation, forward.request.rid, True, body))

    def hello(self, name: str, ready: bool = True) -> FakeHandle:
        """The latest incarnation of `name` starts, says HELLO and (by default) READY."""
        handle = self.spawner.latest(name)
        if handle.pid is None:
            handle.start()
        self.sup.on_agent_message(name, handle.incarnation, Kind.HELLO, {"pid": handle.pid, "stamps": handle.stamped})
        if ready:
            self.sup.on_agent_message(name, handle.incarnation, Kind.READY, None)
        return handle

    def heartbeat(self, name: str) -> None:
        handle = self.spawner.latest(name)
        self.sup.on_agent_message(name, handle.incarnation, Kind.HEARTBEAT, None)

    def bring_up(self) -> None:
        """Start every agent that is spawned and not yet ready, level by level, until none is left."""
        for _ in range(len(self.profile.agents) + 1):
            pending = [h for h in self.spawner.spawned if not h.exited and self.state(h.name) is State.STARTING
                       and h is self.spawner.latest(h.name)]
            if not pending:
                return
            for handle in pending:
                self.hello(handle.name)

    def live(self, seconds: float, step: float = 0.05) -> None:
        """Time passes while every live agent keeps heartbeating."""
        end = self.clock.now + seconds
        while self.clock.now < end:
            for handle in self.spawner.spawned:
                if not handle.exited and handle.pid is not None and handle is self.spawner.latest(handle.name):
                    self.sup.on_agent_message(handle.name, handle.incarnation, Kind.HEARTBEAT, None)
            self.clock.advance(min(step, end - self.clock.now))

    # ---- what the test looks at
    def state(self, name: str) -> State:
        return self.sup.slots[name].state

    def states(self) -> dict[str, str]:
        return {name: slot.state.value for name, slot in self.sup.slots.items()}

    def moves(self, name: str) -> list[str]:
        return [f"{t.old.value}->{t.new.value}" for n, _, t in self.transitions if n == name]

    def codes(self) -> list[str]:
        return ["ok" if r.ok else r.code.value for r in self.replies]
