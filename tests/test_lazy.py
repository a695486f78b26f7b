"""Lazy agents (DESIGN §5): started by their first request after their dependencies, stopped when
idle, kept within the profile's memory budget by LRU eviction; an agent over max_rss_mb is restarted."""
from __future__ import annotations

import time

import pytest

from conftest import TEST_PROFILES, wait_until
from sunsetd.client import Client, RemoteError

pytestmark = pytest.mark.slow

LAZY = TEST_PROFILES / "lazy.yaml"


def states(d) -> dict[str, str]:
    return {a["name"]: a["state"] for a in d.status()["agents"]}


def test_only_eager_agents_start(start_daemon):
    d = start_daemon(LAZY)
    s = states(d)
    assert s.pop("Base") == "ready"
    assert set(s.values()) == {"stopped"}


def test_first_request_starts_lazy_dependencies_in_order_and_requests_keep_arrival_order(start_daemon):
    d = start_daemon(LAZY)
    with Client(d.runtime_dir) as c:
        ids = [c.send("LazyTop", "echo", i, timeout=20) for i in range(6)]
        replies = [c.recv(20) for _ in ids]
    assert [r["body"] for r in replies] == list(range(6))  # all answered, in the order they arrived
    log = d.log()
    assert log.index('agent=LazyDep event=state msg="starting -> ready"') < log.index("agent=LazyTop event=spawn")
    assert 'agent=LazyDep event=state msg="stopped -> starting" reason="first request"' not in log  # started as a dependency
    assert states(d)["LazyTop"] == "ready" and states(d)["LazyDep"] == "ready"


def test_idle_lazy_agents_stop_dependents_first_and_it_is_not_a_restart(start_daemon):
    d = start_daemon(LAZY)
    assert d.call("LazyTop", "echo", "x", timeout=20) == "x"
    d.wait_agent("LazyTop", lambda a: a["state"] == "stopped", timeout=10, what="idle stop")
    d.wait_agent("LazyDep", lambda a: a["state"] == "stopped", timeout=10, what="idle stop")
    log = d.log()
    assert 'agent=LazyTop event=state msg="ready -> stopping" reason="idle for' in log
    assert log.index("agent=LazyTop event=exit") < log.index('agent=LazyDep event=state msg="ready -> stopping"')
    assert all(a["restarts"] == 0 for a in d.status()["agents"])
    assert d.call("LazyTop", "echo", "again", timeout=20) == "again"  # and it comes back on demand


def test_lru_eviction_under_the_budget_and_overloaded_when_nothing_can_go(start_daemon):
    d = start_daemon(LAZY)  # budget 330 MB; each Heavy holds 100 MB of touched ballast
    assert d.call("HeavyA", "echo", 1, timeout=20) == 1
    time.sleep(0.2)
    assert d.call("HeavyB", "echo", 2, timeout=20) == 2
    wait_until(lambda: (d.agent("HeavyB")["rss_bytes"] or 0) > 100 << 20, 5, what="HeavyB resident")
    assert d.call("HeavyA", "echo", 1) == 1  # HeavyA is now the more recently used one
    assert d.call("HeavyC", "echo", 3, timeout=20) == 3
    s = states(d)
    assert s["HeavyB"] == "stopped" and s["HeavyA"] == "ready" and s["HeavyC"] == "ready"
    assert 'agent=HeavyB event=state msg="ready -> stopping" reason="evicted for HeavyC: memory budget 330 MB"' in d.log()
    with pytest.raises(RemoteError) as info:
        d.call("Giant", "echo", 4)
    assert info.value.code == "overloaded" and "memory budget of 330 MB" in info.value.message
    assert states(d)["Giant"] == "stopped"
    memory = d.status()["memory"]
    assert memory["budget_mb"] == 330 and memory["used_mb"] <= 330


def test_agent_over_max_rss_is_restarted_with_reason_memory(start_daemon):
    d = start_daemon(LAZY)
    old = d.call("Hog", "pid", timeout=20)
    assert d.call("Hog", "alloc", 100) == 100
    d.wait_agent("Hog", lambda a: a["restarts"] == 1 and a["state"] == "ready" and a["pid"] != old, timeout=15,
                 what="restart after exceeding max_rss_mb")
    assert 'agent=Hog event=state msg="ready -> stopping" reason="memory: rss' in d.log()


def test_sunsetctl_start_prewarms_a_lazy_agent(start_daemon):
    d = start_daemon(LAZY)
    brief = d.call("sunsetd", "start", {"agent": "LazyTop"}, timeout=20)
    assert brief["state"] == "ready"
    assert states(d)["LazyDep"] == "ready"
