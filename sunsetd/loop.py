"""The daemon's event loop: one zmq.Poller over the sockets, one epoll set over plain fds, each source
with the callback that owns it.

One thread owns all state, so nothing here locks. A round polls with a timeout set by the next deadline
(Timers), hands each ready source to its owner (the agents socket first, so replies and heartbeats are
seen before the exits and deadlines they may race with), then runs what is due. There is no tick.

Plain fds (each agent's pidfd and output pipes: about 240 with 77 agents) sit in an epoll set whose one
fd is in the zmq poller. zmq_poll() is poll(2) underneath: every round registered and removed a waiter
on every fd, 320 µs a wake-up with 231 pipes against 110 µs with them in epoll (#12, measured on this
VM), which was most of what an idle daemon cost, and a share of every request it routes.
"""
from __future__ import annotations

import select
from typing import Callable

import zmq

from sunsetd.timers import Timers

WRITABLE = zmq.POLLOUT  # watch(..., events=WRITABLE): writable (a connect done, a pipe with room)
_EPOLL_EVENTS = {zmq.POLLIN: select.EPOLLIN, zmq.POLLOUT: select.EPOLLOUT}
# what wakes a reader of a plain fd, besides data: the peer's hang-up and errors, which a read reports
_EPOLL_ALWAYS = select.EPOLLHUP | select.EPOLLERR


class EventLoop:
    def __init__(self, timers: Timers) -> None:
        self.timers = timers
        self.poller = zmq.Poller()
        self.epoll = select.epoll()
        self.poller.register(self.epoll.fileno(), zmq.POLLIN)
        self.callbacks: dict[object, Callable[[], None]] = {}  # zmq sockets and fds alike
        self.first: list[object] = []  # sockets served before the others in each round

    def watch(self, source: object, callback: Callable[[], None], first: bool = False,
              events: int = zmq.POLLIN) -> None:
        """Call `callback` when `source` (a zmq socket or an fd) is readable, or with events=WRITABLE writable."""
        if isinstance(source, int):
            mask = _EPOLL_EVENTS[events] | _EPOLL_ALWAYS
            try:
                self.epoll.register(source, mask)
            except FileExistsError:  # watched again for another event (a connect done, now reading)
                self.epoll.modify(source, mask)
        else:
            self.poller.register(source, events)
        self.callbacks[source] = callback
        if first:
            self.first.append(source)

    def unwatch(self, source: object) -> None:
        if self.callbacks.pop(source, None) is None:
            return
        if isinstance(source, int):
            try:
                self.epoll.unregister(source)
            except OSError:  # closed already: the kernel dropped it from the set
                pass
        else:
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
        fds_ready = ready.pop(self.epoll.fileno(), None)
        for source in ready:
            callback = self.callbacks.get(source)
            if callback is not None:  # an earlier callback in this round may have unwatched it
                callback()
        if fds_ready:
            for fd, _events in self.epoll.poll(0):
                callback = self.callbacks.get(fd)
                if callback is not None:
                    callback()
        self.timers.run_due()

    def close(self) -> None:
        self.epoll.close()
