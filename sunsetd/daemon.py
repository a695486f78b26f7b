"""The sunsetd daemon: the runtime directory, the parts wired together, and the daemon's own life.

The parts do not know each other: the router decodes frames and carries out the request book's
decisions; the supervisor drives the agents' lifecycles through the spawner; the control handlers
answer control ops. The daemon wires them (it is the supervisor's listener and hands the router's
other decisions on), runs the event loop, and owns what belongs to the daemon itself: signals,
reloads, shutdown, systemd notifications and the metrics snapshot. Signals arrive through a wake-up
fd and are handled in the loop by `handle_<signal>` methods.
"""
from __future__ import annotations

import os
import signal
import sys
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import zmq

from loguru import logger

from sunsetd import logs, procsettings, reload, rundir, runcheck
from sunsetd.agentlogs import AgentLogs, LogFiles
from sunsetd.auth import Authenticator
from sunsetd.cli import EXIT_OK, EXIT_RUNTIME
from sunsetd.control import Controller
from sunsetd.events import EventStream
from sunsetd.forkserver import ForkServer
from sunsetd.loop import EventLoop
from sunsetd.mcpchannel import McpChannel
from sunsetd.metrics import Metrics
from sunsetd.policy import Transition
from sunsetd.probes import Prober
from sunsetd.profile import Profile
from sunsetd.reload import ReloadOutcome, ReloadPlan
from sunsetd.requestbook import AgentView, RequestBook
from sunsetd.router import Router
from sunsetd.spawner import (ExecSpawner, Exited, ForkSpawner, LocalHandle, LocalSpawner, Output, ProcessEvent,
                             SpawnFailed, sweep_at_exit)
from sunsetd.supervisor import LAZY_START, Supervisor
from sunsetd.systemd import Notifier
from sunsetd.timers import Timer, Timers

KEPT_RELOADS = 16  # outcomes kept for `reload_wait`
PUBLISH_WHILE_ASKED_S = 120.0  # the metrics snapshot is refreshed each second this long after a scrape
PUBLISH_IDLE_EVERY = 10  # and every 10 s otherwise: a rare scraper still gets figures at most that old
MAX_CHECK_LINES = 10_000  # of a reload check's stdout kept: one line per run target, and the profile
MAX_CHECK_CHARS = 2 * runcheck.MAX_HANDOVER


@dataclass(eq=False)
class _ReloadJob:
    """A reload between asking for it and applying it: a child reads the profile and checks its targets."""

    profile: Profile | None  # once the child has handed it over
    on_applied: Callable[[ReloadOutcome | ReloadPlan | list[str]], None] | None
    profile_arg: str = ""  # what later reloads read, once this one is applied
    dry_run: bool = False  # answered with the plan; nothing is applied
    lines: list[str] = field(default_factory=list)
    line_chars: int = 0
    stderr: deque = field(default_factory=lambda: deque(maxlen=3))
    errors: list[str] | None = None  # set once the check has ended
    timer: Timer | None = None
    check: LocalHandle | None = None  # the checking child


@dataclass(frozen=True)
class LogDir:
    """--log-dir: one file per agent, rotated at max_bytes, `backups` old ones kept."""

    path: Path
    max_bytes: int = 10 * 1024 * 1024
    backups: int = 3


# Signals the loop takes in through the wake-up fd: its own (TERM, INT, QUIT, HUP, CHLD, USR1, USR2), and
# every other one a user might send whose default would end the daemon and every agent without a word,
# which are logged and ignored. Faults (SEGV, BUS, ILL, FPE, ABRT, TRAP, SYS) keep their default: a crash
# should dump, and STOP and KILL cannot be caught.
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1,
                   signal.SIGUSR2, signal.SIGALRM, signal.SIGVTALRM, signal.SIGPROF, signal.SIGIO, signal.SIGPWR,
                   signal.SIGXCPU, signal.SIGXFSZ, *(getattr(signal, "SIGSTKFLT", ()) and (signal.SIGSTKFLT,)),
                   *range(signal.SIGRTMIN, signal.SIGRTMAX + 1))


class Daemon:
    def __init__(self, profile: Profile, runtime_dir: Path, profile_arg: str | None = None,
                 metrics_addr: tuple[str, int] | None = None, spawner: str = "fork", zygote: ForkServer | None = None,
                 access: rundir.Access = rundir.Access(), log_dir: LogDir | None = None,
                 max_clients: int | None = None):
        self.profile_arg = profile_arg or str(profile.path)  # what a reload reads again
        self.runtime_dir = runtime_dir
        self.first_profile = profile
        self._ignored_signals: dict[str, int] = {}  # signal name -> times received (logged 1st, 2nd, 4th...)
        self.lock = rundir.RuntimeLock(runtime_dir)
        self.timers = Timers()
        self.loop = EventLoop(self.timers)
        self.notifier = Notifier()
        self.metrics = Metrics()
        self.metrics_addr = metrics_addr
        self.metrics_url: str | None = None
        self.spawner_kind = spawner
        self.zygote = zygote  # started by the command line before the daemon's imports, or None
        self.access = access
        self.log_dir = log_dir
        self.max_clients = max_clients  # None: auth.client_limit()
        self.agent_logs = AgentLogs()
        self.status_timer: Timer | None = None
        self._publish_ticks = 0  # seconds of _publish_every_second
        self.stop_budget_s = 0.0
        self._reload_jobs: deque[_ReloadJob] = deque()
        self._reload_outcomes: OrderedDict[int, ReloadOutcome] = OrderedDict()

    # ---- signals, handled in the loop
    def handle_sigterm(self) -> None:
        self.begin_shutdown("SIGTERM")

    def handle_sigint(self) -> None:
        self.begin_shutdown("SIGINT")

    def handle_sighup(self) -> None:
        self.reload(None)

    def handle_sigquit(self) -> None:
        self.begin_shutdown("SIGQUIT")  # as nginx and others take it: a graceful stop, not a core dump

    def handle_sigusr1(self) -> None:
        """Reopen the --log-dir files: what logrotate's postrotate sends (it has moved them)."""
        files = self.events.files
        if files is None:
            logs.event(logs.DAEMON, "signal", "SIGUSR1: no --log-dir, no log file to reopen")
            return
        n = files.reopen()
        logs.event(logs.DAEMON, "signal", f"SIGUSR1: reopened {n} log file(s) in {files.directory}")

    def handle_sigusr2(self) -> None:
        """A status dump in the log: the daemon's line, then one line per agent."""
        sup = self.supervisor
        logs.event(logs.DAEMON, "status", f"SIGUSR2: {self.status_text()}")
        now = self.timers.now()
        for name in list(sup.slots):
            a = sup.agent_status(name, now, fresh_rss=False)
            logs.event(name, "status", a["state"], restarts=a["restarts"], reason=a["reason"] or None,
                       incarnation=a["incarnation"] or None, pid=a["pid"])

    def _ignored_signal(self, name: str) -> None:
        n = self._ignored_signals[name] = self._ignored_signals.get(name, 0) + 1
        if logs.sparse(n):
            logs.event(logs.DAEMON, "signal", f"{name} ignored (by default it would end sunsetd and every agent)",
                       "WARNING", count=n)

    def handle_sigchld(self) -> None:
        self.spawner.on_sigchld()

    def _on_signal_fd(self) -> None:
        try:
            data = os.read(self._wakeup_r, 256)
        except BlockingIOError:
            return
        for signum in data:
            try:
                name = signal.Signals(signum).name
            except ValueError:  # SIGRTMIN+n has no name of its own
                name = f"SIGRTMIN+{signum - signal.SIGRTMIN}"
            handler = getattr(self, f"handle_{name.lower()}", None)
            if handler is not None:
                handler()
            else:
                self._ignored_signal(name)

    # ---- the supervisor's listener: what the request book, the control ops and systemd must hear
    def agent_view(self, name: str, view: AgentView | None) -> None:
        if view is None:
            self.router.execute(self.book.unlist(name, f"{name} was removed from the profile"))
        else:
            self.router.execute(self.book.update(name, view))

    def agent_gone(self, name: str, incarnation: int, description: str, grace_s: float) -> None:
        self.router.execute(self.book.gone(name, incarnation, description, self.timers.now(), grace_s))

    def agent_transition(self, name: str, incarnation: int, t: Transition) -> None:
        self.controller.on_transition(name, incarnation, t)
        self._status_changed()

    def lazy_started(self, name: str, seconds: float) -> None:
        self.metrics.observe_lazy_start(name, seconds)

    def all_ready(self) -> None:
        self.notifier.ready(self.status_text())

    # ---- systemd and metrics
    def status_text(self) -> str:
        sup = self.supervisor
        c = sup.counts()
        return (f"{sup.daemon_state().value}: {c['ready']}/{c['total']} agents ready, essential "
                f"{c['essential_ready']}/{c['essential']}, {c['failed']} failed; profile {sup.profile.name}")

    def extra_status(self) -> dict[str, Any]:
        return {"metrics": self.metrics_url} if self.metrics_url else {}

    def _status_changed(self) -> None:
        # coalesce: a start of 77 agents makes hundreds of transitions; systemd and the metrics snapshot
        # need a handful of updates
        if self.status_timer is None:
            self.status_timer = self.timers.call_later(0.1, self._send_status)

    def _send_status(self) -> None:
        self.status_timer = None
        self.notifier.status(self.status_text())
        self._publish()

    def _publish(self) -> None:
        self.metrics.publish(self.controller.status(fresh_rss=False))

    def _publish_every_second(self) -> None:
        """The snapshot's memory and heartbeat figures, fresh each second while someone reads them:
        building the whole status of 77 agents each second for nobody was a cost of idling. Transitions
        publish at once anyway (_status_changed)."""
        self._publish_ticks += 1
        if self.metrics.server is not None and (self.timers.now() - self.metrics.asked_at < PUBLISH_WHILE_ASKED_S
                                                or self._publish_ticks % PUBLISH_IDLE_EVERY == 0):
            self._publish()
        self.timers.call_later(1.0, self._publish_every_second)

    def _watchdog(self) -> None:
        self.notifier.watchdog()  # from a timer of the loop: a stuck loop stops pinging
        self.timers.call_later(self.notifier.watchdog_every_s, self._watchdog)

    # ---- reload: read, check in a child, apply, settle
    def reload(self, on_applied: Callable[[ReloadOutcome | ReloadPlan | list[str]], None] | None,
               profile_arg: str | None = None, dry_run: bool = False) -> None:
        """Re-read the profile (or read another one, which later reloads then read) and apply the
        difference; an invalid profile leaves everything as it is. A dry run is answered with the plan
        and applies nothing. Reloads are applied in the order they were asked for, each once its run
        targets are checked."""
        if self.supervisor.stopping:
            if on_applied is not None:
                on_applied(["sunsetd is shutting down"])
            return
        if not dry_run:
            self.notifier.reloading()
        arg = profile_arg or self.profile_arg
        job = _ReloadJob(None, on_applied, arg, dry_run)
        self._reload_jobs.append(job)
        # read in the child too: reading may take a second, which on this loop every agent would notice
        job.check = self.spawner.spawn_helper("runcheck", runcheck.command(sys.executable, profile=arg),
                                              lambda event: self._on_check_event(job, event), long_lines=True)
        job.timer = self.timers.call_later(runcheck.CHECK_TIMEOUT_S, job.check.kill)

    def _on_check_event(self, job: _ReloadJob, event: ProcessEvent) -> None:
        if isinstance(event, Output):
            if event.stream != "stdout":
                job.stderr.append(event.line)
            elif len(job.lines) < MAX_CHECK_LINES and job.line_chars < MAX_CHECK_CHARS:
                job.lines.append(event.line)  # bounded: a module the check imports may write here too
                job.line_chars += len(event.line)
        elif isinstance(event, (Exited, SpawnFailed)):
            self.timers.cancel(job.timer)
            failure = event.error if isinstance(event, SpawnFailed) else \
                f"the check {event.description}: {job.stderr[-1] if job.stderr else 'no output'}"
            job.profile, job.errors = runcheck.reload_answer(job.lines, job.profile_arg, failure)
            self._apply_reloads()

    def _apply_reloads(self) -> None:
        while self._reload_jobs and self.supervisor.stopping:  # a check that ended after the shutdown began
            job = self._reload_jobs.popleft()
            self.timers.cancel(job.timer)
            if job.on_applied is not None:
                job.on_applied(["sunsetd is shutting down"])
        while self._reload_jobs and self._reload_jobs[0].errors is not None:
            job = self._reload_jobs.popleft()
            if job.errors:
                self._refuse_reload(job)
                continue
            current = {name: slot.spec for name, slot in self.supervisor.slots.items() if not slot.removed}
            if job.dry_run:
                if job.on_applied is not None:
                    job.on_applied(reload.plan(current, job.profile))
                continue
            self.profile_arg = job.profile_arg
            outcome = self.supervisor.reload(reload.plan(current, job.profile), self._reload_settled)
            self._reload_outcomes[outcome.number] = outcome
            while len(self._reload_outcomes) > KEPT_RELOADS:
                self._reload_outcomes.popitem(last=False)
            if job.on_applied is not None:
                job.on_applied(outcome)

    def _refuse_reload(self, job: _ReloadJob) -> None:
        if job.dry_run:
            if job.on_applied is not None:
                job.on_applied(job.errors)
            return
        self._reloaded()
        logs.event(logs.DAEMON, "reload", f"refused: {len(job.errors)} error(s); running set untouched", "ERROR")
        for line in job.errors:
            logs.event(logs.DAEMON, "reload", line, "ERROR")
        if job.on_applied is not None:
            job.on_applied(job.errors)

    def _reload_settled(self, outcome: ReloadOutcome) -> None:
        body = outcome.body()
        logs.event(logs.DAEMON, "reload", "done", rolled_back=",".join(body["rolled_back"]) or None,
                   superseded=",".join(body["superseded"]) or None)
        self._reloaded()
        self.controller.on_reload_settled(outcome)

    def _reloaded(self) -> None:
        """READY=1 ends systemd's RELOADING=1; never after STOPPING=1."""
        if not self.supervisor.stopping:
            self.notifier.ready(self.status_text())

    def reload_outcome(self, number: int) -> ReloadOutcome | None:
        return self._reload_outcomes.get(number)

    # ---- shutdown
    def begin_shutdown(self, why: str) -> None:
        if self.supervisor.stopping:
            logs.event(logs.DAEMON, "shutdown", f"{why} again: killing every agent now", "WARNING")
            self.supervisor.kill_all()
            return
        self.notifier.stopping()
        self.stop_budget_s = self.supervisor.shutdown_budget_s()
        logs.event(logs.DAEMON, "shutdown", why, budget_s=f"{self.stop_budget_s:g}")
        self.router.execute(self.book.shutdown())
        self.supervisor.shutdown()
        for job in self._reload_jobs:  # reloads still being checked are refused now, not applied later
            if job.check is not None:
                job.check.kill()
        self._apply_reloads()

    # ---- life
    def run(self) -> int:
        try:
            self.lock.acquire()
            self._check_access()
        except rundir.RuntimeDirError as exc:
            self.lock.release()
            if self.zygote is not None:
                self.zygote.close()
            print(f"sunsetd: {exc}", file=sys.stderr)
            return EXIT_RUNTIME
        procsettings.raise_fd_limit()  # every client connection is a descriptor
        ctx = zmq.Context()
        try:
            return self._serve(ctx)
        finally:
            ctx.destroy(linger=0)
            self.lock.release()

    def _check_access(self) -> None:
        """What --socket-group and --log-dir need, tried before anything starts (one line if refused)."""
        if self.access.gid is not None:
            try:
                rundir.give_to_group(self.runtime_dir, self.access.gid)
            except OSError as exc:
                raise rundir.RuntimeDirError(f"--socket-group: cannot give {self.runtime_dir} to group "
                                             f"{self.access.gid}: {exc.strerror} (a daemon that is not root may "
                                             f"only use a group it is in; under systemd, the service's own)") from None
        if self.log_dir is not None:
            try:
                self.log_dir.path.mkdir(parents=True, exist_ok=True)
                if not os.access(self.log_dir.path, os.W_OK | os.X_OK):
                    raise PermissionError(13, "Permission denied")
            except OSError as exc:
                raise rundir.RuntimeDirError(f"--log-dir {self.log_dir.path}: {exc.strerror}") from None

    def _make_spawner(self) -> LocalSpawner:
        profile_name = lambda: self.supervisor.profile.name  # noqa: E731
        if self.spawner_kind == "fork":
            return ForkSpawner(self.runtime_dir, self.loop, self.timers, server=self.zygote, profile_name=profile_name)
        if self.zygote is not None:
            self.zygote.close()
        return ExecSpawner(self.runtime_dir, self.loop, self.timers, profile_name=profile_name)

    def _serve(self, ctx: zmq.Context) -> int:
        profile = self.first_profile
        self.book = RequestBook(lambda: self.supervisor.profile.name)
        self.auth = Authenticator(ctx, self.timers, self.access.gid, self.max_clients)  # before any socket it guards
        self.router = Router(ctx, self.runtime_dir, self.book, self.timers, self.auth, self.access)
        files = None if self.log_dir is None else LogFiles(self.log_dir.path, self.log_dir.max_bytes,
                                                            self.log_dir.backups)
        self.events = EventStream(ctx, self.runtime_dir, self.access, self.agent_logs, self.auth, files,
                                  self.timers.call_soon)
        self.access.open_directory(self.runtime_dir)  # every socket in it has its mode: the group may enter
        self._events_sink = logger.add(self.events.sink, level="INFO", format="{message}")
        self.spawner = self._make_spawner()
        self.spawner.gate = self.auth
        prober = Prober(self.loop, self.timers, self.spawner.spawn_helper)
        self.router.mcp = mcp = McpChannel(self.book, self.router.execute)
        self.supervisor = Supervisor(profile, self.spawner, self.router, self.timers, self.book, self, prober=prober,
                                     mcp=mcp)
        self.controller = Controller(self.supervisor, self.router, self.book, self, self.agent_logs,
                                     profile_paths=self.access.gid is None)
        self.router.on_control = self.controller.handle
        self.router.on_start = lambda name: self.supervisor.start_agent(name, LAZY_START)
        self.router.on_agent_message = self.supervisor.on_agent_message
        self.router.on_reply = self.metrics.observe_reply
        if self.metrics_addr is not None:
            try:
                address = self.metrics.serve(*self.metrics_addr, self.loop)
                self.metrics_url = f"http://{address}/metrics"
                logs.event(logs.DAEMON, "metrics", f"serving http://{address}/metrics and /health")
            except OSError as exc:
                logs.event(logs.DAEMON, "metrics", f"cannot listen on {self.metrics_addr[0]}:{self.metrics_addr[1]}: "
                           f"{exc.strerror}; running without metrics", "ERROR")
        if self.notifier.watchdog_every_s:
            self._watchdog()
        self.loop.watch(self.router.agents, self.router.on_agents_readable, first=True)
        self.loop.watch(self.router.front, self.router.on_front_readable)
        self.loop.watch(self.auth.sock, self.auth.on_readable)
        for monitor in self.auth.monitors:
            self.loop.watch(monitor, self.auth.on_monitor_readable)
        self._wakeup_r, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, lambda *_: None)  # the wake-up fd carries it into the loop
        self.loop.watch(self._wakeup_r, self._on_signal_fd)
        c = profile.counts()
        logs.event(logs.DAEMON, "start", f"profile {profile.name}", agents=c["total"], essential=c["essential"],
                   lazy=c["lazy"], runtime_dir=str(self.runtime_dir), pid=os.getpid(), max_clients=self.auth.max_clients)
        try:
            self.supervisor.start()
            self._publish_every_second()
            while True:
                sup = self.supervisor
                if sup.stopping:
                    if sup.all_stopped:
                        break
                    if self.timers.now() - sup.stopping_since > self.stop_budget_s:
                        logs.event(logs.DAEMON, "shutdown", "stop budget exceeded; killing what is left", "ERROR")
                        sup.kill_all()
                        break
                self.loop.run_once()
            self.router.execute(self.book.close())
            sweep_at_exit(self.spawner)
        finally:
            # Past this point a signal changes nothing, and during the interpreter's teardown Python
            # restores the default handlers: a late SIGTERM would turn a clean exit into -15.
            for sig in HANDLED_SIGNALS:
                if sig != signal.SIGCHLD:
                    signal.signal(sig, signal.SIG_IGN)
            signal.set_wakeup_fd(old_wakeup)
            self.notifier.close()
            self.metrics.close()
            self.spawner.close()
            logger.remove(self._events_sink)
            self.events.close()
            self.router.close()
            self.auth.close()
            os.close(self._wakeup_r)
            os.close(wakeup_w)
            self.loop.close()
        logs.event(logs.DAEMON, "exit", "all agents stopped", replies=dict(self.router.replies))
        return EXIT_OK
