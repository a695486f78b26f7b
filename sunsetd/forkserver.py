"""Fork server: agents forked from a pre-imported zygote instead of a fresh interpreter (DESIGN §7).

A new interpreter spends about 80 ms importing zmq, msgpack and the agent runtime before an agent can
even load; a fork of a process that already holds them costs about 2 ms. The zygote is one long-lived
child of the daemon that imports the runtime once, never starts a thread or a ZeroMQ context (neither
survives fork), and forks each agent on request. The agent's own module is imported after the fork, so
code changed on disk is picked up at the next start, as with exec.

The agent must be the daemon's child (pidfds, reaping, PR_SET_PDEATHSIG all assume it), so the zygote
double-forks: the intermediate exits at once and the agent is reparented to the daemon, which made
itself a child subreaper. Each request carries the agent's environment and, as SCM_RIGHTS, the write
ends of its stdout and stderr pipes; the reply is the agent's pid.
"""
from __future__ import annotations

import array
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
MAX_REQUEST = 1 << 20


def _prctl(option: int, value: int | bytes) -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """Orphaned descendants are reparented to us (not to init): how forked agents become our children."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


class ForkServerError(OSError):
    """The zygote is gone or answered nonsense; the spawner falls back to exec."""


class ForkServer:
    """The daemon's side: starts the zygote and asks it for agents."""

    def __init__(self, runtime_dir: Path, python: str = sys.executable, env: dict | None = None):
        self.runtime_dir = runtime_dir
        self.python = python
        self.env = dict(os.environ if env is None else env)
        self.sock: socket.socket | None = None
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(
            [self.python, "-m", "sunsetd.forkserver", "--runtime-dir", str(self.runtime_dir), str(theirs.fileno()),
             str(os.getpid())],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=self.env, close_fds=True)
        theirs.close()
        self.sock = ours
        self.sock.settimeout(10.0)  # the first answer waits for the zygote's imports
        self._ask({"op": "hello"}, [])

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _ask(self, request: dict, fds: list[int]) -> dict:
        if self.sock is None:
            raise ForkServerError("fork server not running")
        try:
            self.sock.sendmsg([json.dumps(request).encode()],
                              [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else [])
            data = self.sock.recv(65536)
        except OSError as exc:
            self.close()
            raise ForkServerError(f"fork server: {exc}") from None
        if not data:
            self.close()
            raise ForkServerError("fork server exited")
        reply = json.loads(data)
        if "error" in reply:
            raise ForkServerError(reply["error"])
        return reply

    def fork(self, env: dict[str, str], title: str, stdout_w: int, stderr_w: int) -> int:
        self.sock.settimeout(2.0)
        return int(self._ask({"op": "fork", "env": env, "title": title}, [stdout_w, stderr_w])["pid"])

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

def _agent_child(request: dict, fds: list[int], control: socket.socket, daemon_pid: int) -> None:
    """In the forked agent: become a session leader with our pipes and environment, then run the agent."""
    os.setsid()
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    for fd in fds:
        os.close(fd)
    control.close()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(request["env"])
    _prctl(PR_SET_NAME, request["title"].encode()[:15])
    import random

    random.seed()  # a fork copies the zygote's generator: every agent would draw the same numbers
    deadline = time.monotonic() + 1.0
    while os.getppid() != daemon_pid:  # the intermediate is exiting; we are being handed to the daemon
        if time.monotonic() > deadline:
            os._exit(3)
        time.sleep(0.0005)
    from sunsetd.agent import main as agent_main  # pre-imported: only a dictionary lookup here

    sys.argv = ["sunsetd.agent", request["title"]]
    try:
        code = agent_main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    sys.stdout.flush()
    os._exit(code or 0)


def _serve(control: socket.socket, daemon_pid: int) -> None:
    while True:
        fds = array.array("i")
        try:
            data, ancdata, _flags, _addr = control.recvmsg(MAX_REQUEST, socket.CMSG_SPACE(2 * fds.itemsize))
        except InterruptedError:
            continue
        if not data:
            return  # the daemon closed its end (or died): nothing left to do
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        request = json.loads(data)
        if request.get("op") == "hello":
            control.send(json.dumps({"pid": os.getpid()}).encode())
            continue
        r, w = os.pipe()
        middle = os.fork()
        if middle == 0:  # the intermediate: fork the agent, report its pid, exit so it is reparented
            os.close(r)
            agent = os.fork()
            if agent == 0:
                os.close(w)
                _agent_child(request, list(fds), control, daemon_pid)
            os.write(w, str(agent).encode())
            os._exit(0)
        os.close(w)
        for fd in fds:
            os.close(fd)
        os.waitpid(middle, 0)
        pid = os.read(r, 32).decode()
        os.close(r)
        control.send(json.dumps({"pid": int(pid)} if pid else {"error": "fork failed"}).encode())


def main() -> None:
    control_fd, daemon_pid = int(sys.argv[-2]), int(sys.argv[-1])
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != daemon_pid:
        os._exit(3)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the daemon's to handle
    # What every agent needs, imported once here instead of in every agent (about 80 ms each).
    import msgpack  # noqa: F401
    import zmq  # noqa: F401

    import sunsetd.agent  # noqa: F401
    _serve(socket.socket(fileno=control_fd), daemon_pid)


if __name__ == "__main__":
    main()
