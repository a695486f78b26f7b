"""The operator's tools without a daemon: log buffers and files, logfmt, agent selection, signals,
group stop and restart on the fake supervisor, the reload preview, and how status explains itself."""
from __future__ import annotations

import json
import signal

from fakes import Harness, profile, spec
from sunsetd.agentlogs import AgentLogs, LogFiles
from sunsetd.cli import agent_reason, agent_state, format_status, status_code
from sunsetd.control import select, signal_number
from sunsetd.logfmt import event_text, logfmt, quote
from sunsetd.policy import State
from sunsetd.reload import plan, preview

CHAIN = profile(spec("Base"), spec("Middle", depends_on=("Base",)), spec("Top", depends_on=("Middle",)),
                spec("Other"))


def up() -> Harness:
    h = Harness(CHAIN).start()
    h.bring_up()
    assert set(h.states().values()) == {"ready"}
    return h


# ---- logfmt -----------------------------------------------------------------------------------------------

def test_logfmt_quotes_with_double_quotes_only_when_it_must():
    assert quote("ready") == "ready" and quote("KnowledgeBase#3") == "KnowledgeBase#3"
    assert quote("operator stop") == '"operator stop"'
    assert quote("it's") == '"it\'s"'  # never a Python repr: no single quotes around it
    assert quote('say "hi"\n') == r'"say \"hi\"\n"'
    assert quote("") == '""' and quote(3) == "3"
    assert logfmt([("a", 1), ("b", None), ("c", "x y")]) == 'a=1 c="x y"'
    event = {"agent": "KB", "event": "exit", "msg": "killed by SIGKILL", "fields": {"uptime_s": 1.5},
             "incarnation": 2, "pid": 9}
    assert event_text(event) == 'agent=KB event=exit msg="killed by SIGKILL" uptime_s=1.5 incarnation=2 pid=9'


# ---- ring buffers -----------------------------------------------------------------------------------------

def test_a_crash_traceback_stays_with_the_incarnation_that_printed_it():
    logs = AgentLogs(lines_per_incarnation=3, incarnations_kept=2)
    logs.append("KB", 1, "stderr", "Traceback (most recent call last):", 1.0)
    logs.append("KB", 1, "stderr", "ZeroDivisionError", 1.1)
    for k in range(10):
        logs.append("KB", 2, "stdout", f"line {k}", 2.0 + k)  # the next incarnation talks a lot
    assert [line.text for line in logs.lines(["KB"], incarnation=1)] == ["Traceback (most recent call last):",
                                                                         "ZeroDivisionError"]
    assert [line.text for line in logs.lines(["KB"], incarnation=2)] == ["line 7", "line 8", "line 9"]
    logs.append("KB", 3, "stdout", "third", 20.0)
    assert logs.incarnations("KB") == [2, 3]  # the oldest incarnation goes first
    assert logs.dropped == 7 + 2


def test_lines_are_numbered_per_agent_and_interleaved_by_time():
    logs = AgentLogs()
    logs.append("A", 1, "stdout", "a1", 1.0)
    logs.append("B", 1, "stdout", "b1", 1.5)
    logs.append("A", 1, "stdout", "a2", 2.0)
    assert [(line.agent, line.seq) for line in logs.lines()] == [("A", 1), ("B", 1), ("A", 2)]
    assert [line.text for line in logs.lines(n=2)] == ["b1", "a2"]
    assert [line.text for line in logs.lines(after={"A": 1, "B": 1})] == ["a2"]  # a follower's gap
    assert logs.lines(["A"], n=0) == [] and logs.last_seq("A") == 2 and logs.last_seq("C") == 0


def test_buffers_are_bounded_in_bytes_and_answers_in_size():
    logs = AgentLogs(lines_per_incarnation=10_000, bytes_per_incarnation=10_000)
    for k in range(1000):
        logs.append("A", 1, "stdout", "x" * 100, float(k))
    kept = logs.lines(["A"])
    assert sum(line.size for line in kept) <= 10_000 and kept[-1].seq == 1000
    assert sum(line.size for line in logs.lines(["A"], max_bytes=1000)) <= 1000


def test_log_files_rotate_by_size_and_keep_backups(tmp_path):
    files = LogFiles(tmp_path / "logs", max_bytes=4096, backups=2)
    for k in range(200):
        assert files.write("KB", f"line={k} " + "x" * 50) is None
    files.close()
    names = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert names == ["KB.log", "KB.log.1", "KB.log.2"]
    for name in names:
        assert (tmp_path / "logs" / name).stat().st_size <= 4096
    assert (tmp_path / "logs" / "KB.log").read_text().splitlines()[-1].startswith("line=199 ")


def test_a_log_file_that_cannot_be_written_is_reported_once(tmp_path):
    files = LogFiles(tmp_path, max_bytes=4096, backups=1)
    (tmp_path / "KB.log").mkdir()  # in the way
    why = files.write("KB", "one")
    assert why is not None and "KB.log" in why
    assert files.write("KB", "two") is None  # said once; the daemon goes on


# ---- selecting agents, signals ----------------------------------------------------------------------------

NAMES = ["vision.detector", "vision.ocr", "NLUAgent", "KnowledgeBase"]


def test_select_takes_names_globs_and_all_in_profile_order():
    assert select(["vision.*"], NAMES) == ["vision.detector", "vision.ocr"]
    assert select(["KnowledgeBase", "vision.ocr"], NAMES) == ["vision.ocr", "KnowledgeBase"]
    assert select(["all"], NAMES) == NAMES
    assert select(["*Agent", "NLUAgent"], NAMES) == ["NLUAgent"]
    assert select(["Nope"], NAMES) == "no agent 'Nope'"
    assert select(["audio.*"], NAMES) == "no agent matches 'audio.*'"


def test_signal_numbers_by_name_or_number():
    assert signal_number("HUP") == signal_number("SIGHUP") == signal_number("hup") == signal.SIGHUP
    assert signal_number(10) == 10
    assert signal_number("NOPE") is None and signal_number(True) is None and signal_number(999) is None


# ---- operations on groups, on the fake supervisor ---------------------------------------------------------

def test_a_group_stop_stops_dependents_first():
    h = up()
    h.sup.stop_agents(["Base", "Middle", "Top"])
    # only Top is asked now; Middle waits for it, Base for Middle
    assert [h.state(n) for n in ("Top", "Middle", "Base")] == [State.STOPPING, State.READY, State.READY]
    h.spawner.latest("Top").exit(0)
    assert h.state("Middle") is State.STOPPING and h.state("Base") is State.READY
    h.spawner.latest("Middle").exit(0)
    assert h.state("Base") is State.STOPPING
    h.spawner.latest("Base").exit(0)
    assert h.states() == {"Base": "stopped", "Middle": "stopped", "Top": "stopped", "Other": "ready"}
    assert "operator stop: exit code 0" in h.sup.slots["Base"].lifecycle.reason


def test_a_stop_of_one_agent_does_not_wait_for_dependents_outside_the_group():
    h = up()
    h.sup.stop_agents(["Base"])
    assert h.state("Base") is State.STOPPING and h.state("Middle") is State.READY


def test_a_group_restart_stops_all_dependents_first_then_starts_in_order():
    h = up()
    assert h.sup.restart_agents(["Base", "Middle", "Top"]) is None
    for name in ("Top", "Middle", "Base"):
        assert h.state(name) is State.STOPPING, h.states()
        h.spawner.latest(name).exit(0)
    # all stopped: now they start again, Base first
    assert h.spawner.names()[-1] == "Base#2" and h.state("Middle") is State.STOPPED
    h.hello("Base")
    assert h.spawner.names()[-1] == "Middle#2"
    h.hello("Middle")
    h.hello("Top")
    assert {n: h.sup.incarnation(n) for n in ("Base", "Middle", "Top")} == {"Base": 2, "Middle": 2, "Top": 2}
    assert all(h.state(n) is State.READY for n in ("Base", "Middle", "Top")) and not h.sup.restarting("Base")


def test_a_signal_goes_to_the_running_agents_only():
    h = up()
    h.sup.stop_agents(["Other"])
    h.spawner.latest("Other").exit(0)
    assert h.sup.signal_agents(["Base", "Other"], signal.SIGHUP) == ["Base"]
    assert h.spawner.latest("Base").signals == ["HUP"]


# ---- reload preview ---------------------------------------------------------------------------------------

def test_a_dry_run_says_what_would_be_added_removed_changed_and_left_alone():
    current = {s.name: s for s in CHAIN.agents}
    new = profile(spec("Base"), spec("Middle", depends_on=("Base",), heartbeat_ms=500), spec("New"))
    shown = preview(plan(current, new))
    assert shown == {"dry_run": True, "profile": "test", "added": ["New"], "removed": ["Top", "Other"],
                     "changed": {"Middle": ["heartbeat_ms"]}, "unchanged": ["Base"]}
    json.dumps(shown)  # goes over the wire as it is


# ---- status that says why ---------------------------------------------------------------------------------

def agent(**fields):
    base = {"name": "A", "state": "ready", "pid": 7, "incarnation": 1, "restarts": 0, "essential": True, "lazy": False,
            "uptime_s": 3.0, "rss_bytes": 1 << 20, "heartbeat_age_ms": 10, "circuit": "closed", "reason": "ready",
            "never_started": False, "last_exit": None}
    return {**base, **fields}


def test_status_tells_a_lazy_agent_never_started_from_one_an_operator_stopped():
    never = agent(state="stopped", lazy=True, essential=False, never_started=True, incarnation=0, reason="not started")
    stopped = agent(state="stopped", lazy=True, essential=False, incarnation=2, reason="operator stop: exit code 0")
    assert (agent_state(never), agent_reason(never)) == ("not started", "lazy: starts on its first request")
    assert (agent_state(stopped), agent_reason(stopped)) == ("stopped", "operator stop: exit code 0")


def test_status_says_why_a_ready_agent_restarted():
    crashed = agent(incarnation=3, restarts=2, last_exit={"incarnation": 2, "description": "killed by SIGKILL",
                                                         "ago_s": 4.0, "uptime_s": 61.0, "asked": False})
    assert agent_reason(crashed) == "last exit: killed by SIGKILL after 1m01s (#2, 4.0s ago)"
    asked = agent(last_exit={"incarnation": 1, "description": "exit code 0", "ago_s": 1, "uptime_s": 1, "asked": True})
    assert agent_reason(asked) == ""  # an operator's restart is no news


def test_status_table_has_flags_and_reason_and_exit_code_like_is_active():
    status = {"pid": 1, "profile": "p", "state": "running", "healthy": True, "uptime_s": 5,
              "counts": {"ready": 1, "total": 2, "essential": 1, "essential_ready": 1},
              "agents": [agent(), agent(name="L", state="stopped", lazy=True, essential=False, never_started=True,
                                        pid=None, incarnation=0)]}
    table = format_status(status).splitlines()
    assert table[1].split()[-2:] == ["FLAGS", "REASON"]
    assert "essential" in table[2] and table[3].split()[1:3] == ["not", "started"] and "lazy" in table[3]
    assert status_code(status, selected=False) == 0
    assert status_code({**status, "state": "degraded", "healthy": False}, selected=False) == 3
    assert status_code({**status, "agents": status["agents"][1:]}, selected=True) == 3
    assert status_code({**status, "agents": status["agents"][:1]}, selected=True) == 0


# ---- found in review: a stop wins, and a group restart never outlives its request ------------------------

def test_a_stop_wins_over_a_restart_under_way():
    h = up()
    h.sup.restart_agents(["Other"])  # one agent: stopping, to start again at its exit
    h.sup.stop_agents(["Other"])
    h.spawner.latest("Other").exit(0)
    assert h.state("Other") is State.STOPPED and h.sup.incarnation("Other") == 1


def test_a_stop_wins_over_the_restart_of_a_hung_agent():
    h = up()
    h.clock.advance(0.5)  # no heartbeats: every agent is hung and being stopped, to be restarted
    assert h.state("Other") is State.STOPPING
    h.sup.stop_agents(["Other"])
    h.spawner.latest("Other").exit(-15)
    h.clock.advance(1.0)
    assert h.state("Other") is State.STOPPED and h.sup.incarnation("Other") == 1


def test_a_member_started_meanwhile_leaves_the_group_restart_and_the_rest_still_restarts():
    h = up()
    h.sup.restart_agents(["Top", "Other"])
    h.spawner.latest("Other").exit(0)
    h.sup.start_agent("Other")  # an operator (or a lazy request) starts it while Top is still stopping
    h.bring_up()
    h.spawner.latest("Top").exit(0)
    h.bring_up()
    assert h.states() == {"Base": "ready", "Middle": "ready", "Top": "ready", "Other": "ready"}
    assert not h.sup._restart_groups and h.sup.incarnation("Top") == 2


def test_overlapping_group_restarts_both_finish():
    h = up()
    h.sup.restart_agents(["Top", "Other"])
    h.spawner.latest("Other").exit(0)
    h.sup.restart_agents(["Middle", "Other"])
    h.spawner.latest("Top").exit(0)
    h.bring_up()
    if h.state("Middle") is State.STOPPING:
        h.spawner.latest("Middle").exit(0)
    h.bring_up()
    assert set(h.states().values()) == {"ready"} and not h.sup._restart_groups
    assert {n: h.sup.incarnation(n) for n in ("Middle", "Top", "Other")} == {"Middle": 2, "Top": 2, "Other": 2}


def test_an_operator_stop_ends_a_group_restart_of_that_agent():
    h = up()
    h.sup.restart_agents(["Top", "Other"])
    h.sup.stop_agents(["Top"])  # the operator changes their mind about Top
    for name in ("Top", "Other"):
        h.spawner.latest(name).exit(0)
    h.bring_up()
    assert h.state("Top") is State.STOPPED and h.state("Other") is State.READY and not h.sup._restart_groups


# ---- found in the second review -------------------------------------------------------------------------

PAIR = profile(spec("Base"), spec("Middle", depends_on=("Base",)))


def test_a_member_wanted_again_while_held_leaves_the_group_and_the_group_finishes():
    h = Harness(PAIR).start()
    h.bring_up()
    h.sup.restart_agents(["Base", "Middle"])  # Base is held ready until Middle has stopped
    h.sup.start_agent("Base")  # an operator start meanwhile: no STARTING transition of Base
    h.spawner.latest("Middle").exit(0)
    h.bring_up()
    assert not h.sup._restart_groups and h.state("Middle") is State.READY and h.sup.incarnation("Middle") == 2
    assert h.sup.incarnation("Base") == 1  # wanted again: not restarted


def test_no_leftover_group_undoes_a_later_idle_stop():
    lazy = profile(spec("Base", lazy=True, idle_timeout_s=2.0),
                   spec("Middle", lazy=True, idle_timeout_s=2.0, depends_on=("Base",)))
    h = Harness(lazy).start()
    h.sup.start_agent("Middle")
    h.bring_up()
    h.sup.restart_agents(["Base", "Middle"])
    h.sup.start_agent("Middle")  # started again while it is stopping
    h.spawner.latest("Middle").exit(0)
    h.bring_up()
    assert not h.sup._restart_groups
    for name in ("Middle", "Base"):
        h.sup.stop_agent(name, "idle")
        h.spawner.latest(name).exit(0)
    assert h.states() == {"Base": "stopped", "Middle": "stopped"}


def test_an_operator_stop_of_a_dependency_in_a_group_restart_keeps_it_and_its_dependents_stopped():
    h = Harness(PAIR).start()
    h.bring_up()
    h.sup.restart_agents(["Base", "Middle"])
    h.sup.stop_agents(["Base"])
    h.spawner.latest("Middle").exit(0)
    h.spawner.latest("Base").exit(0)
    h.bring_up()
    assert h.states() == {"Base": "stopped", "Middle": "stopped"} and not h.sup._restart_groups


def test_a_hung_agent_at_shutdown_still_says_why_it_was_not_restarted():
    h = up()
    h.clock.advance(0.5)  # every agent hung, being stopped to restart
    h.sup.shutdown()
    h.spawner.latest("Other").exit(-9)
    assert h.sup.slots["Other"].lifecycle.reason.endswith("not restarted: shutdown")


def test_a_logs_answer_counts_the_agents_name_in_its_bytes():
    logs = AgentLogs()
    for k in range(2000):
        logs.append("A" * 100 + str(k % 10), 1, "stdout", "x", float(k))
    packed = __import__("msgpack").packb([list(line) for line in logs.lines(max_bytes=100_000)])
    assert len(packed) <= 100_000


def test_a_runtime_directory_whose_lock_cannot_be_opened_is_one_line(tmp_path):
    from sunsetd.rundir import RuntimeDirError, RuntimeLock

    (tmp_path / "sunsetd.lock").mkdir()  # in the way, as a squatted directory's lock would be
    try:
        RuntimeLock(tmp_path).acquire()
    except RuntimeDirError as exc:
        assert "sunsetd.lock" in str(exc) and "\n" not in str(exc)
    else:
        raise AssertionError("acquired a lock it cannot have")


def test_a_users_sunsetctl_falls_back_to_the_service_only_without_a_daemon_of_their_own():
    import os
    import shutil
    import tempfile
    from pathlib import Path

    import pytest

    from sunsetd import rundir

    if os.geteuid() != 0:
        pytest.skip("needs root, to become another user")
    base = Path(tempfile.mkdtemp(prefix="sd-fb-", dir="/tmp"))  # pytest's own tmp is root's alone
    os.chmod(base, 0o755)
    try:
        _fall_back(base, rundir)
    finally:
        shutil.rmtree(base)


def _fall_back(base, rundir) -> None:
    import os

    system, xdg = base / "system", base / "xdg"
    system.mkdir()
    (system / rundir.FRONT_SOCKET).touch()
    xdg.mkdir()
    os.chown(xdg, 65534, 65534)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # as nobody, whose XDG_RUNTIME_DIR is xdg
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.environ.pop("RUNTIME_DIRECTORY", None)
            os.environ["XDG_RUNTIME_DIR"] = str(xdg)
            rundir.SYSTEM_DIR = system
            own = xdg / "sunsetd"
            seen = [rundir.resolve(client=True)]  # no directory of their own
            own.mkdir()
            (own / rundir.FRONT_SOCKET).touch()
            (own / rundir.LOCK_FILE).write_text("999999999\n")  # left by a daemon that is gone
            seen.append(rundir.resolve(client=True))
            (own / rundir.LOCK_FILE).write_text(f"{os.getpid()}\n")  # one that runs
            seen += [rundir.resolve(client=True), rundir.resolve()]
            os.write(w, "\n".join(str(p) for p in seen).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        seen = f.read().splitlines()
    os.waitpid(pid, 0)
    own = str(xdg / "sunsetd")
    assert seen == [str(system), str(system), own, own]  # the daemon itself never falls back
