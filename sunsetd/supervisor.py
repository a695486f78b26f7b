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


MB = 1 << 20
SAMPLE_INTERVAL_S = 1.0  # RSS sampling and the idle check of lazy agents
LAZY_START = "first request"  # the reason given when a request starts a lazy agent
LAST_REPLIES_S = 0.1  # how long a clean exit's last replies may take to come out of libzmq


def _rss(pid: int) -> int | None:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return None


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
    def await_last_replies(self, slot: "AgentSlot", timeout_s: float) -> None: ...
    def agent_stopped(self, slot: "AgentSlot", reason: str) -> None: ...


Watcher = Callable[["AgentSlot", Transition], bool]  # returns True when it is done


@dataclass(eq=False)
class AgentSlot:
    lifecycle: Lifecycle
    wanted: bool = False  # the supervisor means this agent to be running
    removed: bool = False  # dropped from the profile by a reload; deleted once stopped
    incarnation: int = 0
    process: AgentProcess | None = None
    routing_id: bytes | None = None
    hello: bool = False
    last_heard: float = 0.0
    heartbeat_misses: int = 0
    last_request_at: float = 0.0
    rss: int | None = None  # bytes, sampled about once a second
    lazy_start_at: float | None = None  # when a request started this lazy agent, until it is ready
    deadline_timer: Timer | None = None
    heartbeat_timer: Timer | None = None
    inflight: dict[int, PendingRequest] = field(default_factory=dict)
    queue: deque[PendingRequest] = field(default_factory=deque)
    watchers: list[Watcher] = field(default_factory=list)
    reload_watch: tuple | None = None  # (watch, deadline timer, result, settled) of a reload settling on it
    dependencies: list["AgentSlot"] = field(default_factory=list)
    dependents: list["AgentSlot"] = field(default_factory=list)

    @property
    def spec(self) -> AgentSpec:
        return self.lifecycle.spec  # one copy: a reload that changes the spec changes it here

    @property
    def name(self) -> str:
        return self.lifecycle.spec.name

    @property
    def state(self) -> State:
        return self.lifecycle.state

    @property
    def idle(self) -> bool:
        return self.state is State.READY and not self.inflight and not self.queue


class Supervisor:
    def __init__(self, profile: Profile, spawner: Spawner, timers: Timers, fds: FdWatcher,
                 rng: random.Random | None = None):
        self.profile = profile
        self.spawner = spawner
        self.timers = timers
        self.fds = fds
        self.rng = rng or random.Random()
        self.listener: SupervisorListener | None = None
        self.slots: dict[str, AgentSlot] = {s.name: AgentSlot(Lifecycle(s, self.rng)) for s in profile.agents}
        self._wire_dependencies()
        self.shutting_down = False
        self.sampler: Timer | None = None
        self.incarnations: dict[str, int] = {}
        self.started_at = time.monotonic()
        self.all_essential_ready_at: float | None = None
        self.on_ready: Callable[[], None] | None = None  # all essential agents ready for the first time
        self.on_change: Callable[[], None] | None = None  # any state change (status text for systemd)
        self.on_lazy_start: Callable[[str, float], None] | None = None  # (agent, seconds to ready): metrics

    def _wire_dependencies(self) -> None:
        """Dependencies from the specs. Slots being removed by a reload keep theirs, so they still stop
        in reverse order, and so agents they depend on wait for them."""
        for slot in self.slots.values():
            slot.dependents = []
        for slot in self.slots.values():
            slot.dependencies = [self.slots[d] for d in slot.spec.depends_on if d in self.slots]
            for dep in slot.dependencies:
                dep.dependents.append(slot)

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
        self._schedule_sampler()

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
        reason = "shutdown" if self.shutting_down else "removed by reload" if slot.removed else "stop"
        self._apply(slot, slot.lifecycle.stop(time.monotonic(), reason))

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
        return sum(max(self.slots[n].spec.stop_timeout_s for n in level) for level in self.profile.levels) + 5.0

    # ---- operator commands
    def start_agent(self, slot: AgentSlot, reason: str = "operator start") -> str | None:
        """Start an agent and what it depends on; for a lazy one first make room in the memory budget.
        Returns why it cannot start, or None."""
        if not slot.lifecycle.running:
            refusal = self.make_room(slot)
            if refusal is not None:
                logs.event(slot.name, "budget", refusal, "WARNING")
                return refusal
        if reason == LAZY_START and not slot.lifecycle.running and slot.lazy_start_at is None:
            slot.lazy_start_at = time.monotonic()  # for the lazy-start duration metric
        self.want(slot)
        if slot.state in (State.FAILED, State.BACKOFF, State.STOPPING):
            self._apply(slot, slot.lifecycle.start(time.monotonic(), reason))
        return None

    def stop_agent(self, slot: AgentSlot, reason: str = "operator stop") -> None:
        slot.wanted = False
        actions = slot.lifecycle.stop(time.monotonic(), reason)
        if not actions and slot.queue and self.listener is not None:
            self.listener.agent_stopped(slot, reason)  # it was waiting (for dependencies): no transition
        self._apply(slot, actions)

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
        if t.new is State.STOPPED and t.old is not State.STOPPING:
            slot.wanted = False  # it exited and its restart mode says stay stopped (the router must know)
        if self.listener is not None:
            self.listener.on_transition(slot, t)
        if t.new is State.READY:
            slot.last_request_at = max(slot.last_request_at, time.monotonic())  # idle time counts from ready
            if slot.lazy_start_at is not None:
                if self.on_lazy_start is not None:
                    self.on_lazy_start(slot.name, time.monotonic() - slot.lazy_start_at)
                slot.lazy_start_at = None
            for dependent in slot.dependents:
                self._maybe_start(dependent)
            self._check_all_ready()
        elif t.new in (State.STOPPED, State.FAILED):
            slot.lazy_start_at = None
        if t.new is State.STOPPED:
            if slot.removed and self.slots.get(slot.name) is slot:
                del self.slots[slot.name]
                self._wire_dependencies()
            for dep in slot.dependencies:
                self._maybe_stop(dep)
            self._maybe_start(slot)  # wanted again while it was stopping (a request for a lazy agent)
        # Watchers only answer requests or schedule work; they never cause a transition themselves.
        watchers, slot.watchers = slot.watchers, []
        slot.watchers = [w for w in watchers if not w(slot, t)] + slot.watchers
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
        # per name, not per slot: a name removed and added again must never reuse a routing id
        slot.incarnation = self.incarnations[slot.name] = max(self.incarnations.get(slot.name, 0), slot.incarnation) + 1
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
        code = proc.reap()
        if self.listener is not None and slot.process is proc:
            # replies it sent before dying are answers, not losses; after a clean exit they surely exist
            self.listener.await_last_replies(slot, LAST_REPLIES_S if code == 0 else 0.0)
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

    # ---- memory: sampling, the budget, idle lazy agents
    def _schedule_sampler(self) -> None:
        self.sampler = self.timers.call_later(SAMPLE_INTERVAL_S, self._sample)

    def _sample(self) -> None:
        """About once a second: each agent's RSS (and its max_rss_mb), and lazy agents idle too long."""
        now = time.monotonic()
        for slot in list(self.slots.values()):
            if slot.process is not None:
                slot.rss = _rss(slot.process.pid)
                limit = slot.spec.max_rss_mb
                if limit and slot.rss and slot.rss > limit * MB and slot.state is State.READY:
                    self.unhealthy(slot, f"memory: rss {slot.rss / MB:.0f}MB over max_rss_mb={limit}")
            if (slot.spec.lazy and slot.wanted and slot.idle and not self.shutting_down
                    and now - slot.last_request_at >= slot.spec.idle_timeout_s
                    and not any(d.lifecycle.running for d in slot.dependents)):
                self.stop_agent(slot, f"idle for {now - slot.last_request_at:.0f}s")
        self._schedule_sampler()

    def footprint_mb(self, slot: AgentSlot) -> float:
        """Memory an agent counts against the budget: observed RSS, or its declared size while starting."""
        if slot.process is None:
            return 0.0
        if slot.state is State.STARTING or slot.rss is None:
            return float(slot.spec.memory_mb)
        return slot.rss / MB

    def make_room(self, slot: AgentSlot) -> str | None:
        """Before a lazy start: stop least-recently-used idle lazy agents until it fits the budget.
        Returns why it does not fit, or None."""
        budget = self.profile.memory_mb
        if budget is None:
            return None
        starting: list[AgentSlot] = []
        stack = [slot]
        while stack:  # the agent and everything it needs that is not running yet
            s = stack.pop()
            if s not in starting and not s.lifecycle.running:
                starting.append(s)
                stack.extend(s.dependencies)
        need = sum(s.spec.memory_mb for s in starting)
        used = sum(self.footprint_mb(s) for s in self.slots.values())
        if used + need <= budget:
            return None
        needed_by = set()
        stack = list(starting)
        while stack:
            s = stack.pop()
            if s not in needed_by:
                needed_by.add(s)
                stack.extend(s.dependencies)
        evictable = sorted((s for s in self.slots.values()
                            if s.spec.lazy and s.idle and s not in needed_by
                            and not any(d.lifecycle.running for d in s.dependents)),
                           key=lambda s: s.last_request_at)
        chosen = []
        for victim in evictable:
            if used + need <= budget:
                break
            chosen.append(victim)
            used -= self.footprint_mb(victim)
        if used + need > budget:
            return (f"memory budget of {budget} MB: starting {slot.name} needs {need} MB, running agents use "
                    f"{used + sum(self.footprint_mb(v) for v in chosen):.0f} MB and no idle lazy agent can be stopped "
                    f"to make room")
        for victim in chosen:
            self.stop_agent(victim, f"evicted for {slot.name}: memory budget {budget} MB")
        return None

    # ---- reload
    def reload(self, new: Profile, on_done: Callable[[dict], None]) -> None:
        """Apply a new profile: start added agents, stop removed ones, restart changed ones; a changed
        agent that does not become ready within its start timeout goes back to its previous spec."""
        current = {name: slot for name, slot in self.slots.items() if not slot.removed}
        new_specs = new.by_name
        added = [n for n in new_specs if n not in current]
        removed = [n for n in current if n not in new_specs]
        changed = [n for n in new_specs if n in current and new_specs[n] != current[n].spec]
        previous = {n: current[n].spec for n in changed}
        self.profile = new
        for name in removed + changed:
            self._supersede_reload(self.slots[name])  # a reload still settling on this agent gives way
        for name in added:
            slot = self.slots.get(name)
            if slot is None:
                self.slots[name] = AgentSlot(Lifecycle(new_specs[name], self.rng))
            else:  # removed by an earlier reload and still stopping: the same slot carries on
                slot.removed = False
                slot.lifecycle.spec = new_specs[name]
        for name in changed:
            self.slots[name].lifecycle.spec = new_specs[name]
        for name in removed:
            self.slots[name].removed = True
            self.slots[name].wanted = False
        self._wire_dependencies()
        for name in removed:
            slot = self.slots[name]
            if slot.state is State.STOPPED and slot.process is None:
                del self.slots[name]  # nothing to stop: gone at once
            else:
                self._maybe_stop(slot)
        self._wire_dependencies()
        result = {"profile": new.name, "added": added, "removed": removed, "changed": changed,
                  "unchanged": len(new_specs) - len(added) - len(changed), "rolled_back": []}
        logs.event(logs.DAEMON, "reload", f"profile {new.name}", added=",".join(added) or None,
                   removed=",".join(removed) or None, changed=",".join(changed) or None)
        pending = set()

        def settled(name: str) -> None:
            pending.discard(name)
            if not pending:
                on_done(result)

        for name in added:
            if not new_specs[name].lazy:
                self.want(self.slots[name])
        for name in changed:
            slot = self.slots[name]
            if not (slot.wanted or slot.lifecycle.running):
                continue  # a stopped lazy agent simply starts with its new spec next time
            pending.add(name)
            self._restart_with_rollback(slot, previous[name], result, settled)
        if not pending:
            on_done(result)

    def _restart_for_reload(self, slot: AgentSlot) -> None:
        """Stop it; it starts again with its current spec once its dependencies, new ones included, are
        ready (an operator restart would respawn at once, before a new dependency is up)."""
        slot.wanted = True
        for dep in slot.dependencies:
            self.want(dep)
        if slot.state is not State.STOPPED:
            self._apply(slot, slot.lifecycle.stop(time.monotonic(), "profile reload"))
        self._maybe_start(slot)

    def _supersede_reload(self, slot: AgentSlot) -> None:
        """A newer reload takes over this agent: the earlier one's watch ends, reported as superseded."""
        if slot.reload_watch is None:
            return
        watch, deadline, result, settled = slot.reload_watch
        slot.reload_watch = None
        self.timers.cancel(deadline)
        if watch in slot.watchers:
            slot.watchers.remove(watch)
        result.setdefault("superseded", []).append(slot.name)
        settled(slot.name)

    def _restart_with_rollback(self, slot: AgentSlot, previous: AgentSpec, result: dict,
                               settled: Callable[[str], None]) -> None:
        marker = slot.incarnation
        budget = previous.stop_timeout_s + slot.spec.start_timeout_s + 1.0

        def roll_back(why: str) -> None:
            slot.reload_watch = None
            logs.event(slot.name, "rollback", why, "WARNING")
            result["rolled_back"].append(slot.name)
            slot.lifecycle.spec = previous
            self._wire_dependencies()
            # outside the transition in progress; and not if a later reload removed it meanwhile
            self.timers.call_later(0.0, lambda: None if slot.removed else self._restart_for_reload(slot))
            settled(slot.name)

        def watch(s: AgentSlot, t: Transition) -> bool:
            if s.incarnation <= marker:
                return False  # still the old incarnation stopping
            if t.new is State.READY:
                slot.reload_watch = None
                self.timers.cancel(deadline)
                settled(s.name)
                return True
            if t.old is State.STARTING:  # the new spec's process died or hung while starting
                self.timers.cancel(deadline)
                roll_back(f"new spec did not become ready: {t.reason}")
                return True
            return False

        def too_late() -> None:
            if watch in slot.watchers:
                slot.watchers.remove(watch)
                roll_back(f"new spec not ready within {budget:g}s")

        deadline = self.timers.call_later(budget, too_late)
        slot.reload_watch = (watch, deadline, result, settled)
        slot.watchers.append(watch)
        self._restart_for_reload(slot)

    # ---- status
    def daemon_state(self) -> str:
        if self.shutting_down:
            return "stopping"
        if any(s.spec.essential and s.state is State.FAILED for s in self.slots.values()):
            return "degraded"
        return "starting" if self.all_essential_ready_at is None else "running"

    def agent_status(self, slot: AgentSlot, now: float, fresh_rss: bool = True) -> dict:
        proc = slot.process
        if fresh_rss:
            slot.rss = _rss(proc.pid) if proc is not None else None
        rss = slot.rss if proc is not None else None
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
            "memory_mb": slot.spec.memory_mb,
            "max_queue": slot.spec.max_queue,
            "depends_on": list(slot.spec.depends_on),
            "idle_s": round(now - slot.last_request_at, 3) if slot.spec.lazy and slot.idle else None,
        }

    def status(self, fresh_rss: bool = True) -> dict:
        now = time.monotonic()
        slots = self.slots.values()
        return {
            "profile": self.profile.name,
            "pid": os.getpid(),
            "state": self.daemon_state(),
            "uptime_s": round(now - self.started_at, 3),
            "counts": self.counts(),
            "memory": {"budget_mb": self.profile.memory_mb,
                       "used_mb": round(sum(self.footprint_mb(s) for s in slots), 1)},
            "agents": [self.agent_status(s, now, fresh_rss) for s in slots],
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
