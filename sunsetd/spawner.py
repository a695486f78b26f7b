"""Spawner: creates agent processes and the handles the event loop watches (DESIGN §1, §3).

Owns every OS call about processes: fork/exec, pidfds, process groups, signals, reaping, and the
pipes of the agents' stdout and stderr. It decides nothing: the supervisor says when to start and
stop. `Spawner` is an interface so a pre-forked zygote or a remote placement can replace `ExecSpawner`
without touching the supervisor.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

from sunsetd.agent import SPEC_ENV
from sunsetd.profile import AgentSpec

MAX_LINE = 16 * 1024  # a longer line is cut, so one agent cannot make the daemon buffer without bound


class LineReader:
    """Non-blocking reader of one pipe, yielding whole lines (a partial line waits for its newline)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.partial = b""

    def read(self) -> tuple[list[str], bool]:
        """(lines, eof)."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return [], False
        except OSError:
            data = b""
        if not data:
            rest = [self.partial.decode(errors="replace")] if self.partial else []
            self.partial = b""
            return rest, True
        chunks = (self.partial + data).split(b"\n")
        self.partial = chunks.pop()
        if len(self.partial) > MAX_LINE:
            chunks.append(self.partial[:MAX_LINE] + b" [line cut]")
            self.partial = b""
        return [c.decode(errors="replace") for c in chunks], False


@dataclass
class AgentProcess:
    """One running incarnation: its pid, a pidfd that becomes readable at exit, and its output pipes."""

    pid: int
    pidfd: int
    popen: subprocess.Popen | None  # None when forked by the fork server
    outputs: dict[int, tuple[str, LineReader]] = field(default_factory=dict)  # fd -> (stream, reader)
    started_at: float = field(default_factory=time.monotonic)
    reaped: bool = False

    def signal_group(self, sig: int) -> None:
        """Signal the agent's whole process group (it leads its own session), ignoring a gone group."""
        if self.reaped:
            return  # never signal a reaped pid: the number may belong to someone else by now
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def reap(self) -> int:
        """Collect the exit status (the pidfd said it exited), after killing what is left of its group.

        Until reaped, the zombie leader keeps the process-group id reserved, so the killpg cannot hit an
        unrelated group: leftover children of the agent die with it, and none is orphaned.
        """
        self.signal_group(signal.SIGKILL)
        code = self.popen.wait() if self.popen is not None else _wait_child(self.pid)
        self.reaped = True
        os.close(self.pidfd)
        return code

    def close_output(self, fd: int) -> None:
        self.outputs.pop(fd, None)
        os.close(fd)


def _wait_child(pid: int) -> int:
    """Exit code of a forked agent. One that died within a millisecond of its fork may still be the
    zygote's intermediate's child for a moment: it is ours (we are a subreaper) once that one exits."""
    deadline = time.monotonic() + 1.0
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            if time.monotonic() > deadline:
                return -signal.SIGKILL  # never ours after all; it is gone, which is what matters
            time.sleep(0.001)


def _pipes() -> tuple[dict[int, tuple[str, LineReader]], list[int]]:
    """Non-blocking read ends for stdout and stderr, and the write ends to hand to the child."""
    outputs, write_ends = {}, []
    for stream in ("stdout", "stderr"):
        r, w = os.pipe()
        os.set_blocking(r, False)
        outputs[r] = (stream, LineReader(r))
        write_ends.append(w)
    return outputs, write_ends


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


def reap_strays(known: set[int], kill: bool) -> list[tuple[int, str]]:
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
        except psutil.Error:
            pass
        try:
            os.waitpid(proc.pid, os.WNOHANG)  # never block the loop: a killed one is reaped at its SIGCHLD
        except ChildProcessError:
            pass
    return killed


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Spawner(Protocol):
    def spawn(self, spec: AgentSpec, incarnation: int) -> AgentProcess: ...
    def known_pids(self) -> set[int]: ...
    def close(self) -> None: ...


class ExecSpawner:
    """Starts each agent as `python -m sunsetd.agent` in its own session, with its spec in the environment."""

    def __init__(self, runtime_dir: Path, python: str = sys.executable, env: dict | None = None):
        self.runtime_dir = runtime_dir
        self.python = python
        self.env = dict(os.environ if env is None else env)
        self.env["PYTHONUNBUFFERED"] = "1"  # agent lines reach the log when printed, not when a buffer fills
        self.env.pop("NOTIFY_SOCKET", None)  # sd_notify belongs to the daemon, never to an agent
        self.env.pop("WATCHDOG_PID", None)
        self.env.pop("WATCHDOG_USEC", None)

    def agent_env(self, spec: AgentSpec, incarnation: int) -> dict[str, str]:
        agent_spec = {
            "name": spec.name, "run": spec.run, "incarnation": incarnation, "config": spec.config,
            "runtime_dir": str(self.runtime_dir), "heartbeat_ms": spec.heartbeat_ms, "liveness": spec.liveness,
            "concurrency": spec.concurrency, "stop_timeout_s": spec.stop_timeout_s, "daemon_pid": os.getpid(),
        }
        return {**self.env, SPEC_ENV: json.dumps(agent_spec)}

    def spawn(self, spec: AgentSpec, incarnation: int) -> AgentProcess:
        outputs, (out_w, err_w) = _pipes()
        try:
            popen = subprocess.Popen(
                [self.python, "-m", "sunsetd.agent", f"{spec.name}#{incarnation}", "--runtime-dir",
                 str(self.runtime_dir)],
                stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w, env=self.agent_env(spec, incarnation),
                close_fds=True,
                start_new_session=True,  # own session and process group: signals reach all of it, never us
            )
        except OSError:
            for fd in outputs:
                os.close(fd)
            raise
        finally:
            os.close(out_w)  # the child holds its own copies
            os.close(err_w)
        try:
            pidfd = os.pidfd_open(popen.pid)
        except OSError:
            popen.kill()
            popen.wait()
            raise
        return AgentProcess(pid=popen.pid, pidfd=pidfd, popen=popen, outputs=outputs)

    def known_pids(self) -> set[int]:
        return set()

    def close(self) -> None:
        pass


class ForkSpawner:
    """Forks agents from a pre-imported zygote (sunsetd.forkserver); execs when the zygote fails."""

    def __init__(self, runtime_dir: Path, python: str = sys.executable, env: dict | None = None):
        from sunsetd.forkserver import ForkServer, become_subreaper

        self.exec = ExecSpawner(runtime_dir, python, env)
        self.server: "ForkServer | None" = None
        if become_subreaper():
            self.server = ForkServer(runtime_dir, python, self.exec.env)
            self.server.start()
        self.failures = 0

    def spawn(self, spec: AgentSpec, incarnation: int) -> AgentProcess:
        from sunsetd.forkserver import ForkServerError

        if self.server is None:
            return self.exec.spawn(spec, incarnation)
        outputs, (out_w, err_w) = _pipes()
        try:
            pid = self.server.fork(self.exec.agent_env(spec, incarnation), f"{spec.name}#{incarnation}", out_w, err_w)
        except ForkServerError:
            for fd in outputs:
                os.close(fd)
            self._replace_server()
            return self.exec.spawn(spec, incarnation)
        finally:
            os.close(out_w)
            os.close(err_w)
        return AgentProcess(pid=pid, pidfd=os.pidfd_open(pid), popen=None, outputs=outputs)

    def _replace_server(self) -> None:
        from sunsetd.forkserver import ForkServer, ForkServerError

        self.failures += 1
        self.server.close()
        self.server = None
        if self.failures > 3:
            return  # a zygote that keeps dying is not worth it: exec from then on
        try:
            self.server = ForkServer(self.exec.runtime_dir, self.exec.python, self.exec.env)
            self.server.start()
        except (ForkServerError, OSError, ValueError):
            self.server = None

    def known_pids(self) -> set[int]:
        return {self.server.pid} if self.server is not None and self.server.pid else set()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
