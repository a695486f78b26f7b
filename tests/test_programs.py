"""Any program is an agent (#10 item 1): `command:` entries, supervised like Python agents. The profile
fields, the supervisor's handling on fakes, and real programs under a real daemon."""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import wait_until
from fakes import Harness, profile, spec
from sunsetd.client import RemoteError
from sunsetd.policy import State
from sunsetd.profile import ProfileError, load_profile
from sunsetd.protocol import Kind


def write(tmp_path: Path, agents: str) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text("name: p\ndefaults: {heartbeat_ms: 100, stop_timeout_s: 2}\nagents:\n" + agents)
    return p


# ---- the profile --------------------------------------------------------------------------------------

def test_command_is_an_argv_or_a_line_split_like_a_shell_never_run_through_one(tmp_path):
    p = load_profile(str(write(tmp_path, """
  - {name: A, command: [sleep, 60]}
  - {name: B, command: "sh -c 'echo \\"two words\\"; sleep 60'", stop_signal: INT}
""")))
    assert p.agent("A").command == ("sleep", "60") and p.agent("A").run == "" and p.agent("A").stop_signal == 15
    assert p.agent("B").command == ("sh", "-c", 'echo "two words"; sleep 60')
    assert p.agent("B").stop_signal == signal.SIGINT


def test_command_errors_are_one_line_each(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("not a program\n")
    with pytest.raises(ProfileError) as info:
        load_profile(str(write(tmp_path, """
  - {name: A, command: [no-such-program-anywhere]}
  - {name: B, command: [%(plain)s]}
  - {name: C, command: "sh -c 'unclosed"}
  - {name: D, command: [sleep, 1], run: 'agents.testing:Echo'}
  - {name: E, command: []}
  - {name: F, command: [sleep, 1], stop_signal: SIGNOPE}
  - {name: G}
""" % {"plain": plain})))
    joined = "\n".join(info.value.errors)
    assert all("\n" not in e for e in info.value.errors)
    for needle in ("agent 'A': field 'command': 'no-such-program-anywhere' not found on PATH",
                   f"agent 'B': field 'command': '{plain}': not executable",
                   "agent 'C': field 'command': cannot split it into words",
                   "agent 'D': give run (a Python agent) or command (a program), not both",
                   "agent 'E': field 'command': expected a non-empty list",
                   "agent 'F': field 'stop_signal': expected a signal name",
                   "agent 'G': field 'run': missing (or command, for a program)"):
        assert needle in joined, joined


def test_a_programs_path_is_the_one_it_will_have(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "mytool"
    tool.write_text("#!/bin/sh\nexec sleep 60\n")
    tool.chmod(0o755)
    p = load_profile(str(write(tmp_path, f"  - {{name: T, command: [mytool], env: {{PATH: '{bin_dir}:/usr/bin:/bin'}}}}\n")))
    assert p.agent("T").command == ("mytool",)


# ---- the supervisor, on fakes --------------------------------------------------------------------------

PROGRAMS = profile(spec("Db", run="", command=("db",)), spec("App", depends_on=("Db",)),
                   spec("Quiet", run="", command=("q",), stop_signal=signal.SIGINT))


def test_a_program_is_ready_once_it_runs_and_is_sent_no_heartbeats():
    h = Harness(PROGRAMS).start()
    db = h.spawner.latest("Db").start()  # no HELLO, ever
    assert h.state("Db") is State.READY and h.spawner.latest("App")  # its dependents start after it
    h.live(2.0)
    assert h.state("Db") is State.READY and Kind.HEARTBEAT not in h.channel.kinds("Db")
    db.exit(1)
    assert h.state("Db") in (State.STARTING, State.BACKOFF)  # the restart path of any agent


def test_requests_to_a_program_are_answered_at_once():
    h = Harness(PROGRAMS).start()
    h.spawner.latest("Db").start()
    h.request("Db")
    assert h.codes() == ["bad_request"] and "Db is a program (command:): it takes no requests" in h.replies[0].message


def test_a_program_is_asked_to_stop_with_its_stop_signal():
    h = Harness(PROGRAMS).start()
    h.spawner.latest("Quiet").start()
    h.sup.stop_agents(["Quiet"])
    assert h.spawner.latest("Quiet").signals == ["INT", "CONT"] and Kind.STOP not in h.channel.kinds("Quiet")


# ---- real programs, a real daemon -----------------------------------------------------------------------

HTTP = f"[{sys.executable}, -m, http.server, --bind, 127.0.0.1, '0']"


@pytest.mark.slow
@pytest.mark.parametrize("spawner", ["fork", "exec"])
def test_real_programs_are_supervised_like_agents(start_daemon, tmp_path, spawner):
    stubborn = tmp_path / "stubborn.sh"  # ignores SIGTERM, leaves on SIGINT, says so
    stubborn.write_text("#!/bin/sh\ntrap '' TERM\ntrap 'echo got INT; exit 0' INT\necho up\n"
                        "while :; do sleep 0.05; done\n")
    stubborn.chmod(0o755)
    daemonizer = tmp_path / "daemonize.py"  # what a careless server does: a grandchild in its own session
    daemonizer.write_text("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                          "        time.sleep(600)\n    os._exit(0)\nprint('detached', flush=True)\ntime.sleep(600)\n")
    profile_file = write(tmp_path, f"""
  - {{name: Http, command: {HTTP}}}
  - {{name: Stubborn, command: [{stubborn}], stop_signal: INT, depends_on: [Http]}}
  - {{name: Daemonizer, command: [{sys.executable}, {daemonizer}]}}
  - {{name: Echo, run: 'agents.testing:Echo', depends_on: [Stubborn]}}
""")
    d = start_daemon(profile_file, "--spawner", spawner)
    status = {a["name"]: a for a in d.status()["agents"]}
    assert all(a["state"] == "ready" for a in status.values()) and status["Http"]["program"]
    with pytest.raises(RemoteError) as info:
        d.call("Http", "anything")
    assert info.value.code == "bad_request"
    wait_until(lambda: "agent=Stubborn event=stdout msg=up" in d.log(), 5.0, what="its output in the log")
    # killed: restarted at once, as any agent
    old = status["Http"]["pid"]
    os.kill(old, signal.SIGKILL)
    d.wait_agent("Http", lambda a: a["state"] == "ready" and a["pid"] != old and a["incarnation"] == 2)
    # stopped with its own signal, gracefully (no SIGKILL after stop_timeout_s)
    t0 = time.monotonic()
    d.call("sunsetd", "stop", {"agent": "Stubborn"}, timeout=10)
    assert time.monotonic() - t0 < 1.5 and "got INT" in d.log() and "agent=Stubborn event=kill" not in d.log()
    # a program that daemonized: its detached grandchild does not outlive it
    wait_until(lambda: "detached" in d.log(), 5.0, what="the daemonizer's line")
    program = d.agent("Daemonizer")["pid"]
    grandchildren = [p for p in psutil.Process(d.proc.pid).children(recursive=True)
                     if p.pid != program and alive(p) and "daemonize" in " ".join(p.cmdline())]
    assert grandchildren, "the detached grandchild should exist while the program runs"
    d.call("sunsetd", "stop", {"agent": "Daemonizer"}, timeout=10)
    wait_until(lambda: not any(alive(p) for p in grandchildren), 10.0, what="the detached grandchild to be killed")


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
