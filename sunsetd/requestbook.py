"""Request book: every request the front socket accepted, from then until its one reply (DESIGN §5).

Owns the pending requests, each agent's queue and in-flight table, deadlines, the retry of a request
whose incarnation died to the next one, and the answers at shutdown. It is fed events (a request was
accepted, a forward could not be delivered, an agent replied, time passed, an agent's availability
changed, an incarnation is gone, shutdown) and answers each with decisions: forward this request to
that incarnation, reply to that one with this code, start this lazy agent, hand this control op over,
tell an incarnation that a request it holds timed out.

It never touches a socket, a process or a clock: the router decodes frames, passes `now` in and carries
the decisions out. Every path that ends a request goes through `_reply`, which removes it from
`pending`: one reply per accepted request is a property of this file alone, and the property tests
check it by counting over random event sequences.
"""
from __future__ import annotations

import enum
import heapq
import itertools
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from sunsetd.protocol import CONTROL_TARGET, ControlOp, ErrorCode, Request

UNKNOWN_LABEL = "unknown"  # the metrics label of requests to no agent: client input never becomes a label
SHUTTING_DOWN = "sunsetd is shutting down"
# Bytes of request frames the book may hold at once (queued, in flight, or kept for a retry), across all
# agents: past it a request is answered `overloaded`, so no flood of large bodies can grow the daemon
# without bound. Control requests are exempt: an operator can always ask what is going on.
MAX_HELD_BYTES = 256 << 20


class Availability(str, enum.Enum):
    READY = "ready"  # an incarnation answers: forward, up to max_inflight at once
    COMING = "coming"  # starting, in backoff or waiting for its dependencies: queue
    ON_DEMAND = "on_demand"  # a lazy agent that is not running: a request queues and starts it
    DOWN = "down"  # failed (circuit open) or stopped for good: refuse with the view's code and message


@dataclass(frozen=True, slots=True)
class AgentView:
    """What the book knows of one agent. The supervisor publishes a new view whenever it changes."""

    availability: Availability
    incarnation: int = 0  # the incarnation that answers (READY only)
    max_inflight: int = 64
    max_queue: int = 256
    message: str = ""  # why it is DOWN or ON_DEMAND: what a refused or dropped request is told
    code: ErrorCode = ErrorCode.UNAVAILABLE
    trial_at: float | None = None  # a failed agent's half-open trial, for the refusal's message


@dataclass(slots=True, eq=False)
class Pending:
    """An accepted request that has not been answered yet."""

    rid: int  # the book's own id, the one agents see
    envelope: list[bytes]  # the client's routing frames, opaque here
    client_id: Any  # the id the client gave, echoed in the reply
    to: str
    op: str
    body: Any
    deadline: float
    received_at: float
    retry: bool
    label: str  # the agent's name, "sunsetd", or "unknown": the metrics label of its reply
    retried: bool = False
    incarnation: int = 0  # in flight to this incarnation; 0 while queued
    orphaned_until: float | None = None  # its incarnation is gone; a last reply may still come until then
    lost: str = ""  # how that incarnation ended
    origin: Any = None  # the client's connection, opaque here: the router asks whether it is still there
    size: int = 0  # bytes of its frame, counted against MAX_HELD_BYTES until it is answered


@dataclass(frozen=True, slots=True)
class Forward:
    request: Pending
    incarnation: int


@dataclass(frozen=True, slots=True)
class Reply:
    request: Pending
    ok: bool
    body: Any = None
    code: ErrorCode | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class Control:
    """A request to the daemon itself: the control handlers answer it through `answer` or `fail`."""

    request: Pending


@dataclass(frozen=True, slots=True)
class StartAgent:
    """The first request of a lazy agent that is not running: start it (it is queued meanwhile)."""

    agent: str


@dataclass(frozen=True, slots=True)
class Cancel:
    """A request timed out while that incarnation had it: it may stop working on it (it was answered)."""

    request: Pending
    incarnation: int


Decision = Forward | Reply | Control | StartAgent | Cancel

_DEADLINE, _ORPHAN = 0, 1  # what a heap entry is for


@dataclass(slots=True, eq=False)
class _Agent:
    name: str
    view: AgentView
    listed: bool = True  # False once a reload removed it: new requests are unknown_agent
    reachable: bool = True  # False once a forward found the ready incarnation's connection gone
    last_request_at: float = 0.0
    queue: deque[Pending] = field(default_factory=deque)
    inflight: dict[int, Pending] = field(default_factory=dict)  # to any incarnation, orphans included
    orphans: int = 0  # of those, held by an incarnation that is gone (in their grace)
    # answered `timeout` while an incarnation had them: they still take its room (and its memory) until
    # it answers late or says it dropped them, or is gone; rid -> incarnation
    expired: dict[int, int] = field(default_factory=dict)

    @property
    def room(self) -> bool:
        """The ready incarnation may take one more: what a dead one still holds does not count, what a
        live one still works on does, answered or not."""
        return len(self.inflight) - self.orphans + len(self.expired) < self.view.max_inflight


class RequestBook:
    def __init__(self, profile_name: str | Callable[[], str] = "-"):
        # named in unknown_agent replies; a getter, so that the profile's owner stays its only owner
        self._profile_name = profile_name if callable(profile_name) else (lambda: profile_name)
        self.pending: dict[int, Pending] = {}
        self.stopping = False
        self.counters: Counter[str] = Counter()  # late_replies, stale_replies
        self.held_bytes = 0  # of the pending requests' frames
        self.max_held_bytes = MAX_HELD_BYTES
        self._agents: dict[str, _Agent] = {}
        self._ids = itertools.count(1)
        self._heap: list[tuple[float, int, int]] = []  # (when, rid, _DEADLINE | _ORPHAN); dead entries skipped

    # ---- agents (events from the supervisor)
    def update(self, name: str, view: AgentView) -> list[Decision]:
        """The agent's availability or limits changed (or it is new, or back in the profile)."""
        agent = self._agents.get(name)
        if agent is None:
            agent = self._agents[name] = _Agent(name, view)
        old, agent.view, agent.listed = agent.view, view, True
        if view.availability is Availability.READY and (
                old.availability is not Availability.READY or old.incarnation != view.incarnation):
            agent.reachable = True  # a new connection
        if view.availability in (Availability.DOWN, Availability.ON_DEMAND):
            return self._fail_queue(agent, view.code, view.message)
        return self._flush(agent)

    def unlist(self, name: str, message: str) -> list[Decision]:
        """A reload removed the agent: new requests are unknown_agent and the queued ones are refused,
        while requests already with its incarnation still get that incarnation's replies."""
        agent = self._agents.get(name)
        if agent is None:
            return []
        agent.listed = False
        out = self._fail_queue(agent, ErrorCode.UNAVAILABLE, message)
        self._collect(agent)
        return out

    def gone(self, name: str, incarnation: int, description: str, now: float, grace_s: float) -> list[Decision]:
        """That incarnation's process ended (`description` says how). What it still held is answered
        `agent_crashed` or, with retry, queued once for the next incarnation; after `grace_s`, because a
        reply it sent just before dying may still be on its way through the socket."""
        agent = self._agents.get(name)
        if agent is None:
            return []
        out: list[Decision] = []
        for rid in [rid for rid, inc in agent.expired.items() if inc == incarnation]:
            del agent.expired[rid]  # what it still worked on went with it
        for p in [p for p in agent.inflight.values() if p.incarnation == incarnation]:
            p.lost = description
            if grace_s > 0:
                p.orphaned_until = now + grace_s
                agent.orphans += 1
                heapq.heappush(self._heap, (p.orphaned_until, p.rid, _ORPHAN))
            else:
                out += self._settle_orphan(agent, p)
        self._collect(agent)
        return out

    # ---- requests (events from the router)
    def accept(self, envelope: list[bytes], request: Request, now: float, origin: Any = None,
               size: int = 0) -> list[Decision]:
        p = Pending(next(self._ids), envelope, request.id, request.to, request.op, request.body,
                    now + request.timeout_ms / 1000.0, now, request.retry, UNKNOWN_LABEL, origin=origin, size=size)
        self.pending[p.rid] = p
        self.held_bytes += size
        self._arm(p)  # first: whatever happens next, the deadline answers it
        if self.held_bytes > self.max_held_bytes and request.to != CONTROL_TARGET:
            self.counters["overloaded_held_bytes"] += 1
            return [self._reply(p, False, None, ErrorCode.OVERLOADED,
                                f"sunsetd holds {(self.held_bytes - size) / 2**20:.1f} MiB of requests; this one's "
                                f"{size} bytes would pass the {self.max_held_bytes / 2**20:.1f} MiB limit")]
        if request.to == CONTROL_TARGET:
            p.label = CONTROL_TARGET
            if self.stopping and request.op != ControlOp.STATUS.value:
                return [self._reply(p, False, None, ErrorCode.SHUTTING_DOWN, SHUTTING_DOWN)]
            return [Control(p)]
        agent = self._agents.get(request.to)
        if agent is None or not agent.listed:
            return [self._reply(p, False, None, ErrorCode.UNKNOWN_AGENT,
                                f"no agent {request.to!r} in profile {self._profile_name()}")]
        p.label = agent.name
        agent.last_request_at = now
        view = agent.view
        if view.availability is Availability.READY and agent.reachable and not agent.queue and agent.room:
            return [self._forward(agent, p)]
        if self.stopping:
            # agents stop in reverse dependency order: one still ready still answers (a dependent's
            # teardown may call it), but nothing waits in a queue that no incarnation will drain
            return [self._reply(p, False, None, ErrorCode.SHUTTING_DOWN, SHUTTING_DOWN)]
        if view.availability is Availability.DOWN:
            return [self._reply(p, False, None, view.code, self._down_message(view, now))]
        if len(agent.queue) >= view.max_queue:
            return [self._reply(p, False, None, ErrorCode.OVERLOADED,
                                f"{agent.name} has {len(agent.queue)} requests queued (max_queue={view.max_queue})")]
        agent.queue.append(p)
        return [StartAgent(agent.name)] if view.availability is Availability.ON_DEMAND else []

    def replied(self, name: str, incarnation: int, rid: int, ok: bool, value: Any,
                now: float | None = None) -> list[Decision]:
        """An agent's REPLY: `value` is the body, or (ErrorCode, message) when not ok. An agent that says
        `timeout` (it dropped the request unrun, its deadline passed) is answered `timeout` when the
        deadline has passed at `now` by our clock too (its word can be read before our timer runs),
        and `agent_error` otherwise: an agent cannot claim the daemon's verdict."""
        agent = self._agents.get(name)
        p = agent.inflight.get(rid) if agent is not None else None
        if p is None:
            if agent is not None and agent.expired.get(rid) == incarnation:
                self.counters["late_replies"] += 1  # already answered: its deadline passed
                return self.dropped(name, incarnation, rid)
            if agent is not None and agent.view.incarnation == incarnation:
                self.counters["late_replies"] += 1
            else:
                self.counters["stale_replies"] += 1  # not from the incarnation that answers now
            return []
        if p.incarnation != incarnation:
            self.counters["stale_replies"] += 1  # not from the incarnation it was sent to
            return []
        del agent.inflight[rid]
        if p.orphaned_until is not None:
            agent.orphans -= 1  # a last reply that came within the grace
        if ok:
            out: list[Decision] = [self._reply(p, True, value)]
        elif value[0] is ErrorCode.TIMEOUT and now is not None and now >= p.deadline:
            out = [self._reply(p, False, None, ErrorCode.TIMEOUT,
                               f"no reply from {p.to} within {(p.deadline - p.received_at) * 1000:.0f}ms; "
                               f"it said: {str(value[1])[:200]} (request was in flight)")]
        elif value[0] is ErrorCode.TIMEOUT:
            out = [self._reply(p, False, None, ErrorCode.AGENT_ERROR, value[1])]
        else:
            out = [self._reply(p, False, None, *value)]
        if agent.queue:
            out += self._flush(agent)
        elif not agent.listed:
            self._collect(agent)
        return out

    def dropped(self, name: str, incarnation: int, rid: int) -> list[Decision]:
        """That incarnation is done with a request that timed out (it answered late, dropped it unrun,
        or was told to cancel it): its room is free again."""
        agent = self._agents.get(name)
        if agent is None or agent.expired.get(rid) != incarnation:
            return []
        del agent.expired[rid]
        if not agent.listed:
            self._collect(agent)
            return []
        return self._flush(agent)

    def forward_failed(self, p: Pending, peer_gone: bool) -> list[Decision]:
        """The router could not deliver a Forward: the incarnation's connection is gone (its exit not seen
        yet: the request never reached it and waits for the next one), or its pipe is full."""
        agent = self._agents.get(p.to)
        if agent is None:
            return []
        if peer_gone and agent.view.incarnation == p.incarnation:
            agent.reachable = False  # nothing more goes to it; the next incarnation's READY opens it again
        if agent.inflight.pop(p.rid, None) is None or p.rid not in self.pending:
            return []
        if not peer_gone:  # its place in flight is free again: what waits behind it tries in turn
            return [self._reply(p, False, None, ErrorCode.OVERLOADED, f"{agent.name}'s pipe is full")] + \
                self._flush(agent)
        if not agent.listed:
            out = [self._reply(p, False, None, ErrorCode.UNAVAILABLE, f"{agent.name} was removed from the profile")]
            self._collect(agent)
            return out
        if self.stopping:  # nothing queues during a shutdown
            return [self._reply(p, False, None, ErrorCode.SHUTTING_DOWN, SHUTTING_DOWN)]
        self._requeue(agent, p)
        return self._flush(agent)

    def start_refused(self, name: str, reason: str) -> list[Decision]:
        """A lazy start could not happen (the memory budget): what waits for it is told why."""
        agent = self._agents.get(name)
        if agent is None or agent.view.availability is not Availability.ON_DEMAND:
            return []
        return self._fail_queue(agent, ErrorCode.OVERLOADED, reason)

    def answer(self, rid: int, body: Any) -> list[Decision]:
        """A control op's answer; nothing if the request was answered already (its deadline)."""
        p = self.pending.get(rid)
        return [] if p is None else [self._reply(p, True, body)]

    def fail(self, rid: int, code: ErrorCode, message: str) -> list[Decision]:
        p = self.pending.get(rid)
        return [] if p is None else [self._reply(p, False, None, code, message)]

    # ---- time
    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][1] not in self.pending:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def expire(self, now: float) -> list[Decision]:
        """Everything whose time has come: deadlines (`timeout`) and the grace of gone incarnations."""
        out: list[Decision] = []
        freed: dict[str, _Agent] = {}  # agents with room in flight again: their queues move on at the end,
        heap = self._heap  # so that nothing is forwarded that is about to time out in this same call
        while heap and heap[0][0] <= now:
            when, rid, kind = heapq.heappop(heap)
            p = self.pending.get(rid)
            if p is None:
                continue
            agent = self._agents.get(p.to) if p.label == p.to else None
            if kind == _ORPHAN:
                if p.orphaned_until == when and agent is not None and rid in agent.inflight:
                    out += self._settle_orphan(agent, p)
                    freed[agent.name] = agent
                continue
            where = "waiting for the daemon" if p.label == CONTROL_TARGET else "queued"
            cancel = None
            if agent is not None:
                if agent.inflight.pop(rid, None) is not None:
                    where = "in flight"
                    freed[agent.name] = agent
                    if p.orphaned_until is not None:
                        agent.orphans -= 1
                    else:
                        cancel = Cancel(p, p.incarnation)
                        agent.expired[rid] = p.incarnation
                else:
                    try:
                        agent.queue.remove(p)
                    except ValueError:
                        pass
            out.append(self._reply(p, False, None, ErrorCode.TIMEOUT,
                                   f"no reply from {p.to} within {(p.deadline - p.received_at) * 1000:.0f}ms "
                                   f"(request was {where})"))
            if cancel is not None:
                out.append(cancel)
            if agent is not None:
                self._collect(agent)
        for agent in freed.values():
            out += self._flush(agent)
        return out

    # ---- shutdown
    def shutdown(self) -> list[Decision]:
        """From now on nothing queues: what is queued is answered shutting_down, new requests are
        forwarded only to an agent still ready with room, and control ops other than status refused."""
        self.stopping = True
        out: list[Decision] = []
        for agent in list(self._agents.values()):
            out += self._fail_queue(agent, ErrorCode.SHUTTING_DOWN, SHUTTING_DOWN)
        return out

    def close(self) -> list[Decision]:
        """The daemon exits: every request still pending gets its reply now."""
        self.stopping = True
        for agent in self._agents.values():
            agent.queue.clear()
            agent.inflight.clear()
            agent.expired.clear()
            agent.orphans = 0
        return [self._reply(p, False, None, ErrorCode.SHUTTING_DOWN, SHUTTING_DOWN)
                for p in list(self.pending.values())]

    # ---- queries (pure reads, for the supervisor and status)
    def is_pending(self, rid: int) -> bool:
        return rid in self.pending

    def load(self, name: str) -> tuple[int, int]:
        """(in flight, queued) for the agent."""
        agent = self._agents.get(name)
        return (0, 0) if agent is None else (len(agent.inflight), len(agent.queue))

    def idle(self, name: str) -> bool:
        agent = self._agents.get(name)
        return agent is None or not (agent.inflight or agent.queue)

    def owes(self, name: str, incarnation: int) -> bool:
        """Whether that incarnation holds a request forwarded to it and not answered: the liveness tick
        judges an idle agent that is given work by the working limit (sunsetd.stamps)."""
        agent = self._agents.get(name)
        if agent is None or len(agent.inflight) <= agent.orphans:
            return False
        return any(p.incarnation == incarnation and p.orphaned_until is None for p in agent.inflight.values())

    def last_request_at(self, name: str) -> float:
        agent = self._agents.get(name)
        return 0.0 if agent is None else agent.last_request_at

    # ---- internals
    def _reply(self, p: Pending, ok: bool, body: Any = None, code: ErrorCode | None = None,
               message: str = "") -> Reply:
        del self.pending[p.rid]  # the one way out: a second reply would raise KeyError here
        self.held_bytes -= p.size
        if len(self._heap) > 1024 and len(self._heap) > 4 * len(self.pending):
            self._compact()
        return Reply(p, ok, body, code, message)

    def _arm(self, p: Pending) -> None:
        heapq.heappush(self._heap, (p.deadline, p.rid, _DEADLINE))

    def _compact(self) -> None:
        """Most requests are answered long before their deadline: drop their entries at once, so the
        heap stays near the number of pending requests instead of the requests of the last timeout."""
        self._heap = [e for e in self._heap if e[1] in self.pending]
        heapq.heapify(self._heap)

    def _forward(self, agent: _Agent, p: Pending) -> Forward:
        p.incarnation = agent.view.incarnation
        agent.inflight[p.rid] = p
        return Forward(p, p.incarnation)

    def _flush(self, agent: _Agent) -> list[Decision]:
        view = agent.view
        if view.availability is not Availability.READY or not agent.reachable:
            return []
        out: list[Decision] = []
        while agent.queue and agent.room:
            out.append(self._forward(agent, agent.queue.popleft()))
        return out

    def _requeue(self, agent: _Agent, p: Pending) -> None:
        """Back into the queue in arrival order, ahead of requests that came later."""
        p.incarnation, p.orphaned_until = 0, None
        for i, queued in enumerate(agent.queue):
            if queued.rid > p.rid:
                agent.queue.insert(i, p)
                return
        agent.queue.append(p)

    def _settle_orphan(self, agent: _Agent, p: Pending) -> list[Decision]:
        del agent.inflight[p.rid]
        if p.orphaned_until is not None:
            agent.orphans -= 1
        if self.stopping:
            return [self._reply(p, False, None, ErrorCode.SHUTTING_DOWN, f"{SHUTTING_DOWN}; {agent.name} {p.lost}")]
        if p.retry and not p.retried and agent.listed and agent.view.availability in (
                Availability.COMING, Availability.READY):
            p.retried = True
            self._requeue(agent, p)
            return self._flush(agent)
        return [self._reply(p, False, None, ErrorCode.AGENT_CRASHED,
                            f"{agent.name} {p.lost} with the request in flight")] + self._flush(agent)

    def _fail_queue(self, agent: _Agent, code: ErrorCode, message: str) -> list[Decision]:
        out: list[Decision] = []
        while agent.queue:
            out.append(self._reply(agent.queue.popleft(), False, None, code, message))
        return out

    def _collect(self, agent: _Agent) -> None:
        """A removed agent's entry goes once nothing of it is left."""
        if not agent.listed and not agent.queue and not agent.inflight and not agent.expired \
                and self._agents.get(agent.name) is agent:
            del self._agents[agent.name]

    @staticmethod
    def _down_message(view: AgentView, now: float) -> str:
        if view.trial_at is None:
            return view.message
        return f"{view.message}; half-open trial in {max(0.0, view.trial_at - now):.1f}s"
