"""Control ops: requests addressed to the daemon itself (`to: "sunsetd"`), one `handle_<op>` each.

The request book hands every control request over as a decision; a handler here answers it, now or
when what it waits for has happened (an agent ready, stopped, a reload settled). Waiting is driven by
the supervisor's transitions, never by polling. Every answer goes back through the book, which owns
the request until its one reply (its deadline answers `timeout` if nothing else does).
"""
from __future__ import annotations

import fnmatch
import os
import signal
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from sunsetd import health
from sunsetd.agentlogs import AgentLogs
from sunsetd.policy import State, Transition
from sunsetd.profile import is_profile_path
from sunsetd.protocol import ControlOp, ErrorCode
from sunsetd.reload import ReloadOutcome, ReloadPlan, preview
from sunsetd.requestbook import Pending, RequestBook
from sunsetd.router import Router
from sunsetd.supervisor import AgentSlot, Supervisor

class Daemon(Protocol):
    """What the control ops need from the daemon around them."""

    def reload(self, on_applied: Callable[[ReloadOutcome | ReloadPlan | list[str]], None],
               profile_arg: str | None = None, dry_run: bool = False) -> None: ...
    def reload_outcome(self, number: int) -> ReloadOutcome | None: ...
    def begin_shutdown(self, why: str) -> None: ...
    def extra_status(self) -> dict[str, Any]: ...


GLOB = frozenset("*?[")
MAX_LOG_LINES = 10_000


def select(patterns: list[str], names: list[str]) -> list[str] | str:
    """The agents that `patterns` name (names, shell globs, or `all`), in profile order; or, when a
    name is unknown or a glob matches nothing, why not."""
    chosen: set[str] = set()
    for pattern in patterns:
        if pattern == "all":
            chosen.update(names)
        elif GLOB & set(pattern):
            matched = fnmatch.filter(names, pattern)
            if not matched:
                return f"no agent matches {pattern!r}"
            chosen.update(matched)
        elif pattern in names:
            chosen.add(pattern)
        else:
            return f"no agent {pattern!r}"
    return [n for n in names if n in chosen]


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def signal_number(value: Any) -> int | None:
    """A signal by name (HUP, SIGHUP, hup) or number; None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value in signal.valid_signals() else None
    if isinstance(value, str):
        name = value.upper()
        try:
            return int(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
        except KeyError:
            return None
    return None


@dataclass(eq=False)
class _Waiter:
    request: Pending
    agents: list[str]
    done: Callable[[AgentSlot], bool]
    stopping: bool  # a stop: being stopped is the goal, not a failure
    single: bool  # asked as {agent: NAME}: answered with that agent alone


class Controller:
    def __init__(self, supervisor: Supervisor, router: Router, book: RequestBook, daemon: Daemon,
                 agent_logs: AgentLogs | None = None, profile_paths: bool = True):
        self.supervisor = supervisor
        self.router = router
        self.book = book
        self.daemon = daemon
        self.agent_logs = agent_logs or AgentLogs()
        # With an operator group, a client may be another user: it names a profile from the search path
        # and never a file, which the daemon would read (and quote in its errors) with its own rights.
        self.profile_paths = profile_paths
        self._waiters: list[_Waiter] = []
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
        """The whole status; with body {agents: [PATTERN...]} only the agents they select; with
        {agent: NAME} one agent alone, cheaply (no RSS read): for pollers."""
        name = p.body.get("agent") if isinstance(p.body, dict) else None
        if name is None:
            if isinstance(p.body, dict) and "agents" in p.body:
                names = self._agents_of(p)
                if names is None:
                    return
                status = self.status()
                status["agents"] = [a for a in status["agents"] if a["name"] in names]
                self.router.answer(p, status)
            else:
                self.router.answer(p, self.status())
            return
        if not isinstance(name, str):
            self.router.fail(p, ErrorCode.BAD_REQUEST, "status body field 'agent' must be a string")
        elif self.supervisor.slot(name) is None:
            self._unknown(p, name)
        else:
            self.router.answer(p, self.agent_status(name, self.supervisor.timers.now(), fresh_rss=False))

    def handle_start(self, p: Pending) -> None:
        """Start agents (and what they depend on, first) and answer once every one is ready."""
        names = self._agents_of(p)
        if names is None:
            return
        refusals = [r for r in (self.supervisor.start_agent(n) for n in names) if r is not None]
        if refusals:
            self.router.fail(p, ErrorCode.OVERLOADED, "; ".join(refusals))
            return
        self._wait(p, names, lambda s: s.state is State.READY)

    def handle_stop(self, p: Pending) -> None:
        """Stop agents, dependents before what they depend on, and answer once every one has stopped."""
        names = self._agents_of(p)
        if names is None:
            return
        self.supervisor.stop_agents(names)
        self._wait(p, names, lambda s: s.state is State.STOPPED, stopping=True)

    def handle_restart(self, p: Pending) -> None:
        """A new incarnation of each; several stop in reverse dependency order, then start in order."""
        names = self._agents_of(p)
        if names is None:
            return
        before = {n: self.supervisor.incarnation(n) for n in names}
        refusal = self.supervisor.restart_agents(names)
        if refusal is not None:
            self.router.fail(p, ErrorCode.OVERLOADED, refusal)
            return
        self._wait(p, names, lambda s: s.state is State.READY and self.supervisor.incarnation(s.name) > before[s.name])

    def handle_signal(self, p: Pending) -> None:
        """Send a signal to agents' processes (their whole process group, as systemctl kill does)."""
        names = self._agents_of(p)
        if names is None:
            return
        signum = signal_number(p.body.get("signal"))
        if signum is None:
            self.router.fail(p, ErrorCode.BAD_REQUEST, f"signal needs body {{signal: NAME|NUMBER, agents: [...]}}, "
                                                       f"got signal {p.body.get('signal')!r}")
            return
        sent = self.supervisor.signal_agents(names, signum)
        if not sent:
            self.router.fail(p, ErrorCode.UNAVAILABLE, f"none of {', '.join(names)} has a process to signal")
            return
        self.router.answer(p, {"signal": signum, "sent": sent, "not_running": [n for n in names if n not in sent]})

    def handle_logs(self, p: Pending) -> None:
        """The last lines of agents (every one without `agents`): body {agents?, incarnation?, n?, after?}."""
        body = p.body if isinstance(p.body, dict) else {}
        buffered = self.agent_logs.agents()  # an agent removed by a reload keeps its last lines
        names = None
        if body.get("agents") is not None or body.get("agent") is not None:
            names = self._agents_of(p, also=buffered)
            if names is None:
                return
        incarnation, n, after = body.get("incarnation"), body.get("n"), body.get("after") or {}
        if not (incarnation is None or _whole(incarnation)) or not (n is None or (_whole(n) and n >= 0)) \
                or not (isinstance(after, dict) and all(isinstance(v, int) for v in after.values())):
            self.router.fail(p, ErrorCode.BAD_REQUEST, "logs body: incarnation and n must be integers (n >= 0), "
                                                       "after a map of agent to line number")
            return
        lines = self.agent_logs.lines(names, incarnation, min(MAX_LOG_LINES, n) if n is not None else MAX_LOG_LINES,
                                      after)
        shown = names if names is not None else list(dict.fromkeys(self._live() + buffered))
        # `last`: where a follower's live lines take over from these (sunsetctl logs -f)
        self.router.answer(p, {"lines": [list(line) for line in lines], "agents": shown,
                               "last": {a: self.agent_logs.last_seq(a) for a in shown}})

    def handle_reload(self, p: Pending) -> None:
        """Answered once the new profile is checked and applied: what changed, and how long the changed
        agents may take to settle (`settle_s`); `reload_wait` then gives what finally happened. Body
        {profile: NAME|PATH} switches to another profile; {dry_run: true} answers what would change."""
        body = p.body if isinstance(p.body, dict) else {}
        profile, dry_run = body.get("profile"), body.get("dry_run", False)
        if not (profile is None or (isinstance(profile, str) and profile and "\0" not in profile)) \
                or not isinstance(dry_run, bool):
            self.router.fail(p, ErrorCode.BAD_REQUEST, "reload body: profile must be a name or path (no NUL), "
                                                       "dry_run a boolean")
            return
        if profile is not None and not self.profile_paths and is_profile_path(profile):
            self.router.fail(p, ErrorCode.BAD_REQUEST, "with --socket-group, reload --profile takes the name of a "
                                                       "profile in the search path, not a path")
            return

        def applied(result: ReloadOutcome | ReloadPlan | list[str]) -> None:
            if isinstance(result, list):
                untouched = "" if dry_run else "; running set untouched"
                self.router.fail(p, ErrorCode.BAD_REQUEST,
                                 f"profile has {len(result)} error(s){untouched}:\n" + "\n".join(result))
            elif isinstance(result, ReloadPlan):
                self.router.answer(p, preview(result))
            else:
                self.router.answer(p, result.body())

        self.daemon.reload(applied, profile, dry_run)

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
        if self._waiters:
            self._waiters = [w for w in self._waiters if name not in w.agents or not self._resolve(w)]

    def on_reload_settled(self, outcome: ReloadOutcome) -> None:
        for p in self._reload_waiters.pop(outcome.number, []):
            self.router.answer(p, outcome.body())

    def _wait(self, p: Pending, names: list[str], done: Callable[[AgentSlot], bool], stopping: bool = False) -> None:
        # those their deadline answered go now
        self._waiters = [w for w in self._waiters if self.book.is_pending(w.request.rid)]
        waiter = _Waiter(p, names, done, stopping, single=isinstance(p.body, dict) and "agent" in p.body)
        if not self._resolve(waiter):
            self._waiters.append(waiter)

    def _resolve(self, w: _Waiter) -> bool:
        """Answer the waiter once every agent it waits for is done or cannot be; True when it needs no
        more watching."""
        if not self.book.is_pending(w.request.rid):
            return True  # its deadline answered it
        failures, briefs = [], []
        for name in w.agents:
            slot = self.supervisor.slot(name)
            if slot is None:
                failures.append(f"{name} was removed from the profile")
            elif w.done(slot):
                briefs.append(self._brief(slot))
            elif slot.state is State.FAILED:
                failures.append(f"{slot.name} is failed (circuit open: {slot.lifecycle.reason})")
            elif not w.stopping and slot.state is State.STOPPED and not slot.wanted \
                    and not self.supervisor.restarting(name):
                failures.append(f"{slot.name} was stopped ({slot.lifecycle.reason})")
            else:
                return False
        if failures:
            self.router.fail(w.request, ErrorCode.UNAVAILABLE, "; ".join(failures))
        else:
            self.router.answer(w.request, briefs[0] if w.single else {"agents": briefs})
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
            "router": {"pending": len(self.book.pending), "held_bytes": self.book.held_bytes,
                       "replies": dict(self.router.replies),
                       "clients": self.router.auth.connections, "max_clients": self.router.auth.max_clients,
                       **self.router.counters, **self.router.auth.counters, **self.book.counters, **sup.counters},
        }
        status.update(self.daemon.extra_status())
        return status

    # ---- internals
    def _live(self) -> list[str]:
        return [name for name, slot in self.supervisor.slots.items() if not slot.removed]

    def _agents_of(self, p: Pending, also: list[str] = ()) -> list[str] | None:
        """The agents a request names, as {agent: NAME} or {agents: [NAME|GLOB|all, ...]}, among those
        of the profile (and `also`); None when it was answered with the reason it names none."""
        body = p.body if isinstance(p.body, dict) else {}
        if isinstance(body.get("agent"), str):
            patterns = [body["agent"]]
        elif isinstance(body.get("agents"), list) and body["agents"] and all(isinstance(a, str) for a in body["agents"]):
            patterns = body["agents"]
        else:
            self.router.fail(p, ErrorCode.BAD_REQUEST,
                             f"control op {p.op!r} needs body {{agent: NAME}} or {{agents: [NAME|GLOB|all, ...]}}")
            return None
        chosen = select(patterns, list(dict.fromkeys(self._live() + list(also))))
        if isinstance(chosen, str):
            self.router.fail(p, ErrorCode.UNKNOWN_AGENT, f"{chosen} in profile {self.supervisor.profile.name}")
            return None
        return chosen

    def _unknown(self, p: Pending, name: str) -> None:
        self.router.fail(p, ErrorCode.UNKNOWN_AGENT, f"no agent {name!r} in profile {self.supervisor.profile.name}")

    def _brief(self, slot: AgentSlot) -> dict:
        handle = slot.handle
        return {"agent": slot.name, "state": slot.state.value, "incarnation": self.supervisor.incarnation(slot.name),
                "pid": handle.pid if handle else None}
