"""Restart policy, lifecycle state machine and circuit breaker (DESIGN §3).

Sans-I/O: everything here is fed events and the current time and answers with decisions. It never
touches a process, a socket or a clock, so every transition is tested exhaustively with a fake clock.
The supervisor translates between these decisions and the world.
"""
from __future__ import annotations

import enum
import random
from collections import deque
from dataclasses import dataclass

from sunsetd.profile import AgentSpec, Backoff, RestartMode


class State(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    BACKOFF = "backoff"
    FAILED = "failed"  # circuit open


class Circuit(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


# ---- decisions ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    old: State
    new: State
    reason: str


@dataclass(frozen=True)
class Spawn:
    """Start a new incarnation now."""


@dataclass(frozen=True)
class Terminate:
    """Ask the incarnation to stop: STOP frame, SIGTERM (and SIGCONT, so a frozen one can obey)."""


@dataclass(frozen=True)
class Kill:
    """SIGKILL the incarnation's process group: its stop timeout ran out."""


Action = Transition | Spawn | Terminate | Kill


def backoff_delay(attempt: int, backoff: Backoff, rng: random.Random) -> float:
    """Seconds to wait before restart number `attempt` (1-based) of a run of consecutive failures.

    The first restart is immediate: most crashes are one-off, and a supervisor that sleeps first only
    adds downtime. From the second on, the cap grows geometrically to max_ms; with full jitter the wait
    is uniform in [0, cap], so agents that fail together do not restart in lockstep.
    """
    if attempt <= 1:
        return 0.0
    exponent = min(attempt - 2, 64)  # beyond this the cap is max_ms anyway; avoids float overflow
    cap_ms = min(float(backoff.max_ms), backoff.initial_ms * backoff.multiplier**exponent)
    if backoff.jitter == "full":
        return rng.uniform(0.0, cap_ms) / 1000.0
    return cap_ms / 1000.0


class Lifecycle:
    """One agent's state machine: states, restart decisions, intensity window and circuit breaker.

    Each event method returns the actions to carry out, at most one Transition among them.
    `next_deadline()` says when `tick()` must be called next; each deadline has its own name because
    each means something different (supervisord's single `delay` for all of them is a trap).
    """

    def __init__(self, spec: AgentSpec, rng: random.Random | None = None):
        self.spec = spec
        self.rng = rng or random.Random()
        self.state = State.STOPPED
        self.reason = "not started"
        self.ready_since: float | None = None
        self.consecutive_failures = 0
        self.restarts = 0  # restarts caused by failures, over the agent's life
        self.recent_restarts: deque[float] = deque()  # times of restarts inside the intensity window
        self.trial = False  # half-open: this incarnation is the one trial after a cooldown
        # deadlines
        self.start_deadline: float | None = None
        self.kill_deadline: float | None = None
        self.restart_at: float | None = None
        self.cooldown_until: float | None = None
        # what the exit of a stopping incarnation leads to
        self._failure_on_exit: str | None = None  # hung / memory / start timeout: a failure, restart path
        self._start_on_exit = False  # operator restart: start again, not counted
        self.holding: str | None = None  # why nothing may start any more (shutdown)

    # ---- queries
    @property
    def circuit(self) -> Circuit:
        if self.state is State.FAILED:
            return Circuit.OPEN
        return Circuit.HALF_OPEN if self.trial else Circuit.CLOSED

    @property
    def running(self) -> bool:
        """A process of this agent exists (or is being created)."""
        return self.state in (State.STARTING, State.READY, State.STOPPING)

    def next_deadline(self) -> float | None:
        if self.state is State.READY:
            # a half-open trial closes the circuit once the incarnation has proved stable
            return self.ready_since + self.spec.stable_s if self.trial and self.ready_since is not None else None
        return {
            State.STARTING: self.start_deadline,
            State.STOPPING: self.kill_deadline,
            State.BACKOFF: self.restart_at,
            State.FAILED: self.cooldown_until,
        }.get(self.state)

    # ---- internals
    def _go(self, new: State, reason: str, now: float) -> Transition:
        old, self.state, self.reason = self.state, new, reason
        self.start_deadline = now + self.spec.start_timeout_s if new is State.STARTING else None
        self.kill_deadline = now + self.spec.stop_timeout_s if new is State.STOPPING else None
        if new is not State.BACKOFF:
            self.restart_at = None
        if new is not State.FAILED:
            self.cooldown_until = None
        if new is State.READY:
            self.ready_since = now
        elif new is not State.STOPPING:
            self.ready_since = None
        return Transition(old, new, reason)

    def _close_circuit(self) -> None:
        self.trial = False
        self.consecutive_failures = 0
        self.recent_restarts.clear()

    def _open_circuit(self, now: float, reason: str) -> list[Action]:
        self.trial = False
        t = self._go(State.FAILED, reason, now)
        self.cooldown_until = now + self.spec.intensity.cooldown_s
        return [t]

    def _after_failure(self, now: float, reason: str, clean_exit: bool) -> list[Action]:
        """An incarnation ended without being asked to: decide restart, backoff, or open circuit."""
        if self.holding is not None:
            self.trial = False
            return [self._go(State.STOPPED, f"{reason}; not restarted: {self.holding}", now)]
        mode = self.spec.restart
        if mode is RestartMode.NEVER or (mode is RestartMode.ON_FAILURE and clean_exit):
            self.trial = False
            return [self._go(State.STOPPED, f"{reason}; restart={mode.value}", now)]
        stable = self.ready_since is not None and now - self.ready_since >= self.spec.stable_s
        if self.trial:
            if not stable:
                return self._open_circuit(now, f"{reason} during half-open trial")
            self._close_circuit()
        elif stable:
            self.consecutive_failures = 0
        window = self.spec.intensity
        while self.recent_restarts and self.recent_restarts[0] <= now - window.within_s:
            self.recent_restarts.popleft()
        if len(self.recent_restarts) >= window.max_restarts:
            return self._open_circuit(
                now, f"{reason}; more than {window.max_restarts} restarts within {window.within_s:g}s"
            )
        self.recent_restarts.append(now)
        self.consecutive_failures += 1
        self.restarts += 1
        delay = backoff_delay(self.consecutive_failures, self.spec.backoff, self.rng)
        if delay <= 0.0:
            return [self._go(State.STARTING, f"{reason}; restarting at once", now), Spawn()]
        t = self._go(State.BACKOFF, f"{reason}; restart in {delay * 1000:.0f}ms", now)
        self.restart_at = now + delay
        return [t]

    def _terminate(self, now: float, reason: str) -> list[Action]:
        return [self._go(State.STOPPING, reason, now), Terminate()]

    # ---- events
    def start(self, now: float, reason: str = "start") -> list[Action]:
        """Start (or start again at once, for an operator): from stopped, backoff or failed."""
        if self.holding is not None:
            return []
        if self.state is State.STOPPING:
            self._start_on_exit = True
            return []
        if self.state in (State.STARTING, State.READY):
            return []
        if self.state is State.FAILED:
            self._close_circuit()  # an operator's explicit start overrides the open circuit
        return [self._go(State.STARTING, reason, now), Spawn()]

    def ready(self, now: float) -> list[Action]:
        if self.state is not State.STARTING:
            return []
        return [self._go(State.READY, "ready" + (" (half-open trial)" if self.trial else ""), now)]

    def exited(self, now: float, description: str, clean_exit: bool) -> list[Action]:
        """The incarnation's process ended; `description` says how (exit code or signal)."""
        if self.state is State.STOPPING:
            failure, self._failure_on_exit = self._failure_on_exit, None
            if failure is not None:
                return self._after_failure(now, f"{failure}, {description}", clean_exit=False)
            if self._start_on_exit and self.holding is None:
                self._start_on_exit = False
                return [self._go(State.STARTING, f"{self.reason}: {description}; starting again", now), Spawn()]
            self._start_on_exit = False
            # the reason it was stopped stays in the new one: `stopped` alone cannot tell an operator's
            # stop from an idle timeout or an eviction
            return [self._go(State.STOPPED, f"{self.reason}: {description}", now)]
        if self.state in (State.STARTING, State.READY):
            what = "exited during start" if self.state is State.STARTING else "exited"
            return self._after_failure(now, f"{what}, {description}", clean_exit)
        return []

    def spawn_failed(self, now: float, error: str) -> list[Action]:
        """The process could not even be created (exec failed, out of pids, ...). Asked to stop before
        the failure was known, it is as if the process had exited: there is nothing left to wait for."""
        if self.state is State.STOPPING:
            return self.exited(now, f"spawn failed: {error}", clean_exit=False)
        if self.state is not State.STARTING:
            return []
        return self._after_failure(now, f"spawn failed: {error}", clean_exit=False)

    def unhealthy(self, now: float, reason: str) -> list[Action]:
        """Hung (heartbeats missed) or over its memory limit: stop it, then take the restart path."""
        if self.state not in (State.STARTING, State.READY):
            return []
        self._failure_on_exit = reason
        self._start_on_exit = False
        return self._terminate(now, reason)

    def stop(self, now: float, reason: str = "stop") -> list[Action]:
        """Stop and stay stopped (operator, idle timeout, shutdown). One already stopping (for a restart,
        or a hang) stays stopped at its exit, which is then put down to this stop."""
        self._start_on_exit = False
        self._failure_on_exit = None
        if self.state is State.STOPPING:
            self.reason, self.trial = reason, False
            return []
        if self.state in (State.STARTING, State.READY):
            return self._terminate(now, reason)
        if self.state in (State.BACKOFF, State.FAILED):
            self.trial = False
            return [self._go(State.STOPPED, reason, now)]
        return []

    def restart(self, now: float, reason: str = "restart") -> list[Action]:
        """Operator restart: a new incarnation, not counted as a failure."""
        if self.state in (State.STARTING, State.READY):
            self._start_on_exit = True
            self._failure_on_exit = None
            return self._terminate(now, reason)
        return self.start(now, reason)

    def hold(self, now: float, reason: str) -> list[Action]:
        """Nothing starts any more (shutdown): an agent waiting to restart stops now, and any exit from
        here on ends in `stopped`, whatever the restart policy, even for an agent not asked to stop
        yet (it still serves its dependents until they are gone)."""
        self.holding = reason
        self._start_on_exit = False
        if self.state in (State.BACKOFF, State.FAILED):
            self.trial = False
            return [self._go(State.STOPPED, reason, now)]
        return []

    def redefine(self, spec: AgentSpec) -> None:
        """A reload gave the agent a new definition: it gets a fresh restart window and a closed
        circuit, because the failures it counted belong to the old one."""
        self.spec = spec
        self._close_circuit()

    def tick(self, now: float) -> list[Action]:
        """Act on the deadline of the current state, if it has passed."""
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return []
        if self.state is State.READY:
            self._close_circuit()
            return []
        if self.state is State.STARTING:
            return self.unhealthy(now, f"not ready within start_timeout_s={self.spec.start_timeout_s:g}")
        if self.state is State.STOPPING:
            self.kill_deadline = None  # one SIGKILL; the exit event finishes the stop
            return [Kill()]
        if self.state is State.BACKOFF:
            return [self._go(State.STARTING, "backoff over", now), Spawn()]
        if self.state is State.FAILED:
            self.trial = True
            return [self._go(State.STARTING, "cooldown over, half-open trial", now), Spawn()]
        return []

