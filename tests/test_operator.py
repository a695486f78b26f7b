"""The operator's first hour, the way an operator types it: the real `sunsetctl` console script against a
real daemon, through real pipes. Logs and their files, status that says why (and exits like
`systemctl is-active`), operations on many agents, the event stream, reload you can trust, CLI hygiene,
the socket group and the agents' process titles."""
from __future__ import annotations

import grp
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import REPO, TEST_PROFILES, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
OPS = TEST_PROFILES / "ops.yaml"
SUNSETCTL = str(Path(sys.executable).parent / "sunsetctl")  # the console script `pip install` made


def ctl(d, *args: str, timeout: float = 60, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([SUNSETCTL, "--runtime-dir", str(d.runtime_dir), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


class Follower:
    """A `sunsetctl logs -f` or `events` running as an operator runs it, its lines read by a thread."""

    def __init__(self, d, *args: str):
        self.proc = subprocess.Popen([SUNSETCTL, "--runtime-dir", str(d.runtime_dir), *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=REPO)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, predicate, timeout: float = 10.0) -> list[str]:
        """Lines read until one satisfies `predicate`."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            seen.append(line)
            if predicate(line):
                return seen
        raise AssertionError(f"no such line within {timeout}s; saw:\n" + "\n".join(seen[-30:]))

    def stop(self) -> int:
        """Ctrl-C, as an operator ends it: exit 0."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(10)
        finally:
            self.thread.join(5)
            self.proc.stdout.close()
            self.proc.stderr.close()


# ---- logs -------------------------------------------------------------------------------------------------

def test_one_agents_logs_per_incarnation_and_follow(start_daemon):
    d = start_daemon(OPS)
    follower = Follower(d, "logs", "-f", "Middle")
    try:
        follower.until(lambda line: "Middle#1" in line and "starting -> ready" in line)  # its snapshot
        assert ctl(d, "call", "Middle", "say", '"first words"').returncode == 0
        seen = follower.until(lambda line: "complained first words" in line)
        assert any(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4} Middle#1 stdout: said first words$", s)
                   for s in seen), seen
        ctl(d, "call", "Middle", "crash", "3")  # the reply is agent_crashed; what matters is the log
        d.wait_agent("Middle", lambda a: a["state"] == "ready" and a["incarnation"] == 2)
        ctl(d, "call", "Middle", "say", '"second words"')
        seen = follower.until(lambda line: "complained second words" in line)
        assert any("Middle#1 sunsetd: agent=Middle event=exit msg=\"exit code 3\"" in s for s in seen), seen
    finally:
        assert follower.stop() == 0
    first = ctl(d, "logs", "Middle", "--incarnation", "1").stdout
    assert "said first words" in first and "exit code 3" in first and "second words" not in first
    assert "second words" in ctl(d, "logs", "Middle", "-n", "5").stdout
    assert len(ctl(d, "logs", "Middle", "-n", "2").stdout.splitlines()) == 2
    as_json = [json.loads(line) for line in ctl(d, "logs", "Middle", "-n", "3", "--json").stdout.splitlines()]
    assert [set(j) for j in as_json] == [{"seq", "time", "agent", "incarnation", "stream", "text"}] * 3


def test_logs_f_of_every_agent_interleaved_with_their_names(start_daemon):
    d = start_daemon(OPS)
    follower = Follower(d, "logs", "-f", "-n", "0")
    try:
        time.sleep(0.3)
        for agent in ("Base", "Free", "Top"):
            ctl(d, "call", agent, "say", f'"from {agent}"')
        seen = follower.until(lambda line: "Top#1 stderr: complained from Top" in line)
        said = [s for s in seen if "stdout: said from" in s]
        assert [s.split()[1] for s in said] == ["Base#1", "Free#1", "Top#1"]
    finally:
        follower.stop()


def test_a_follower_fills_what_its_subscription_missed(start_daemon):
    """Lines printed between the snapshot and the subscription taking effect are fetched by number:
    with output flowing all the time, a follower's lines have no gaps and no repeats."""
    d = start_daemon(OPS)
    talker = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {str(REPO)!r})
from sunsetd.client import Client
with Client({str(d.runtime_dir)!r}) as c:
    for k in range(300):
        c.call("Free", "say", k, timeout=10)
"""])
    try:
        follower = Follower(d, "logs", "-f", "Free", "-n", "0", "--json")
        seen = follower.until(lambda line: json.loads(line)["text"] == "complained 299", timeout=60)
        follower.stop()
    finally:
        talker.wait(60)
    seqs = [json.loads(s)["seq"] for s in seen]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "gaps or repeats"


def test_log_dir_has_one_logfmt_file_per_agent_rotated_by_size(start_daemon, tmp_path):
    logs = tmp_path / "logs"
    d = start_daemon(OPS, "--log-dir", str(logs), "--log-max-bytes", "8K", "--log-backups", "2")
    for k in range(120):
        d.call("Free", "say", "x" * 60 + f" {k}")
    wait_until(lambda: "x 119" in (logs / "Free.log").read_text(), 5.0, what="the last line in the file")
    assert sorted(p.name for p in logs.iterdir() if p.name.startswith("Free")) == ["Free.log", "Free.log.1",
                                                                                    "Free.log.2"]
    assert all(p.stat().st_size <= 8192 for p in logs.iterdir())
    line = (logs / "Free.log").read_text().splitlines()[-1]
    assert re.fullmatch(r'time=\d{4}-\d\d-\d\dT\S+ level=warning agent=Free event=stderr msg="complained x+ 119" '
                        r'incarnation=1 pid=\d+', line), line
    assert "Base.log" in os.listdir(logs)


def test_sigusr1_reopens_log_files_sigusr2_dumps_status_and_no_other_signal_ends_it_silently(start_daemon, tmp_path):
    # found by attacking it (#11): SIGUSR1 and SIGUSR2 killed the daemon and every agent with no log line
    logs = tmp_path / "logs"
    d = start_daemon(OPS, "--log-dir", str(logs))
    d.call("Free", "say", "before")
    wait_until(lambda: "before" in (logs / "Free.log").read_text(), 5.0, what="the first line in the file")
    os.rename(logs / "Free.log", logs / "Free.log.rotated")  # what logrotate does, then its postrotate
    d.proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: "SIGUSR1: reopened" in d.log(), 5.0, what="the reopen")
    d.call("Free", "say", "after")
    wait_until(lambda: (logs / "Free.log").exists() and "after" in (logs / "Free.log").read_text(), 5.0,
               what="a new Free.log")
    assert "after" not in (logs / "Free.log.rotated").read_text()
    d.proc.send_signal(signal.SIGUSR2)
    wait_until(lambda: "agent=Free event=status msg=ready" in d.log(), 5.0, what="the status dump")
    assert 'event=status msg="SIGUSR2: ' in d.log()
    for sig in (signal.SIGALRM, signal.SIGVTALRM, signal.SIGPROF, signal.SIGIO, signal.SIGPWR, signal.SIGXCPU,
                signal.SIGRTMIN + 3):
        d.proc.send_signal(sig)
    wait_until(lambda: "SIGRTMIN+3 ignored" in d.log() and "SIGALRM ignored" in d.log(), 5.0, what="signals logged")
    d.proc.send_signal(signal.SIGALRM)  # once it was taken (the kernel merges a signal still pending)
    wait_until(lambda: d.log().count("SIGALRM ignored") == 2, 5.0, what="the second logged")
    for _ in range(5):
        d.proc.send_signal(signal.SIGALRM)
        time.sleep(0.05)
    assert d.log().count("SIGALRM ignored") <= 3  # the 4th is logged, not every one
    assert d.proc.poll() is None and d.call("Free", "echo", 1) == 1
    d.proc.send_signal(signal.SIGQUIT)  # a graceful stop, like SIGTERM
    assert d.proc.wait(30) == 0 and 'event=shutdown msg=SIGQUIT' in d.log()


def test_a_log_file_that_cannot_be_written_is_said_once_and_the_daemon_goes_on(start_daemon, tmp_path):
    logs = tmp_path / "logs"
    (logs / "Free.log").mkdir(parents=True)  # in the way of the file
    d = start_daemon(OPS, "--log-dir", str(logs))
    d.call("Free", "say", "hello")
    wait_until(lambda: 'event=log_dir msg="cannot write' in d.log(), 5.0, what="the one error line")
    d.call("Free", "say", "again")
    assert d.call("Free", "echo", 1) == 1 and d.log().count("event=log_dir") == 1
    assert (logs / "Base.log").exists()  # the other agents still have their files


def test_daemon_log_lines_are_logfmt_with_the_date(start_daemon):
    d = start_daemon(OPS)
    ctl(d, "stop", "Free")
    log = d.log()
    assert re.search(r'^time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\S+ level=info agent=Free event=state '
                     r'msg="ready -> stopping" reason="operator stop" incarnation=1 pid=\d+$', log, re.M), log[-2000:]
    assert "='" not in log and "'" not in re.sub(r'"[^"]*"', "", log)  # no Python repr anywhere


# ---- status ----------------------------------------------------------------------------------------------

def test_status_says_why_and_exits_like_is_active(start_daemon):
    d = start_daemon(OPS)
    ok = ctl(d, "status")
    assert ok.returncode == 0, ok.stderr
    rows = {line.split()[0]: line for line in ok.stdout.splitlines()[2:]}
    assert "not started" in rows["Later"] and "lazy: starts on its first request" in rows["Later"]
    assert "essential" in rows["Base"] and "lazy" in rows["Later"]
    assert ctl(d, "status", "Later").returncode == 3  # selected and not running
    assert ctl(d, "status", "B*", "Middle").returncode == 0
    assert [line.split()[0] for line in ctl(d, "status", "B*", "Middle").stdout.splitlines()[2:]] == ["Base", "Middle"]
    d.call("Later", "echo", 1, timeout=20)
    ctl(d, "stop", "Later")
    rows = {line.split()[0]: line for line in ctl(d, "status").stdout.splitlines()[2:]}
    assert re.search(r"Later\s+stopped .*operator stop: exit code 0", rows["Later"]), rows["Later"]
    victim = d.agent("Free")["pid"]
    os.kill(victim, signal.SIGKILL)
    d.wait_agent("Free", lambda a: a["state"] == "ready" and a["incarnation"] == 2)
    rows = {line.split()[0]: line for line in ctl(d, "status").stdout.splitlines()[2:]}
    assert "last exit: killed by SIGKILL" in rows["Free"]
    ctl(d, "stop", "Base")  # an essential agent down: not running, as far as a script is concerned
    assert ctl(d, "status").returncode == 3
    missing = ctl(d, "status", "Nope")
    assert missing.returncode == 1 and "no agent 'Nope'" in missing.stderr


# ---- operations on many agents ---------------------------------------------------------------------------

def test_stop_start_restart_several_in_dependency_order_and_the_events_stream(start_daemon):
    d = start_daemon(OPS)
    stream = Follower(d, "events", "--json")
    text = Follower(d, "events", "Middle")
    try:
        time.sleep(0.5)  # subscriptions take effect
        stopped = ctl(d, "stop", "Base", "Middle", "Top")
        assert stopped.returncode == 0, stopped.stderr
        assert [a["state"] for a in json.loads(stopped.stdout)["agents"]] == ["stopped"] * 3
        started = ctl(d, "start", "all")
        assert started.returncode == 0 and len(json.loads(started.stdout)["agents"]) == 5
        before = {a["name"]: a["incarnation"] for a in d.status()["agents"]}
        restarted = ctl(d, "restart", "Base", "Middle", "Top")
        assert restarted.returncode == 0, restarted.stderr
        after = {a["name"]: a["incarnation"] for a in d.status()["agents"]}
        assert all(after[n] == before[n] + 1 for n in ("Base", "Middle", "Top")) and after["Free"] == before["Free"]
        stream.until(lambda line: json.loads(line)["agent"] == "Top" and json.loads(line)["msg"] == "starting -> ready"
                 and json.loads(line)["incarnation"] == before["Top"] + 1, timeout=10)
    finally:
        stream.stop()
    log = d.log()
    # the stop: dependents first
    stops = [log.index(f'agent={n} event=state msg="ready -> stopping" reason="operator stop"') for n in ("Top", "Middle", "Base")]
    assert stops == sorted(stops)
    # the group restart: every one stopped before the first starts again, then Base, Middle, Top
    k = log.index('reason="operator restart"')
    tail = log[k:]
    last_stop = max(tail.index(f'agent={n} event=state msg="stopping -> stopped"') for n in ("Base", "Middle", "Top"))
    spawns = [tail.index(f"agent={n} event=spawn") for n in ("Base", "Middle", "Top")]
    assert last_stop < min(spawns) and spawns == sorted(spawns)
    middle_only = text.until(lambda line: 'msg="starting -> ready"' in line, timeout=5)
    text.stop()
    assert all(" agent=Middle " in line for line in middle_only)
    assert re.match(r"\d{4}-\d\d-\d\dT\S+ agent=Middle event=", middle_only[0])


def test_signal_goes_to_the_agents_process_group(start_daemon):
    d = start_daemon(OPS)
    pid = d.agent("Free")["pid"]
    result = ctl(d, "signal", "TERM", "Fr*")
    assert result.returncode == 0 and json.loads(result.stdout)["sent"] == ["Free"]
    d.wait_agent("Free", lambda a: a["incarnation"] == 2 and a["state"] == "ready")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert ctl(d, "signal", "NOPE", "Free").returncode == 1
    assert ctl(d, "signal", "HUP", "Later").returncode == 1  # nothing running to signal


# ---- reload ----------------------------------------------------------------------------------------------

def test_reload_dry_run_changes_nothing_and_profile_switches(start_daemon, tmp_path):
    d = start_daemon(OPS)
    before = {a["name"]: a["pid"] for a in d.status()["agents"]}
    dry = ctl(d, "reload", "--dry-run", "--profile", str(TEST_PROFILES / "ops-small.yaml"))
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == ["dry run: profile ops-small (nothing applied)", "  remove  Free",
                                       "  remove  Later", "  change  Top: config", "  leave   2 agent(s) alone"]
    assert {a["name"]: a["pid"] for a in d.status()["agents"]} == before and d.status()["profile"] == "ops"
    as_json = json.loads(ctl(d, "reload", "--dry-run", "--json", "--profile", str(TEST_PROFILES / "ops-small.yaml")).stdout)
    assert as_json == {"dry_run": True, "profile": "ops-small", "added": [], "removed": ["Free", "Later"],
                       "changed": {"Top": ["config"]}, "unchanged": ["Base", "Middle"]}
    switched = ctl(d, "reload", "--profile", str(TEST_PROFILES / "ops-small.yaml"))
    assert switched.returncode == 0, switched.stderr
    status = d.status()
    assert status["profile"] == "ops-small" and [a["name"] for a in status["agents"]] == ["Base", "Middle", "Top"]
    after = {a["name"]: a["pid"] for a in status["agents"]}
    assert after["Base"] == before["Base"] and after["Middle"] == before["Middle"] and after["Top"] != before["Top"]
    again = ctl(d, "reload", "--dry-run")  # later reloads read the profile switched to
    assert again.returncode == 0 and "profile ops-small" in again.stdout and "leave   3" in again.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nagents:\n  - {name: X, run: 'agents.nowhere:X'}\n")
    refused = ctl(d, "reload", "--profile", str(bad))
    assert refused.returncode == 1 and "running set untouched" in refused.stderr
    assert d.status()["profile"] == "ops-small"


# ---- CLI hygiene ----------------------------------------------------------------------------------------

def test_cli_hygiene_without_a_daemon(tmp_path):
    long_dir = "/tmp/" + "x" * 110
    for argv, code, needle in (
            (["--runtime-dir", long_dir, "status"], 2, "too long for an ipc:// socket path"),
            (["--timeout", "0", "status"], 2, "must be a number of seconds above 0"),
            (["--timeout", "-1", "status"], 2, "must be a number of seconds above 0"),
            (["--runtime-dir", str(tmp_path), "call", "A", "op", "not json"], 2, """'"to be or not"'"""),
            (["--runtime-dir", str(tmp_path), "status"], 3, "sunsetd is not running on"),
            (["logs", "-n", "-3"], 2, "must be 0 or more")):
        result = subprocess.run([SUNSETCTL, *argv], capture_output=True, text=True, timeout=30)
        assert result.returncode == code, (argv, result.stderr)
        assert needle in result.stderr and "Traceback" not in result.stderr, (argv, result.stderr)
    for command, name in ((SUNSETCTL, "sunsetctl"), (str(Path(sys.executable).parent / "sunsetd"), "sunsetd")):
        version = subprocess.run([command, "--version"], capture_output=True, text=True, timeout=30)
        assert version.returncode == 0 and version.stdout.strip() == f"{name} 0.1.0"
    daemon = subprocess.run([str(Path(sys.executable).parent / "sunsetd"), "--runtime-dir", long_dir],
                            capture_output=True, text=True, timeout=30)
    assert daemon.returncode == 1 and daemon.stderr.count("\n") == 1 and "too long" in daemon.stderr


def test_a_closed_pipe_is_no_traceback(start_daemon):
    d = start_daemon(OPS)
    for command in ("status", "logs"):
        result = subprocess.run(f"{SUNSETCTL} --runtime-dir {d.runtime_dir} {command} | head -1", shell=True,
                                capture_output=True, text=True, timeout=30, executable="/bin/bash")
        assert result.stdout.count("\n") == 1 and result.stderr == "", result.stderr


# ---- the socket group, the process titles ---------------------------------------------------------------

def as_user(user: str, runtime_dir: Path) -> tuple[int, str]:
    """`sunsetctl status` as another user: sunsetctl's own main() in a fork that has become that user
    (this checkout and its interpreter live where only root may read, so an exec as them would fail;
    the e2e test under systemd runs the installed command as an operator)."""
    import pwd

    entry = pwd.getpwnam(user)
    groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.dup2(w, 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            sys.stdout, sys.stderr = open(1, "w"), open(2, "w")  # not pytest's capture
            os.setgroups(groups)
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            from sunsetd.cli import main
            code = main(["--runtime-dir", str(runtime_dir), "status"])
        except BaseException as exc:  # noqa: BLE001 - whatever it is, the parent must hear of it
            os.write(2, f"Traceback: {exc!r}".encode())
            code = 99
        sys.stderr.flush()
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        err = f.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: users and groups of its own")
def test_a_socket_group_lets_its_members_in_and_nobody_else(start_daemon, runtime_dir):
    group = "sdops"
    subprocess.run(["groupadd", "-f", group], check=True)
    for user, groups in (("sdalice", [group]), ("sdbob", [])):
        if subprocess.run(["id", user], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "-M", "-N", *(["-G", ",".join(groups)] if groups else []), user], check=True)
    os.chmod(runtime_dir, 0o755)  # the users must reach the daemon's directory inside it
    (runtime_dir / "d").mkdir(mode=0o700)
    d = start_daemon(OPS, "--socket-group", group, runtime_dir=runtime_dir / "d")
    gid = grp.getgrnam(group).gr_gid
    assert (os.stat(d.runtime_dir).st_mode & 0o777, os.stat(d.runtime_dir).st_gid) == (0o750, gid)
    for name, mode in (("sunsetd.sock", 0o660), ("events.sock", 0o660), ("agents.sock", 0o600),
                       ("sunsetd.lock", 0o600)):
        assert os.stat(d.runtime_dir / name).st_mode & 0o777 == mode, name
    alice, bob = as_user("sdalice", d.runtime_dir), as_user("sdbob", d.runtime_dir)
    assert alice[0] == 0, alice[1]
    assert bob[0] == 3 and "permission denied" in bob[1] and "sdops" in bob[1] and "Traceback" not in bob[1]
    # found in review: a member of the group made the daemon read /etc/shadow and quote it back
    leak = ctl(d, "reload", "--dry-run", "--profile", "/etc/shadow")
    assert leak.returncode == 1 and "not a path" in leak.stderr and "root" not in leak.stderr + leak.stdout
    # and a second daemon refused on the same directory closed it to the group
    second = subprocess.run([str(Path(sys.executable).parent / "sunsetd"), "--profile", str(OPS), "--runtime-dir",
                             str(d.runtime_dir), "--socket-group", group, "--metrics-addr", "off"],
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 1 and "already running" in second.stderr
    assert os.stat(d.runtime_dir).st_mode & 0o777 == 0o750 and as_user("sdalice", d.runtime_dir)[0] == 0
    unknown = subprocess.run([str(Path(sys.executable).parent / "sunsetd"), "--socket-group", "no-such-group",
                              "--runtime-dir", str(runtime_dir / "e")], capture_output=True, text=True, timeout=30)
    assert unknown.returncode == 1 and unknown.stderr.strip() == "sunsetd: --socket-group no-such-group: no such group"


@pytest.mark.parametrize("spawner", ["fork", "exec"])
def test_process_titles_name_agent_incarnation_and_profile(start_daemon, spawner):
    d = start_daemon(OPS, "--spawner", spawner)
    for a in d.status()["agents"]:
        if a["pid"] is None:
            continue
        proc = psutil.Process(a["pid"])
        title = " ".join(x for x in proc.cmdline() if x)
        assert title == f"sunsetd-agent {a['name']}#{a['incarnation']} profile=ops rundir={d.runtime_dir}", title
        assert proc.name() == a["name"][:15]
    ps = subprocess.run(["ps", "-o", "args=", "-p", str(d.agent("Base")["pid"])], capture_output=True, text=True)
    assert ps.stdout.strip() == f"sunsetd-agent Base#1 profile=ops rundir={d.runtime_dir}"


# ---- found in review ------------------------------------------------------------------------------------

def test_a_reload_of_an_unreadable_profile_is_refused_in_one_line(start_daemon, tmp_path):
    d = start_daemon(OPS)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"name: x\n\xff\xfe\n")
    for profile in (str(binary), "p" * 300, "x" * 5000):
        result = ctl(d, "reload", "--profile", profile, timeout=30)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "running set untouched" in result.stderr
    assert "not UTF-8 text" in ctl(d, "reload", "--dry-run", "--profile", str(binary)).stderr
    assert "internal_error" not in d.log() and ctl(d, "status").returncode == 0


def test_a_relative_profile_path_is_the_operators_not_the_daemons(start_daemon):
    d = start_daemon(OPS)
    result = ctl(d, "reload", "--dry-run", "--profile", "ops-small.yaml", cwd=TEST_PROFILES)
    assert result.returncode == 0 and "profile ops-small" in result.stdout, result.stderr


def test_logs_replies_stay_under_the_frame_limit_whatever_the_text(start_daemon):
    d = start_daemon(OPS)
    for _ in range(60):
        d.call("Free", "say", "\U0001F600" * 4000)  # 16 KB of UTF-8 per line, 4000 characters
    result = ctl(d, "logs", "-n", "200")
    assert result.returncode == 0, result.stderr
    assert 0 < len(result.stdout.encode()) < 1 << 20


def test_logs_follow_an_agent_that_a_reload_removes(start_daemon):
    d = start_daemon(OPS)
    d.call("Free", "say", "before")
    follower = Follower(d, "logs", "-f", "-n", "0")
    try:
        time.sleep(0.3)
        assert ctl(d, "reload", "--profile", str(TEST_PROFILES / "ops-small.yaml")).returncode == 0
        seen = follower.until(lambda line: line.startswith(tuple("0123456789")) and "Free#1" in line
                              and "stopping -> stopped" in line)
        assert not any("said before" in line for line in seen)  # nothing old, nothing twice
    finally:
        assert follower.stop() == 0
    assert "said before" in ctl(d, "logs", "Free").stdout  # a removed agent keeps its last lines


def test_no_argument_an_operator_can_type_gives_a_traceback(start_daemon):
    d = start_daemon(OPS)
    for argv in (["signal", "\u00b2", "Free"], ["signal", "99999999999999999999", "Free"],
                 ["logs", "-n", "99999999999999999999"], ["logs", "--incarnation", "99999999999999999999"]):
        result = ctl(d, *argv)
        assert result.returncode in (1, 2) and "Traceback" not in result.stderr, (argv, result.stderr)
    for argv in ([b"status", b"\xff"], [b"stop", b"\xff"], [b"reload", b"--profile", b"\xff"]):
        result = subprocess.run([SUNSETCTL.encode(), b"--runtime-dir", os.fsencode(d.runtime_dir), *argv],
                                capture_output=True, timeout=30)
        assert result.returncode == 2 and b"not valid text" in result.stderr, (argv, result.stderr)


def test_a_follower_of_a_killed_daemon_ends(start_daemon):
    d = start_daemon(OPS)
    follower = Follower(d, "events")
    time.sleep(0.5)
    d.proc.kill()  # its socket files stay behind
    d.proc.wait()
    code = follower.proc.wait(20)
    follower.stop()
    assert code == 3
    assert_agents_gone = wait_until(lambda: not any(a for a in psutil.process_iter(["cmdline"])
                                                    if str(d.runtime_dir) in " ".join(a.info["cmdline"] or [])),
                                    10.0, what="the killed daemon's agents to die with it")
    assert assert_agents_gone



def test_a_follower_watches_a_slow_shutdown_to_its_end(start_daemon, tmp_path):
    """Found in review: the follower's check that the daemon is still there was refused `shutting_down`
    5 s into a slow shutdown, and the watcher quit before the part an operator watches for."""
    profile = tmp_path / "slow.yaml"
    profile.write_text("name: slow\ndefaults: {heartbeat_ms: 100, liveness: 100}\n"
                       "agents:\n  - {name: Slow, run: 'agents.testing:Echo', stop_timeout_s: 7}\n")
    d = start_daemon(profile)
    follower = Follower(d, "events")
    with d.client as c:
        c.send("Slow", "hang", 30, timeout=40)  # wedged in C: SIGTERM waits, SIGKILL after 7 s
        time.sleep(0.5)
        d.proc.send_signal(signal.SIGTERM)
        seen = follower.until(lambda line: "event=kill" in line and "agent=Slow" in line, timeout=15)
    assert any("event=shutdown" in line for line in seen)
    assert follower.proc.wait(15) == 3  # then the daemon is gone, and the follow ends
    follower.stop()
    assert d.proc.wait(10) == 0
