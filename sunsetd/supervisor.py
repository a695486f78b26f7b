"""Supervisor: one AgentSlot per agent, driven by process events, agent messages and timers (DESIGN §1, §3).

Owns each agent's slot: its lifecycle (policy.Lifecycle), its current process handle, heartbeat
bookkeeping and the incarnation counter. It starts agents in dependency order and stops them in
reverse, carries out the lifecycle's decisions through the spawner and the agent channel, and tells
its listener what the request book must know (an agent's availability, an incarnation gone) and what
operators watch (transitions). The verdicts it acts on are pure functions elsewhere: health (hung,
memory, idle), budget (eviction), reload (diff, settle, rollback). It never reads a socket, never
touches a pid, and reads time only from its injected Timers.
"""
from __future__ import annotations

import random
import re
import signal
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from sunsetd import budget, health, logs
from sunsetd.policy import Action, Kill, Lifecycle, Spawn, State, Terminate, Transition
from sunsetd.probes import Probe
from sunsetd.profile import AgentSpec, Profile
from sunsetd.protocol import ErrorCode, Kind
from sunsetd.reload import (ReloadOutcome, ReloadPlan, RollBack, Settled, SettleWatch, dependency_cycle,
                            settle_budget_s)
from sunsetd.requestbook import Availability, AgentView
from sunsetd.spawner import (Exited, Memory, Notified, Output, ProcessEvent, ProcessHandle, Spawner, SpawnFailed,
                             Started)
from sunsetd.stamps import IDLE_STAMP_S
from sunsetd.timers import Timer, Timers

IDLE_CHECK_INTERVAL_S = 1.0  # lazy agents idle too long are stopped on this beat
LAZY_START = "first request"  # the reason given when a request starts a lazy agent
LAST_REPLIES_CLEAN_S = 0.1  # a clean exit's last replies may still be in libzmq's buffers this long
LAST_REPLIES_CRASH_S = 0.002  # and a crash's: what it wrote before dying is read within a loop round
RECHECK_S = 0.01  # a heartbeat verdict deferred while the loop has unread messages
LIVENESS_LATE_S = 0.001  # a tick for an agent's deadline comes this much after it: silent *longer* than allowed
LIVENESS_TICK_S = (0.05, 0.25)  # bounds of the one timer that reads every stamped agent (sunsetd.stamps)
MCP_STDIN_GRACE_S = 1.0  # an MCP server whose stdin was closed gets this long to exit before its stop signal
MCP_DRAIN_SHARE = 0.6  # of stop_timeout_s, for a stopping MCP server to answer what it holds
MCP_DRAIN_POLL_S = 0.02


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class AgentChannel(Protocol):
    """Frames to one incarnation on the agents socket, and whether messages wait unread."""

    def send(self, name: str, incarnation: int, kind: Kind, body: Any = None) -> bool: ...
    @property
    def unread(self) -> bool: ...


class ProbeRunner(Protocol):
    """Runs a program's probe off the supervisor (sockets, children); `done(ok, what)` once; returns cancel."""

    def run(self, probe: Probe, done: Callable[[bool, str], None]) -> Callable[[], None]: ...


class McpLinks(AgentChannel, Protocol):
    """The channel of agents that are MCP servers (mcpchannel.McpChannel): it speaks MCP over their stdio,
    and tells the supervisor of their handshake (HELLO, READY) and liveness (HEARTBEAT) like any agent."""

    owner: Any

    def attach(self, handle: ProcessHandle, roots: tuple[str, ...]) -> None: ...
    def forget(self, name: str) -> None: ...
    def opened(self, handle: ProcessHandle) -> None: ...
    def line(self, handle: ProcessHandle, text: str) -> None: ...
    def detach(self, handle: ProcessHandle) -> None: ...
    def describe(self, name: str) -> dict | None: ...


class RequestView(Protocol):
    """What the supervisor may read of the request book (pure reads)."""

    def idle(self, name: str) -> bool: ...
    def last_request_at(self, name: str) -> float: ...
    def load(self, name: str) -> tuple[int, int]: ...  # (in flight, queued)


class Listener(Protocol):
    def agent_view(self, name: str, view: AgentView | None) -> None: ...  # None: removed from the profile
    def agent_gone(self, name: str, incarnation: int, description: str, grace_s: float) -> None: ...
    def agent_transition(self, name: str, incarnation: int, t: Transition) -> None: ...
    def lazy_started(self, name: str, seconds: float) -> None: ...
    def all_ready(self) -> None: ...


@dataclass(frozen=True)
class LastExit:
    incarnation: int
    description: str  # "exit code 1", "killed by SIGKILL"
    at: float  # the supervisor's clock
    uptime_s: float
    asked: bool  # it had been asked to stop


@dataclass(eq=False)
class AgentSlot:
    lifecycle: Lifecycle
    wanted: bool = False  # the supervisor means this agent to be running
    removed: bool = False  # dropped from the profile by a reload; deleted once stopped
    handle: ProcessHandle | None = None
    hello: bool = False
    last_heard: float = 0.0
    stamped: bool = False  # this incarnation's liveness is its stamp page (sunsetd.stamps), not frames
    owed_since: float | None = None  # the liveness tick first saw it hold forwarded work (stamped agents)
    heartbeat_misses: int = 0
    lazy_start_at: float | None = None  # when a request started this lazy agent, until it is ready
    stop_reason: str | None = None  # why it is to stop once its dependents have (a group stop)
    spawned_with: AgentSpec | None = None  # the definition its process was started with (a reload may change it)
    probe_cancel: Callable[[], None] | None = None  # the probe in flight (a program's ready or health)
    probe_timer: Timer | None = None  # the next probe
    probe_failures: int = 0  # health probes failed in a row
    last_probe: dict | None = None  # for status: kind, ok, what, when
    status_text: str | None = None  # a notify program's last STATUS=
    watchdog_s: float | None = None  # a notify program's watchdog (WATCHDOG_USEC), once ready
    watchdog_at: float = 0.0  # its last WATCHDOG=1
    watchdog_timer: Timer | None = None
    last_exit: "LastExit | None" = None
    deadline_timer: Timer | None = None
    heartbeat_timer: Timer | None = None
    stop_signal_timer: Timer | None = None  # an MCP server's stop signal, a moment after its stdin closed
    stop_urgent: bool = False  # the next stop is of a hung agent: nothing to wait for
    reload_watch: SettleWatch | None = None
    reload_timer: Timer | None = None
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


class Supervisor:
    def __init__(self, profile: Profile, spawner: Spawner, channel: AgentChannel, timers: Timers,
                 requests: RequestView, listener: Listener, rng: random.Random | None = None,
                 prober: ProbeRunner | None = None, mcp: "McpLinks | None" = None):
        self.profile = profile
        self.prober = prober
        self.mcp = mcp  # the MCP servers' channel: their handshake, pings and stdout
        if mcp is not None:
            mcp.owner = self
        self.spawner = spawner
        self.channel = channel
        self.timers = timers
        self.requests = requests
        self.listener = listener
        self.rng = rng or random.Random()
        self.slots: dict[str, AgentSlot] = {s.name: AgentSlot(Lifecycle(s, self.rng)) for s in profile.agents}
        self.incarnations: dict[str, int] = {}  # per name, not per slot: an id is never reused
        self.counters: Counter[str] = Counter()
        self.started_at = timers.now()
        self.all_ready_at: float | None = None
        self.stopping_since: float | None = None
        self.reloads = 0
        self._on_settled: dict[int, Callable[[ReloadOutcome], None]] = {}  # reload number -> callback
        self._views: dict[str, AgentView] = {}
        self._idle_timer: Timer | None = None
        self._liveness_timer: Timer | None = None
        self._restart_groups: list[list[str]] = []  # group restarts waiting for all their agents to stop
        self._wire_dependencies()

    # ---- queries
    @property
    def stopping(self) -> bool:
        return self.stopping_since is not None

    def incarnation(self, name: str) -> int:
        return self.incarnations.get(name, 0)

    @property
    def all_stopped(self) -> bool:
        return all(s.state is State.STOPPED and s.handle is None for s in self.slots.values())

    def shutdown_budget_s(self) -> float:
        """Worst case of a reverse-order stop: each level may use its slowest stop timeout, plus slack."""
        levels = [[self.slots[n].spec.stop_timeout_s for n in level if n in self.slots] for level in self.profile.levels]
        return sum(max(level) for level in levels if level) + 5.0

    def _essentials(self) -> list[health.EssentialFacts]:
        return [health.EssentialFacts(s.name, s.state) for s in self.slots.values()
                if s.spec.essential and not s.removed]

    def daemon_state(self) -> health.DaemonState:
        return health.daemon_state(self.stopping, self.all_ready_at is not None, self._essentials())

    def healthy(self) -> tuple[bool, list[str]]:
        essentials = self._essentials()
        return health.healthy(self.daemon_state(), essentials), health.not_ready(essentials)

    # ---- starting and stopping in dependency order
    def start(self) -> None:
        for slot in self.slots.values():
            self._publish(slot)
        for slot in self.slots.values():
            if not slot.spec.lazy:
                self._want(slot)
        self._idle_timer = self.timers.call_aligned(IDLE_CHECK_INTERVAL_S, self._idle_check)
        self._liveness_timer = self.timers.call_aligned(self._liveness_tick_s(), self._liveness_tick)
        self._check_all_ready()  # a profile with no essential agent (all lazy) is ready at once

    def _want(self, slot: AgentSlot) -> None:
        """Mean `slot` to run, with everything it depends on; each starts once its dependencies are ready."""
        if slot.wanted or self.stopping:
            return
        slot.wanted = True
        if self._restart_groups and self.restarting(slot.name):
            self._leave_restart_groups([slot.name])  # wanted again by other means: not the group's to start
        for dep in slot.dependencies:
            self._want(dep)
        self._maybe_start(slot)
        self._publish(slot)

    def _maybe_start(self, slot: AgentSlot) -> None:
        if (slot.wanted and not self.stopping and slot.state is State.STOPPED
                and all(dep.state is State.READY for dep in slot.dependencies)):
            self._apply(slot, slot.lifecycle.start(self.timers.now()))

    def _maybe_stop(self, slot: AgentSlot) -> None:
        if slot.wanted or slot.state is State.STOPPED:
            return
        if slot.state is State.STOPPING:
            # already on its way down, for a restart, a hang or a memory limit: an operator's stop wins,
            # so what its exit would have led to (a new incarnation, the restart path) is cancelled now.
            # (At shutdown hold() has done that already, and says why.)
            if not self.stopping:
                reason = "removed by reload" if slot.removed else slot.stop_reason or "stop"
                self._apply(slot, slot.lifecycle.stop(self.timers.now(), reason))
                slot.stop_reason = None
            return
        if any(d.lifecycle.running and not d.wanted for d in slot.dependents):
            return  # reverse order: dependents that are stopping too stop first
        reason = "shutdown" if self.stopping else "removed by reload" if slot.removed else slot.stop_reason or "stop"
        slot.stop_reason = None
        self._apply(slot, slot.lifecycle.stop(self.timers.now(), reason))

    def shutdown(self) -> None:
        """Stop everything in reverse dependency order. From here on nothing starts, whatever happens:
        an agent killed while it still serves its dependents is not restarted either."""
        if self.stopping:
            return
        now = self.timers.now()
        self.stopping_since = now
        self._restart_groups = []
        for slot in self.slots.values():
            slot.wanted = False
            self._apply(slot, slot.lifecycle.hold(now, "shutdown"))
        for slot in list(self.slots.values()):
            self._maybe_stop(slot)
        self.timers.cancel(self._idle_timer)

    def kill_all(self) -> None:
        """A second shutdown signal: every process now, without waiting for reverse order."""
        for slot in self.slots.values():
            if slot.handle is not None:
                slot.handle.kill()

    # ---- operator commands
    def slot(self, name: str) -> AgentSlot | None:
        slot = self.slots.get(name)
        return None if slot is None or slot.removed else slot

    def start_agent(self, name: str, reason: str = "operator start") -> str | None:
        """Start an agent and what it depends on; for a lazy one first make room in the memory budget.
        Returns why it cannot start, or None."""
        slot = self.slot(name)
        if slot is None:
            return f"no agent {name!r} in profile {self.profile.name}"
        if self.stopping:
            return "sunsetd is shutting down"
        if not slot.lifecycle.running:
            refusal = self._make_room(slot)
            if refusal is not None:
                logs.event(slot.name, "budget", refusal, "WARNING")
                return refusal
        if reason == LAZY_START and not slot.lifecycle.running and slot.lazy_start_at is None:
            slot.lazy_start_at = self.timers.now()  # for the lazy-start duration metric
        self._want(slot)
        if slot.state is State.STOPPING:
            self._apply(slot, slot.lifecycle.start(self.timers.now(), reason))  # again once it has exited
        elif slot.state in (State.FAILED, State.BACKOFF):
            if all(dep.state is State.READY for dep in slot.dependencies):
                self._apply(slot, slot.lifecycle.start(self.timers.now(), reason))
            else:  # stopped, and started by _maybe_start once what it depends on is ready
                self._apply(slot, slot.lifecycle.stop(self.timers.now(), f"{reason}: waiting for its dependencies"))
        return None

    def stop_agent(self, name: str, reason: str = "operator stop") -> None:
        slot = self.slots[name]
        slot.wanted = False
        if self._restart_groups and self.restarting(name):
            self._leave_restart_groups([name])  # an idle stop or an eviction: no group restart brings it back
        self._apply(slot, slot.lifecycle.stop(self.timers.now(), reason))

    def stop_agents(self, names: list[str], reason: str = "operator stop") -> None:
        """Stop several agents in reverse dependency order: each once those of its dependents that are
        stopping with it have stopped (a dependent outside the group does not hold it up)."""
        for name in names:
            slot = self.slots[name]
            slot.wanted, slot.stop_reason = False, reason
        if reason != "operator restart":  # an operator's stop wins over a group restart under way: these
            self._leave_restart_groups(self._with_dependents(names))  # and what would want them again
        for name in names:
            self._maybe_stop(self.slots[name])

    def restart_agents(self, names: list[str]) -> str | None:
        """One agent: restart_agent. Several: stop them all in reverse dependency order, then start them
        all in dependency order (a dependent never runs against a half-restarted group)."""
        if len(names) == 1:
            return self.restart_agent(names[0])
        if self.stopping:
            return "sunsetd is shutting down"
        self._restart_groups.append(list(names))
        self.stop_agents(names, "operator restart")
        self._restart_stopped_groups()
        return None

    def restarting(self, name: str) -> bool:
        """Stopped on the way to a group restart: it starts again once the whole group has stopped."""
        return any(name in group for group in self._restart_groups)

    def _with_dependents(self, names: list[str]) -> list[str]:
        found, todo = set(names), list(names)
        while todo:
            for dependent in self.slots[todo.pop()].dependents:
                if dependent.name not in found:
                    found.add(dependent.name)
                    todo.append(dependent.name)
        return list(found)

    def _leave_restart_groups(self, names: list[str]) -> None:
        """These agents are no longer the business of a pending group restart (started some other way,
        stopped by an operator, removed): the group waits for, and starts, only the others."""
        for group in self._restart_groups:
            group[:] = [n for n in group if n not in names]
        self._restart_groups = [g for g in self._restart_groups if g]
        self._restart_stopped_groups()

    def _restart_stopped_groups(self) -> None:
        """Start every group whose agents have all stopped (a start may end another group's wait: the
        list is read again after each)."""
        def stopped(name: str) -> bool:
            s = self.slots.get(name)
            return s is None or (s.state is State.STOPPED and s.handle is None)

        while not self.stopping:
            group = next((g for g in self._restart_groups if all(stopped(n) for n in g)), None)
            if group is None:
                return
            self._restart_groups.remove(group)
            for name in group:
                if self.slot(name) is not None and not self.stopping:
                    self.start_agent(name, "operator restart")

    def signal_agents(self, names: list[str], signum: int) -> list[str]:
        """Send a signal to the running processes of these agents; returns those that had one."""
        sent = []
        for name in names:
            handle = self.slots[name].handle
            if handle is not None:
                logs.event(name, "signal", f"{_signal_name(signum)} from an operator", incarnation=handle.incarnation,
                           pid=handle.pid)
                handle.signal(signum)
                sent.append(name)
        return sent

    def restart_agent(self, name: str) -> str | None:
        """A new incarnation, not counted as a failure; one not running starts as start_agent would.
        Returns why it cannot, or None."""
        slot = self.slots[name]
        if self.stopping:
            return "sunsetd is shutting down"
        if slot.state not in (State.STARTING, State.READY):
            return self.start_agent(name, "operator restart")
        slot.wanted = True
        self._apply(slot, slot.lifecycle.restart(self.timers.now(), "operator restart"))
        return None

    def _unhealthy(self, slot: AgentSlot, reason: str) -> None:
        slot.stop_urgent = True  # a hung agent answers nothing more: no time to drain
        self._apply(slot, slot.lifecycle.unhealthy(self.timers.now(), reason))

    # ---- carrying out decisions
    def _apply(self, slot: AgentSlot, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Transition):
                self._on_transition(slot, action)
            elif isinstance(action, Spawn):
                self._spawn(slot)
            elif isinstance(action, Terminate):
                self._terminate(slot)
            elif isinstance(action, Kill) and slot.handle is not None:
                logs.event(slot.name, "kill", f"SIGKILL after stop_timeout_s={slot.spec.stop_timeout_s:g}",
                           "WARNING", incarnation=slot.handle.incarnation, pid=slot.handle.pid)
                slot.handle.kill()
        self._rearm_deadline(slot)
        self._publish(slot)

    def _on_transition(self, slot: AgentSlot, t: Transition) -> None:
        level = "WARNING" if t.new in (State.BACKOFF, State.FAILED) else "INFO"
        handle = slot.handle
        incarnation = self.incarnation(slot.name)
        # a transition to starting is the next incarnation's (its spawn follows at once)
        logged = incarnation + 1 if t.new is State.STARTING else incarnation
        logs.event(slot.name, "state", f"{t.old.value} -> {t.new.value}", level, reason=t.reason,
                   incarnation=logged or None, pid=handle.pid if handle else None)
        now = self.timers.now()
        if t.new is State.READY and slot.spec.health is not None and slot.handle is not None:
            slot.probe_timer = self.timers.call_later(slot.spec.health.interval_ms / 1000,
                                                      lambda h=slot.handle: self._probe(slot, h, slot.spec.health))
        elif t.new is State.STOPPING:
            self._stop_probing(slot)  # what it answers while it stops says nothing
        if t.new is State.READY:
            if slot.lazy_start_at is not None:
                self.listener.lazy_started(slot.name, now - slot.lazy_start_at)
                slot.lazy_start_at = None
        elif t.new in (State.STOPPED, State.FAILED):
            slot.lazy_start_at = None
        self._publish(slot)  # before anyone reacts: the book must see the new state first
        if t.new is State.STARTING and self.restarting(slot.name):
            self._leave_restart_groups([slot.name])  # started by other means: it is restarted already
        self.listener.agent_transition(slot.name, incarnation, t)
        self._watch_reload(slot, incarnation, t)
        if t.new is State.READY:
            for dependent in slot.dependents:
                self._maybe_start(dependent)
            self._check_all_ready()
        if t.new is State.STOPPED:
            if slot.removed and self.slots.get(slot.name) is slot:
                del self.slots[slot.name]
                self._views.pop(slot.name, None)
                if self.mcp is not None:
                    self.mcp.forget(slot.name)
                self.listener.agent_view(slot.name, None)
                self._wire_dependencies()
            for dep in slot.dependencies:
                self._maybe_stop(dep)
            self._maybe_start(slot)  # wanted again while it was stopping (a request for a lazy agent)
            if self._restart_groups:
                self._restart_stopped_groups()

    def _check_all_ready(self) -> None:
        if self.all_ready_at is None and all(
                s.state is State.READY for s in self.slots.values() if s.spec.essential):
            self.all_ready_at = self.timers.now()
            n = sum(s.spec.essential for s in self.slots.values())
            logs.event(logs.DAEMON, "ready", f"all {n} essential agents ready",
                       startup_ms=round((self.all_ready_at - self.started_at) * 1000))
            self.listener.all_ready()

    def _rearm_deadline(self, slot: AgentSlot) -> None:
        deadline = slot.lifecycle.next_deadline()
        timer = slot.deadline_timer
        if timer is not None and not timer.cancelled and timer.when == deadline:
            return
        self.timers.cancel(timer)
        slot.deadline_timer = None if deadline is None else self.timers.call_at(
            deadline, lambda: self._apply(slot, slot.lifecycle.tick(self.timers.now())))

    def _spawn(self, slot: AgentSlot) -> None:
        incarnation = self.incarnations[slot.name] = self.incarnation(slot.name) + 1
        slot.spawned_with = slot.spec
        slot.hello = slot.stamped = False
        slot.owed_since = None
        slot.status_text = slot.watchdog_s = None
        slot.stop_urgent = False
        slot.last_heard = self.timers.now()
        try:
            slot.handle = self.spawner.spawn(slot.spec, incarnation, self._on_process_event)
            if self.mcp is not None:
                if slot.spec.protocol == "mcp":
                    self.mcp.attach(slot.handle, slot.spec.roots)
                else:
                    self.mcp.forget(slot.name)
        except OSError as exc:  # spawners report failures as events; this is the belt to those braces
            error = str(exc)
            logs.event(slot.name, "spawn", f"failed: {error}", "ERROR", incarnation=incarnation)
            slot.handle = None
            self.timers.call_soon(lambda: self._apply(slot, slot.lifecycle.spawn_failed(self.timers.now(), error)))

    def _terminate(self, slot: AgentSlot) -> None:
        handle = slot.handle
        if handle is None:
            return
        running = slot.spawned_with or slot.spec  # what its process is (a reload may have changed the slot's)
        urgent, slot.stop_urgent = slot.stop_urgent, False
        if slot.hello and running.protocol == "mcp" and self.mcp is not None:
            # MCP's own way to stop a stdio server is its stdin closed, which ends its serving: first what
            # it holds is answered (unless it is hung), then its stdin, then the stop signal a moment later
            handle.resume()  # a frozen one must run to see the end of its input
            drain_s = 0.0 if urgent else running.stop_timeout_s * MCP_DRAIN_SHARE
            self._drain_mcp(slot, handle, self.timers.now() + drain_s)
            return
        if slot.hello:
            grace_ms = int(running.stop_timeout_s * 800)  # leave the agent a margin before our SIGKILL
            self.channel.send(slot.name, handle.incarnation, Kind.STOP, {"grace_ms": grace_ms})
        self._stop_signal(slot, handle)

    def _drain_mcp(self, slot: AgentSlot, handle: ProcessHandle, until: float) -> None:
        slot.stop_signal_timer = None
        if slot.handle is not handle or self.mcp is None:
            return  # it exited meanwhile
        if self.requests.load(slot.name)[0] and self.timers.now() < until:
            slot.stop_signal_timer = self.timers.call_later(MCP_DRAIN_POLL_S,
                                                            lambda: self._drain_mcp(slot, handle, until))
            return
        self.mcp.send(slot.name, handle.incarnation, Kind.STOP)  # its stdin closed
        running = slot.spawned_with or slot.spec
        slot.stop_signal_timer = self.timers.call_later(min(MCP_STDIN_GRACE_S, running.stop_timeout_s / 4),
                                                        lambda: self._stop_signal(slot, handle))

    def _stop_signal(self, slot: AgentSlot, handle: ProcessHandle) -> None:
        slot.stop_signal_timer = None
        if slot.handle is not handle:
            return  # it exited meanwhile
        stop_signal = slot.spawned_with.stop_signal if slot.spawned_with else slot.spec.stop_signal
        if stop_signal == signal.SIGTERM:
            handle.terminate()
        else:  # a program's own way to be asked (SIGINT, SIGQUIT, ...), and SIGCONT so a frozen one obeys
            handle.signal(stop_signal)
            handle.resume()

    def _channel(self, slot: AgentSlot) -> AgentChannel:
        """How the supervisor speaks to this agent: the agents socket, or an MCP server's stdio."""
        running = slot.spawned_with or slot.spec
        return self.mcp if self.mcp is not None and running.protocol == "mcp" else self.channel

    def _publish(self, slot: AgentSlot) -> None:
        """Tell the request book what it must know of this agent, when that changed."""
        if slot.removed:
            return
        view = self._view(slot)
        if self._views.get(slot.name) != view:
            self._views[slot.name] = view
            self.listener.agent_view(slot.name, view)

    def _view(self, slot: AgentSlot) -> AgentView:
        spec, lc = slot.spec, slot.lifecycle
        limits = {"max_inflight": spec.max_inflight, "max_queue": spec.max_queue}
        if spec.command and spec.protocol != "mcp":  # it speaks no protocol we know: nothing is queued for it
            return AgentView(Availability.DOWN, code=ErrorCode.BAD_REQUEST, **limits,
                             message=f"{slot.name} is a program (command:): it takes no requests")
        if lc.state is State.READY and slot.handle is not None:
            return AgentView(Availability.READY, slot.handle.incarnation, **limits)
        if lc.state is State.FAILED:
            return AgentView(Availability.DOWN, message=f"{slot.name} is failed (circuit open: {lc.reason})",
                             trial_at=lc.cooldown_until, **limits)
        if lc.state in (State.STARTING, State.BACKOFF) or slot.wanted:
            return AgentView(Availability.COMING, **limits)
        message = f"{slot.name} is {lc.state.value} ({lc.reason})"
        if spec.lazy:
            return AgentView(Availability.ON_DEMAND, message=message, **limits)
        return AgentView(Availability.DOWN, message=message, **limits)

    # ---- process events
    def _on_process_event(self, event: ProcessEvent) -> None:
        handle = event.handle
        slot = self.slots.get(handle.name)
        current = slot is not None and slot.handle is handle
        if isinstance(event, Output):
            if event.stream == "stdout" and self.mcp is not None and handle.name in self.mcp.names:
                self.mcp.line(handle, event.line)  # its protocol, not its logs
                return
            logs.agent_output(handle.name, event.stream, event.line, handle.incarnation, handle.pid)
            ready = slot.spec.ready if current else None
            if ready is not None and ready.kind == "log" and slot.state is State.STARTING \
                    and re.search(ready.target, event.line):
                slot.last_probe = {"kind": "ready", "ok": True, "what": f"log: {event.line[:200]}",
                                   "at": self.timers.now()}
                self._apply(slot, slot.lifecycle.ready(self.timers.now()))
        elif not current:
            return  # an older incarnation's late news
        elif isinstance(event, Started):
            logs.event(slot.name, "spawn", incarnation=handle.incarnation, pid=handle.pid)
            if (slot.spawned_with or slot.spec).protocol == "mcp" and self.mcp is not None:
                self.mcp.opened(handle)  # ready when its handshake is done
            elif slot.spec.command:
                ready = slot.spec.ready
                if ready is None:  # no probe: ready once it runs
                    self._apply(slot, slot.lifecycle.ready(self.timers.now()))
                elif ready.kind not in ("log", "notify"):  # those wait for its line, or its READY=1
                    self._probe(slot, handle, ready)
        elif isinstance(event, Notified):
            self._on_notified(slot, handle, event.fields)
        elif isinstance(event, Memory):
            over = health.memory_verdict(event.rss, slot.spec.max_rss_mb)
            if over is not None and slot.state is State.READY:
                self._unhealthy(slot, over)
        elif isinstance(event, SpawnFailed):
            logs.event(slot.name, "spawn", f"failed: {event.error}", "ERROR", incarnation=handle.incarnation)
            if self.mcp is not None:
                self.mcp.detach(handle)
            slot.handle = None
            asked = slot.state is State.STOPPING
            actions = slot.lifecycle.spawn_failed(self.timers.now(), event.error)
            if not asked and slot.lifecycle.state is State.STOPPED:
                slot.wanted = False  # its restart mode says stay stopped (else it would be spawned again at once)
            self._apply(slot, actions)
        elif isinstance(event, Exited):
            self._on_exited(slot, handle, event)

    def _on_exited(self, slot: AgentSlot, handle: ProcessHandle, event: Exited) -> None:
        now = self.timers.now()
        self._stop_probing(slot)
        if self.mcp is not None:
            self.mcp.detach(handle)
        self.timers.cancel(slot.stop_signal_timer)
        slot.stop_signal_timer = None
        slot.handle = None
        slot.hello = slot.stamped = False
        slot.owed_since = None
        self.timers.cancel(slot.heartbeat_timer)
        slot.heartbeat_timer = None
        asked = slot.state is State.STOPPING
        uptime = now - handle.started_at if handle.started_at is not None else 0.0
        slot.last_exit = LastExit(handle.incarnation, event.description, now, round(uptime, 3), asked)
        logs.event(slot.name, "exit", event.description, "INFO" if asked else "WARNING", uptime_s=f"{uptime:.3f}",
                   incarnation=handle.incarnation, pid=handle.pid)
        actions = slot.lifecycle.exited(now, event.description, clean_exit=event.code == 0)
        if not asked and slot.state is State.STOPPED:
            slot.wanted = False  # it exited and its restart mode says stay stopped
        self._apply(slot, actions)
        # after the transition: the book knows whether the agent comes back before it settles what
        # the dead incarnation held
        grace = LAST_REPLIES_CLEAN_S if event.code == 0 else LAST_REPLIES_CRASH_S
        self.listener.agent_gone(slot.name, handle.incarnation, event.description, grace)

    # ---- agent messages (the router decodes them; stale ones are counted, not acted on)
    def on_agent_message(self, name: str, incarnation: int, kind: Kind, body: Any) -> None:
        slot = self.slots.get(name)
        if slot is None or slot.handle is None or slot.handle.incarnation != incarnation:
            self.counters["stale_agent_messages"] += 1  # an older incarnation, or not one of ours
            return
        handle = slot.handle
        if kind is Kind.HELLO:
            pid = body.get("pid") if isinstance(body, dict) else None
            if handle.pid is not None and isinstance(pid, int) and pid != handle.pid:
                # another process under this incarnation's id: a duplicate left by a lost zygote, or worse
                self.counters["stale_agent_messages"] += 1
                return
        elif not slot.hello:
            self.counters["stale_agent_messages"] += 1  # nothing counts before its HELLO
            return
        now = self.timers.now()
        slot.last_heard = now
        if kind is Kind.HELLO and not slot.hello:
            slot.hello = True
            # stamps only when both sides have them: an agent that could not map its page says so
            slot.stamped = handle.stamped and isinstance(body, dict) and body.get("stamps") is True
            if not slot.stamped:  # a stamped one is judged by the liveness tick
                self._channel(slot).send(slot.name, incarnation, Kind.HEARTBEAT)  # it hears us at once
                self._schedule_heartbeat(slot, now)
        elif kind is Kind.READY:
            self._apply(slot, slot.lifecycle.ready(now))

    def on_agent_broken(self, name: str, incarnation: int, reason: str) -> None:
        """That incarnation cannot serve (an MCP server refused the handshake): the hung path restarts it."""
        slot = self.slots.get(name)
        if slot is not None and slot.handle is not None and slot.handle.incarnation == incarnation \
                and slot.state in (State.STARTING, State.READY):
            logs.event(name, "mcp", reason, "ERROR", incarnation=incarnation)
            self._unhealthy(slot, reason)

    # ---- a program's probes (the prober runs them; here is what their results mean)
    def _probe(self, slot: AgentSlot, handle: ProcessHandle, probe: Probe) -> None:
        """Run `probe` for this incarnation: a ready probe until it passes (the start timeout bounds it),
        a health probe every interval while it is ready, `failures` in a row being a hang."""
        slot.probe_timer = None
        if self.prober is None or slot.handle is not handle:
            return
        health = probe is slot.spec.health
        if slot.state is not (State.READY if health else State.STARTING):
            return

        def done(ok: bool, what: str) -> None:
            slot.probe_cancel = None
            if slot.handle is not handle:
                return
            now = self.timers.now()
            slot.last_probe = {"kind": "health" if health else "ready", "ok": ok, "what": what, "at": now}
            if not health:
                if ok:
                    self._apply(slot, slot.lifecycle.ready(now))
                else:
                    slot.probe_timer = self.timers.call_later(probe.interval_ms / 1000,
                                                              lambda: self._probe(slot, handle, probe))
                return
            slot.probe_failures = 0 if ok else slot.probe_failures + 1
            if slot.probe_failures >= probe.failures:
                slot.probe_failures = 0
                self._unhealthy(slot, f"health probe failed {probe.failures} time(s) in a row: {what}")
            elif slot.state is State.READY:
                slot.probe_timer = self.timers.call_later(probe.interval_ms / 1000,
                                                          lambda: self._probe(slot, handle, probe))

        slot.probe_cancel = self.prober.run(probe, done)

    def _stop_probing(self, slot: AgentSlot) -> None:
        if slot.probe_cancel is not None:
            cancel, slot.probe_cancel = slot.probe_cancel, None
            cancel()
        self.timers.cancel(slot.probe_timer)
        slot.probe_timer = None
        slot.probe_failures = 0
        self.timers.cancel(slot.watchdog_timer)
        slot.watchdog_timer = None

    # ---- a notify program's sd_notify (the spawner checked who sent it)
    def _on_notified(self, slot: AgentSlot, handle: ProcessHandle, fields: dict) -> None:
        now = self.timers.now()
        if "STATUS" in fields:
            slot.status_text = fields["STATUS"][:500]
        for key in ("STOPPING", "RELOADING", "ERRNO", "MAINPID", "EXTEND_TIMEOUT_USEC"):
            if key in fields:
                logs.event(slot.name, "notify", f"{key}={fields[key][:100]}", incarnation=handle.incarnation)
        if "WATCHDOG_USEC" in fields:  # the program changes its own watchdog, as systemd allows
            try:
                usec = int(fields["WATCHDOG_USEC"])
            except ValueError:
                usec = -1
            if usec >= 0:
                slot.watchdog_s = usec / 1e6 or None
                slot.watchdog_at = now
                self._arm_watchdog(slot, handle)
        watchdog = fields.get("WATCHDOG")
        if watchdog == "1":
            slot.watchdog_at = now
        elif watchdog == "trigger" and slot.state is State.READY:
            self._unhealthy(slot, "watchdog triggered by the program (WATCHDOG=trigger)")
            return
        ready = slot.spec.ready
        if fields.get("READY") == "1" and ready is not None and ready.kind == "notify" \
                and slot.state is State.STARTING:
            slot.last_probe = {"kind": "ready", "ok": True, "what": "notify READY=1", "at": now}
            slot.watchdog_at = now
            if slot.watchdog_s is None and ready.watchdog_ms:
                slot.watchdog_s = ready.watchdog_ms / 1000
            self._apply(slot, slot.lifecycle.ready(now))
            self._arm_watchdog(slot, handle)

    def _arm_watchdog(self, slot: AgentSlot, handle: ProcessHandle) -> None:
        self.timers.cancel(slot.watchdog_timer)
        slot.watchdog_timer = None
        if slot.watchdog_s is not None and slot.state is State.READY and slot.handle is handle:
            slot.watchdog_timer = self.timers.call_at(slot.watchdog_at + slot.watchdog_s,
                                                      lambda: self._watchdog(slot, handle))

    def _watchdog(self, slot: AgentSlot, handle: ProcessHandle) -> None:
        slot.watchdog_timer = None
        if slot.handle is not handle or slot.state is not State.READY or slot.watchdog_s is None:
            return
        silent = self.timers.now() - slot.watchdog_at
        if silent >= slot.watchdog_s:
            self._unhealthy(slot, f"watchdog: no WATCHDOG=1 for {silent * 1000:.0f}ms "
                                  f"(WATCHDOG_USEC={slot.watchdog_s * 1e6:.0f})")
        else:
            self._arm_watchdog(slot, handle)

    def _liveness_tick_s(self) -> float:
        """As often as the most frequent heartbeat asks, within LIVENESS_TICK_S."""
        fastest = min((s.spec.heartbeat_ms / 1000.0 for s in self.slots.values() if not s.removed),
                      default=LIVENESS_TICK_S[1])
        return min(max(fastest, LIVENESS_TICK_S[0]), LIVENESS_TICK_S[1])

    def _liveness_tick(self) -> None:
        """Read every stamped agent's stamp and judge the ready ones: one timer for all, no frames (the
        stamps' module says why), on the same wake-up as the daemon's own stamp, or sooner when an
        agent's deadline comes before it (a frozen one is found at its deadline, not a tick later)."""
        self.timers.cancel(self._liveness_timer)
        now = self.timers.now()
        soonest = float("inf")
        for slot in list(self.slots.values()):
            handle = slot.handle
            if handle is None or not slot.hello or not slot.stamped:
                continue
            seen = handle.heard()
            if seen is None:
                continue
            stamp, idle = seen
            stamp = min(stamp, now)  # never in our future: a stamp is the agent's word
            slot.last_heard = max(slot.last_heard, stamp)
            if slot.state is not State.READY:
                continue  # starting: its start timeout alone judges it
            if self.requests.owes(slot.name, handle.incarnation):
                if slot.owed_since is None:
                    slot.owed_since = now
            else:
                slot.owed_since = None
            stopped, watched = handle.stopped_since, slot.owed_since
            if stopped is not None and (watched is None or stopped < watched):
                watched = stopped
            spec = slot.spec
            limit_s = spec.liveness * spec.heartbeat_ms / 1000.0
            deadline = health.stamp_deadline(stamp, idle, watched, limit_s, IDLE_STAMP_S + limit_s)
            if now > deadline:
                slot.heartbeat_misses += 1
                how = ", stopped by a signal" if stopped is not None else ""
                self._unhealthy(slot, f"hung: no heartbeat for {(now - stamp) * 1000:.0f}ms{how}")
            elif deadline < soonest:
                soonest = deadline
        tick = self.timers.call_aligned(self._liveness_tick_s(), self._liveness_tick)
        if soonest < tick.when:
            self.timers.cancel(tick)
            tick = self.timers.call_at(soonest + LIVENESS_LATE_S, self._liveness_tick)
        self._liveness_timer = tick

    def _schedule_heartbeat(self, slot: AgentSlot, now: float, delay: float | None = None) -> None:
        self.timers.cancel(slot.heartbeat_timer)
        delay = slot.spec.heartbeat_ms / 1000.0 if delay is None else delay
        slot.heartbeat_timer = self.timers.call_at(now + delay, lambda: self._heartbeat(slot))

    def _heartbeat(self, slot: AgentSlot) -> None:
        """Send our heartbeat, and judge the agent's once it is ready: silent for `liveness` intervals
        means hung. While it starts, only its start timeout judges it: a start under load, or a setup()
        that holds the GIL, is not a hang."""
        slot.heartbeat_timer = None
        handle = slot.handle
        if handle is None or slot.state not in (State.STARTING, State.READY):
            return
        now = self.timers.now()
        channel = self._channel(slot)
        if slot.state is State.STARTING:
            channel.send(slot.name, handle.incarnation, Kind.HEARTBEAT)
            self._schedule_heartbeat(slot, now)
            return
        verdict = health.heartbeat_verdict(now, slot.last_heard, slot.spec.heartbeat_ms, slot.spec.liveness,
                                           channel.unread)
        if verdict is health.Heartbeat.HUNG:
            slot.heartbeat_misses += 1
            self._unhealthy(slot, f"hung: no heartbeat for {(now - slot.last_heard) * 1000:.0f}ms")
            return
        if verdict is health.Heartbeat.RECHECK:
            self._schedule_heartbeat(slot, now, RECHECK_S)
            return
        channel.send(slot.name, handle.incarnation, Kind.HEARTBEAT)
        self._schedule_heartbeat(slot, now)

    # ---- lazy agents: idle stop and the memory budget
    def _idle_check(self) -> None:
        now = self.timers.now()
        for slot in list(self.slots.values()):
            verdict = health.idle_verdict(now, health.IdleFacts(
                lazy=slot.spec.lazy, wanted=slot.wanted,
                ready_since=slot.lifecycle.ready_since if slot.state is State.READY else None,
                busy=not self.requests.idle(slot.name), last_request_at=self.requests.last_request_at(slot.name),
                idle_timeout_s=slot.spec.idle_timeout_s,
                dependents_running=any(d.lifecycle.running for d in slot.dependents)))
            if verdict is not None and not self.stopping:
                self.stop_agent(slot.name, verdict)
        self._idle_timer = self.timers.call_aligned(IDLE_CHECK_INTERVAL_S, self._idle_check)

    def footprint_mb(self, slot: AgentSlot, fresh: bool = False) -> float:
        """Memory an agent counts against the budget: observed RSS (`fresh`: read now, not the spawner's
        latest sample, which may be seconds old), or its declared size while starting."""
        if not slot.lifecycle.running:
            return 0.0
        rss = slot.handle.memory(fresh=fresh) if slot.handle is not None else None
        if slot.state is State.STARTING or rss is None:
            return float(slot.spec.memory_mb)
        return rss / health.MB

    def _make_room(self, slot: AgentSlot) -> str | None:
        agents = {s.name: budget.BudgetAgent(
            name=s.name, footprint_mb=self.footprint_mb(s, fresh=True), memory_mb=s.spec.memory_mb,
            running=s.lifecycle.running,
            evictable=(s.spec.lazy and s.state is State.READY and self.requests.idle(s.name)
                       and not any(d.lifecycle.running for d in s.dependents)),
            last_used=self.requests.last_request_at(s.name), depends_on=tuple(d.name for d in s.dependencies))
            for s in self.slots.values()}
        room = budget.make_room(self.profile.memory_mb, slot.name, agents)
        if isinstance(room, budget.NoRoom):
            return room.reason
        for victim in room.victims:
            self.stop_agent(victim, f"evicted for {slot.name}: memory budget {self.profile.memory_mb} MB")
        return None

    # ---- reload
    def reload(self, plan: ReloadPlan, on_settled: Callable[[ReloadOutcome], None]) -> ReloadOutcome:
        """Apply a new profile: start added agents, stop removed ones, restart changed ones; a changed
        agent whose new definition does not become ready within its budget goes back to the old one."""
        now = self.timers.now()
        self.reloads += 1
        outcome = ReloadOutcome(self.reloads, plan, now)
        self._on_settled[outcome.number] = on_settled
        new_specs = plan.profile.by_name
        self.profile = plan.profile
        for name in plan.removed + plan.changed:
            self._supersede(self.slots[name])
        for name in plan.added:
            slot = self.slots.get(name)
            if slot is None:
                self.slots[name] = AgentSlot(Lifecycle(new_specs[name], self.rng))
            else:  # removed by an earlier reload and still stopping: the same slot carries on
                slot.removed = False
                slot.lifecycle.redefine(new_specs[name])
        for name in plan.changed:
            self.slots[name].lifecycle.redefine(new_specs[name])
        for name in plan.removed:
            slot = self.slots[name]
            slot.removed, slot.wanted = True, False
            self._views.pop(name, None)
            self.listener.agent_view(name, None)
        self._wire_dependencies()
        for name in plan.removed:
            slot = self.slots[name]
            if slot.state is State.STOPPED and slot.handle is None:
                del self.slots[name]  # nothing to stop: gone at once
                if self.mcp is not None:
                    self.mcp.forget(name)
            else:
                self._maybe_stop(slot)
        self._wire_dependencies()
        logs.event(logs.DAEMON, "reload", f"profile {plan.profile.name}", added=",".join(plan.added) or None,
                   removed=",".join(plan.removed) or None, changed=",".join(plan.changed) or None)
        for name in plan.added:
            self._publish(self.slots[name])
            if not new_specs[name].lazy:
                self._want(self.slots[name])
        for name in plan.changed:
            slot = self.slots[name]
            self._publish(slot)
            if not (slot.wanted or slot.lifecycle.running or slot.state is State.FAILED):
                outcome.outcomes[name] = "not running: starts with its new definition when wanted"
                continue
            budget_s = settle_budget_s(plan.previous[name], slot.spec, slot.lifecycle.running)
            watch = outcome.watch(name, self.incarnation(name), budget_s, plan.previous[name])
            slot.reload_watch = watch
            slot.reload_timer = self.timers.call_at(watch.deadline, lambda s=slot, w=watch: self._reload_deadline(s, w))
            self._restart_for_reload(slot)
        self._maybe_settled(outcome)
        return outcome

    def _maybe_settled(self, outcome: ReloadOutcome) -> None:
        if outcome.settled:
            callback = self._on_settled.pop(outcome.number, None)
            if callback is not None:
                callback(outcome)

    def _restart_for_reload(self, slot: AgentSlot) -> None:
        """Stop it; it starts again with its current spec once its dependencies, new ones included, are
        ready (an operator restart would respawn at once, before a new dependency is up)."""
        slot.wanted = True
        for dep in slot.dependencies:
            self._want(dep)
        if slot.state is not State.STOPPED:
            self._apply(slot, slot.lifecycle.stop(self.timers.now(), "profile reload"))
        self._maybe_start(slot)

    def _watch_reload(self, slot: AgentSlot, incarnation: int, t: Transition) -> None:
        watch = slot.reload_watch
        if watch is not None:
            self._settle(slot, watch, watch.on_transition(incarnation, t))

    def _reload_deadline(self, slot: AgentSlot, watch: SettleWatch) -> None:
        if slot.reload_watch is watch:
            self._settle(slot, watch, watch.on_deadline(self.timers.now()))

    def _settle(self, slot: AgentSlot, watch: SettleWatch, verdict: Settled | RollBack | None) -> None:
        if verdict is None:
            return
        slot.reload_watch = None
        self.timers.cancel(slot.reload_timer)
        slot.reload_timer = None
        if isinstance(verdict, RollBack):
            self._roll_back(slot, watch, verdict)
        else:
            watch.outcome.done(slot.name, verdict.verdict.value)
        self._maybe_settled(watch.outcome)

    def _roll_back(self, slot: AgentSlot, watch: SettleWatch, verdict: RollBack) -> None:
        live = {name: s.spec for name, s in self.slots.items() if not s.removed}
        live[slot.name] = watch.previous
        cycle = dependency_cycle(live)
        if cycle is not None:  # the other agents moved on: the old definition no longer fits among them
            logs.event(slot.name, "rollback", f"refused: {verdict.reason}, but the previous definition would make "
                       f"the dependency cycle {' -> '.join(cycle)}", "ERROR")
            watch.outcome.done(slot.name, f"kept: {verdict.reason}; rolling back would make the dependency cycle "
                                          f"{' -> '.join(cycle)}")
            return
        missing = [d for d in watch.previous.depends_on if d not in live]
        logs.event(slot.name, "rollback", verdict.reason, "WARNING", missing=",".join(missing) or None)
        watch.outcome.done(slot.name, f"{verdict.verdict.value}: {verdict.reason}" + (
            f"; its dependencies {', '.join(missing)} are no longer in the profile" if missing else ""))
        slot.lifecycle.redefine(watch.previous)
        self._wire_dependencies()
        self._publish(slot)
        handle = slot.handle
        runs_new = handle is not None and handle.incarnation > watch.after and slot.state in (State.STARTING,
                                                                                              State.READY)
        if runs_new or slot.state in (State.FAILED, State.STOPPED):
            # a process of the new definition is still coming up, or nothing will start by itself: start
            # the previous one, outside the transition in progress, and not if a later reload removed it
            # meanwhile. (Otherwise the restart already under way, at once, after a backoff or after the
            # exit of a hung incarnation, starts the previous definition.)
            self.timers.call_soon(lambda: None if slot.removed or self.stopping else self._restart_for_reload(slot))

    def _supersede(self, slot: AgentSlot) -> None:
        """A newer reload takes over this agent: the earlier one's watch ends, reported as superseded."""
        watch = slot.reload_watch
        if watch is None:
            return
        slot.reload_watch = None
        self.timers.cancel(slot.reload_timer)
        slot.reload_timer = None
        watch.outcome.done(slot.name, "superseded")
        self._maybe_settled(watch.outcome)

    # ---- status
    def agent_status(self, name: str, now: float, fresh_rss: bool = True) -> dict:
        slot = self.slots[name]
        handle = slot.handle
        rss = handle.memory(fresh=fresh_rss) if handle is not None else None
        return {
            "name": slot.name,
            "state": slot.state.value,
            "pid": handle.pid if handle else None,
            "incarnation": self.incarnation(name),
            "restarts": slot.lifecycle.restarts,
            "essential": slot.spec.essential,
            "lazy": slot.spec.lazy,
            "program": bool(slot.spec.command),
            "protocol": slot.spec.protocol or None,
            "status_text": slot.status_text,
            "mcp": self.mcp.describe(name) if self.mcp is not None and slot.spec.protocol == "mcp" else None,
            "probe": None if slot.last_probe is None else {
                "kind": slot.last_probe["kind"], "ok": slot.last_probe["ok"], "what": slot.last_probe["what"],
                "ago_s": round(now - slot.last_probe["at"], 3)},
            "wanted": slot.wanted,
            "uptime_s": round(now - handle.started_at, 3) if handle and handle.started_at is not None else None,
            "rss_bytes": rss,
            "heartbeat_age_ms": round((now - slot.last_heard) * 1000) if handle and slot.hello else None,
            "heartbeat_misses": slot.heartbeat_misses,
            "circuit": slot.lifecycle.circuit.value,
            "reason": slot.lifecycle.reason,
            "never_started": self.incarnation(name) == 0,
            "last_exit": None if slot.last_exit is None else {
                "incarnation": slot.last_exit.incarnation, "description": slot.last_exit.description,
                "ago_s": round(now - slot.last_exit.at, 3), "uptime_s": slot.last_exit.uptime_s,
                "asked": slot.last_exit.asked},
            "memory_mb": slot.spec.memory_mb,
            "max_queue": slot.spec.max_queue,
            "depends_on": list(slot.spec.depends_on),
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

    def memory_used_mb(self) -> float:
        return round(sum(self.footprint_mb(s) for s in self.slots.values()), 1)

    # ---- internals
    def _wire_dependencies(self) -> None:
        """Dependencies from the specs. Slots being removed by a reload keep theirs, so they still stop
        in reverse order, and so agents they depend on wait for them."""
        for slot in self.slots.values():
            slot.dependents = []
        for slot in self.slots.values():
            slot.dependencies = [self.slots[d] for d in slot.spec.depends_on if d in self.slots]
            for dep in slot.dependencies:
                dep.dependents.append(slot)
