"""Agents for tests, benchmarks and the chaos harness: not part of the reference catalog.

Each does one controllable thing, so a test can make an agent answer, sleep, fail, crash mid-request,
crash at start, start slowly or grow its memory, without editing the agents under test.
"""
from __future__ import annotations

import ctypes
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sunsetd.agent import Agent, AgentError, BadRequest


class Echo(Agent):
    """Answers with what it is sent; ops to sleep, fail, crash, allocate, and call another agent."""

    def setup(self) -> None:
        self.ballast: list[bytearray] = []
        self.handle_alloc(self.config.get("ballast_mb", 0))  # held like a model's weights
        delay = float(self.config.get("setup_s", 0))
        if delay:
            time.sleep(delay)

    def teardown(self) -> None:
        """With config `teardown_call` (an agent name): ping it on the way out, through sunsetd."""
        if self.config.get("teardown_call"):
            self.log(f"teardown call: {self.call(self.config['teardown_call'], 'ping', timeout=2.0)}")

    def handle_echo(self, body: Any) -> Any:
        return body

    def handle_pid(self, body: Any) -> int:
        """This process's pid, after sleeping `body` seconds if given (to be in flight for a while)."""
        if isinstance(body, (int, float)) and body > 0:
            time.sleep(body)
        return os.getpid()

    def handle_process(self, body: Any) -> dict:
        """What this process was given: its directory, umask, nice, user and groups, limits, and the
        environment variables named in `body`."""
        import resource

        umask = os.umask(0)
        os.umask(umask)
        return {"cwd": os.getcwd(), "umask": f"{umask:04o}", "nice": os.getpriority(os.PRIO_PROCESS, 0),
                "uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
                "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
                "as": list(resource.getrlimit(resource.RLIMIT_AS)), "core": list(resource.getrlimit(resource.RLIMIT_CORE)),
                "dumpable": ctypes.CDLL(None).prctl(3, 0, 0, 0, 0) == 1,  # PR_GET_DUMPABLE
                "env": {name: os.environ.get(name) for name in (body or [])}}

    def handle_sleep(self, body: Any) -> float:
        seconds = body.get("s") if isinstance(body, dict) else body
        if not isinstance(seconds, (int, float)) or seconds < 0:
            raise BadRequest("sleep needs a number of seconds")
        time.sleep(seconds)
        return seconds

    def handle_fail(self, body: Any) -> None:
        raise AgentError(f"failed on purpose: {body}")

    def handle_say(self, body: Any) -> None:
        """Print `body` on stdout and on stderr: the daemon logs both, tagged with our name."""
        self.log(f"said {body}")
        print(f"complained {body}", file=sys.stderr, flush=True)

    def handle_hang(self, body: Any) -> None:
        """Sleep `body` seconds inside C while holding the GIL: the whole process, heartbeats and SIGTERM
        handling included, is wedged, as with a C extension stuck in a call."""
        ctypes.PyDLL(None).sleep(int(body or 60))

    def handle_random(self, body: Any) -> float:
        return random.random()

    def handle_detach(self, body: Any) -> int:
        """Start `sleep 60` in a session of its own, out of our process group: what a careless agent
        leaves behind when it dies. Returns its pid."""
        return subprocess.Popen(["sleep", "60"], start_new_session=True).pid

    def handle_crash(self, body: Any) -> None:
        os._exit(int(body or 1))

    def handle_impersonate(self, body: Any) -> int:
        """A compromised agent: from this process (admitted as this incarnation), a second connection to
        the agents socket under routing id `body` sends HELLO, READY, HEARTBEAT and a forged REPLY to
        request id 1. Returns the frames sent."""
        import msgpack
        import zmq

        from sunsetd.protocol import LAUNCH_ENV, Launch

        launch = Launch.decode(os.environ[LAUNCH_ENV])
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, str(body).encode())
        sock.setsockopt(zmq.LINGER, 2000)
        sock.connect(launch.agents_endpoint)
        name, _, incarnation = str(body).partition("#")
        frames = [[b"HELLO", msgpack.packb({"name": name, "pid": os.getpid(), "incarnation": int(incarnation or 1),
                                            "secret": b"\0" * 32})],
                  [b"READY", msgpack.packb({})], [b"HEARTBEAT"],
                  [b"REPLY", msgpack.packb({"id": 1, "ok": True, "body": "forged"})]]
        for f in frames:
            sock.send_multipart(f)
        sock.close()
        return len(frames)

    def handle_squat(self, body: Any) -> bool:
        """A compromised agent that guesses another incarnation's routing id (`body`) and holds it: a
        second connection from this process, kept open, so that incarnation would be refused as a duplicate
        if the id were guessable."""
        import zmq

        from sunsetd.protocol import LAUNCH_ENV, Launch

        launch = Launch.decode(os.environ[LAUNCH_ENV])
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, str(body).encode())
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(launch.agents_endpoint)
        try:
            sock.send_multipart([b"HEARTBEAT"], zmq.NOBLOCK)  # queued until its connection is up
        except zmq.Again:
            pass
        self._squatters = getattr(self, "_squatters", []) + [sock]
        return True

    def handle_alloc(self, body: Any) -> int:
        """Hold `body` more MiB (touched, so they count in RSS)."""
        for _ in range(int(body)):  # 1 MiB at a time: one huge C-level copy would hold the GIL for long
            self.ballast.append(bytearray(b"\x01" * (1 << 20)))
        return sum(len(b) for b in self.ballast) >> 20

    def handle_relay(self, body: Any) -> Any:
        """Call body['to'].body['op'] with body['body'] through sunsetd."""
        return self.call(body["to"], body["op"], body.get("body"), timeout=float(body.get("timeout", 5.0)))


class CrashAtStart(Agent):
    """Exits with code 1 during setup; with config `arm_file`, only while that file exists."""

    def setup(self) -> None:
        arm_file = self.config.get("arm_file")
        if arm_file is None or Path(arm_file).exists():
            raise RuntimeError("crashing at start on purpose")

    def handle_echo(self, body: Any) -> Any:
        return body
