"""The daemon's event loop: one zmq.Poller over sockets and plain fds, each with the callback that owns it.

One thread owns all state, so nothing here locks. A round polls with a timeout set by the next deadline
(Timers), hands each ready source to its owner (the agents socket first, so replies and heartbeats are
seen before the exits and deadlines they may race with), then runs what is due. There is no tick.
"""
from __future__ import annotations

from typing import Callable

import zmq

from sunsetd.timers import Timers

WRITABLE = zmq.POLLOUT  # watch(..., events=WRITABLE): the poller's own flag, not select's (they differ)


class EventLoop:
    def __init__(self, timers: Timers) -> None:
        self.timers = timers
        self.poller = zmq.Poller()
        self.callbacks: dict[object, Callable[[], None]] = {}
        self.first: list[object] = []  # sources served before the others in each round

    def watch(self, source: object, callback: Callable[[], None], first: bool = False,
              events: int = zmq.POLLIN) -> None:
        """Call `callback` when `source` is readable (or, with events=WRITABLE, writable: a connect done, a pipe with room)."""
        self.poller.register(source, events)
        self.callbacks[source] = callback
        if first:
            self.first.append(source)

    def unwatch(self, source: object) -> None:
        if self.callbacks.pop(source, None) is not None:
            self.poller.unregister(source)
            if source in self.first:
                self.first.remove(source)

    def run_once(self, cap_s: float = 1.0) -> None:
        """One round: poll, serve what is readable, run what is due."""
        timeout_s = self.timers.timeout(cap_s)
        ready = dict(self.poller.poll(max(0, int(timeout_s * 1000 + 0.999))))
        for source in self.first:
            if ready.pop(source, None):
                self.callbacks[source]()
        for source in ready:
            callback = self.callbacks.get(source)
            if callback is not None:  # an earlier callback in this round may have unwatched it
                callback()
        self.timers.run_due()
