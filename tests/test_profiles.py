"""The five product profiles: their counts, and that each starts with exactly its eager agents ready."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from conftest import REPO, wait_until
from sunsetd.profile import load_profile

COUNTS = {  # total, essential, eager, lazy: part of the product (../shared/AGENTS.md)
    "core": (16, 16, 16, 0),
    "vision": (20, 16, 18, 2),
    "tutoring": (28, 16, 20, 8),
    "learning": (30, 16, 19, 11),
    "full": (77, 24, 24, 53),
}


@pytest.mark.parametrize("name", COUNTS)
def test_check_reports_the_counts(name):
    result = subprocess.run([sys.executable, "-m", "sunsetd", "--profile", name, "--check"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    total, essential, eager, lazy = COUNTS[name]
    assert f"agents: {total} total, {essential} essential, {eager} eager, {lazy} lazy" in result.stdout


def test_smaller_profiles_are_core_plus_agents_of_full():
    full = load_profile("full").by_name
    core = set(load_profile("core").by_name)
    for name in ("vision", "tutoring", "learning"):
        profile = load_profile(name)
        assert core <= set(profile.by_name)
        for agent in profile.agents:  # same agent, same job and dependencies as in full
            assert (agent.run, agent.depends_on) == (full[agent.name].run, full[agent.name].depends_on)
    essential = {a.name for a in full.values() if a.essential}
    assert essential == core | {"ObservabilityHub_PC2", "MemoryOrchestratorService", "ResourceManager",
                                "AsyncProcessor", "ContextManager", "UnifiedMemoryReasoningAgent", "TaskScheduler",
                                "TieredResponder"}


@pytest.mark.slow
@pytest.mark.parametrize("name", COUNTS)
def test_each_profile_starts_with_exactly_its_eager_agents_ready(start_daemon, name):
    d = start_daemon(name)  # returns once every essential agent is ready; optional eager ones may follow
    _, essential, eager, _ = COUNTS[name]
    wait_until(lambda: d.status()["counts"]["ready"] >= eager, 30, what=f"{eager} eager agents ready")
    time.sleep(0.5)  # and nothing more starts by itself
    agents = d.status()["agents"]
    ready = {a["name"] for a in agents if a["state"] == "ready"}
    assert len(ready) == eager and ready == {a["name"] for a in agents if not a["lazy"]}
    assert {a["state"] for a in agents if a["lazy"]} <= {"stopped"}
    assert d.status()["counts"]["essential_ready"] == essential
