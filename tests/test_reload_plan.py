"""Reload as pure logic: the diff of two profiles, and the settle watch of one changed agent."""
from __future__ import annotations

import pytest

from fakes import profile, spec
from sunsetd.policy import State, Transition
from sunsetd.reload import ReloadOutcome, RollBack, Settled, plan, settle_budget_s


def test_plan_names_added_removed_changed_and_counts_the_rest():
    current = {s.name: s for s in (spec("A"), spec("B"), spec("C"))}
    new = profile(spec("A"), spec("B", config={"v": 2}), spec("D"))
    p = plan(current, new)
    assert (p.added, p.removed, p.changed, p.unchanged) == (("D",), ("C",), ("B",), 1)
    assert p.previous == {"B": current["B"]}


def test_the_settle_budget_covers_stopping_the_old_incarnation_and_starting_the_new():
    old, new = spec("A", stop_timeout_s=5.0), spec("A", stop_timeout_s=2.0, start_timeout_s=10.0)
    assert settle_budget_s(old, new, running=True) == 5.0 + 10.0 + 1.0
    assert settle_budget_s(old, new, running=False) == 10.0 + 1.0  # a failed agent has nothing to stop


def watch(after: int = 1):
    outcome = ReloadOutcome(1, plan({"A": spec("A")}, profile(spec("A", config={"v": 2}))), applied_at=100.0)
    return outcome, outcome.watch("A", after, 16.0, spec("A"))


def test_the_old_incarnation_stopping_does_not_count():
    _, w = watch(after=3)
    assert w.on_transition(3, Transition(State.READY, State.STOPPING, "profile reload")) is None
    assert w.on_transition(3, Transition(State.STOPPING, State.STOPPED, "stopped")) is None


def test_a_new_incarnation_ready_settles_it():
    outcome, w = watch()
    assert w.on_transition(2, Transition(State.STARTING, State.READY, "ready")) == Settled()
    outcome.done("A", Settled.verdict.value)
    assert outcome.settled and outcome.body()["outcomes"] == {"A": "ready"} and outcome.body()["rolled_back"] == []


@pytest.mark.parametrize("new", [State.STARTING, State.BACKOFF, State.FAILED, State.STOPPING])
def test_a_new_incarnation_that_leaves_starting_any_other_way_rolls_back(new):
    _, w = watch()
    verdict = w.on_transition(2, Transition(State.STARTING, new, "exited during start, exit code 1"))
    assert verdict == RollBack("new spec did not become ready: exited during start, exit code 1")


def test_the_deadline_rolls_back_only_once_it_has_passed():
    _, w = watch()
    assert w.deadline == 116.0 and w.on_deadline(115.9) is None
    assert w.on_deadline(116.0) == RollBack("new spec not ready within 16s")


def test_the_outcome_reports_every_agent():
    outcome, _ = watch()
    outcome.done("A", "rolled back: new spec did not become ready: x")
    body = outcome.body()
    assert body["settled"] and body["rolled_back"] == ["A"] and body["settle_s"] == 16.0
    assert set(body) == {"reload", "profile", "added", "removed", "changed", "unchanged", "settled", "settle_s",
                         "outcomes", "rolled_back", "superseded"}
