"""The lifecycle state machine, backoff, intensity window, circuit and admission, on a fake clock.

No processes, no sockets: every transition of policy.Lifecycle is driven by hand, in milliseconds.
"""
from __future__ import annotations

import random

import pytest

from sunsetd.policy import (Circuit, Kill, Lifecycle, Spawn, State, Terminate, Transition,
                            backoff_delay)
from sunsetd.profile import AgentSpec, Backoff, Intensity, RestartMode


def spec(**overrides) -> AgentSpec:
    base = dict(name="A", run="agents.testing:Echo", start_timeout_s=10.0, stop_timeout_s=5.0, stable_s=10.0,
                backoff=Backoff(initial_ms=100, max_ms=30_000, multiplier=2.0, jitter="none"),
                intensity=Intensity(max_restarts=5, within_s=60.0, cooldown_s=60.0))
    base.update(overrides)
    return AgentSpec(**base)


def kinds(actions) -> list[type]:
    return [type(a) for a in actions]


def transition(actions) -> Transition:
    (t,) = [a for a in actions if isinstance(a, Transition)]
    return t


def ready_lifecycle(now: float = 0.0, **overrides) -> Lifecycle:
    lc = Lifecycle(spec(**overrides), random.Random(1))
    lc.start(now)
    lc.ready(now)
    return lc


# ---- transitions, one test each --------------------------------------------------------------------------

def test_transition_stopped_to_starting_spawns():
    lc = Lifecycle(spec())
    actions = lc.start(0.0)
    assert transition(actions) == Transition(State.STOPPED, State.STARTING, "start")
    assert Spawn() in actions
    assert lc.next_deadline() == 10.0  # start_timeout_s


def test_transition_starting_to_ready():
    lc = Lifecycle(spec())
    lc.start(0.0)
    t = transition(lc.ready(1.0))
    assert (t.old, t.new) == (State.STARTING, State.READY)
    assert lc.next_deadline() is None and lc.ready_since == 1.0


def test_ready_is_ignored_unless_starting():
    lc = Lifecycle(spec())
    assert lc.ready(0.0) == []
    lc = ready_lifecycle()
    assert lc.ready(1.0) == []


def test_transition_ready_to_starting_first_restart_is_immediate():
    lc = ready_lifecycle()
    actions = lc.exited(20.0, "killed by SIGKILL", clean_exit=False)
    assert kinds(actions) == [Transition, Spawn]
    assert lc.state is State.STARTING and lc.restarts == 1


def test_transition_ready_to_backoff_on_second_quick_failure():
    lc = ready_lifecycle()
    lc.exited(1.0, "exit code 1", clean_exit=False)
    lc.ready(1.1)
    actions = lc.exited(1.2, "exit code 1", clean_exit=False)
    assert kinds(actions) == [Transition]
    assert lc.state is State.BACKOFF
    assert lc.restart_at == pytest.approx(1.2 + 0.1)  # initial_ms for the 2nd consecutive restart


def test_transition_backoff_to_starting_when_deadline_passes():
    lc = ready_lifecycle()
    lc.exited(1.0, "x", False)
    lc.exited(1.01, "x", False)  # exit during start: second consecutive failure
    assert lc.state is State.BACKOFF
    assert lc.tick(lc.restart_at - 0.001) == []
    actions = lc.tick(lc.restart_at)
    assert kinds(actions) == [Transition, Spawn] and lc.state is State.STARTING


def test_transition_starting_to_backoff_on_exit_during_start():
    lc = ready_lifecycle()
    lc.exited(1.0, "x", False)
    t = transition(lc.exited(1.05, "exit code 1", False))
    assert (t.old, t.new) == (State.STARTING, State.BACKOFF)
    assert "exited during start" in t.reason


def test_transition_starting_to_stopping_on_start_timeout_then_restart_path():
    lc = Lifecycle(spec())
    lc.start(0.0)
    actions = lc.tick(10.0)
    assert kinds(actions) == [Transition, Terminate] and lc.state is State.STOPPING
    assert "start_timeout_s" in lc.reason
    actions = lc.exited(10.5, "exit code 0", clean_exit=True)
    assert lc.state is State.STARTING and Spawn() in actions  # a failure, even with a clean exit


def test_transition_ready_to_stopping_when_hung_and_kill_after_stop_timeout():
    lc = ready_lifecycle()
    actions = lc.unhealthy(3.0, "hung: no heartbeat for 800ms")
    assert kinds(actions) == [Transition, Terminate]
    assert lc.next_deadline() == 8.0  # stop_timeout_s
    assert lc.tick(7.9) == []
    assert lc.tick(8.0) == [Kill()]
    assert lc.next_deadline() is None  # one SIGKILL; the exit finishes the stop
    actions = lc.exited(8.01, "killed by SIGKILL", clean_exit=False)
    assert lc.state is State.STARTING and Spawn() in actions and lc.restarts == 1


def test_transition_ready_to_stopping_to_stopped_on_stop():
    lc = ready_lifecycle()
    assert kinds(lc.stop(1.0)) == [Transition, Terminate]
    t = transition(lc.exited(1.1, "exit code 0", True))
    assert (t.old, t.new) == (State.STOPPING, State.STOPPED)
    assert lc.restarts == 0


def test_transition_backoff_to_stopped_on_stop():
    lc = ready_lifecycle()
    lc.exited(1.0, "x", False)
    lc.exited(1.01, "x", False)
    t = transition(lc.stop(1.02))
    assert (t.old, t.new) == (State.BACKOFF, State.STOPPED) and lc.next_deadline() is None


def test_transition_failed_to_stopped_on_stop():
    lc = crash_until_failed()
    t = transition(lc.stop(100.0))
    assert (t.old, t.new) == (State.FAILED, State.STOPPED)
    assert lc.circuit is Circuit.CLOSED


def test_operator_restart_is_not_a_failure():
    lc = ready_lifecycle()
    assert kinds(lc.restart(1.0)) == [Transition, Terminate]
    actions = lc.exited(1.1, "exit code 0", True)
    assert lc.state is State.STARTING and Spawn() in actions
    assert lc.restarts == 0 and lc.consecutive_failures == 0


def test_start_while_stopping_restarts_on_exit():
    lc = ready_lifecycle()
    lc.stop(1.0)
    assert lc.start(1.1) == []
    actions = lc.exited(1.2, "exit code 0", True)
    assert lc.state is State.STARTING and Spawn() in actions


def test_stop_while_stopping_for_restart_cancels_the_restart():
    lc = ready_lifecycle()
    lc.restart(1.0)
    lc.stop(1.1)
    lc.exited(1.2, "exit code 0", True)
    assert lc.state is State.STOPPED


def test_exit_in_idle_states_is_ignored():
    lc = Lifecycle(spec())
    assert lc.exited(0.0, "x", False) == []
    assert lc.state is State.STOPPED


# ---- restart modes ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, clean, expected", [
    (RestartMode.ALWAYS, True, State.STARTING),
    (RestartMode.ALWAYS, False, State.STARTING),
    (RestartMode.ON_FAILURE, True, State.STOPPED),
    (RestartMode.ON_FAILURE, False, State.STARTING),
    (RestartMode.NEVER, True, State.STOPPED),
    (RestartMode.NEVER, False, State.STOPPED),
])
def test_restart_modes(mode, clean, expected):
    lc = ready_lifecycle(restart=mode)
    lc.exited(1.0, "exit", clean_exit=clean)
    assert lc.state is expected


# ---- backoff -----------------------------------------------------------------------------------------------

def test_backoff_sequence_without_jitter():
    b = Backoff(initial_ms=100, max_ms=1000, multiplier=2.0, jitter="none")
    rng = random.Random(0)
    assert [backoff_delay(n, b, rng) for n in range(1, 8)] == [0.0, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_full_jitter_stays_within_bounds_and_spreads():
    b = Backoff(initial_ms=100, max_ms=30_000, multiplier=2.0, jitter="full")
    rng = random.Random(42)
    for n in range(2, 40):
        cap = min(30.0, 0.1 * 2 ** (n - 2))
        samples = [backoff_delay(n, b, rng) for _ in range(200)]
        assert all(0.0 <= s <= cap for s in samples)
        assert max(samples) - min(samples) > cap * 0.5  # really spread, not a constant
    assert backoff_delay(1, b, rng) == 0.0


def test_backoff_survives_huge_attempt_numbers():
    b = Backoff(initial_ms=100, max_ms=5000, multiplier=10.0, jitter="none")
    assert backoff_delay(10_000, b, random.Random()) == 5.0


def test_stable_run_resets_consecutive_failures():
    lc = ready_lifecycle()
    lc.exited(1.0, "x", False)
    lc.ready(1.1)
    lc.exited(1.2, "x", False)  # 2nd consecutive: backoff
    lc.tick(lc.restart_at)
    lc.ready(2.0)
    actions = lc.exited(12.0, "x", False)  # ready for 10 s: stable, count starts again
    assert lc.state is State.STARTING and Spawn() in actions
    assert lc.consecutive_failures == 1


# ---- intensity and circuit ------------------------------------------------------------------------------

def crash_until_failed(now: float = 0.0, **overrides) -> Lifecycle:
    lc = Lifecycle(spec(**overrides), random.Random(3))
    lc.start(now)
    for i in range(100):
        lc.exited(now, "exit code 1", False)
        if lc.state is State.FAILED:
            return lc
        if lc.state is State.BACKOFF:
            now = lc.restart_at
            lc.tick(now)
    raise AssertionError("never failed")


def test_more_than_max_restarts_within_window_opens_the_circuit():
    lc = crash_until_failed()
    assert lc.state is State.FAILED and lc.circuit is Circuit.OPEN
    assert lc.restarts == 5  # max_restarts restarts were allowed, the next failure opened the circuit
    assert "more than 5 restarts within 60s" in lc.reason


def test_restarts_spread_beyond_the_window_never_open_the_circuit():
    lc = Lifecycle(spec(stable_s=1000.0), random.Random(0))
    lc.start(0.0)
    now = 0.0
    for _ in range(20):
        now += 13.0  # 5 restarts need 52 s: the window of 60 s never holds 6
        lc.exited(now, "x", False)
        if lc.state is State.BACKOFF:
            lc.tick(lc.restart_at)
        assert lc.state is State.STARTING
    assert lc.restarts == 20


def test_zero_max_restarts_fails_at_first_crash():
    lc = ready_lifecycle(intensity=Intensity(max_restarts=0, within_s=60, cooldown_s=5))
    assert transition(lc.exited(1.0, "x", False)).new is State.FAILED


def test_failed_half_open_trial_after_cooldown():
    lc = crash_until_failed()
    opened_at = lc.cooldown_until - 60.0
    assert lc.tick(opened_at + 59.9) == []
    actions = lc.tick(opened_at + 60.0)
    assert kinds(actions) == [Transition, Spawn]
    assert lc.state is State.STARTING and lc.circuit is Circuit.HALF_OPEN


def test_half_open_trial_that_fails_reopens_at_once():
    lc = crash_until_failed()
    now = lc.cooldown_until
    lc.tick(now)
    restarts = lc.restarts
    t = transition(lc.exited(now + 0.1, "exit code 1", False))
    assert t.new is State.FAILED and "half-open" in t.reason
    assert lc.restarts == restarts and lc.cooldown_until == pytest.approx(now + 0.1 + 60.0)


def test_half_open_trial_that_stays_ready_closes_the_circuit():
    lc = crash_until_failed()
    now = lc.cooldown_until
    lc.tick(now)
    lc.ready(now + 0.5)
    assert lc.circuit is Circuit.HALF_OPEN
    assert lc.next_deadline() == pytest.approx(now + 10.5)  # stable_s after ready
    assert lc.tick(now + 10.5) == []
    assert lc.circuit is Circuit.CLOSED and not lc.recent_restarts and lc.consecutive_failures == 0
    lc.exited(now + 20.0, "x", False)  # a later crash is an ordinary first restart again
    assert lc.state is State.STARTING


def test_operator_start_closes_an_open_circuit():
    lc = crash_until_failed()
    actions = lc.start(1.0, "operator start")
    assert kinds(actions) == [Transition, Spawn] and lc.circuit is Circuit.CLOSED


def test_spawn_failure_takes_the_restart_path():
    lc = Lifecycle(spec())
    lc.start(0.0)
    actions = lc.spawn_failed(0.0, "ENOMEM")
    assert Spawn() in actions and lc.restarts == 1


# ---- shutdown: hold ---------------------------------------------------------------------------------------

def test_transition_ready_to_stopped_when_killed_during_shutdown():
    """A second shutdown signal kills agents still serving their dependents: no restart, whatever the
    restart policy (found in review: 9 of 16 agents were respawned in the middle of a shutdown)."""
    lc = ready_lifecycle()
    assert lc.hold(1.0, "shutdown") == []
    t = transition(lc.exited(1.1, "killed by SIGKILL", clean_exit=False))
    assert (t.old, t.new) == (State.READY, State.STOPPED) and "not restarted: shutdown" in t.reason
    assert lc.restarts == 0 and lc.start(1.2) == []


def test_transition_backoff_to_stopped_at_hold():
    lc = ready_lifecycle()
    lc.exited(1.0, "exit code 1", False)
    lc.ready(1.1)
    lc.exited(1.2, "exit code 1", False)
    assert lc.state is State.BACKOFF
    t = transition(lc.hold(1.3, "shutdown"))
    assert (t.old, t.new) == (State.BACKOFF, State.STOPPED) and lc.next_deadline() is None


def test_transition_failed_to_stopped_at_hold():
    lc = crash_until_failed()
    t = transition(lc.hold(2.0, "shutdown"))
    assert (t.old, t.new) == (State.FAILED, State.STOPPED) and lc.tick(1e9) == []


def test_hold_turns_a_pending_operator_restart_into_a_stop():
    lc = ready_lifecycle()
    lc.restart(1.0)
    lc.hold(1.1, "shutdown")
    t = transition(lc.exited(1.2, "exit code 0", clean_exit=True))
    assert t.new is State.STOPPED


def test_hung_agent_during_shutdown_is_stopped_not_restarted():
    lc = ready_lifecycle()
    lc.hold(1.0, "shutdown")
    lc.unhealthy(1.1, "hung: no heartbeat for 900ms")
    t = transition(lc.exited(1.5, "killed by SIGKILL", clean_exit=False))
    assert t.new is State.STOPPED and lc.restarts == 0


# ---- reload: redefine ------------------------------------------------------------------------------------

def test_redefine_gives_a_fresh_window_and_closes_the_circuit():
    lc = crash_until_failed()
    lc.redefine(spec(run="agents.testing:Fixed"))
    assert lc.spec.run == "agents.testing:Fixed" and not lc.recent_restarts and lc.consecutive_failures == 0
    assert lc.state is State.FAILED  # the supervisor decides when it starts
    assert kinds(lc.start(3.0, "profile reload")) == [Transition, Spawn] and lc.circuit is Circuit.CLOSED


def test_transition_stopping_to_stopped_when_the_spawn_fails_after_a_stop():
    """Found in review: a stop asked for while the spawn was still under way, then the spawn failed:
    the lifecycle waited for an exit that could never come, and stayed stopping for ever."""
    lc = Lifecycle(spec())
    lc.start(0.0)
    lc.stop(0.1, "shutdown")
    t = transition(lc.spawn_failed(0.2, "Too many open files"))
    assert (t.old, t.new) == (State.STOPPING, State.STOPPED) and lc.next_deadline() is None
    lc.start(1.0)
    lc.restart(1.1)  # an operator restart asked for meanwhile starts it again
    assert kinds(lc.spawn_failed(1.2, "ENOMEM")) == [Transition, Spawn] and lc.state is State.STARTING
