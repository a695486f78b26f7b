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
    popen: subprocess.Popen
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
        code = self.popen.wait()
        self.reaped = True
        os.close(self.pidfd)
        return code

    def close_output(self, fd: int) -> None:
        self.outputs.pop(fd, None)
        os.close(fd)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Spawner(Protocol):
    def spawn(self, spec: AgentSpec, incarnation: int) -> AgentProcess: ...


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

    def spawn(self, spec: AgentSpec, incarnation: int) -> AgentProcess:
        agent_spec = {
            "name": spec.name, "run": spec.run, "incarnation": incarnation, "config": spec.config,
            "runtime_dir": str(self.runtime_dir), "heartbeat_ms": spec.heartbeat_ms, "liveness": spec.liveness,
            "concurrency": spec.concurrency, "stop_timeout_s": spec.stop_timeout_s, "daemon_pid": os.getpid(),
        }
        env = dict(self.env)
        env[SPEC_ENV] = json.dumps(agent_spec)
        popen = subprocess.Popen(
            [self.python, "-m", "sunsetd.agent", f"{spec.name}#{incarnation}", "--runtime-dir", str(self.runtime_dir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            close_fds=True,
            start_new_session=True,  # own session and process group: signals reach all of it, never us
        )
        try:
            pidfd = os.pidfd_open(popen.pid)
        except OSError:
            popen.kill()
            popen.wait()
            raise
        proc = AgentProcess(pid=popen.pid, pidfd=pidfd, popen=popen)
        for stream, pipe in (("stdout", popen.stdout), ("stderr", popen.stderr)):
            fd = os.dup(pipe.fileno())
            pipe.close()
            os.set_blocking(fd, False)
            proc.outputs[fd] = (stream, LineReader(fd))
        popen.stdout = popen.stderr = None
        return proc
