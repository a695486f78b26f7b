"""Any program is an agent (#10 item 1): `command:` entries, supervised like Python agents. The profile
fields, the supervisor's handling on fakes, and real programs under a real daemon."""
from __future__ import annotations

import os
import shutil
import signal
import socket
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


# ---- probes -----------------------------------------------------------------------------------------------

from sunsetd import probes  # noqa: E402


def test_probe_fields_and_their_errors():
    p = probes.parse({"http": "http://127.0.0.1:8080/health", "interval_ms": 50}, health=False)
    assert (p.kind, p.interval_ms, p.timeout_ms, p.failures) == ("http", 50, 1000, 1)
    h = probes.parse({"tcp": "localhost:5432", "failures": 2}, health=True)
    assert (h.target, h.interval_ms, h.timeout_ms, h.failures) == (("localhost", 5432), 1000, 500, 2)
    assert probes.parse({"exec": "pg_isready -q"}, health=True).target == ("pg_isready", "-q")
    assert probes.parse({"log": r"listening on \d+"}, health=False).kind == "log"
    for bad, health, message in (({"log": "x"}, True, "exactly one of http, tcp, exec"),
                                 ({"http": "ftp://x"}, False, "expected a URL"),
                                 ({"tcp": "nohostport"}, False, "HOST:PORT"),
                                 ({"tcp": "h:1", "http": "http://h/"}, False, "exactly one"),
                                 ({"tcp": "h:1", "failures": 2}, False, "unknown field 'failures'"),
                                 ({"tcp": "h:1", "interval_ms": 0}, True, "interval_ms"),
                                 ({"log": "("}, False, "not a regular expression")):
        with pytest.raises(ValueError, match=message):
            probes.parse(bad, health)


def test_probes_are_for_programs(tmp_path):
    with pytest.raises(ProfileError) as info:
        load_profile(str(write(tmp_path, "  - {name: A, run: 'agents.testing:Echo', ready: {tcp: 'h:1'}}\n")))
    assert "field 'ready': probes are for programs" in info.value.errors[0]


class FakeProber:
    """Probes answered by hand."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def run(self, probe, done):
        self.calls.append((probe, done))
        return lambda: self.calls.remove((probe, done)) if (probe, done) in self.calls else None

    def answer(self, ok: bool, what: str = "") -> None:
        probe, done = self.calls.pop(0)
        done(ok, what)


def probed(ready=None, health=None) -> tuple[Harness, FakeProber]:
    prober = FakeProber()
    h = Harness(profile(spec("P", run="", command=("p",), ready=ready, health=health, start_timeout_s=5.0)))
    h.sup.prober = prober
    h.start()
    h.spawner.latest("P").start()
    return h, prober


def test_a_ready_probe_is_tried_until_it_passes():
    h, prober = probed(ready=probes.Probe("tcp", ("h", 1), 100, 1000))
    assert h.state("P") is State.STARTING
    prober.answer(False, "connect: ECONNREFUSED")
    assert h.state("P") is State.STARTING and not prober.calls
    h.clock.advance(0.1)
    prober.answer(True, "connected")
    assert h.state("P") is State.READY and h.sup.agent_status("P", h.clock.now)["probe"]["what"] == "connected"


def test_a_ready_probe_that_never_passes_is_a_failed_start():
    h, prober = probed(ready=probes.Probe("tcp", ("h", 1), 100, 1000))
    for _ in range(60):
        if prober.calls:
            prober.answer(False, "refused")
        h.clock.advance(0.1)
    assert h.state("P") is State.STOPPING and h.sup.slots["P"].lifecycle.reason == "not ready within start_timeout_s=5"
    assert not prober.calls  # and no more probing of the incarnation being stopped


def test_health_failures_in_a_row_take_the_hung_path():
    h, prober = probed(health=probes.Probe("http", "http://h/", 1000, 500, failures=3))
    assert h.state("P") is State.READY  # no ready probe: ready once it runs
    for k in range(2):
        h.clock.advance(1.0)
        prober.answer(False, "no answer within 500 ms")
        assert h.state("P") is State.READY
    h.clock.advance(1.0)
    prober.answer(True, "HTTP 200")  # a success resets the count
    for _ in range(3):
        h.clock.advance(1.0)
        prober.answer(False, "no answer within 500 ms")
    assert h.state("P") is State.STOPPING
    assert "health probe failed 3 time(s) in a row: no answer within 500 ms" in h.sup.slots["P"].lifecycle.reason
    assert not prober.calls  # nothing probes a program that is being stopped


@pytest.mark.slow
def test_a_frozen_http_server_is_found_by_its_health_probe_and_restarted(start_daemon, tmp_path):
    import socket as _socket

    with _socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    checker = tmp_path / "ready.sh"
    checker.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 1)'\n")
    checker.chmod(0o755)
    profile_file = write(tmp_path, f"""
  - name: Web
    command: [{sys.executable}, -u, -m, http.server, --bind, 127.0.0.1, '{port}']
    ready: {{http: "http://127.0.0.1:{port}/", interval_ms: 50}}
    health: {{http: "http://127.0.0.1:{port}/", interval_ms: 200, timeout_ms: 300, failures: 2}}
    start_timeout_s: 10
  - name: Tcp
    command: [sleep, '600']
    ready: {{exec: [{checker}], interval_ms: 50}}
    depends_on: [Web]
  - name: Logged
    command: [sh, -c, 'sleep 0.3; echo "listening now"; exec sleep 600']
    ready: {{log: 'listening \\w+'}}
""")
    d = start_daemon(profile_file)
    web = d.agent("Web")
    assert web["state"] == "ready" and web["probe"]["kind"] in ("ready", "health") and web["probe"]["ok"]
    assert d.agent("Tcp")["probe"]["what"] == "exit code 0" and d.agent("Logged")["state"] == "ready"
    os.kill(web["pid"], signal.SIGSTOP)  # alive, and answering nothing
    restarted = d.wait_agent("Web", lambda a: a["incarnation"] == 2 and a["state"] == "ready", timeout=20)
    assert restarted["restarts"] == 1
    assert 'reason="health probe failed 2 time(s) in a row: no answer within 300 ms' in d.log()


# ---- found in review ------------------------------------------------------------------------------------

def program(**overrides):
    return spec("P", **{"run": "", "command": ("p",), "start_timeout_s": 5.0, **overrides})


def test_a_spawn_failure_that_stays_stopped_is_not_spawned_again():
    """It was, at once and for ever: the daemon spun in its loop and ignored SIGTERM."""
    from sunsetd.profile import RestartMode

    h = Harness(profile(program(restart=RestartMode.NEVER))).start()
    h.spawner.latest("P").fail_to_spawn("cwd /x: no such directory")
    h.live(1.0)
    assert h.spawner.names() == ["P#1"] and h.state("P") is State.STOPPED


def test_a_reload_stops_the_old_incarnation_the_way_it_was_started():
    from sunsetd import reload

    h = Harness(profile(program(stop_signal=signal.SIGINT))).start()
    old = h.spawner.latest("P").start()
    h.sup.reload(reload.plan(h.sup.profile.by_name, profile(program(stop_signal=signal.SIGTERM))), lambda o: None)
    assert old.signals[:1] == ["INT"]


def test_probe_targets_the_daemon_cannot_use_are_answered_not_crashed_on():
    from sunsetd.loop import EventLoop
    from sunsetd.timers import Timers

    with pytest.raises(ValueError, match="expected a URL"):
        probes.parse({"http": "http://127.0.0.1:99999/"}, health=False)
    with pytest.raises(ValueError, match="expected a URL"):
        probes.parse({"http": "http://h:abc/"}, health=False)
    timers = Timers()
    loop = EventLoop(timers)
    results: list = []
    probes.Prober(loop, timers, None).run(probes.parse({"tcp": "no-such-host.invalid:80"}, False),
                                          lambda ok, what: results.append((ok, what)))
    for _ in range(50):
        if results:
            break
        loop.run_once(0.05)
    assert results and results[0][0] is False


def test_a_lazy_program_is_a_profile_error(tmp_path):
    with pytest.raises(ProfileError) as info:
        load_profile(str(write(tmp_path, "  - {name: P, command: [sleep, 1], lazy: true}\n")))
    assert "field 'lazy': a program takes no requests" in info.value.errors[0]


# ---- sd_notify ----------------------------------------------------------------------------------------------

def notify_command(fields: str) -> str:
    """A shell command that sends `fields` the way programs written for systemd do."""
    if shutil.which("systemd-notify"):
        return f"systemd-notify {fields}"
    sender = ("import os, socket, sys; a = os.environ['NOTIFY_SOCKET']; s = socket.socket(socket.AF_UNIX, "
              "socket.SOCK_DGRAM); s.sendto('\\n'.join(sys.argv[1:]).encode(), '\\0' + a[1:] if a[0] == '@' else a)")
    return f"{sys.executable} -c \"{sender}\" {fields.replace('--ready', 'READY=1')}"


def test_notify_fields_and_their_errors():
    p = probes.parse({"notify": True, "watchdog_ms": 500}, health=False)
    assert (p.kind, p.watchdog_ms) == ("notify", 500) and p.describe() == "notify (watchdog 500ms)"
    for bad, says in (({"notify": "yes"}, "notify: expected true"),
                      ({"notify": True, "interval_ms": 5}, "unknown field"),
                      ({"notify": True, "watchdog_ms": 1}, "watchdog_ms: expected an integer")):
        with pytest.raises(ValueError) as info:
            probes.parse(bad, health=False)
        assert says in str(info.value)
    with pytest.raises(ValueError):
        probes.parse({"notify": True}, health=True)  # a liveness probe is the watchdog, not a second notify


@pytest.mark.slow
def test_a_shell_program_reports_ready_status_and_watchdog_through_its_notify_socket(start_daemon, tmp_path):
    beating = tmp_path / "beating.sh"
    beating.write_text(f"#!/bin/sh\nsleep 0.2\n{notify_command('--ready --status=serving')}\n"
                       f"while :; do {notify_command('WATCHDOG=1')}; sleep 0.1; done\n")
    silent = tmp_path / "silent.sh"  # ready, then never pets its watchdog
    silent.write_text(f"#!/bin/sh\n{notify_command('--ready')}\nexec sleep 600\n")
    waiting = tmp_path / "waiting.sh"  # never says READY=1 itself
    waiting.write_text("#!/bin/sh\nexec sleep 600\n")
    for script_file in (beating, silent, waiting):
        script_file.chmod(0o755)
    d = start_daemon(write(tmp_path, f"""
  - {{name: Beating, command: [{beating}], ready: {{notify: true, watchdog_ms: 1000}}}}
  - {{name: Silent, command: [{silent}], ready: {{notify: true, watchdog_ms: 300}}, essential: false}}
  - {{name: Waiting, command: [{waiting}], ready: {{notify: true}}, essential: false, start_timeout_s: 30}}
"""))
    beating_now = d.wait_agent("Beating", lambda a: a["state"] == "ready", timeout=15)
    assert beating_now["status_text"] == "serving" and beating_now["probe"]["what"] == "notify READY=1"
    # a silent watchdog is a hang: restarted on the same path
    d.wait_agent("Silent", lambda a: a["restarts"] >= 1, timeout=15)
    assert "watchdog: no WATCHDOG=1 for" in d.log()
    # a process outside the program's session cannot make it ready, even with its socket's name
    waiting_pid = d.agent("Waiting")["pid"]
    environ = dict(v.split("=", 1) for v in Path(f"/proc/{waiting_pid}/environ").read_text().split("\0") if "=" in v)
    address = environ["NOTIFY_SOCKET"]
    assert address.startswith("@sunsetd/") and "WATCHDOG_USEC" not in environ
    stranger = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stranger.sendto(b"READY=1", "\0" + address[1:])
    stranger.close()
    wait_until(lambda: "agent=Waiting event=notify" in d.log(), 5.0, what="the stranger's datagram dropped")
    assert d.agent("Waiting")["state"] == "starting"
    time.sleep(1.5)  # Beating's watchdog (1 s) was petted all along
    assert d.agent("Beating")["restarts"] == 0 and d.agent("Beating")["incarnation"] == 1


def test_a_notify_socket_has_an_unguessable_name_and_a_flood_cannot_hold_the_loop():
    # found by attacking it: names counted up from 1 could be squatted by any local user (the program then
    # could not start), and a flood of datagrams was read until none was left, stalling the event loop
    from sunsetd.notify import BATCH, NotifySocket

    first, second = NotifySocket(), NotifySocket()
    try:
        assert first.address != second.address and len(first.address.rsplit("/", 1)[1]) == 16
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        sent = 0
        try:
            while sent < 3 * BATCH:  # as many as the kernel queues (net.unix.max_dgram_qlen, often 10)
                sender.sendto(f"STATUS={sent}".encode(), "\0" + first.address[1:])
                sent += 1
        except BlockingIOError:
            pass
        sender.close()
        most = max(1, sent // 3)
        got = [len(first.receive(most)) for _ in range(sent // most + 2)]
        assert max(got) == most and sum(got) == sent and got[-1] == 0
    finally:
        first.close()
        second.close()


@pytest.mark.slow
def test_what_escaped_its_group_is_killed_at_shutdown_too(start_daemon, tmp_path):
    # found in review: the orphan sweep ran once a second, and the daemon exited ~40 ms after its last
    # agent: a grandchild in a session of its own outlived a shutdown
    marker = tmp_path / "escaped-marker"
    d = start_daemon(write(tmp_path, f"""
  - {{name: Escaper, command: [sh, -c, 'setsid sh -c "sleep 302; true" {marker} & exec sleep 1000']}}
"""))
    wait_until(lambda: [p for p in psutil.process_iter(["cmdline"]) if str(marker) in " ".join(p.info["cmdline"] or [])],
               5.0, what="the escaped grandchild")
    assert d.terminate() == 0
    left = [p for p in psutil.process_iter(["cmdline"]) if str(marker) in " ".join(p.info["cmdline"] or []) and alive(p)]
    assert not left and "left behind by a dead agent" in d.log()
