"""Control ops: requests addressed to the daemon itself (`to: "sunsetd"`), one `handle_<op>` each.

The request book hands every control request over as a decision; a handler here answers it, now or
when what it waits for has happened (an agent ready, stopped, a reload settled). Waiting is driven by
the supervisor's transitions, never by polling. Every answer goes back through the book, which owns
the request until its one reply (its deadline answers `timeout` if nothing else does).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from sunsetd import health
from sunsetd.policy import State, Transition
from sunsetd.protocol import ControlOp, ErrorCode
from sunsetd.reload import ReloadOutcome
from sunsetd.requestbook import Pending, RequestBook
from sunsetd.router import Router
from sunsetd.supervisor import AgentSlot, Supervisor

class Daemon(Protocol):
    """What the control ops need from the daemon around them."""

    def reload(self, on_applied: Callable[[ReloadOutcome | list[str]], None]) -> None: ...
    def reload_outcome(self, number: int) -> ReloadOutcome | None: ...
    def begin_shutdown(self, why: str) -> None: ...
    def extra_status(self) -> dict[str, Any]: ...


@dataclass(eq=False)
class _Waiter:
    request: Pending
    agent: str
    done: Callable[[AgentSlot], bool]
    stopping: bool  # a stop: being stopped is the goal, not a failure


class Controller:
    def __init__(self, supervisor: Supervisor, router: Router, book: RequestBook, daemon: Daemon):
        self.supervisor = supervisor
        self.router = router
        self.book = book
        self.daemon = daemon
        self._waiters: dict[str, list[_Waiter]] = {}
        self._reload_waiters: dict[int, list[Pending]] = {}

    def handle(self, p: Pending) -> None:
        try:
            op = ControlOp(p.op)
        except ValueError:
            ops = ", ".join(o.value for o in ControlOp)
            self.router.fail(p, ErrorCode.BAD_REQUEST, f"unknown control op {p.op!r} ({ops})")
            return
        getattr(self, f"handle_{op.value}")(p)

    # ---- the ops
    def handle_status(self, p: Pending) -> None:
        """The whole status; with body {agent: NAME} one agent only, cheaply (no RSS read): for pollers."""
        name = p.body.get("agent") if isinstance(p.body, dict) else None
        if name is None:
            self.router.answer(p, self.status())
            return
        if not isinstance(name, str):
            self.router.fail(p, ErrorCode.BAD_REQUEST, "status body field 'agent' must be a string")
        elif self.supervisor.slot(name) is None:
            self._unknown(p, name)
        else:
            self.router.answer(p, self.agent_status(name, self.supervisor.timers.now(), fresh_rss=False))

    def handle_start(self, p: Pending) -> None:
        name = self._agent_of(p)
        if name is None:
            return
        refusal = self.supervisor.start_agent(name)
        if refusal is not None:
            self.router.fail(p, ErrorCode.OVERLOADED, refusal)
            return
        self._wait(p, name, lambda s: s.state is State.READY)

    def handle_stop(self, p: Pending) -> None:
        name = self._agent_of(p)
        if name is None:
            return
        self.supervisor.stop_agent(name)
        self._wait(p, name, lambda s: s.state is State.STOPPED, stopping=True)

    def handle_restart(self, p: Pending) -> None:
        name = self._agent_of(p)
        if name is None:
            return
        before = self.supervisor.incarnation(name)
        refusal = self.supervisor.restart_agent(name)
        if refusal is not None:
            self.router.fail(p, ErrorCode.OVERLOADED, refusal)
            return
        self._wait(p, name, lambda s: s.state is State.READY and self.supervisor.incarnation(s.name) > before)

    def handle_reload(self, p: Pending) -> None:
        """Answered once the new profile is checked and applied: what changed, and how long the changed
        agents may take to settle (`settle_s`); `reload_wait` then gives what finally happened."""
        def applied(result: ReloadOutcome | list[str]) -> None:
            if isinstance(result, list):
                self.router.fail(p, ErrorCode.BAD_REQUEST,
                                 f"profile has {len(result)} error(s); running set untouched:\n" + "\n".join(result))
            else:
                self.router.answer(p, result.body())

        self.daemon.reload(applied)

    def handle_reload_wait(self, p: Pending) -> None:
        number = p.body.get("reload") if isinstance(p.body, dict) else None
        if isinstance(number, bool) or not isinstance(number, int):
            self.router.fail(p, ErrorCode.BAD_REQUEST, "reload_wait needs body {reload: NUMBER}")
            return
        outcome = self.daemon.reload_outcome(number)
        if outcome is None:
            self.router.fail(p, ErrorCode.BAD_REQUEST, f"no reload {number} (only recent reloads are kept)")
        elif outcome.settled:
            self.router.answer(p, outcome.body())
        else:
            self._reload_waiters.setdefault(number, []).append(p)

    def handle_shutdown(self, p: Pending) -> None:
        self.router.answer(p, {"state": "stopping"})
        self.daemon.begin_shutdown("shutdown requested")

    # ---- what waiters wait for
    def on_transition(self, name: str, incarnation: int, t: Transition) -> None:
        waiters = self._waiters.pop(name, None)
        if waiters:
            left = [w for w in waiters if not self._resolve(w)]
            if left:
                self._waiters.setdefault(name, []).extend(left)

    def on_reload_settled(self, outcome: ReloadOutcome) -> None:
        for p in self._reload_waiters.pop(outcome.number, []):
            self.router.answer(p, outcome.body())

    def _wait(self, p: Pending, name: str, done: Callable[[AgentSlot], bool], stopping: bool = False) -> None:
        for agent, waiters in list(self._waiters.items()):  # those their deadline answered go now
            waiters[:] = [w for w in waiters if self.book.is_pending(w.request.rid)]
            if not waiters:
                del self._waiters[agent]
        waiter = _Waiter(p, name, done, stopping)
        if not self._resolve(waiter):
            self._waiters.setdefault(name, []).append(waiter)

    def _resolve(self, w: _Waiter) -> bool:
        """Answer the waiter if it can be answered now; True when it needs no more watching."""
        if not self.book.is_pending(w.request.rid):
            return True  # its deadline answered it
        slot = self.supervisor.slot(w.agent)
        if slot is None:
            self.router.fail(w.request, ErrorCode.UNAVAILABLE, f"{w.agent} was removed from the profile")
        elif w.done(slot):
            self.router.answer(w.request, self._brief(slot))
        elif slot.state is State.FAILED:
            self.router.fail(w.request, ErrorCode.UNAVAILABLE,
                             f"{slot.name} is failed (circuit open: {slot.lifecycle.reason})")
        elif not w.stopping and slot.state is State.STOPPED and not slot.wanted:
            self.router.fail(w.request, ErrorCode.UNAVAILABLE, f"{slot.name} was stopped ({slot.lifecycle.reason})")
        else:
            return False
        return True

    # ---- status: one composition, for the status op and the metrics snapshot alike
    def agent_status(self, name: str, now: float, fresh_rss: bool = True) -> dict:
        status = self.supervisor.agent_status(name, now, fresh_rss)
        inflight, queued = self.book.load(name)
        status["inflight"], status["queued"] = inflight, queued
        ready_since = self.supervisor.slots[name].lifecycle.ready_since
        idle = status["lazy"] and ready_since is not None and status["state"] == State.READY.value \
            and not inflight and not queued
        status["idle_s"] = round(health.idle_for(now, self.book.last_request_at(name), ready_since), 3) \
            if idle else None
        return status

    def status(self, fresh_rss: bool = True) -> dict:
        sup = self.supervisor
        now = sup.timers.now()
        healthy, not_ready = sup.healthy()
        status = {
            "profile": sup.profile.name,
            "pid": os.getpid(),
            "state": sup.daemon_state().value,
            "healthy": healthy,
            "not_ready": not_ready,
            "uptime_s": round(now - sup.started_at, 3),
            "counts": sup.counts(),
            "memory": {"budget_mb": sup.profile.memory_mb, "used_mb": sup.memory_used_mb()},
            "agents": [self.agent_status(name, now, fresh_rss) for name in sup.slots],
            "router": {"pending": len(self.book.pending), "replies": dict(self.router.replies),
                       **self.router.counters, **self.book.counters, **sup.counters},
        }
        status.update(self.daemon.extra_status())
        return status

    # ---- internals
    def _agent_of(self, p: Pending) -> str | None:
        name = p.body.get("agent") if isinstance(p.body, dict) else None
        if not isinstance(name, str):
            self.router.fail(p, ErrorCode.BAD_REQUEST, f"control op {p.op!r} needs body {{agent: NAME}}")
            return None
        if self.supervisor.slot(name) is None:
            self._unknown(p, name)
            return None
        return name

    def _unknown(self, p: Pending, name: str) -> None:
        self.router.fail(p, ErrorCode.UNKNOWN_AGENT, f"no agent {name!r} in profile {self.supervisor.profile.name}")

    def _brief(self, slot: AgentSlot) -> dict:
        handle = slot.handle
        return {"agent": slot.name, "state": slot.state.value, "incarnation": self.supervisor.incarnation(slot.name),
                "pid": handle.pid if handle else None}
