"""Fork server: agents forked from a pre-imported zygote instead of a fresh interpreter (DESIGN §7).

A new interpreter spends about 80 ms importing zmq, msgpack and the agent runtime before an agent can
even load; a fork of a process that already holds them costs a few milliseconds. The zygote is one
long-lived child of the daemon that imports the runtime once, never starts a thread or a ZeroMQ context
(neither survives fork), and forks each agent on request. The agent's own module is imported after the
fork, so code changed on disk is picked up at the next start, as with exec.

The agent must be the daemon's child (pidfds, reaping, the parent-death signal all assume it), so the
zygote double-forks: the intermediate exits at once and the agent is reparented to the daemon, which
made itself a child subreaper. Each request carries the agent's launch and, as SCM_RIGHTS, the write
ends of its stdout and stderr pipes; the answer is the agent's pid. Requests are pipelined: the daemon
never waits for an answer, which arrives on the socket its event loop watches.

This module is imported by the zygote: it imports nothing of sunsetd's but the agent runtime and the
process settings (os and re alone).
"""
from __future__ import annotations

import array
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from sunsetd import procsettings
from sunsetd.procsettings import ProcessSettings
from sunsetd.stamps import STAMP_FDS_ENV

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
EXIT_PARENT_GONE = 3  # a child whose daemon died before it could ask to die with it
SETTINGS_REFUSED = "settings refused: "  # how a zygote's answer says the kernel refused a process setting
MAX_REQUEST = 1 << 20
SPARES = 2  # processes the zygote keeps forked ahead (see _serve)
SPARE_AFTER_S = 0.05  # quiet this long (no request) before a spare is forked
SPARE_RETRY_S = 1.0  # and this long after a spare could not be forked
MAX_OUTSTANDING = 16  # fork requests sent and not answered; more wait in the daemon
FIRST_ANSWER_S = 10.0  # the first answer waits for the zygote's imports
ANSWER_S = 5.0
LAUNCH_ENV = "SUNSETD_LAUNCH"  # sunsetd.protocol.LAUNCH_ENV (not imported: the zygote stays light)
DUMPABLE_ENV = "SUNSETD_DUMPABLE"  # "1" (sunsetd --dumpable): daemon, zygote and agents stay dumpable


def _load_prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()  # resolved once: a child between fork and exec must not load a library


def prctl(option: int, value: int | bytes) -> bool:
    return _PRCTL is not None and _PRCTL(option, value, 0, 0, 0) == 0


def become_subreaper() -> bool:
    """Orphaned descendants are reparented to us, not to init: forked agents become our children
    through it, and whatever an agent leaves behind lands here to be killed."""
    return prctl(PR_SET_CHILD_SUBREAPER, 1)


def keep_private() -> None:
    """Not dumpable: no core file, and no other process of our uid may ptrace us or read our memory,
    environment or descriptors in /proc, where the agents' secrets live. Reset by exec, so each of
    daemon, zygote and exec'd agent calls it; a forked agent inherits it. SUNSETD_DUMPABLE=1 keeps the
    default, for a benchmark that reads agents' PSS without root."""
    if os.environ.get(DUMPABLE_ENV) != "1":
        prctl(PR_SET_DUMPABLE, 0)


def die_with_parent(parent: int) -> None:
    """In a new child, before it runs code of its own: SIGKILL when its parent dies, and exit at once
    if that parent is gone already (the signal is armed only for a parent still alive). Called after
    any reparenting: the signal follows the parent of the moment it is armed."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent and os.getppid() != parent:
        os._exit(EXIT_PARENT_GONE)


def child_env(environ: Any) -> dict:
    """The environment of every child: the daemon's, without what belongs to the daemon alone."""
    env = dict(environ)
    env["PYTHONUNBUFFERED"] = "1"  # agent lines reach the log when printed, not when a buffer fills
    for name in ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", LAUNCH_ENV, STAMP_FDS_ENV):
        env.pop(name, None)  # sd_notify belongs to the daemon, never to an agent
    return env


class ForkServerError(OSError):
    """The zygote could not be started."""


class ForkServer:
    """The daemon's side: starts the zygote, pipelines fork requests, reads the answers."""

    def __init__(self, runtime_dir: Path, python: str = sys.executable, env: dict | None = None):
        self.runtime_dir = runtime_dir
        self.python = python
        self.env = child_env(os.environ if env is None else env)
        # set by the spawner that uses it (bind), before any fork request:
        self.make_pipes: Callable[[], tuple[dict, list[int]]]  # () -> ({read fd: (stream, reader)}, [w, w])
        self.on_forked: Callable[[Any, int, dict], None]  # (handle, pid, outputs)
        self.on_refused: Callable[[Any, Any, str], None]  # (handle, launch, why): this start failed in the zygote
        self.on_lost: Callable[[str, list], None]  # (why, [(handle, launch) not forked]): the zygote is gone
        self.sock: socket.socket | None = None
        self.proc: subprocess.Popen | None = None
        self._waiting: deque[tuple[Any, Any]] = deque()  # (handle, launch) not sent yet
        self._sent: dict[int, tuple[Any, Any, dict, float]] = {}  # seq -> (handle, launch, outputs, sent at)
        self._seq = 0
        self._answered = 0
        self.spares: set[int] = set()  # pids of the zygote's spares (see _serve): children of ours, idle

    def bind(self, make_pipes: Callable[[], tuple[dict, list[int]]], on_forked: Callable[[Any, int, dict], None],
             on_refused: Callable[[Any, Any, str], None], on_lost: Callable[[str, list], None]) -> None:
        self.make_pipes, self.on_forked, self.on_refused, self.on_lost = make_pipes, on_forked, on_refused, on_lost

    def start(self) -> "ForkServer":
        """Start the zygote and return at once: its imports go on while the daemon does the rest of its
        start (the first fork request simply waits for them)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [self.python, "-m", "sunsetd.forkserver", "--runtime-dir", str(self.runtime_dir),
                 str(theirs.fileno()), str(os.getpid())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=self.env, close_fds=True)
            procsettings.inherited_fd_limit(self.proc.pid)  # before its first fork: agents get what sunsetd was given
        except OSError as exc:
            ours.close()
            raise ForkServerError(f"cannot start the zygote: {exc}") from None
        finally:
            theirs.close()
        ours.setblocking(False)
        self.sock = ours
        return self

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def outstanding(self) -> int:
        return len(self._sent) + len(self._waiting)

    def submit(self, handle: Any, launch: Any) -> None:
        self._waiting.append((handle, launch))
        self._pump()

    def stuck(self) -> bool:
        if not self._sent:
            return False
        limit = ANSWER_S if self._answered else FIRST_ANSWER_S
        return time.monotonic() - min(s[3] for s in self._sent.values()) > limit

    def _pump(self) -> None:
        while self._waiting and len(self._sent) < MAX_OUTSTANDING and self.sock is not None:
            handle, launch = self._waiting[0]
            self._seq += 1
            settings = getattr(handle, "settings", None)
            stamp_fds = list(getattr(handle, "fork_fds", ()))  # its stamp pages: the spawner closes its copies
            request = json.dumps({"seq": self._seq, "launch": launch.encode(), "title": launch.title,
                                  "settings": None if settings is None or settings.empty else settings.to_wire(),
                                  "secret": getattr(handle, "secret", b"").hex()}).encode()
            try:
                outputs, write_ends = self.make_pipes()
            except OSError as exc:  # out of file descriptors: this start fails, the zygote is fine
                self._waiting.popleft()
                self.on_refused(handle, launch, f"cannot make its output pipes: {exc.strerror or exc}")
                continue
            try:
                self.sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                               array.array("i", write_ends + stamp_fds))])
            except BlockingIOError:
                for fd in list(outputs) + write_ends:
                    os.close(fd)
                return  # the zygote is behind: the next answer makes room
            except OSError as exc:
                for fd in list(outputs) + write_ends:
                    os.close(fd)
                self.lose(f"cannot send to the zygote: {exc.strerror or exc}")
                return
            for fd in write_ends:
                os.close(fd)  # in flight in the socket, the zygote receives its own copies
            self._waiting.popleft()
            self._sent[self._seq] = (handle, launch, outputs, time.monotonic())

    def on_readable(self) -> None:
        while self.sock is not None:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                self.lose(f"zygote socket: {exc.strerror or exc}")
                return
            if not data:
                self.lose("the zygote exited")
                return
            try:
                answer = json.loads(data)
                if "spare" in answer:  # forked ahead: our child, not an orphan, until it is handed a start
                    self.spares.add(int(answer["spare"]))
                    continue
                if "spare_gone" in answer:  # it died waiting: the stray sweep reaps it
                    self.spares.discard(int(answer["spare_gone"]))
                    continue
                handle, launch, outputs, _ = self._sent.pop(answer["seq"])
                pid = int(answer["pid"]) if "error" not in answer else None
            except (ValueError, KeyError, TypeError):
                self.lose(f"the zygote answered nonsense: {data[:80]!r}")
                return
            self._answered += 1
            self.spares.discard(pid)
            if pid is None:
                for fd in outputs:
                    os.close(fd)
                self.on_refused(handle, launch, str(answer["error"]))
            else:
                self.on_forked(handle, pid, outputs)
        self._pump()

    def lose(self, why: str) -> None:
        """Give up on this zygote: hand back every start it did not answer."""
        unanswered = [(h, launch) for h, launch, outputs, _ in self._sent.values()]
        for _h, _l, outputs, _ in self._sent.values():
            for fd in outputs:
                os.close(fd)
        unanswered += list(self._waiting)
        self._sent.clear()
        self._waiting.clear()
        self.on_lost(why, unanswered)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            # SIGKILL, not a polite EOF: the zygote holds nothing to save, and a graceful interpreter
            # teardown of everything it imported costs the daemon's exit about 50 ms
            self.proc.kill()
            self.proc.wait()
            self.proc = None


# ---- the zygote's side -----------------------------------------------------------------------------------

def _detach(daemon_pid: int, inherited: list[socket.socket]) -> None:
    """In a new child of the zygote: a session leader with the default signals, with none of the
    zygote's sockets, tied to the daemon's life once it is the daemon's child."""
    os.setsid()
    for sock in inherited:  # the daemon's socket and the spares': their peers must see them close
        os.close(sock.detach())  # (detached first: the object must never close the number again)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    deadline = time.monotonic() + 1.0
    while os.getppid() != daemon_pid:  # the intermediate is exiting; we are being handed to the daemon
        if time.monotonic() > deadline:
            os._exit(EXIT_PARENT_GONE)
        time.sleep(0.0005)
    # Only now: a parent-death signal armed before the reparenting would fire when the intermediate exits.
    die_with_parent(daemon_pid)


def _become_agent(request: dict, fds: list[int], base_env: dict) -> None:
    """Run the agent the request describes, with its output pipes and stamp pages (`fds`); never returns."""
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    for fd in fds[:2]:
        os.close(fd)
    os.environ.clear()
    os.environ.update(base_env)
    if request.get("settings"):
        # a uid or gid changed in the intermediate resets dumpable to fs.suid_dumpable: not dumpable again
        keep_private()
        os.environ.update(ProcessSettings.from_wire(request["settings"]).environment())
    os.environ[LAUNCH_ENV] = request["launch"]
    if len(fds) == 4:  # the agent runtime maps its stamp pages and closes these
        os.environ[STAMP_FDS_ENV] = f"{fds[2]},{fds[3]}"
    import random

    random.seed()  # a fork copies the zygote's generator: every agent would draw the same numbers
    from sunsetd.agent import main as agent_main  # pre-imported: only a dictionary lookup here

    sys.argv = ["sunsetd.agent", str(request["title"])]
    secret = bytes.fromhex(request.get("secret") or "")  # in memory only: never the environment or argv
    try:
        code = agent_main(secret)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    sys.stdout.flush()
    os._exit(code or 0)


def _spare(sock: socket.socket, daemon_pid: int, inherited: list[socket.socket], base_env: dict) -> None:
    """A spare: detached and the daemon's child already, it waits for the one request it will run."""
    _detach(daemon_pid, inherited)
    import setproctitle  # the zygote's: imported already

    setproctitle.setproctitle(setproctitle.getproctitle().replace("sunsetd-zygote", "sunsetd-spare", 1))
    from sunsetd.agent import prepare_context

    prepare_context()  # its I/O threads start now, not in the restart (no fork follows in a spare)
    request, fds = _receive(sock)
    sock.close()
    if request is None or len(fds) not in (2, 4):
        os._exit(0)  # the zygote is gone (or sent what it never sends): nothing to run
    _become_agent(request, fds, base_env)


def _receive(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """One request and its descriptors; (None, []) at the end of the stream."""
    fds = array.array("i")
    while True:
        try:
            data, ancdata, _flags, _addr = sock.recvmsg(MAX_REQUEST, socket.CMSG_SPACE(4 * fds.itemsize))
            break
        except InterruptedError:
            continue
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return (json.loads(data) if data else None), list(fds)


def _double_fork(child: Callable[[], None], settings: Any, announce: Callable[[int], None] | None = None) -> str:
    """Fork an intermediate that applies `settings`, forks `child` and exits, so that the child is
    reparented to the daemon (a subreaper). The child's pid, or "E" and why it could not be made.
    `announce(pid)` runs before the intermediate may exit: the daemon hears of a spare before it becomes
    the daemon's child, so its orphan sweep can never meet one it does not know."""
    r, w = os.pipe()
    go_r, go_w = os.pipe() if announce is not None else (-1, -1)
    try:
        middle = os.fork()
    except OSError as exc:
        for fd in (r, w, go_r, go_w):
            if fd >= 0:
                os.close(fd)
        return f"Efork failed: {exc.strerror or exc}"
    if middle == 0:  # the intermediate: fork the child, report its pid, exit so it is reparented
        try:
            os.close(r)
            if go_w >= 0:
                os.close(go_w)  # the zygote's copy alone: its close is the go-ahead
            if settings:  # the agent inherits them; a refusal is answered, not an agent death
                try:
                    procsettings.apply(ProcessSettings.from_wire(settings))
                except OSError as exc:
                    os.write(w, f"E{SETTINGS_REFUSED}{exc.strerror or exc}".encode()[:4000])
                    os._exit(0)
            pid = os.fork()
            if pid == 0:
                os.close(w)
                if go_r >= 0:
                    os.close(go_r)
                child()
            os.write(w, str(pid).encode())
            if go_r >= 0:
                os.read(go_r, 1)  # the zygote has announced it (or is gone: EOF)
        except BaseException as exc:  # never run on as a second zygote
            try:
                os.write(w, f"Efork failed: {exc}".encode()[:4000])
            finally:
                os._exit(0)
        os._exit(0)
    os.close(w)
    if go_r >= 0:
        os.close(go_r)
        answer = os.read(r, 4096).decode(errors="replace")
        if answer and not answer.startswith("E"):
            announce(int(answer))
        os.close(go_w)  # EOF: the intermediate may exit now
        os.waitpid(middle, 0)
        os.close(r)
        return answer or "Efork failed"
    os.waitpid(middle, 0)  # once it is reaped, the child is the daemon's
    answer = os.read(r, 4096).decode(errors="replace")
    os.close(r)
    return answer or "Efork failed"


def _serve(control: socket.socket, daemon_pid: int) -> None:
    """Fork what the daemon asks for. Between requests, keep SPARES processes forked ahead: a request
    without process settings is handed to one (a message, where two forks and the reparenting took
    most of a restart's 5 ms in the zygote), and the daemon learns each spare's pid before it may be
    answered with it, so that it never takes one for an orphan."""
    base_env = dict(os.environ)
    spares: deque[tuple[int, socket.socket]] = deque()

    def send(message: dict) -> None:
        control.send(json.dumps(message).encode())

    def inherited() -> list[socket.socket]:
        return [control] + [sock for _, sock in spares]

    def drop(pid: int, sock: socket.socket) -> None:
        sock.close()
        send({"spare_gone": pid})

    asked = False  # spares only once the daemon has asked for a fork: then it is a subreaper (ours reach it)
    spares_after = 0.0  # after a failed fork of a spare, none before this
    while True:
        idle = len(spares) >= SPARES or not asked
        # a spare is forked once no request came for SPARE_AFTER_S: not while the agent just started
        # (or the next of a burst) needs the CPU
        wait = None if idle else max(SPARE_AFTER_S, spares_after - time.monotonic())
        readable, _, _ = select.select([control] + [sock for _, sock in spares], [], [], wait)
        for pid, sock in [spare for spare in spares if spare[1] in readable]:  # a spare never writes: it died
            spares.remove((pid, sock))
            drop(pid, sock)
        if control not in readable:
            if not idle:  # nothing asked: fork a spare
                try:
                    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                except OSError:
                    spares_after = time.monotonic() + SPARE_RETRY_S
                    continue
                answer = _double_fork(lambda: _spare(theirs, daemon_pid, inherited() + [ours], base_env),
                                      None, announce=lambda pid: send({"spare": pid}))
                theirs.close()
                if answer.startswith("E"):  # out of processes for now: no spare, and no giving up
                    ours.close()
                    spares_after = time.monotonic() + SPARE_RETRY_S
                    continue
                spares.append((int(answer), ours))
            continue
        request, fds = _receive(control)
        if request is None:
            return  # the daemon closed its end (or died): nothing left to do
        asked = True
        if len(fds) not in (2, 4):  # stdout and stderr; then its stamp pages (sunsetd.stamps), if any
            for fd in fds:
                os.close(fd)
            send({"seq": request.get("seq"), "error": "expected two pipe ends"})
            continue
        handed = False
        while spares and not request.get("settings"):
            pid, sock = spares.popleft()
            if select.select([sock], [], [], 0)[0]:  # it died waiting
                drop(pid, sock)
                continue
            # The answer goes first: the spare, once woken, takes the CPU, and the daemon would wait for
            # it. Should it die in between, the daemon sees its child exit during its start.
            send({"seq": request["seq"], "pid": pid})
            try:
                sock.sendmsg([json.dumps(request).encode()],
                             [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            except OSError:
                pass
            sock.close()
            handed = True
            break
        if not handed:
            answer = _double_fork(lambda: (_detach(daemon_pid, inherited()), _become_agent(request, fds, base_env)),
                                  request.get("settings"))
            if answer.startswith("E"):
                send({"seq": request["seq"], "error": answer[1:]})
            else:
                send({"seq": request["seq"], "pid": int(answer)})
        for fd in fds:
            os.close(fd)


def _runtime_dir_of(argv: list[str]) -> str:
    return argv[argv.index("--runtime-dir") + 1] if "--runtime-dir" in argv[:-1] else "?"


def main() -> None:
    control_fd, daemon_pid = int(sys.argv[-2]), int(sys.argv[-1])
    die_with_parent(daemon_pid)
    keep_private()  # its children inherit it: agents' memory holds their secrets
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the daemon's to handle
    # What every agent needs, imported once here instead of in every agent (about 80 ms each).
    import msgpack  # noqa: F401
    import zmq  # noqa: F401

    import setproctitle

    import sunsetd.agent  # noqa: F401

    # also prepares setproctitle's memory once, here, so that each agent's own title is a cheap write
    setproctitle.setproctitle(f"sunsetd-zygote rundir={_runtime_dir_of(sys.argv)}")
    import gc

    gc.freeze()  # what was imported stays out of every collection: no child copies pages for the GC's sake
    _serve(socket.socket(fileno=control_fd), daemon_pid)


if __name__ == "__main__":
    main()
