"""Router: the front and agents sockets and the request-accounting invariant (DESIGN §4, §5).

Owns both ROUTER sockets and every request from the moment the front socket accepts it until its one
reply is sent: forwarding, per-agent queues, deadlines, retries, control ops. Every path that takes a
request out of `pending` goes through `_finish`, which sends exactly one reply; that is the invariant.
It never blocks: every send is NOBLOCK with ROUTER_MANDATORY, and a failed send is answered, not lost.
"""
from __future__ import annotations

import itertools
import os
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import zmq

from sunsetd import logs, protocol, rundir
from sunsetd.policy import Admission, State, Transition, admit
from sunsetd.protocol import CONTROL_TARGET, ErrorCode, Kind, ProtocolError
from sunsetd.supervisor import LAZY_START, AgentSlot, PendingRequest, Supervisor
from sunsetd.timers import Timers

BATCH = 256  # messages read from one socket before the loop looks at the others
FRONT_SNDHWM = 10_000  # replies buffered for a client that reads slowly, before they count as undeliverable


def _router_socket(ctx: zmq.Context, path: Path) -> zmq.Socket:
    sock = ctx.socket(zmq.ROUTER)
    # Without ROUTER_MANDATORY a message to a gone or full peer vanishes silently; with it we learn
    # EHOSTUNREACH or EAGAIN and answer the request ourselves.
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.MAXMSGSIZE, protocol.HARD_FRAME_BYTES)
    sock.setsockopt(zmq.LINGER, 100)
    sock.setsockopt(zmq.SNDHWM, FRONT_SNDHWM)
    sock.bind(f"ipc://{path}")
    os.chmod(path, 0o600)
    return sock


class Router:
    def __init__(self, ctx: zmq.Context, runtime_dir: Path, supervisor: Supervisor, timers: Timers):
        self.supervisor = supervisor
        self.timers = timers
        self.front = _router_socket(ctx, runtime_dir / rundir.FRONT_SOCKET)
        self.agents = _router_socket(ctx, runtime_dir / rundir.AGENTS_SOCKET)
        self.ids = itertools.count(1)
        self.pending: dict[int, PendingRequest] = {}
        self.replies: Counter[str] = Counter()  # "ok" or error code -> replies sent
        self.counters: Counter[str] = Counter()  # bad frames, late replies, stale messages, ...
        self.shutting_down = False
        self.extra_status: dict[str, Any] = {}  # added to every status reply (e.g. the metrics address)
        self.on_shutdown: Callable[[], None] | None = None
        self.on_reload: Callable[[PendingRequest], None] | None = None
        self.on_reply: Callable[[str, str, float], None] | None = None  # (agent, code, seconds): metrics
        supervisor.listener = self

    def close(self) -> None:
        self.front.close(linger=100)
        self.agents.close(linger=0)

    # ---- the one way out of `pending`
    def _finish(self, p: PendingRequest, reply: dict) -> None:
        if self.pending.pop(p.rid, None) is None:
            return  # already answered
        self.timers.cancel(p.timer)
        code = "ok" if reply["ok"] else reply["error"]["code"]
        self.replies[code] += 1
        if self.on_reply is not None:
            known = p.to in self.supervisor.slots or p.to == CONTROL_TARGET
            self.on_reply(p.to if known else "unknown", code, time.monotonic() - p.received_at)
        self._send_front(p.envelope, reply)

    def fail(self, p: PendingRequest, code: ErrorCode, message: str) -> None:
        self._finish(p, protocol.error_reply(p.client_id, code, message))

    def answer(self, p: PendingRequest, body: Any) -> None:
        self._finish(p, protocol.ok_reply(p.client_id, body))

    def _send_front(self, envelope: list[bytes], reply: dict) -> None:
        try:
            self.front.send_multipart(envelope + [protocol.pack(reply)], flags=zmq.NOBLOCK)
        except zmq.ZMQError:  # EHOSTUNREACH (client gone) or EAGAIN (client not reading)
            self.counters["undeliverable_replies"] += 1

    def _bad_frame(self, where: str, message: str) -> None:
        key = f"bad_frames_{where}"
        self.counters[key] += 1
        n = self.counters[key]
        if n & (n - 1) == 0:  # log the 1st, 2nd, 4th, 8th...: a flood of garbage cannot flood the log
            logs.event(logs.DAEMON, "bad_frame", message, "WARNING", socket=where, count=n)

    # ---- front socket
    def on_front_readable(self) -> None:
        for _ in range(BATCH):
            try:
                frames = self.front.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            try:
                self._on_front_message(frames)
            except Exception:  # a bug of ours must not let one frame take the daemon and its agents down
                self._internal_error("front")

    def _internal_error(self, where: str) -> None:
        """Log and count an unexpected exception while handling one message. A request it concerned has
        its deadline timer already, so it still gets its one reply (`timeout`)."""
        self.counters[f"internal_errors_{where}"] += 1
        logs.event(logs.DAEMON, "internal_error", f"while handling a frame on the {where} socket:\n"
                   + traceback.format_exc(), "ERROR")

    def _on_front_message(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            self._bad_frame("front", "a message with no payload frame")
            return
        envelope, payload = frames[:-1], frames[-1]
        if any(envelope[1:]):
            self._bad_frame("front", "request must be one frame, after an optional empty delimiter")
            self._send_front(envelope[:1], protocol.error_reply(
                None, ErrorCode.BAD_REQUEST, "request must be one msgpack frame (after an optional empty delimiter)"))
            return
        msg = None
        try:
            msg = protocol.unpack(payload, "request frame")
            request = protocol.parse_request(msg)
        except ProtocolError as exc:
            self._bad_frame("front", str(exc))
            self.replies[ErrorCode.BAD_REQUEST.value] += 1
            self._send_front(envelope, protocol.error_reply(protocol.request_id_of(msg), ErrorCode.BAD_REQUEST, str(exc)))
            return
        now = time.monotonic()
        p = PendingRequest(
            rid=next(self.ids), envelope=envelope, client_id=request.id, to=request.to, op=request.op,
            body=request.body, deadline=now + request.timeout_ms / 1000.0,
            wall_deadline=time.time() + request.timeout_ms / 1000.0, retry=request.retry, received_at=now)
        self.pending[p.rid] = p
        if self.shutting_down and not self._served_while_stopping(request):
            self.fail(p, ErrorCode.SHUTTING_DOWN, "sunsetd is shutting down")
            return
        p.timer = self.timers.call_at(p.deadline, lambda: self._expire(p))
        if request.to == CONTROL_TARGET:
            self._control(p)
            return
        slot = self.supervisor.slots.get(request.to)
        if slot is None or slot.removed:
            self.fail(p, ErrorCode.UNKNOWN_AGENT, f"no agent {request.to!r} in profile {self.supervisor.profile.name}")
            return
        slot.last_request_at = now
        decision = admit(slot.lifecycle, slot.wanted, len(slot.inflight), len(slot.queue))
        if decision is Admission.FORWARD:
            self._forward(slot, p)
        elif decision is Admission.QUEUE:
            slot.queue.append(p)
        elif decision is Admission.QUEUE_AND_START:
            refusal = self.supervisor.start_agent(slot, LAZY_START)
            if refusal is None:
                slot.queue.append(p)
            else:
                self.fail(p, ErrorCode.OVERLOADED, refusal)
        elif decision is Admission.UNAVAILABLE:
            self.fail(p, ErrorCode.UNAVAILABLE, self._unavailable_message(slot))
        else:
            self.fail(p, ErrorCode.OVERLOADED,
                       f"{slot.name} has {len(slot.queue)} requests queued (max_queue={slot.spec.max_queue})")

    def _served_while_stopping(self, request: protocol.Request) -> bool:
        """While shutting down, an agent that is still ready still answers: agents stop in reverse
        dependency order, so a dependent's teardown can still call what it depends on."""
        if request.to == CONTROL_TARGET:
            return request.op == "status"
        slot = self.supervisor.slots.get(request.to)
        return slot is not None and slot.state is State.READY and len(slot.inflight) < slot.spec.max_inflight

    def _unavailable_message(self, slot: AgentSlot) -> str:
        lc = slot.lifecycle
        if lc.state is State.FAILED:
            trial = f"; half-open trial in {max(0.0, lc.cooldown_until - time.monotonic()):.1f}s" \
                if lc.cooldown_until is not None else ""
            return f"{slot.name} is failed (circuit open: {lc.reason}){trial}"
        return f"{slot.name} is {lc.state.value} ({lc.reason})"

    def _forward(self, slot: AgentSlot, p: PendingRequest) -> bool:
        frame = protocol.pack({"id": p.rid, "op": p.op, "body": p.body, "deadline": p.wall_deadline})
        try:
            self.agents.send_multipart([slot.routing_id, Kind.REQUEST.value, frame], flags=zmq.NOBLOCK)
        except zmq.Again:
            self.fail(p, ErrorCode.OVERLOADED, f"{slot.name}'s pipe is full")
            return False
        except zmq.ZMQError:
            # EHOSTUNREACH: its connection is gone though its exit is not seen yet. It never got the
            # request, so the request may wait for the next incarnation.
            slot.queue.appendleft(p)
            return False
        slot.inflight[p.rid] = p
        return True

    def _flush(self, slot: AgentSlot) -> None:
        while slot.queue and slot.state is State.READY and len(slot.inflight) < slot.spec.max_inflight:
            p = slot.queue.popleft()
            if p.rid in self.pending and not self._forward(slot, p):
                return

    def _expire(self, p: PendingRequest) -> None:
        if p.rid not in self.pending:
            return
        slot = self.supervisor.slots.get(p.to)
        where = "queued"
        if slot is not None:
            if slot.inflight.pop(p.rid, None) is not None:
                where = "in flight"
            else:
                try:
                    slot.queue.remove(p)
                except ValueError:
                    pass
        self.fail(p, ErrorCode.TIMEOUT, f"no reply from {p.to} within {(p.deadline - p.received_at) * 1000:.0f}ms "
                                         f"(request was {where})")
        if slot is not None and where == "in flight":
            self._flush(slot)  # its place in flight is free: the queue behind it moves on

    # ---- agents socket
    def on_agents_readable(self) -> None:
        for _ in range(BATCH):
            if not self._read_agent_message():
                return

    def drain_agents(self) -> None:
        while self._read_agent_message():
            pass

    def _read_agent_message(self) -> bool:
        try:
            frames = self.agents.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return False
        try:
            self._on_agent_message(frames)
        except Exception:
            self._internal_error("agents")
        return True

    def await_last_replies(self, slot: AgentSlot, timeout_s: float) -> None:
        """An agent that exited cleanly wrote its last replies before exiting, but libzmq's I/O thread
        may not have read them yet when the exit is seen: give them up to `timeout_s` to arrive."""
        deadline = time.monotonic() + timeout_s
        self.drain_agents()
        while slot.inflight:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.agents.poll(max(1, int(remaining * 1000))):
                return
            self.drain_agents()

    def _on_agent_message(self, frames: list[bytes]) -> None:
        slot = self.supervisor.slot_for(frames[0])
        if slot is None:
            self.counters["stale_agent_messages"] += 1  # an old incarnation, or not an agent of ours
            return
        try:
            kind, body = protocol.parse_agent_frames(frames[1:])
            if kind is Kind.REPLY:
                rid, ok, value = protocol.parse_agent_reply(body)
            elif kind not in (Kind.HELLO, Kind.READY, Kind.HEARTBEAT):
                raise ProtocolError(f"agents do not send {kind.name}")
        except ProtocolError as exc:
            self._bad_frame("agents", f"from {frames[0].decode(errors='replace')}: {exc}")
            return
        if kind is not Kind.REPLY:
            self.supervisor.on_agent_message(slot, kind, body)
            return
        slot.last_heard = time.monotonic()
        p = slot.inflight.pop(rid, None)
        if p is None:
            self.counters["late_replies"] += 1  # its request was already answered (timeout)
            if slot.queue:
                self._flush(slot)
            return
        if ok:
            self._finish(p, protocol.ok_reply(p.client_id, value))
        else:
            self.fail(p, value[0], value[1])
        if slot.queue:
            self._flush(slot)

    def send_to_agent(self, slot: AgentSlot, kind: Kind, body: Any = None) -> bool:
        if slot.routing_id is None:
            return False
        frames = [slot.routing_id, kind.value] + ([] if body is None else [protocol.pack(body)])
        try:
            self.agents.send_multipart(frames, flags=zmq.NOBLOCK)
            return True
        except zmq.ZMQError:
            return False

    # ---- supervisor events
    def on_transition(self, slot: AgentSlot, t: Transition) -> None:
        if t.new is State.READY:
            self._flush(slot)
        elif t.new is State.FAILED:
            self._fail_queue(slot, ErrorCode.UNAVAILABLE, self._unavailable_message(slot))
        elif t.new is State.STOPPED and not slot.wanted:
            self.agent_stopped(slot, t.reason)

    def agent_stopped(self, slot: AgentSlot, reason: str) -> None:
        """The agent is stopped and meant to stay so: what waits for it gets its answer now."""
        if self.shutting_down:
            self._fail_queue(slot, ErrorCode.SHUTTING_DOWN, "sunsetd is shutting down")
        else:
            self._fail_queue(slot, ErrorCode.UNAVAILABLE, f"{slot.name} was stopped ({reason})")

    def on_process_gone(self, slot: AgentSlot, description: str) -> None:
        """The incarnation died: requests it held are answered now, or (retry: true) sent to the next one."""
        inflight = sorted(slot.inflight.values(), key=lambda p: p.rid, reverse=True)
        slot.inflight.clear()
        comes_back = slot.state in (State.STARTING, State.BACKOFF) and not self.shutting_down
        for p in inflight:
            if p.retry and not p.retried and comes_back:
                p.retried = True
                slot.queue.appendleft(p)  # keeps arrival order, ahead of requests that came later
            elif self.shutting_down:
                self.fail(p, ErrorCode.SHUTTING_DOWN, f"sunsetd is shutting down; {slot.name} {description}")
            else:
                self.fail(p, ErrorCode.AGENT_CRASHED, f"{slot.name} {description} with the request in flight")

    def _fail_queue(self, slot: AgentSlot, code: ErrorCode, message: str) -> None:
        while slot.queue:
            self.fail(slot.queue.popleft(), code, message)

    # ---- control ops (to: "sunsetd")
    def _control(self, p: PendingRequest) -> None:
        sup = self.supervisor
        if p.op == "status":
            # body {agent: NAME} asks for one agent only, cheaply (no RSS read): for pollers
            name = p.body.get("agent") if isinstance(p.body, dict) else None
            if name is not None:
                if not isinstance(name, str):
                    self.fail(p, ErrorCode.BAD_REQUEST, "status body field 'agent' must be a string")
                    return
                slot = sup.slots.get(name)
                if slot is None:
                    self.fail(p, ErrorCode.UNKNOWN_AGENT, f"no agent {name!r} in profile {sup.profile.name}")
                else:
                    self.answer(p, sup.agent_status(slot, time.monotonic(), fresh_rss=False))
                return
            status = sup.status()
            status["router"] = {"pending": len(self.pending), "replies": dict(self.replies), **self.counters}
            status.update(self.extra_status)
            self._finish(p, protocol.ok_reply(p.client_id, status))
            return
        if p.op == "shutdown":
            self._finish(p, protocol.ok_reply(p.client_id, {"state": "stopping"}))
            if self.on_shutdown is not None:
                self.on_shutdown()
            return
        if p.op == "reload":
            if self.on_reload is None:
                self.fail(p, ErrorCode.BAD_REQUEST, "this daemon cannot reload its profile")
            else:
                self.on_reload(p)
            return
        if p.op not in ("start", "stop", "restart"):
            self.fail(p, ErrorCode.BAD_REQUEST,
                       f"unknown control op {p.op!r} (status, start, stop, restart, reload, shutdown)")
            return
        name = p.body.get("agent") if isinstance(p.body, dict) else None
        if not isinstance(name, str):
            self.fail(p, ErrorCode.BAD_REQUEST, f"control op {p.op!r} needs body {{agent: NAME}}")
            return
        slot = sup.slots.get(name)
        if slot is None:
            self.fail(p, ErrorCode.UNKNOWN_AGENT, f"no agent {name!r} in profile {sup.profile.name}")
            return
        incarnation = slot.incarnation
        if p.op == "stop":
            sup.stop_agent(slot)
            done = lambda s: s.state is State.STOPPED  # noqa: E731
        elif p.op == "start":
            refusal = sup.start_agent(slot)
            if refusal is not None:
                self.fail(p, ErrorCode.OVERLOADED, refusal)
                return
            done = lambda s: s.state is State.READY  # noqa: E731
        else:
            sup.restart_agent(slot)
            done = lambda s: s.state is State.READY and s.incarnation > incarnation  # noqa: E731

        def watcher(s: AgentSlot, _t: Transition | None = None) -> bool:
            if p.rid not in self.pending:
                return True  # answered already (deadline)
            if done(s):
                self._finish(p, protocol.ok_reply(p.client_id, self._agent_brief(s)))
                return True
            if s.state is State.FAILED:
                self.fail(p, ErrorCode.UNAVAILABLE, self._unavailable_message(s))
                return True
            if p.op != "stop" and s.state is State.STOPPED and not s.wanted:
                self.fail(p, ErrorCode.UNAVAILABLE, f"{s.name} was stopped ({s.lifecycle.reason})")
                return True
            return False

        if not watcher(slot):
            slot.watchers.append(watcher)

    @staticmethod
    def _agent_brief(slot: AgentSlot) -> dict:
        return {"agent": slot.name, "state": slot.state.value, "incarnation": slot.incarnation,
                "pid": slot.process.pid if slot.process else None}

    # ---- shutdown
    def begin_shutdown(self) -> None:
        """New requests get shutting_down; queued ones too; in-flight ones may still finish."""
        self.shutting_down = True
        for slot in self.supervisor.slots.values():
            self._fail_queue(slot, ErrorCode.SHUTTING_DOWN, "sunsetd is shutting down")

    def fail_all_pending(self) -> None:
        for p in list(self.pending.values()):
            self.fail(p, ErrorCode.SHUTTING_DOWN, "sunsetd is shutting down")
