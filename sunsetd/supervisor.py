"""Supervisor: one AgentSlot per agent, driven by process, heartbeat and timer events (DESIGN §1, §3).

Owns each agent's slot: lifecycle (policy.Lifecycle), current process, incarnation, heartbeat
bookkeeping and request queue. It carries out the lifecycle's decisions through the spawner and the
agents socket, starts agents in dependency order and stops them in reverse. It never parses a frame
and never decides a restart by itself: the router and the policy do those.
"""
from __future__ import annotations

import os
import random
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import psutil

from sunsetd import logs
from sunsetd.policy import Action, Kill, Lifecycle, Spawn, State, Terminate, Transition
from sunsetd.profile import AgentSpec, Profile
from sunsetd.protocol import Kind
from sunsetd.spawner import AgentProcess, Spawner, describe_exit
from sunsetd.timers import Timer, Timers


@dataclass(eq=False, slots=True)
class PendingRequest:
    """A request the front socket accepted and has not yet answered (DESIGN §5)."""

    rid: int  # the daemon's id for it on the agents socket
    envelope: list[bytes]  # routing id and delimiters to answer the client with
    client_id: Any
    to: str
    op: str
    body: Any
    deadline: float  # monotonic
    wall_deadline: float  # time.time(), what the agent sees
    retry: bool
    received_at: float
    retried: bool = False
    timer: Timer | None = None


class FdWatcher(Protocol):
    def watch(self, fd: int, callback: Callable[[], None]) -> None: ...
    def unwatch(self, fd: int) -> None: ...


class SupervisorListener(Protocol):
    """What the router needs to hear from the supervisor."""

    def on_transition(self, slot: "AgentSlot", transition: Transition) -> None: ...
    def on_process_gone(self, slot: "AgentSlot", description: str) -> None: ...
    def send_to_agent(self, slot: "AgentSlot", kind: Kind, body: Any = None) -> bool: ...
    def drain_agents(self) -> None: ...


@dataclass(eq=False)
class AgentSlot:
    spec: AgentSpec
    lifecycle: Lifecycle
    wanted: bool = False  # the supervisor means this agent to be running
    incarnation: int = 0
    process: AgentProcess | None = None
    routing_id: bytes | None = None
    hello: bool = False
    last_heard: float = 0.0
    heartbeat_misses: int = 0
    last_request_at: float = 0.0
    deadline_timer: Timer | None = None
    heartbeat_timer: Timer | None = None
    inflight: dict[int, PendingRequest] = field(default_factory=dict)
    queue: deque[PendingRequest] = field(default_factory=deque)
    watchers: list[Callable[["AgentSlot"], bool]] = field(default_factory=list)
    dependencies: list["AgentSlot"] = field(default_factory=list)
    dependents: list["AgentSlot"] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def state(self) -> State:
        return self.lifecycle.state


class Supervisor:
    def __init__(self, profile: Profile, spawner: Spawner, timers: Timers, fds: FdWatcher,
                 rng: random.Random | None = None):
        self.profile = profile
        self.spawner = spawner
        self.timers = timers
        self.fds = fds
        self.rng = rng or random.Random()
        self.listener: SupervisorListener | None = None
        self.slots: dict[str, AgentSlot] = {s.name: AgentSlot(s, Lifecycle(s, self.rng)) for s in profile.agents}
        for slot in self.slots.values():
            slot.dependencies = [self.slots[d] for d in slot.spec.depends_on]
            for dep in slot.dependencies:
                dep.dependents.append(slot)
        self.shutting_down = False
        self.started_at = time.monotonic()
        self.all_essential_ready_at: float | None = None
        self.on_ready: Callable[[], None] | None = None  # all essential agents ready for the first time
        self.on_change: Callable[[], None] | None = None  # any state change (status text for systemd)

    # ---- identity
    def slot_for(self, routing_id: bytes) -> AgentSlot | None:
        """The slot whose *current* incarnation has this routing id; messages of older ones are stale."""
        name, _, _ = routing_id.decode(errors="replace").rpartition("#")
        slot = self.slots.get(name)
        return slot if slot is not None and slot.routing_id == routing_id else None

    # ---- starting and stopping in dependency order
    def start(self) -> None:
        for slot in self.slots.values():
            if not slot.spec.lazy:
                self.want(slot)

    def want(self, slot: AgentSlot) -> None:
        """Mean `slot` to run, with everything it depends on; each starts once its dependencies are ready."""
        if slot.wanted or self.shutting_down:
            return
        slot.wanted = True
        for dep in slot.dependencies:
            self.want(dep)
        self._maybe_start(slot)

    def _maybe_start(self, slot: AgentSlot) -> None:
        if (slot.wanted and not self.shutting_down and slot.state is State.STOPPED
                and all(dep.state is State.READY for dep in slot.dependencies)):
            self._apply(slot, slot.lifecycle.start(time.monotonic()))

    def _maybe_stop(self, slot: AgentSlot) -> None:
        if slot.wanted or slot.state in (State.STOPPED, State.STOPPING):
            return
        if any(d.lifecycle.running for d in slot.dependents):
            return  # reverse order: dependents stop first
        self._apply(slot, slot.lifecycle.stop(time.monotonic(), "shutdown" if self.shutting_down else "stop"))

    def shutdown(self) -> None:
        self.shutting_down = True
        for slot in self.slots.values():
            slot.wanted = False
        for slot in self.slots.values():
            self._maybe_stop(slot)

    @property
    def all_stopped(self) -> bool:
        return all(s.state is State.STOPPED and s.process is None for s in self.slots.values())

    def shutdown_budget_s(self) -> float:
        """Worst case of a reverse-order stop: each level may use its slowest stop timeout, plus slack."""
        slowest = {name: s.spec.stop_timeout_s for name, s in self.slots.items()}
        return sum(max(slowest[n] for n in level) for level in self.profile.levels) + 5.0

    # ---- operator commands
    def start_agent(self, slot: AgentSlot) -> None:
        self.want(slot)
        if slot.state in (State.FAILED, State.BACKOFF):
            self._apply(slot, slot.lifecycle.start(time.monotonic(), "operator start"))

    def stop_agent(self, slot: AgentSlot, reason: str = "operator stop") -> None:
        slot.wanted = False
        self._apply(slot, slot.lifecycle.stop(time.monotonic(), reason))

    def restart_agent(self, slot: AgentSlot) -> None:
        slot.wanted = True
        self._apply(slot, slot.lifecycle.restart(time.monotonic(), "operator restart"))

    def unhealthy(self, slot: AgentSlot, reason: str) -> None:
        self._apply(slot, slot.lifecycle.unhealthy(time.monotonic(), reason))

    # ---- carrying out decisions
    def _apply(self, slot: AgentSlot, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Transition):
                self._on_transition(slot, action)
            elif isinstance(action, Spawn):
                self._spawn(slot)
            elif isinstance(action, Terminate):
                self._terminate(slot)
            elif isinstance(action, Kill):
                if slot.process is not None:
                    logs.event(slot.name, "kill", f"SIGKILL after stop_timeout_s={slot.spec.stop_timeout_s:g}",
                               "WARNING", incarnation=slot.incarnation, pid=slot.process.pid)
                    slot.process.signal_group(signal.SIGKILL)
        self._rearm_deadline(slot)

    def _on_transition(self, slot: AgentSlot, t: Transition) -> None:
        level = "WARNING" if t.new in (State.BACKOFF, State.FAILED) else "INFO"
        logs.event(slot.name, "state", f"{t.old.value} -> {t.new.value}", level, reason=t.reason,
                   incarnation=slot.incarnation or None, pid=slot.process.pid if slot.process else None)
        if self.listener is not None:
            self.listener.on_transition(slot, t)
        if t.new is State.READY:
            for dependent in slot.dependents:
                self._maybe_start(dependent)
            self._check_all_ready()
        elif t.new is State.STOPPED:
            for dep in slot.dependencies:
                self._maybe_stop(dep)
        slot.watchers[:] = [w for w in slot.watchers if not w(slot)]
        if self.on_change is not None:
            self.on_change()

    def _check_all_ready(self) -> None:
        if self.all_essential_ready_at is None and all(
                s.state is State.READY for s in self.slots.values() if s.spec.essential):
            self.all_essential_ready_at = time.monotonic()
            n = sum(s.spec.essential for s in self.slots.values())
            logs.event(logs.DAEMON, "ready", f"all {n} essential agents ready",
                       startup_ms=round((self.all_essential_ready_at - self.started_at) * 1000))
            if self.on_ready is not None:
                self.on_ready()

    def _rearm_deadline(self, slot: AgentSlot) -> None:
        deadline = slot.lifecycle.next_deadline()
        timer = slot.deadline_timer
        if timer is not None and not timer.cancelled and timer.when == deadline:
            return
        self.timers.cancel(timer)
        slot.deadline_timer = None if deadline is None else self.timers.call_at(
            deadline, lambda: self._apply(slot, slot.lifecycle.tick(time.monotonic())))

    def _spawn(self, slot: AgentSlot) -> None:
        slot.incarnation += 1
        try:
            proc = self.spawner.spawn(slot.spec, slot.incarnation)
        except OSError as exc:
            logs.event(slot.name, "spawn", f"failed: {exc}", "ERROR", incarnation=slot.incarnation)
            self._apply(slot, slot.lifecycle.spawn_failed(time.monotonic(), str(exc)))
            return
        slot.process = proc
        slot.routing_id = f"{slot.name}#{slot.incarnation}".encode()
        slot.hello = False
        slot.last_heard = time.monotonic()
        self.fds.watch(proc.pidfd, lambda: self._on_exit(slot, proc))
        for fd in list(proc.outputs):
            self.fds.watch(fd, lambda fd=fd: self._on_output(slot, proc, fd))
        logs.event(slot.name, "spawn", incarnation=slot.incarnation, pid=proc.pid)

    def _terminate(self, slot: AgentSlot) -> None:
        proc = slot.process
        if proc is None:
            return
        grace_ms = int(slot.spec.stop_timeout_s * 800)  # leave the agent a margin before our SIGKILL
        if slot.hello and self.listener is not None:
            self.listener.send_to_agent(slot, Kind.STOP, {"grace_ms": grace_ms})
        proc.signal_group(signal.SIGTERM)
        proc.signal_group(signal.SIGCONT)  # a frozen agent must run to obey the SIGTERM

    # ---- process events
    def _on_exit(self, slot: AgentSlot, proc: AgentProcess) -> None:
        self.fds.unwatch(proc.pidfd)
        if self.listener is not None and slot.process is proc:
            self.listener.drain_agents()  # replies it sent before dying are answers, not losses
        code = proc.reap()
        description = describe_exit(code)
        if slot.process is not proc:
            return
        slot.process = None
        slot.routing_id = None
        slot.hello = False
        self.timers.cancel(slot.heartbeat_timer)
        slot.heartbeat_timer = None
        uptime = time.monotonic() - proc.started_at
        level = "INFO" if slot.state is State.STOPPING else "WARNING"
        logs.event(slot.name, "exit", description, level, uptime_s=f"{uptime:.3f}",
                   incarnation=slot.incarnation, pid=proc.pid)
        actions = slot.lifecycle.exited(time.monotonic(), description, clean_exit=code == 0)
        if self.listener is not None:
            self.listener.on_process_gone(slot, description)
        self._apply(slot, actions)

    def _on_output(self, slot: AgentSlot, proc: AgentProcess, fd: int) -> None:
        stream, reader = proc.outputs[fd]
        lines, eof = reader.read()
        for line in lines:
            logs.agent_output(slot.name, stream, line, slot.incarnation, proc.pid)
        if eof:
            self.fds.unwatch(fd)
            proc.close_output(fd)

    # ---- agent control messages (the router hands them over)
    def on_agent_message(self, slot: AgentSlot, kind: Kind, body: Any) -> None:
        now = time.monotonic()
        slot.last_heard = now
        if kind is Kind.HELLO:
            if not slot.hello:
                slot.hello = True
                self._schedule_heartbeat(slot, now)
        elif kind is Kind.READY:
            if not slot.hello:  # READY implies the agent is up even if its HELLO went missing
                slot.hello = True
                self._schedule_heartbeat(slot, now)
            self._apply(slot, slot.lifecycle.ready(now))

    def _schedule_heartbeat(self, slot: AgentSlot, now: float) -> None:
        self.timers.cancel(slot.heartbeat_timer)
        slot.heartbeat_timer = self.timers.call_at(now + slot.spec.heartbeat_ms / 1000.0,
                                                   lambda: self._heartbeat(slot))

    def _heartbeat(self, slot: AgentSlot) -> None:
        """Send our heartbeat, and judge the agent's: silent for `liveness` intervals means hung."""
        slot.heartbeat_timer = None
        if slot.process is None or slot.state not in (State.STARTING, State.READY):
            return
        limit = slot.spec.liveness * slot.spec.heartbeat_ms / 1000.0
        if time.monotonic() - slot.last_heard > limit and self.listener is not None:
            self.listener.drain_agents()  # a busy loop may not have read its heartbeats yet
        silent = time.monotonic() - slot.last_heard
        if silent > limit:
            slot.heartbeat_misses += 1
            self.unhealthy(slot, f"hung: no heartbeat for {silent * 1000:.0f}ms")
            return
        if self.listener is not None:
            self.listener.send_to_agent(slot, Kind.HEARTBEAT)
        self._schedule_heartbeat(slot, time.monotonic())

    # ---- status
    def daemon_state(self) -> str:
        if self.shutting_down:
            return "stopping"
        if any(s.spec.essential and s.state is State.FAILED for s in self.slots.values()):
            return "degraded"
        return "starting" if self.all_essential_ready_at is None else "running"

    def agent_status(self, slot: AgentSlot, now: float) -> dict:
        proc = slot.process
        rss = None
        if proc is not None:
            try:
                rss = psutil.Process(proc.pid).memory_info().rss
            except psutil.Error:
                rss = None
        return {
            "name": slot.name,
            "state": slot.state.value,
            "pid": proc.pid if proc else None,
            "incarnation": slot.incarnation,
            "restarts": slot.lifecycle.restarts,
            "essential": slot.spec.essential,
            "lazy": slot.spec.lazy,
            "uptime_s": round(now - proc.started_at, 3) if proc else None,
            "rss_bytes": rss,
            "heartbeat_age_ms": round((now - slot.last_heard) * 1000) if proc and slot.hello else None,
            "heartbeat_misses": slot.heartbeat_misses,
            "circuit": slot.lifecycle.circuit.value,
            "reason": slot.lifecycle.reason,
            "inflight": len(slot.inflight),
            "queued": len(slot.queue),
        }

    def status(self) -> dict:
        now = time.monotonic()
        slots = self.slots.values()
        return {
            "profile": self.profile.name,
            "pid": os.getpid(),
            "state": self.daemon_state(),
            "uptime_s": round(now - self.started_at, 3),
            "counts": self.counts(),
            "agents": [self.agent_status(s, now) for s in slots],
        }

    def counts(self) -> dict[str, int]:
        slots = self.slots.values()
        return {
            "total": len(self.slots),
            "ready": sum(s.state is State.READY for s in slots),
            "essential": sum(s.spec.essential for s in slots),
            "essential_ready": sum(s.spec.essential and s.state is State.READY for s in slots),
            "failed": sum(s.state is State.FAILED for s in slots),
        }
