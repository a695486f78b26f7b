"""Deadlines for the daemon's event loop: a heap of callbacks, cancellable, one clock.

The loop asks `timeout()` how long it may sleep in poll() and calls `run_due()` after it wakes; there
is no periodic tick. Cancelled entries are dropped lazily, and the heap is compacted when they pile up.
`call_soon` runs a callback after the current one returns, before any timer: how an event produced
inside a call (a process handle's `started`) reaches its listener without re-entering the caller.
"""
from __future__ import annotations

import heapq
import math
import itertools
import time
from collections import deque
from typing import Callable


class Timer:
    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]):
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._cancelled_hint = 0
        self._soon: deque[Callable[[], None]] = deque()

    def now(self) -> float:
        return self.clock()

    def call_soon(self, callback: Callable[[], None]) -> None:
        self._soon.append(callback)

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when, callback)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(self.clock() + delay, callback)

    def call_aligned(self, period: float, callback: Callable[[], None]) -> Timer:
        """At the next multiple of `period` on the clock: periodic work of commensurate periods (the
        once-a-second checks, the quarter-second liveness tick) then shares a wake-up, which is most of
        what such a timer costs an idle daemon."""
        now = self.clock()
        when = (math.floor(now / period) + 1) * period
        while when <= now:  # floating point: never the moment it runs in, or it would run again at once
            when += period
        return self.call_at(when, callback)

    def cancel(self, timer: Timer | None) -> None:
        if timer is not None and not timer.cancelled:
            timer.cancel()
            self._cancelled_hint += 1
            if self._cancelled_hint > 1024 and self._cancelled_hint > len(self._heap) // 2:
                self._heap = [entry for entry in self._heap if not entry[2].cancelled]
                heapq.heapify(self._heap)
                self._cancelled_hint = 0

    def timeout(self, cap: float) -> float:
        """Seconds until the next live deadline, at most `cap`, at least 0."""
        if self._soon:
            return 0.0
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self._cancelled_hint = max(0, self._cancelled_hint - 1)
        if not heap:
            return cap
        return min(cap, max(0.0, heap[0][0] - self.clock()))

    def run_due(self) -> None:
        soon = self._soon
        while soon:
            soon.popleft()()
        now = self.clock()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, timer = heapq.heappop(heap)
            if timer.cancelled:
                self._cancelled_hint = max(0, self._cancelled_hint - 1)
                continue
            timer.cancelled = True  # fired: a later cancel() is a no-op
            timer.callback()
            while soon:
                soon.popleft()()
