"""Health verdicts (DESIGN §3, §6): pure functions of what was observed and the time.

Is an incarnation hung? Over its memory limit? A lazy agent idle long enough to be stopped? Is the
daemon starting, running, degraded or stopping, and is it healthy? Each answer here is a function of
its arguments and `now` alone; the supervisor gathers the observations, asks, and acts. Nothing here
touches a process, a socket or a clock.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable

from sunsetd.policy import State

MB = 1 << 20


class DaemonState(str, enum.Enum):
    STARTING = "starting"  # not every essential agent has been ready yet
    RUNNING = "running"
    DEGRADED = "degraded"  # an essential agent is failed (circuit open)
    STOPPING = "stopping"


class Heartbeat(enum.Enum):
    ALIVE = "alive"
    HUNG = "hung"
    RECHECK = "recheck"  # silent too long, but messages wait unread: its heartbeat may be among them


def heartbeat_verdict(now: float, last_heard: float, heartbeat_ms: int, liveness: int,
                      unread_messages: bool) -> Heartbeat:
    """An incarnation that said nothing for `liveness` heartbeat intervals is hung, unless the daemon
    itself has not read what arrived (a busy loop must not kill agents that kept talking); but not
    for ever: silent twice as long is hung whatever waits unread (a flood must not hide a hang)."""
    limit = liveness * heartbeat_ms / 1000.0
    silent = now - last_heard
    if silent <= limit:
        return Heartbeat.ALIVE
    return Heartbeat.RECHECK if unread_messages and silent <= 2 * limit else Heartbeat.HUNG


def stamp_deadline(stamp: float, idle: bool, watched_since: float | None, limit_s: float,
                   idle_limit_s: float) -> float:
    """When a stamped incarnation is hung if it does not stamp again (sunsetd.stamps).

    A working agent stamps every half of `limit_s`; an idle one (it said so in its stamp) every
    IDLE_STAMP_S, so it is given `idle_limit_s`. Unless it is watched since some moment: the daemon gave
    it work it has not taken up, or it was stopped by a signal. An idle agent that is given work stamps
    at once that it works, so from that moment the working limit applies, counted from the later of its
    stamp and that moment."""
    if not idle:
        return stamp + limit_s
    deadline = stamp + idle_limit_s
    if watched_since is not None:
        deadline = min(deadline, max(stamp, watched_since) + limit_s)
    return deadline


def memory_verdict(rss: int | None, max_rss_mb: int | None) -> str | None:
    """Why the incarnation must be restarted for its memory, or None."""
    if not max_rss_mb or not rss or rss <= max_rss_mb * MB:
        return None
    return f"memory: rss {rss / MB:.0f}MB over max_rss_mb={max_rss_mb}"


@dataclass(frozen=True, slots=True)
class IdleFacts:
    """What the idle check of one lazy agent looks at."""

    lazy: bool
    wanted: bool
    ready_since: float | None  # None unless ready
    busy: bool  # requests in flight or queued
    last_request_at: float
    idle_timeout_s: float
    dependents_running: bool


def idle_for(now: float, last_request_at: float, ready_since: float) -> float:
    """Idle time counts from the later of an agent's last request and its becoming ready."""
    return now - max(last_request_at, ready_since)


def idle_verdict(now: float, facts: IdleFacts) -> str | None:
    """Why a lazy agent should stop now (idle long enough), or None. An agent something running
    depends on stays."""
    if not facts.lazy or not facts.wanted or facts.ready_since is None or facts.busy or facts.dependents_running:
        return None
    idle = idle_for(now, facts.last_request_at, facts.ready_since)
    return f"idle for {idle:.0f}s" if idle >= facts.idle_timeout_s else None


@dataclass(frozen=True, slots=True)
class EssentialFacts:
    name: str
    state: State


def daemon_state(stopping: bool, all_ready_once: bool, essentials: Iterable[EssentialFacts]) -> DaemonState:
    if stopping:
        return DaemonState.STOPPING
    if any(e.state is State.FAILED for e in essentials):
        return DaemonState.DEGRADED
    return DaemonState.RUNNING if all_ready_once else DaemonState.STARTING


def not_ready(essentials: Iterable[EssentialFacts]) -> list[str]:
    """Essential agents that are not ready now: what /health names, and what the alert rule
    SunsetdEssentialAgentDown counts (`essential == 1 and up == 0`)."""
    return [e.name for e in essentials if e.state is not State.READY]


def healthy(state: DaemonState, essentials: Iterable[EssentialFacts]) -> bool:
    """Healthy means running with every essential agent ready, at this moment: the same condition as
    the alert rule, so /health, `sunsetd_essential_ready` and the alert never disagree. (An essential
    agent an operator stopped leaves the daemon `running`, not degraded, but not healthy either.)"""
    return state is DaemonState.RUNNING and not not_ready(essentials)
