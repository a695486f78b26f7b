"""The sunsetd daemon: command line, runtime directory, the event loop and the daemon's lifecycle.

One thread owns all state. The loop is a short list of steps: poll every socket and fd with a timeout
set by the next deadline, hand each ready source to its owner (agents socket first, so replies and
heartbeats are seen before the exits and deadlines they may race with), then run the due timers.
Signals arrive through a wake-up fd and are handled in the loop by `handle_<signal>` methods.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import zmq

from sunsetd import logs, rundir
from sunsetd.metrics import Metrics, parse_address
from sunsetd.profile import Profile, ProfileError, describe, load_profile
from sunsetd.protocol import ErrorCode
from sunsetd.router import Router
from sunsetd.spawner import ExecSpawner, ForkSpawner, reap_strays
from sunsetd.supervisor import PendingRequest, Supervisor
from sunsetd.systemd import Notifier
from sunsetd.timers import Timer, Timers

EXIT_OK = 0
EXIT_RUNTIME = 1  # runtime directory unusable, another daemon running
EXIT_PROFILE = 2  # the profile has errors


class EventLoop:
    """A zmq.Poller over sockets and plain fds, each with the callback that owns it."""

    def __init__(self) -> None:
        self.poller = zmq.Poller()
        self.callbacks: dict[object, Callable[[], None]] = {}
        self.first: list[object] = []  # sources served before the others in each round

    def watch(self, source: object, callback: Callable[[], None], first: bool = False) -> None:
        self.poller.register(source, zmq.POLLIN)
        self.callbacks[source] = callback
        if first:
            self.first.append(source)

    def unwatch(self, source: object) -> None:
        if self.callbacks.pop(source, None) is not None:
            self.poller.unregister(source)

    def run_once(self, timeout_s: float) -> None:
        ready = dict(self.poller.poll(max(0, int(timeout_s * 1000 + 0.999))))
        for source in self.first:
            if ready.pop(source, None):
                self.callbacks[source]()
        for source in ready:
            callback = self.callbacks.get(source)
            if callback is not None:  # an earlier callback in this round may have unwatched it
                callback()


class Daemon:
    def __init__(self, profile: Profile, runtime_dir: Path, profile_arg: str | None = None,
                 metrics_addr: tuple[str, int] | None = None, spawner: str = "fork"):
        self.profile = profile
        self.profile_arg = profile_arg or str(profile.path)  # what a reload reads again
        self.runtime_dir = runtime_dir
        self.lock = rundir.RuntimeLock(runtime_dir)
        self.timers = Timers()
        self.loop = EventLoop()
        self.stopping_since: float | None = None
        self.stop_budget_s = 0.0
        self.notifier = Notifier()
        self.metrics = Metrics()
        self.metrics_addr = metrics_addr
        self.spawner_kind = spawner
        self.status_timer: Timer | None = None

    # ---- signals, handled in the loop
    def handle_sigterm(self) -> None:
        self.begin_shutdown("SIGTERM")

    def handle_sigint(self) -> None:
        self.begin_shutdown("SIGINT")

    def handle_sighup(self) -> None:
        self.reload(None)

    def handle_sigchld(self) -> None:
        """Reap exited children nobody supervises (agents and the zygote have owners that reap them)."""
        reap_strays(self._known_children(), kill=False)

    def _kill_orphans(self) -> None:
        """Once a second: a process an agent left behind outside its own process group (it escaped the
        group kill at the agent's exit) was handed to us as a subreaper. No orphans: it goes too."""
        for pid, name in reap_strays(self._known_children(), kill=True):
            logs.event(logs.DAEMON, "orphan", f"killed {name} left behind by a dead agent", "WARNING", pid=pid)
        self.timers.call_later(1.0, self._kill_orphans)

    def _known_children(self) -> set[int]:
        known = {s.process.pid for s in self.supervisor.slots.values() if s.process is not None}
        return known | self.spawner.known_pids()

    def _make_spawner(self):
        if self.spawner_kind == "fork":
            try:
                return ForkSpawner(self.runtime_dir)
            except (OSError, ValueError) as exc:
                logs.event(logs.DAEMON, "spawner", f"fork server unavailable ({exc}); starting agents by exec",
                           "WARNING")
        return ExecSpawner(self.runtime_dir)

    # ---- systemd
    def status_text(self) -> str:
        c = self.supervisor.counts()
        return (f"{self.supervisor.daemon_state()}: {c['ready']}/{c['total']} agents ready, essential "
                f"{c['essential_ready']}/{c['essential']}, {c['failed']} failed; profile {self.profile.name}")

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
        sup = self.supervisor
        status = sup.status(fresh_rss=False)
        status["router"] = dict(self.router.counters)
        self.metrics.publish(status, healthy=sup.daemon_state() == "running")

    def _publish_every_second(self) -> None:
        self._publish()
        self.timers.call_later(1.0, self._publish_every_second)

    def _watchdog(self) -> None:
        self.notifier.watchdog()  # from a timer of the loop: a stuck loop stops pinging
        self.timers.call_later(self.notifier.watchdog_every_s, self._watchdog)

    def reload(self, request: PendingRequest | None) -> None:
        """Re-read the profile and apply the difference; an invalid profile leaves everything as it is."""
        if self.stopping_since is not None:
            if request is not None:
                self.router.fail(request, ErrorCode.SHUTTING_DOWN, "sunsetd is shutting down")
            return
        self.notifier.reloading()
        try:
            new = load_profile(self.profile_arg)
        except ProfileError as exc:
            self.notifier.ready(self.status_text())
            logs.event(logs.DAEMON, "reload", f"refused: {len(exc.errors)} error(s); running set untouched", "ERROR")
            for line in exc.errors:
                logs.event(logs.DAEMON, "reload", line, "ERROR")
            if request is not None:
                self.router.fail(request, ErrorCode.BAD_REQUEST,
                                 f"profile {self.profile_arg} has {len(exc.errors)} error(s); running set untouched:\n"
                                 + "\n".join(exc.errors))
            return

        def done(result: dict) -> None:
            logs.event(logs.DAEMON, "reload", "done", rolled_back=",".join(result["rolled_back"]) or None)
            self.notifier.ready(self.status_text())
            if request is not None:
                self.router.answer(request, result)

        self.profile = new
        self.supervisor.reload(new, done)

    def _on_signal_fd(self) -> None:
        try:
            data = os.read(self._wakeup_r, 256)
        except BlockingIOError:
            return
        for signum in data:
            handler = getattr(self, f"handle_{signal.Signals(signum).name.lower()}", None)
            if handler is not None:
                handler()

    def begin_shutdown(self, why: str) -> None:
        if self.stopping_since is not None:
            logs.event(logs.DAEMON, "shutdown", f"{why} again: killing every agent now", "WARNING")
            for slot in self.supervisor.slots.values():
                if slot.process is not None:
                    slot.process.signal_group(signal.SIGKILL)
            return
        self.stopping_since = time.monotonic()
        self.notifier.stopping()
        self.stop_budget_s = self.supervisor.shutdown_budget_s()
        logs.event(logs.DAEMON, "shutdown", why, budget_s=f"{self.stop_budget_s:g}")
        self.router.begin_shutdown()
        self.supervisor.shutdown()

    # ---- life
    def run(self) -> int:
        try:
            self.lock.acquire()
        except rundir.RuntimeDirError as exc:
            print(f"sunsetd: {exc}", file=sys.stderr)
            return EXIT_RUNTIME
        ctx = zmq.Context()
        try:
            return self._serve(ctx)
        finally:
            ctx.destroy(linger=0)
            self.lock.release()

    def _serve(self, ctx: zmq.Context) -> int:
        self.spawner = self._make_spawner()
        self.supervisor = Supervisor(self.profile, self.spawner, self.timers, self.loop)
        self.router = Router(ctx, self.runtime_dir, self.supervisor, self.timers)
        self.router.on_shutdown = lambda: self.begin_shutdown("shutdown requested")
        self.router.on_reload = self.reload
        self.router.on_reply = self.metrics.observe_reply
        self.supervisor.on_lazy_start = self.metrics.observe_lazy_start
        if self.metrics_addr is not None:
            try:
                address = self.metrics.serve(*self.metrics_addr)
                self.router.extra_status["metrics"] = f"http://{address}/metrics"
                logs.event(logs.DAEMON, "metrics", f"serving http://{address}/metrics and /health")
            except OSError as exc:
                logs.event(logs.DAEMON, "metrics", f"cannot listen on {self.metrics_addr[0]}:{self.metrics_addr[1]}: "
                           f"{exc.strerror}; running without metrics", "ERROR")
        self._publish_every_second()
        self.timers.call_later(1.0, self._kill_orphans)
        self.supervisor.on_ready = lambda: self.notifier.ready(self.status_text())
        self.supervisor.on_change = self._status_changed
        if self.notifier.watchdog_every_s:
            self._watchdog()
        self.loop.watch(self.router.agents, self.router.on_agents_readable, first=True)
        self.loop.watch(self.router.front, self.router.on_front_readable)
        self._wakeup_r, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, lambda *_: None)  # the wake-up fd carries it into the loop
        self.loop.watch(self._wakeup_r, self._on_signal_fd)
        c = self.profile.counts()
        logs.event(logs.DAEMON, "start", f"profile {self.profile.name}", agents=c["total"], essential=c["essential"],
                   lazy=c["lazy"], runtime_dir=str(self.runtime_dir), pid=os.getpid())
        try:
            self.supervisor.start()
            while True:
                if self.stopping_since is not None:
                    if self.supervisor.all_stopped:
                        break
                    if time.monotonic() - self.stopping_since > self.stop_budget_s:
                        logs.event(logs.DAEMON, "shutdown", "stop budget exceeded; leaving the rest to the kernel",
                                   "ERROR")
                        break
                self.loop.run_once(self.timers.timeout(cap=1.0))
                self.timers.run_due()
            self.router.fail_all_pending()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            self.notifier.close()
            self.metrics.close()
            self.spawner.close()
            self.router.close()
            os.close(self._wakeup_r)
            os.close(wakeup_w)
        logs.event(logs.DAEMON, "exit", "all agents stopped", replies=dict(self.router.replies))
        return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sunsetd", description="Supervise a profile of agents and route requests to them over ZeroMQ.",
        epilog="Exit status: 0 clean stop (or --check passed), 1 runtime directory unusable or already in use, "
               "2 profile errors.")
    parser.add_argument("--profile", default="core", help="profile name (from profiles/) or path (default: core)")
    parser.add_argument("--check", action="store_true", help="validate the profile, print start order and counts, exit")
    parser.add_argument("--runtime-dir", help="directory for sockets and the lock (default: see DESIGN §6)")
    parser.add_argument("--log-level", default=os.environ.get("SUNSETD_LOG_LEVEL", "INFO"),
                        choices=["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"])
    parser.add_argument("--metrics-addr", default="127.0.0.1:9464",
                        help="HOST:PORT for Prometheus /metrics and /health, or off (default: 127.0.0.1:9464)")
    parser.add_argument("--spawner", choices=["fork", "exec"], default=os.environ.get("SUNSETD_SPAWNER", "fork"),
                        help="fork: agents forked from a pre-imported zygote (default, about 2 ms); "
                             "exec: a fresh interpreter per agent (about 100 ms)")
    parser.add_argument("--log-to", choices=["auto", "journal", "stderr"], default="auto",
                        help="auto: journald (with fields) under systemd, else stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        metrics_addr = parse_address(args.metrics_addr)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        profile = load_profile(args.profile)
    except ProfileError as exc:
        for line in exc.errors:
            print(f"sunsetd: {line}", file=sys.stderr)
        print(f"sunsetd: profile {args.profile!r} has {len(exc.errors)} error(s); not starting", file=sys.stderr)
        return EXIT_PROFILE
    if args.check:
        print(describe(profile))
        return EXIT_OK
    logs.configure(args.log_level, profile.name, journal={"auto": None, "journal": True, "stderr": False}[args.log_to])
    return Daemon(profile, rundir.resolve(args.runtime_dir), args.profile, metrics_addr, args.spawner).run()


if __name__ == "__main__":
    sys.exit(main())
