"""Timers: the loop's one clock, deadlines in order, cancellation, and call_soon before any timer."""
from __future__ import annotations

from sunsetd.timers import Timers


def test_due_timers_run_in_order_and_cancelled_ones_never():
    now = [0.0]
    timers = Timers(lambda: now[0])
    ran = []
    timers.call_at(2.0, lambda: ran.append("two"))
    cancelled = timers.call_at(1.0, lambda: ran.append("never"))
    timers.call_later(0.5, lambda: ran.append("half"))
    timers.cancel(cancelled)
    assert timers.timeout(cap=10.0) == 0.5
    now[0] = 2.0
    timers.run_due()
    assert ran == ["half", "two"] and timers.timeout(cap=10.0) == 10.0


def test_call_soon_runs_after_the_current_callback_and_before_timers():
    timers = Timers(lambda: 5.0)
    ran = []

    def first() -> None:
        timers.call_soon(lambda: ran.append("soon"))
        ran.append("first")

    timers.call_at(5.0, first)
    timers.call_at(5.0, lambda: ran.append("second"))
    assert timers.timeout(cap=1.0) == 0.0
    timers.run_due()
    assert ran == ["first", "soon", "second"]
    timers.call_soon(lambda: ran.append("again"))
    assert timers.timeout(cap=1.0) == 0.0  # the loop must not sleep while something is pending
    timers.run_due()
    assert ran[-1] == "again"


def test_a_heap_of_cancelled_timers_is_compacted():
    timers = Timers(lambda: 0.0)
    for _ in range(5000):
        timers.cancel(timers.call_at(100.0, lambda: None))
    assert len(timers._heap) < 3000


def test_aligned_timers_of_commensurate_periods_share_a_wake_up_and_never_fire_twice_at_once():
    now = [0.30000000000000004]
    timers = Timers(clock=lambda: now[0])
    fired: list[tuple[str, float]] = []

    def every(name: str, period: float) -> None:
        fired.append((name, now[0]))
        timers.call_aligned(period, lambda: every(name, period))

    timers.call_aligned(0.25, lambda: every("quarter", 0.25))
    timers.call_aligned(1.0, lambda: every("second", 1.0))
    wakes = 0
    while now[0] < 3.0:
        now[0] = min(e[0] for e in timers._heap if not e[2].cancelled)  # the loop sleeps until the next
        wakes += 1
        timers.run_due()
    assert wakes == 11  # 0.5, 0.75, ..., 3.0: the seconds ride on the quarters' wake-ups
    assert [t for name, t in fired if name == "second"] == [1.0, 2.0, 3.0]
    assert len({t for _, t in fired}) == wakes
