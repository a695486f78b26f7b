"""Health verdicts and the memory budget's eviction plan: pure functions of observations and `now`."""
from __future__ import annotations

import pytest

from sunsetd import health
from sunsetd.budget import BudgetAgent, NoRoom, Room, make_room
from sunsetd.health import (DaemonState, EssentialFacts, Heartbeat, IdleFacts, daemon_state, healthy,
                            heartbeat_verdict, idle_verdict, memory_verdict, not_ready)
from sunsetd.policy import State

MB = 1 << 20


# ---- heartbeats -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("silent_s, unread, verdict", [
    (0.0, False, Heartbeat.ALIVE),
    (0.3, False, Heartbeat.ALIVE),  # exactly liveness x heartbeat: still alive
    (0.31, False, Heartbeat.HUNG),
    (0.31, True, Heartbeat.RECHECK),  # the loop has not read what came: it may be among it
    (0.6, True, Heartbeat.RECHECK),
    (0.61, True, Heartbeat.HUNG),  # but a flood never hides a hang for more than twice the limit
])
def test_heartbeat_verdict(silent_s, unread, verdict):
    assert heartbeat_verdict(silent_s, 0.0, heartbeat_ms=100, liveness=3, unread_messages=unread) is verdict


# ---- memory -----------------------------------------------------------------------------------------------

def test_memory_verdict():
    assert memory_verdict(None, 100) is None and memory_verdict(200 * MB, None) is None
    assert memory_verdict(100 * MB, 100) is None  # at the limit is not over it
    assert memory_verdict(150 * MB, 100) == "memory: rss 150MB over max_rss_mb=100"


# ---- idle lazy agents -------------------------------------------------------------------------------------

def idle(**overrides) -> IdleFacts:
    facts = dict(lazy=True, wanted=True, ready_since=0.0, busy=False, last_request_at=0.0, idle_timeout_s=300.0,
                 dependents_running=False)
    facts.update(overrides)
    return IdleFacts(**facts)


def test_an_idle_lazy_agent_stops_after_its_timeout_counted_from_its_last_request():
    assert idle_verdict(299.0, idle()) is None
    assert idle_verdict(300.0, idle()) == "idle for 300s"
    assert idle_verdict(300.0, idle(last_request_at=100.0)) is None


def test_idle_time_counts_from_ready_for_an_agent_started_long_after_its_last_request():
    assert idle_verdict(310.0, idle(last_request_at=0.0, ready_since=200.0)) is None


@pytest.mark.parametrize("overrides", [dict(lazy=False), dict(wanted=False), dict(ready_since=None), dict(busy=True),
                                       dict(dependents_running=True)])
def test_what_never_stops_for_being_idle(overrides):
    assert idle_verdict(1e9, idle(**overrides)) is None


# ---- daemon state and health ------------------------------------------------------------------------------

def facts(*states: State) -> list[EssentialFacts]:
    return [EssentialFacts(f"A{i}", s) for i, s in enumerate(states)]


def test_daemon_state():
    assert daemon_state(False, False, facts(State.STARTING)) is DaemonState.STARTING
    assert daemon_state(False, True, facts(State.READY, State.STARTING)) is DaemonState.RUNNING  # a restart
    assert daemon_state(False, False, facts(State.READY, State.FAILED)) is DaemonState.DEGRADED
    assert daemon_state(True, True, facts(State.FAILED)) is DaemonState.STOPPING


def test_healthy_only_when_running_with_every_essential_agent_ready():
    assert healthy(DaemonState.RUNNING, facts(State.READY, State.READY))
    # the alert rule's condition: an essential agent not ready, whatever the reason
    for state in (State.STOPPED, State.STARTING, State.BACKOFF, State.STOPPING):
        assert not healthy(DaemonState.RUNNING, facts(State.READY, state))
        assert not_ready(facts(State.READY, state)) == ["A1"]
    assert not healthy(DaemonState.STARTING, facts(State.READY))
    assert not healthy(DaemonState.STOPPING, facts(State.READY))


# ---- the memory budget ------------------------------------------------------------------------------------

def agent(name: str, footprint: float = 0.0, memory_mb: int = 100, running: bool = False, evictable: bool = False,
          last_used: float = 0.0, depends_on: tuple[str, ...] = ()) -> BudgetAgent:
    return BudgetAgent(name, footprint, memory_mb, running, evictable, last_used, depends_on)


def agents(*items: BudgetAgent) -> dict[str, BudgetAgent]:
    return {a.name: a for a in items}


def test_no_budget_means_room_for_anything():
    assert make_room(None, "X", agents(agent("X", memory_mb=10**6))) == Room(())


def test_a_start_that_fits_evicts_nothing():
    assert make_room(300, "X", agents(agent("A", 100, running=True), agent("X"))) == Room(())


def test_the_least_recently_used_idle_lazy_agents_go_first_and_only_as_many_as_needed():
    pool = agents(agent("Base", 50, running=True),
                  agent("Old", 100, running=True, evictable=True, last_used=1.0),
                  agent("Older", 100, running=True, evictable=True, last_used=0.5),
                  agent("New", 100, running=True, evictable=True, last_used=9.0), agent("X"))
    assert make_room(400, "X", pool) == Room(("Older",))
    assert make_room(300, "X", pool) == Room(("Older", "Old"))


def test_what_the_start_needs_is_never_evicted_and_its_dependencies_count():
    pool = agents(agent("Dep", 100, running=True, evictable=True, last_used=0.0),
                  agent("Other", 100, running=True, evictable=True, last_used=5.0),
                  agent("Top", depends_on=("Dep", "Cold")), agent("Cold", memory_mb=50))
    # Top (100) and Cold (50) must start; Dep is needed, so Other goes although it was used later
    assert make_room(300, "Top", pool) == Room(("Other",))


def test_a_start_that_cannot_fit_says_why():
    pool = agents(agent("Busy", 200, running=True), agent("Giant", memory_mb=500))
    verdict = make_room(330, "Giant", pool)
    assert isinstance(verdict, NoRoom)
    assert verdict.reason == ("memory budget of 330 MB: starting Giant needs 500 MB, running agents use 200 MB and "
                              "no idle lazy agent can be stopped to make room")


def test_stamp_deadline_working_idle_and_watched():
    limit, idle_limit = 0.75, 5.75
    # working: its own limit, whatever the daemon watches
    assert health.stamp_deadline(10.0, False, None, limit, idle_limit) == 10.75
    assert health.stamp_deadline(10.0, False, 10.5, limit, idle_limit) == 10.75  # never laxer
    # idle: the idle limit
    assert health.stamp_deadline(10.0, True, None, limit, idle_limit) == 15.75
    # idle but watched (given work, or stopped): the working limit from the later of stamp and watch
    assert health.stamp_deadline(10.0, True, 12.0, limit, idle_limit) == 12.75
    assert health.stamp_deadline(12.5, True, 12.0, limit, idle_limit) == 13.25  # it stamped after
    assert health.stamp_deadline(10.0, True, 20.0, limit, idle_limit) == 15.75  # never laxer than idle
