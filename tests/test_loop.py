"""The event loop on its own: sockets and plain fds, real pipes, no daemon."""
from __future__ import annotations

import os

import zmq

from sunsetd.loop import WRITABLE, EventLoop
from sunsetd.timers import Timers


def _pipes(n: int) -> list[tuple[int, int]]:
    return [os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC) for _ in range(n)]


def _close(pipes: list[tuple[int, int]]) -> None:
    for r, w in pipes:
        for fd in (r, w):
            try:
                os.close(fd)
            except OSError:
                pass


def test_only_the_readable_fd_of_hundreds_is_served_and_sockets_first():
    loop, served = EventLoop(Timers()), []
    pipes = _pipes(300)
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        pull.bind("inproc://loop-test")
        push.connect("inproc://loop-test")
        for i, (r, _w) in enumerate(pipes):
            loop.watch(r, lambda i=i: served.append(i))
        loop.watch(pull, lambda: served.append(("socket", pull.recv())))
        os.write(pipes[123][1], b"x")
        push.send(b"m")
        loop.run_once(1.0)
        assert served == [("socket", b"m"), 123]  # level-triggered: unread, it is served again
        loop.run_once(0.0)
        assert served[-1] == 123
    finally:
        loop.close()
        _close(pipes)
        ctx.destroy(linger=0)


def test_a_callback_may_unwatch_another_ready_fd_and_watch_a_fd_for_writing():
    loop, served = EventLoop(Timers()), []
    (r1, w1), (r2, w2) = pipes = _pipes(2)
    try:
        loop.watch(r1, lambda: (served.append(1), loop.unwatch(r2)))
        loop.watch(r2, lambda: served.append(2))
        os.write(w1, b"x")
        os.write(w2, b"x")
        loop.run_once(1.0)
        assert served.count(2) <= 1 and 1 in served
        served.clear()
        loop.run_once(0.0)
        assert served == [1]  # r2 is no longer watched
        loop.unwatch(r1)
        loop.watch(w2, lambda: served.append("writable"), events=WRITABLE)
        loop.run_once(1.0)
        assert served == [1, "writable"]
        loop.watch(w2, lambda: served.append("again"), events=WRITABLE)  # re-watching replaces
        loop.run_once(1.0)
        assert served[-1] == "again"
    finally:
        loop.close()
        _close(pipes)


def test_an_fd_closed_before_its_unwatch_and_its_number_reused_is_served_for_the_new_owner():
    loop, served = EventLoop(Timers()), []
    (r, w), = _pipes(1)
    loop.watch(r, lambda: served.append("old"))
    os.close(r)
    os.close(w)
    loop.unwatch(r)  # already gone from the set: no error
    pipes = _pipes(1)
    try:
        r2, w2 = pipes[0]
        loop.watch(r2, lambda: served.append("new"))
        os.write(w2, b"x")
        loop.run_once(1.0)
        assert served == ["new"]
    finally:
        loop.close()
        _close(pipes)


def test_a_hang_up_wakes_the_reader():
    loop, served = EventLoop(Timers()), []
    (r, w), = pipes = _pipes(1)
    try:
        loop.watch(r, lambda: served.append(os.read(r, 10)))
        os.close(w)
        loop.run_once(1.0)
        assert served == [b""]
    finally:
        loop.close()
        _close(pipes)
