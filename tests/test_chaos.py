"""A short chaos run (kill and freeze under live load) with its accounting checked request by request."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, TEST_PROFILES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def run_chaos(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "chaos/run.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=280)


def test_short_chaos_run_loses_nothing(tmp_path):
    out = tmp_path / "events.json"
    result = run_chaos("--profile", str(TEST_PROFILES / "mini.yaml"), "--scenario", "kill,freeze", "--rounds", "3",
                       "--clients", "3", "--seed", "5", "--json", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    events = json.loads(out.read_text())
    faults = events["faults"]
    assert [f["scenario"] for f in faults] == ["kill"] * 3 + ["freeze"] * 3
    assert all(f["recovered"] and f["detection_ms"] <= f["restart_ms"] <= f["recovery_ms"] for f in faults)
    requests = events["requests"]
    assert len(requests) > 200
    assert all(r["replies"] == 1 for r in requests)  # exactly one reply each: nothing lost, nothing twice
    assert not [r for r in requests if r["code"] == "ok" and r["correct"] is False]
    total = events["total"]
    assert (total["lost"], total["wrong"], total["duplicates"]) == (0, 0, 0)
    assert total["answered"] == total["sent"] == len(requests)
    assert sum(total["errors"].values()) == sum(r["code"] != "ok" for r in requests)
    assert "PASS: nothing lost" in result.stdout


def test_usage_errors_are_one_line():
    result = run_chaos("--scenario", "earthquake")
    assert result.returncode != 0 and "unknown scenario 'earthquake'" in result.stderr
    result = run_chaos("--rounds", "kill=many")
    assert result.returncode != 0 and "--rounds must be N or SCENARIO=N" in result.stderr


def test_plot_without_matplotlib_says_how_to_install_it():
    try:
        import matplotlib  # noqa: F401
        pytest.skip("matplotlib is installed here")
    except ImportError:
        pass
    result = run_chaos("--plot", "/tmp/never.png")
    assert result.returncode != 0 and "pip install 'sunsetd[chaos]'" in result.stderr
