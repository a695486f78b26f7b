"""Spawners: every OS call about processes, behind process handles (DESIGN §1, §7).

A spawn answers at once with a `ProcessHandle`; what happens to the process arrives later as events
for the listener given at the spawn: `Started` (it exists, with its pid), `SpawnFailed`, `Output` (a
line it printed), `Memory` (its RSS, about once a second) and `Exited`. The handle offers terminate,
kill, pause, resume and memory. The supervisor never sees a pid it could signal, a file descriptor or
psutil: a handle may be a forked Python agent, an exec'd interpreter, and later any program or a
process on another host.

Process hygiene lives here, for every child whatever it runs: its own session and process group, a
parent-death signal set before it runs any code of its own (a foreign program will not set one), the
daemon a child subreaper so that nothing an agent leaves behind escapes to init, orphans killed, every
child reaped through its pidfd the moment it exits, output pipes read and cut into lines.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Protocol

import psutil

from sunsetd import logs, notify, procsettings, rundir
from sunsetd.forkserver import SETTINGS_REFUSED, ForkServer, become_subreaper, child_env, die_with_parent
from sunsetd.loop import WRITABLE
from sunsetd.notify import NotifySocket
from sunsetd.procsettings import ProcessSettings
from sunsetd.stamps import DAEMON_STAMP_S, STAMP_FDS_ENV, StampPage
from sunsetd.profile import AgentSpec
from sunsetd.protocol import LAUNCH_ENV, SECRET_FD_ENV, Launch, routing_id
from sunsetd.timers import Timer, Timers

MAX_LINE = 16 * 1024  # a longer line is cut, so one agent cannot make the daemon buffer without bound
MAX_MESSAGE_LINE = 8 * 1024 * 1024  # but an MCP server's stdout carries its answers, one per line
MAX_INPUT_BACKLOG = 16 * 1024 * 1024  # written to a child's stdin and not yet taken by it
LINE_CUT = " [line cut]"  # the end of a line that was longer than its reader takes
SAMPLE_INTERVAL_S = 1.0  # RSS of the children with a memory limit
SAMPLE_IDLE_EVERY = 10  # and of the others, every this many samples
SWEEP_INTERVAL_S = 1.0  # orphans left by dead agents
_PAGE = os.sysconf("SC_PAGE_SIZE")


# ---- events ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    handle: "ProcessHandle"


@dataclass(frozen=True, slots=True)
class SpawnFailed:
    handle: "ProcessHandle"
    error: str


@dataclass(frozen=True, slots=True)
class Output:
    handle: "ProcessHandle"
    stream: str  # stdout | stderr
    line: str


@dataclass(frozen=True, slots=True)
class Notified:
    """The program (or a process of its session) sent an sd_notify datagram: READY=1, STATUS=, WATCHDOG=1."""

    handle: "ProcessHandle"
    fields: dict


@dataclass(frozen=True, slots=True)
class Memory:
    handle: "ProcessHandle"
    rss: int  # bytes


@dataclass(frozen=True, slots=True)
class Exited:
    handle: "ProcessHandle"
    code: int  # exit status, or minus the signal that killed it
    description: str


ProcessEvent = Started | SpawnFailed | Output | Notified | Memory | Exited
Listener = Callable[[ProcessEvent], None]


class ProcessHandle(Protocol):
    name: str
    incarnation: int
    pid: int | None  # for status and logs only; None until started
    started_at: float | None  # monotonic, once started

    def terminate(self) -> None: ...  # SIGTERM to its group (and SIGCONT, so that a frozen one obeys)
    def kill(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def signal(self, sig: int) -> None: ...  # any signal, to its group (an operator's `sunsetctl signal`)
    def memory(self, fresh: bool = False) -> int | None: ...
    # its liveness stamp (sunsetd.stamps): (monotonic seconds, whether it said it was idle); None before
    # its first. Only for a handle that is `stamped`: the others speak heartbeat frames
    stamped: bool
    def heard(self) -> tuple[float, bool] | None: ...
    stopped_since: float | None  # when the kernel reported it stopped by a signal (SIGSTOP); None: running
    # its stdin, for a program that speaks a protocol there (MCP); never blocks
    def write(self, data: bytes) -> bool: ...  # False: its input is closed (stopped reading, or gone)
    def close_input(self) -> None: ...
    def input_backlog(self) -> int: ...  # bytes written and not yet taken by the process


class Spawner(Protocol):
    def spawn(self, spec: AgentSpec, incarnation: int, listener: Listener) -> ProcessHandle: ...
    def close(self) -> None: ...


class FdWatcher(Protocol):
    def watch(self, fd: int, callback: Callable[[], None], events: int = ...) -> None: ...
    def unwatch(self, fd: int) -> None: ...


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class LineReader:
    """Non-blocking reader of one pipe, yielding whole lines (a partial line waits for its newline). A line
    longer than `max_line` is cut: its head is yielded with LINE_CUT at its end, the rest is skipped."""

    def __init__(self, fd: int, max_line: int = MAX_LINE):
        self.fd = fd
        self.max_line = max_line
        # the line still waiting for its newline, in the pieces it came in: joined once when the newline
        # comes, so a long line costs O(n) on the loop, not O(n^2)
        self.parts: list[bytes] = []
        self.partial_len = 0
        self.skipping = False  # inside the rest of a line that was cut

    def read(self) -> tuple[list[str], bool]:
        """(lines, eof)."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return [], False
        except OSError:
            data = b""
        if not data:
            rest = [b"".join(self.parts).decode(errors="replace")] if self.parts else []
            self.parts, self.partial_len, self.skipping = [], 0, False
            return rest, True
        if self.skipping:
            end = data.find(b"\n")
            if end < 0:
                return [], False
            data, self.skipping = data[end + 1:], False
        if b"\n" not in data:  # the middle of a line: keep it, unjoined
            self.parts.append(data)
            self.partial_len += len(data)
            if self.partial_len > self.max_line:
                head = b"".join(self.parts)[:self.max_line] + LINE_CUT.encode()
                self.parts, self.partial_len, self.skipping = [], 0, True
                return [head.decode(errors="replace")], False
            return [], False
        chunks = (b"".join(self.parts) + data).split(b"\n")
        last = chunks.pop()
        self.parts, self.partial_len = ([last], len(last)) if last else ([], 0)
        lines = [c[:self.max_line] + LINE_CUT.encode() if len(c) > self.max_line else c for c in chunks]
        if self.partial_len > self.max_line:
            lines.append(last[:self.max_line] + LINE_CUT.encode())
            self.parts, self.partial_len, self.skipping = [], 0, True
        return [c.decode(errors="replace") for c in lines], False


def _pipes(stdout_line: int = MAX_LINE) -> tuple[dict[int, tuple[str, LineReader]], list[int]]:
    """Non-blocking read ends for stdout and stderr, and the write ends to hand to the child."""
    outputs, write_ends = {}, []
    try:
        for stream in ("stdout", "stderr"):
            r, w = os.pipe2(os.O_CLOEXEC)
            outputs[r] = (stream, LineReader(r, stdout_line if stream == "stdout" else MAX_LINE))
            write_ends.append(w)
            os.set_blocking(r, False)
    except OSError:  # out of file descriptors: nothing half made stays open
        for fd in list(outputs) + write_ends:
            os.close(fd)
        raise
    return outputs, write_ends


class InputPipe:
    """The write end of a child's stdin (an MCP server's), never blocking the loop: what the pipe cannot
    take at once waits here and goes when the loop says the pipe is writable again."""

    def __init__(self, fd: int, fds: FdWatcher):
        self.fd: int | None = fd
        self.fds = fds
        self.backlog = bytearray()
        self.watched = False
        os.set_blocking(fd, False)

    def write(self, data: bytes) -> bool:
        """False once the pipe is closed (by us, or by a child that stopped reading or died)."""
        if self.fd is None:
            return False
        self.backlog += data
        if not self.watched:
            self._flush()
        return self.fd is not None

    def _flush(self) -> None:
        while self.backlog and self.fd is not None:
            try:
                n = os.write(self.fd, self.backlog)
            except BlockingIOError:
                if not self.watched:
                    self.watched = True
                    self.fds.watch(self.fd, self._flush, events=WRITABLE)
                return
            except OSError:  # EPIPE: the child closed its stdin or died; its exit is the news
                self.close()
                return
            del self.backlog[:n]
        if self.watched and self.fd is not None:
            self.watched = False
            self.fds.unwatch(self.fd)

    def close(self) -> None:
        if self.fd is None:
            return
        if self.watched:
            self.fds.unwatch(self.fd)
            self.watched = False
        os.close(self.fd)
        self.fd = None
        self.backlog.clear()


def rss_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def launch_of(spec: AgentSpec, incarnation: int, agents_endpoint: str, front_endpoint: str,
              parent_pid: int, profile: str = "") -> Launch:
    return Launch(name=spec.name, incarnation=incarnation, agents_endpoint=agents_endpoint,
                  front_endpoint=front_endpoint, heartbeat_ms=spec.heartbeat_ms, liveness=spec.liveness,
                  stop_timeout_s=spec.stop_timeout_s, parent_pid=parent_pid, run=spec.run,
                  concurrency=spec.concurrency, config=spec.config, profile=profile,
                  start_timeout_s=spec.start_timeout_s)


# ---- local processes -----------------------------------------------------------------------------------


class LocalHandle:
    """One process on this host. Signals asked for before it started are delivered when it starts."""

    def __init__(self, name: str, incarnation: int, listener: Listener):
        self.name = name
        self.incarnation = incarnation
        self.listener = listener
        self.pid: int | None = None
        self.started_at: float | None = None
        self.pidfd: int | None = None
        self.popen: subprocess.Popen | None = None
        self.outputs: dict[int, tuple[str, LineReader]] = {}
        self.rss: int | None = None
        self.announced = False  # Started was delivered
        self.reaped = False
        self.settings = ProcessSettings()  # its environment, user, directory and limits (the spawn's)
        self.input: InputPipe | None = None  # its stdin, when it speaks a protocol there (MCP)
        self.notify: NotifySocket | None = None  # its NOTIFY_SOCKET, when its readiness is sd_notify
        self.secret = b""  # a Python agent's proof, in HELLO, that it is this process (sunsetd.auth)
        self.routing_id = routing_id(name, incarnation)  # with its tag once the gate issued one
        self.page: StampPage | None = None  # a Python agent's liveness stamp, written by it, read by us
        self.fork_fds: tuple[int, ...] = ()  # copies of its stamp pages on their way to the zygote
        self.stopped_since: float | None = None
        self.sample_every = 1  # its RSS is read every this many seconds (sample_every in spawn)
        self._early_signals: list[int] = []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.routing_id.decode()} pid={self.pid}>"

    def signal(self, sig: int) -> None:
        if self.reaped:
            return  # never signal a reaped pid: the number may belong to someone else by now
        if self.pid is None:
            self._early_signals.append(sig)
            return
        try:
            os.killpg(self.pid, sig)  # it leads its own group: what it started goes too, never us
        except ProcessLookupError:
            # A forked agent may not have made its session yet (the zygote answers right after the
            # fork): it has no group of its own, and it alone exists to be signalled.
            try:
                os.kill(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        except PermissionError:
            pass

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)
        self.signal(signal.SIGCONT)  # a frozen agent must run to obey the SIGTERM

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    @property
    def stamped(self) -> bool:
        return self.page is not None

    def heard(self) -> tuple[float, bool] | None:
        return self.page.observe() if self.page is not None and not self.page.map.closed else None

    def memory(self, fresh: bool = False) -> int | None:
        if fresh and self.pid is not None and not self.reaped:
            self.rss = rss_of(self.pid)
        return self.rss

    def write(self, data: bytes) -> bool:
        return self.input is not None and self.input.write(data)

    def close_input(self) -> None:
        if self.input is not None:
            self.input.close()

    def input_backlog(self) -> int:
        return len(self.input.backlog) if self.input is not None else 0


class LocalSpawner:
    """Process hygiene for every local child; subclasses say how an agent's process is made.

    Owns the handles of live children, their pidfds and pipes (watched in the event loop), the RSS
    samples, and the sweep that kills and reaps what dead agents left behind.
    """

    def __init__(self, runtime_dir: Path, fds: FdWatcher, timers: Timers, python: str = sys.executable,
                 env: dict | None = None, profile_name: Callable[[], str] = lambda: ""):
        self.runtime_dir = runtime_dir
        self.profile_name = profile_name  # the running profile's, for the agents' process titles
        self.fds = fds
        self.timers = timers
        self.python = python
        self.pid = os.getpid()
        self.agents_endpoint = rundir.endpoint(runtime_dir, rundir.AGENTS_SOCKET)
        self.front_endpoint = rundir.endpoint(runtime_dir, rundir.FRONT_SOCKET)
        self.env = child_env(os.environ if env is None else env)
        self.subreaper = become_subreaper()
        if not self.subreaper:
            logs.event(logs.DAEMON, "spawner", "cannot become a child subreaper: orphans of agents escape to init",
                       "WARNING")
        self.handles: dict[int, LocalHandle] = {}  # pid -> handle, until reaped
        self.gate: Any = None  # the authenticator (sunsetd.auth): told each agent's secret and pid
        self._samples = 0
        self._timers: list[Timer] = [timers.call_aligned(SAMPLE_INTERVAL_S, self._sample),
                                     timers.call_aligned(SWEEP_INTERVAL_S, self._sweep),
                                     timers.call_aligned(DAEMON_STAMP_S, self._stamp)]
        self.daemon_page = StampPage.create("daemon", shared=True)  # every agent maps it: is our loop alive?
        self.daemon_page.stamp()
        self.closed = False

    # ---- the interface
    def launch(self, spec: AgentSpec, incarnation: int) -> Launch:
        return launch_of(spec, incarnation, self.agents_endpoint, self.front_endpoint, self.pid, self.profile_name())

    def spawn(self, spec: AgentSpec, incarnation: int, listener: Listener) -> LocalHandle:
        handle = LocalHandle(spec.name, incarnation, listener)
        handle.settings = spec.process
        handle.sample_every = 1 if spec.max_rss_mb else SAMPLE_IDLE_EVERY
        # what the kernel would refuse (a limit over the hard one, a user that is gone) fails here, with
        # its reason, not in the child with a generic one
        refused = None if spec.process.empty else procsettings.refusal(spec.process)
        if refused is not None:
            self._fail_soon(handle, refused)
            return handle
        if spec.command:  # a program: exec'd as it is, whatever the spawner (the zygote forks Python agents)
            env = {**self.env, **spec.process.environment()}
            if spec.ready is not None and spec.ready.kind == "notify":
                try:
                    handle.notify = NotifySocket()
                except OSError as exc:
                    error = f"cannot make its NOTIFY_SOCKET: {exc.strerror or exc}"
                    self._fail_soon(handle, error)
                    return handle
                uid = procsettings.uid_of(spec.process)  # looked up once, not per datagram
                handle.notify.program_uid = -1 if uid is None else uid
                env["NOTIFY_SOCKET"] = handle.notify.address
                if spec.ready.watchdog_ms:
                    env["WATCHDOG_USEC"] = str(spec.ready.watchdog_ms * 1000)
            argv = list(spec.command)
            if "/" not in argv[0]:  # found now as --check found it: on its PATH, else in sunsetd's own bin
                argv[0] = procsettings.find_program(argv[0], spec.process, env) or argv[0]
            self._exec(handle, argv, env, spec.process, speaks_on_stdio=spec.protocol == "mcp")
        else:
            self._start_agent(handle, self.launch(spec, incarnation))
        return handle

    def spawn_helper(self, name: str, argv: list[str], listener: Listener, long_lines: bool = False) -> LocalHandle:
        """A short-lived helper (a reload's check, an exec probe): a child like any other, not an agent.
        With `long_lines`, its stdout lines may be long (a reload's check hands over a whole profile)."""
        handle = LocalHandle(name, 0, listener)
        self._exec(handle, argv, self.env, long_lines=long_lines)
        return handle

    def close(self) -> None:
        self.closed = True
        for timer in self._timers:
            self.timers.cancel(timer)
        self.daemon_page.close()

    def known_pids(self) -> set[int]:
        return set(self.handles)

    def spawning(self) -> bool:
        """A child may exist whose pid we have not learnt yet (the zygote's answer is on its way)."""
        return False

    # ---- making processes
    def _stamp_fds(self, handle: LocalHandle) -> tuple[int, int]:
        """Its own stamp page (kept, to read) and a read-only descriptor of ours (the caller closes it
        once the child has its copy). OSError when the descriptors cannot be made."""
        if handle.page is None:
            handle.page = StampPage.create(f"{handle.name}#{handle.incarnation}")
        return handle.page.fd, self.daemon_page.read_only_fd()

    def _stamp(self) -> None:
        self.daemon_page.stamp()
        if not self.closed:
            self._timers[2] = self.timers.call_aligned(DAEMON_STAMP_S, self._stamp)

    def _issue_identity(self, handle: LocalHandle, launch: Launch) -> Launch:
        """Its secret and its routing id's tag: the launch it is given carries the tag."""
        if self.gate is None or launch.tag:  # none to give, or given already (a fork that fell back to exec)
            return launch
        tag, handle.secret = self.gate.issue(handle.name, handle.incarnation)
        launch = replace(launch, tag=tag)
        handle.routing_id = launch.routing_id
        return launch

    def _start_agent(self, handle: LocalHandle, launch: Launch) -> None:
        launch = self._issue_identity(handle, launch)
        env = {**self.env, **handle.settings.environment(), LAUNCH_ENV: launch.encode()}
        if handle.settings.cwd is not None:  # run targets stay importable from the daemon's directory, as forked
            env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH")) if p)
        try:  # its secret on a pipe it inherits: never in argv or the environment, which others may read
            secret_r, secret_w = os.pipe2(os.O_CLOEXEC)
            try:
                own_stamp, daemon_stamp = self._stamp_fds(handle)
            except OSError:
                os.close(secret_r)
                os.close(secret_w)
                raise
        except OSError as exc:
            error = f"cannot make its secret's pipe or stamp pages: {exc.strerror or exc}"
            self._fail_soon(handle, error)
            return
        os.write(secret_w, handle.secret)  # 32 bytes: far below a pipe's buffer
        os.close(secret_w)
        env[SECRET_FD_ENV] = str(secret_r)
        env[STAMP_FDS_ENV] = f"{own_stamp},{daemon_stamp}"
        self._exec(handle, [self.python, "-m", "sunsetd.agent", launch.title, "--runtime-dir", str(self.runtime_dir)],
                   env, handle.settings, pass_fds=(secret_r, own_stamp, daemon_stamp), keep_fds=(own_stamp,))

    def _exec(self, handle: LocalHandle, argv: list[str], env: dict,
              settings: ProcessSettings = ProcessSettings(), speaks_on_stdio: bool = False,
              pass_fds: tuple[int, ...] = (), long_lines: bool = False, keep_fds: tuple[int, ...] = ()) -> None:
        """Never raises: a process that cannot be made is a SpawnFailed event, like any other news.
        One that `speaks_on_stdio` gets a pipe for its stdin, and its stdout lines may be long.
        `pass_fds` are inherited by the child and closed here, but for `keep_fds` (ours to keep)."""
        in_r = in_w = None
        try:
            outputs, (out_w, err_w) = _pipes(MAX_MESSAGE_LINE if speaks_on_stdio or long_lines else MAX_LINE)
            if speaks_on_stdio:
                try:
                    in_r, in_w = os.pipe2(os.O_CLOEXEC)
                except OSError:
                    for fd in list(outputs) + [out_w, err_w]:
                        os.close(fd)
                    raise
        except OSError as exc:
            for fd in set(pass_fds) - set(keep_fds):
                os.close(fd)
            error = f"cannot make its output pipes: {exc.strerror or exc}"
            self._fail_soon(handle, error)
            return
        parent = self.pid

        def in_child() -> None:
            procsettings.inherited_fd_limit()  # what sunsetd was given, before it raised its own
            procsettings.apply(settings)  # limits and nice while still root, then the user, then the directory
            die_with_parent(parent)  # after the user: a change of credentials clears the parent-death signal

        try:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL if in_r is None else in_r, stdout=out_w, stderr=err_w, env=env,
                close_fds=True, pass_fds=pass_fds,
                start_new_session=True,  # its own session and process group: signals reach all of it, never us
                preexec_fn=in_child)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:  # ValueError: a NUL in argv or env
            for fd in list(outputs) + ([in_w] if in_w is not None else []):
                os.close(fd)
            error = f"{argv[0][:200]!r}: {exc.strerror or exc}" if isinstance(exc, OSError) else \
                f"cannot be started: {exc}" if isinstance(exc, ValueError) else \
                f"its process settings were refused in the child ({exc})"
            self._fail_soon(handle, error)
            return
        finally:
            os.close(out_w)  # the child holds its own copies
            os.close(err_w)
            if in_r is not None:
                os.close(in_r)
            for fd in set(pass_fds) - set(keep_fds):
                os.close(fd)
        if in_w is not None:
            handle.input = InputPipe(in_w, self.fds)
        self._started(handle, popen.pid, outputs, popen)
        self.timers.call_soon(lambda: self._announce(handle))  # never inside spawn(): the caller is mid-step

    def _started(self, handle: LocalHandle, pid: int, outputs: dict[int, tuple[str, LineReader]],
                 popen: subprocess.Popen | None = None) -> None:
        """The process exists: watch its exit and its output, and deliver signals asked for meanwhile."""
        handle.pid, handle.popen, handle.outputs = pid, popen, outputs
        handle.started_at = self.timers.now()
        if handle.secret and self.gate is not None:
            self.gate.admit(pid, handle.routing_id)  # its connection will be admitted
        try:
            handle.pidfd = os.pidfd_open(pid)
        except OSError:  # gone and reaped already: impossible for our child, but never leave it unwatched
            handle.pidfd = None
        self.handles[pid] = handle
        for fd in list(outputs):
            self.fds.watch(fd, lambda fd=fd: self._on_output(handle, fd))
        if handle.notify is not None:
            self.fds.watch(handle.notify.fileno(), lambda: self._on_notify(handle))
        if handle.pidfd is not None:
            self.fds.watch(handle.pidfd, lambda: self._on_exit(handle))
        else:
            self.timers.call_soon(lambda: self._on_exit(handle))
        early, handle._early_signals = handle._early_signals, []
        for sig in early:
            handle.signal(sig)

    def _announce(self, handle: LocalHandle) -> None:
        if not handle.announced:
            handle.announced = True
            handle.listener(Started(handle))

    def _forget(self, handle: LocalHandle) -> None:
        if handle.secret and self.gate is not None:
            self.gate.forget(handle.pid, handle.routing_id)
        if handle.page is not None:
            handle.page.close()

    def _fail_soon(self, handle: LocalHandle, error: str) -> None:
        """A process that cannot be made: SpawnFailed, never inside spawn() (the caller is mid-step)."""
        self.timers.call_soon(lambda: self._failed(handle, error))

    def _failed(self, handle: LocalHandle, error: str) -> None:
        handle.reaped = True
        self._forget(handle)
        self._close_notify(handle)
        handle.listener(SpawnFailed(handle, error))

    def _on_notify(self, handle: LocalHandle) -> None:
        sock = handle.notify
        if sock is None:
            return
        self._announce(handle)  # its Started comes before anything it says
        for datagram in sock.receive():
            mine = notify.believed(datagram.pid, datagram.uid, handle.pid, sock.program_uid)
            datagram.close_fds()  # a barrier's: answered (whoever sent it), and nothing of theirs is kept
            if mine:
                handle.listener(Notified(handle, datagram.fields))
            else:
                sock.dropped += 1
                n = sock.dropped
                if logs.sparse(n):
                    logs.event(handle.name, "notify", f"dropped a notification from pid {datagram.pid} uid "
                               f"{datagram.uid}: not of the program's session", "WARNING", count=n)

    def _close_notify(self, handle: LocalHandle) -> None:
        if handle.notify is not None:
            self.fds.unwatch(handle.notify.fileno())
            handle.notify.close()
            handle.notify = None

    # ---- what children do
    def _on_output(self, handle: LocalHandle, fd: int) -> None:
        entry = handle.outputs.get(fd)
        if entry is None:
            return
        stream, reader = entry
        lines, eof = reader.read()
        if lines:
            self._announce(handle)
        for line in lines:
            handle.listener(Output(handle, stream, line))
        if eof:
            self.fds.unwatch(fd)
            handle.outputs.pop(fd, None)
            os.close(fd)

    def _on_exit(self, handle: LocalHandle) -> None:
        """Its pidfd is readable: it exited. Kill what is left of its group, reap it, and report the exit
        after its last lines (a crash's traceback comes before the exit it explains)."""
        if handle.reaped:
            return
        self._announce(handle)
        if handle.pidfd is not None:
            self.fds.unwatch(handle.pidfd)
        # Until reaped, the zombie leader keeps the process-group id reserved, so this cannot hit an
        # unrelated group: what the agent started dies with it.
        handle.signal(signal.SIGKILL)
        handle.close_input()
        code = self._reap(handle)
        handle.reaped = True
        self._forget(handle)
        self.handles.pop(handle.pid, None)
        for fd in list(handle.outputs):
            for _ in range(64):  # what it wrote before dying, bounded: a grandchild may hold the pipe open
                if fd not in handle.outputs or not _readable(fd):
                    break
                self._on_output(handle, fd)
        self._close_notify(handle)
        handle.listener(Exited(handle, code, describe_exit(code)))

    def _reap(self, handle: LocalHandle) -> int:
        code = -signal.SIGKILL  # if it is not ours to reap after all, it is gone, which is what matters
        try:
            if handle.pidfd is not None:
                result = os.waitid(os.P_PIDFD, handle.pidfd, os.WEXITED)
                if result is not None:
                    code = result.si_status if result.si_code == os.CLD_EXITED else -result.si_status
            else:
                _, status = os.waitpid(handle.pid, 0)
                code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            pass
        finally:
            if handle.pidfd is not None:
                os.close(handle.pidfd)
                handle.pidfd = None
        if handle.popen is not None:
            handle.popen.returncode = code  # reaped by us: Popen must not wait for it again
        return code

    def _sample(self) -> None:
        """RSS every second of the agents with a memory limit, every SAMPLE_IDLE_EVERY seconds of the
        others (status, metrics and the budget read it fresh when they need it): 77 reads of
        /proc/PID/statm a second were a tenth of what an idle daemon cost."""
        self._samples += 1
        for handle in list(self.handles.values()):
            if self._samples % handle.sample_every:
                continue
            rss = handle.memory(fresh=True)
            if rss is not None:
                handle.listener(Memory(handle, rss))
        if not self.closed:
            self._timers[0] = self.timers.call_aligned(SAMPLE_INTERVAL_S, self._sample)

    # ---- orphans
    def on_sigchld(self) -> None:
        """Reap exited children nobody owns (what agents left behind, reparented to us), and note which
        of ours were stopped or continued by a signal: a SIGSTOPped agent cannot say it is frozen, and an
        idle one stamps rarely (sunsetd.stamps)."""
        reap_strays(self.known_pids(), kill=False, reap_unknown=not self.spawning())
        now = self.timers.now()
        for handle in self.handles.values():
            if handle.pidfd is None or handle.reaped:
                continue
            for _ in range(2):  # at most a stop and a continue are waiting
                try:  # without WEXITED: an exit stays for the pidfd's reader
                    info = os.waitid(os.P_PIDFD, handle.pidfd, os.WSTOPPED | os.WCONTINUED | os.WNOHANG)
                except OSError:  # not our child (yet: a forked agent before the zygote's intermediate exits)
                    break
                if info is None:
                    break
                if info.si_code in (os.CLD_STOPPED, os.CLD_TRAPPED):
                    if handle.stopped_since is None:
                        handle.stopped_since = now
                elif info.si_code == os.CLD_CONTINUED:
                    handle.stopped_since = None

    def _sweep(self) -> None:
        """Once a second: a process an agent left behind outside its own process group (it escaped the
        group kill at the agent's exit) was handed to us as a subreaper. No orphans: it goes too."""
        if not self.spawning():
            for pid, name in reap_strays(self.known_pids(), kill=True, reap_unknown=True):
                logs.event(logs.DAEMON, "orphan", f"killed {name} left behind by a dead agent", "WARNING", pid=pid)
        if not self.closed:
            self._timers[1] = self.timers.call_aligned(SWEEP_INTERVAL_S, self._sweep)


def sweep_at_exit(spawner: "LocalSpawner", timeout_s: float = 1.0) -> None:
    """The daemon is about to exit: what agents left behind outside their process groups is killed and
    reaped now, not at a next sweep that will never come (nothing of theirs has a parent-death signal)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for pid, name in reap_strays(spawner.known_pids(), kill=True, reap_unknown=True):
            logs.event(logs.DAEMON, "orphan", f"killed {name} left behind by a dead agent", "WARNING", pid=pid)
        if not strays(spawner.known_pids()) or time.monotonic() > deadline:
            return
        time.sleep(0.005)


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def strays(known: set[int]) -> list[psutil.Process]:
    """Our children that no owner knows: orphans of dead agents (we are a subreaper, so every orphan
    below us lands here), alive or zombie."""
    found = []
    for task in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        try:
            pids = [int(p) for p in task.read_text().split()]
        except OSError:
            continue
        for pid in pids:
            if pid not in known:
                try:
                    found.append(psutil.Process(pid))
                except psutil.NoSuchProcess:
                    pass
    return found


def reap_strays(known: set[int], kill: bool, reap_unknown: bool = True) -> list[tuple[int, str]]:
    """Reap zombie strays; with `kill`, SIGKILL the live ones first (a supervisor leaves no orphans).
    Returns (pid, name) of the ones killed."""
    killed = []
    for proc in strays(known):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                if not kill:
                    continue
                killed.append((proc.pid, proc.name()))
                proc.kill()
            elif not reap_unknown:
                continue
        except psutil.Error:
            pass
        try:
            os.waitpid(proc.pid, os.WNOHANG)  # never block the loop: a killed one is reaped at its SIGCHLD
        except ChildProcessError:
            pass
    return killed


# ---- the two ways of making an agent's process ---------------------------------------------------------


class ExecSpawner(LocalSpawner):
    """Each agent a fresh `python -m sunsetd.agent` (about 100 ms of interpreter start-up)."""


class ForkSpawner(LocalSpawner):
    """Agents forked from a pre-imported zygote (sunsetd.forkserver, about 5 ms); exec while it is down."""

    MAX_ZYGOTE_FAILURES = 3

    def __init__(self, runtime_dir: Path, fds: FdWatcher, timers: Timers, python: str = sys.executable,
                 env: dict | None = None, server: ForkServer | None = None,
                 profile_name: Callable[[], str] = lambda: ""):
        """`server`: a zygote already started (the daemon starts it first thing, so that its imports
        overlap the daemon's own)."""
        super().__init__(runtime_dir, fds, timers, python, env, profile_name)
        self.failures = 0
        self.server: ForkServer | None = None
        if not self.subreaper:  # a forked agent becomes our child only through the subreaper
            if server is not None:
                server.close()
            return
        self._start_server(server)

    def _start_server(self, server: ForkServer | None = None) -> None:
        try:
            if server is None:
                server = ForkServer(self.runtime_dir, self.python, self.env).start()
        except (OSError, ValueError) as exc:
            logs.event(logs.DAEMON, "spawner", f"fork server unavailable ({exc}); starting agents by exec", "WARNING")
            return
        server.bind(_pipes, self._on_forked, self._on_refused, self._on_server_lost)
        self.server = server
        self.fds.watch(server.fileno(), server.on_readable)

    def _start_agent(self, handle: LocalHandle, launch: Launch) -> None:
        if self.server is None:
            super()._start_agent(handle, launch)
            return
        try:  # copies of its stamp pages travel with the request (SCM_RIGHTS); ours close at the answer
            own, daemon = self._stamp_fds(handle)
            try:
                handle.fork_fds = (os.dup(own), daemon)
            except OSError:
                os.close(daemon)
                raise
        except OSError as exc:
            error = f"cannot make its stamp pages: {exc.strerror or exc}"
            self._fail_soon(handle, error)
            return
        self.server.submit(handle, self._issue_identity(handle, launch))

    @staticmethod
    def _close_fork_fds(handle: LocalHandle) -> None:
        for fd in handle.fork_fds:
            os.close(fd)
        handle.fork_fds = ()

    def _on_forked(self, handle: LocalHandle, pid: int, outputs: dict[int, tuple[str, LineReader]]) -> None:
        self._close_fork_fds(handle)
        self._started(handle, pid, outputs)
        self._announce(handle)

    def _on_refused(self, handle: LocalHandle, launch: Launch, why: str) -> None:
        self._close_fork_fds(handle)
        if why.startswith(SETTINGS_REFUSED):
            self._failed(handle, why)  # exec would be refused the same
            return
        logs.event(handle.name, "spawner", f"the zygote could not fork it ({why}); starting it by exec", "WARNING",
                   incarnation=handle.incarnation)
        super()._start_agent(handle, launch)

    def _on_server_lost(self, why: str, unanswered: list[tuple[LocalHandle, Launch]]) -> None:
        """The zygote died or stopped answering: what it had not forked yet is started by exec, and a new
        zygote takes over, unless zygotes keep dying (then exec from now on)."""
        server, self.server = self.server, None
        if server is not None:
            self.fds.unwatch(server.fileno())
            server.close()
        self.failures += 1
        logs.event(logs.DAEMON, "spawner", f"fork server lost ({why}); {len(unanswered)} start(s) by exec",
                   "WARNING", failures=self.failures)
        for handle, launch in unanswered:
            self._close_fork_fds(handle)
            super()._start_agent(handle, launch)
        if self.failures <= self.MAX_ZYGOTE_FAILURES and not self.closed:
            self._start_server()

    def spawning(self) -> bool:
        return self.server is not None and self.server.outstanding > 0

    def known_pids(self) -> set[int]:
        pids = super().known_pids()
        if self.server is not None and self.server.pid:
            pids.add(self.server.pid)
            pids |= self.server.spares
        return pids

    def _sweep(self) -> None:
        if self.server is not None and self.server.stuck():
            self.server.lose("no answer to a fork request within its timeout")
        if self.server is not None:
            self.server.on_readable()  # a spare announced is known before the children are listed
        super()._sweep()

    def close(self) -> None:
        super().close()
        if self.server is not None:
            self.fds.unwatch(self.server.fileno())
            self.server.close()
            self.server = None

