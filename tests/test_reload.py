"""Hot reload (SIGHUP and `sunsetctl reload`): only what changed is touched, an invalid profile is
refused with the running set left alone, and a changed agent that cannot start is rolled back."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from conftest import REPO, wait_until

pytestmark = pytest.mark.slow

PROFILE = """\
name: reloadable
defaults: {heartbeat_ms: 100, stop_timeout_s: 2, start_timeout_s: 5}
agents:
  - {name: A, run: "agents.testing:Echo"}
  - {name: B, run: "agents.testing:Echo", depends_on: [A], config: {version: 1}}
  - {name: C, run: "agents.testing:Echo", depends_on: [A]}
"""


def pids(d) -> dict[str, int]:
    return {a["name"]: a["pid"] for a in d.status()["agents"]}


def reload(d) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sunsetd.cli", "--runtime-dir", str(d.runtime_dir), "reload"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.fixture
def profile_file(tmp_path):
    path = tmp_path / "reloadable.yaml"
    path.write_text(PROFILE)
    return path


def test_reload_touches_only_what_changed(start_daemon, profile_file):
    d = start_daemon(profile_file)
    before = pids(d)
    profile_file.write_text(PROFILE.replace("version: 1", "version: 2").replace(
        '  - {name: C, run: "agents.testing:Echo", depends_on: [A]}\n',
        '  - {name: D, run: "agents.testing:Echo", depends_on: [B]}\n'))
    result = reload(d)
    assert result.returncode == 0, result.stderr
    diff = json.loads(result.stdout)
    assert (diff["added"], diff["removed"], diff["changed"], diff["rolled_back"]) == (["D"], ["C"], ["B"], [])
    d.wait_agent("D", lambda a: a["state"] == "ready", what="added agent ready")
    wait_until(lambda: "C" not in pids(d), 10, what="removed agent gone")
    after = pids(d)
    assert after["A"] == before["A"]  # unchanged: same process
    assert after["B"] != before["B"]  # changed: restarted with its new spec
    assert d.call("B", "info")["incarnation"] == 2
    assert d.agent("B")["restarts"] == 0


def test_invalid_profile_is_refused_and_nothing_changes(start_daemon, profile_file):
    d = start_daemon(profile_file)
    before = pids(d)
    profile_file.write_text(PROFILE.replace("version: 1", "version: 2") + "  - {name: E, run: 'agents.nowhere:X'}\n")
    result = reload(d)
    assert result.returncode == 1
    assert "running set untouched" in result.stderr and "cannot import 'agents.nowhere'" in result.stderr
    assert pids(d) == before
    assert "reload refused" in d.log()


def test_changed_agent_that_cannot_start_is_rolled_back(start_daemon, profile_file):
    d = start_daemon(profile_file)
    before = pids(d)
    profile_file.write_text(PROFILE.replace(
        '{name: C, run: "agents.testing:Echo", depends_on: [A]}',
        '{name: C, run: "agents.testing:CrashAtStart", depends_on: [A]}'))
    result = reload(d)
    assert result.returncode == 0, result.stderr
    diff = json.loads(result.stdout)
    assert diff["changed"] == ["C"] and diff["rolled_back"] == ["C"]
    d.wait_agent("C", lambda a: a["state"] == "ready", what="C back on its previous spec")
    assert d.call("C", "info")["class"] == "agents.testing:Echo"
    after = pids(d)
    assert after["A"] == before["A"] and after["B"] == before["B"]
    assert "C rollback new spec did not become ready" in d.log()


def test_sighup_reloads(start_daemon, profile_file):
    d = start_daemon(profile_file)
    before = pids(d)
    profile_file.write_text(PROFILE.replace("version: 1", "version: 3"))
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: pids(d)["B"] not in (None, before["B"]) and d.agent("B")["state"] == "ready", 15,
               what="B restarted by SIGHUP")
    assert pids(d)["A"] == before["A"] and pids(d)["C"] == before["C"]
