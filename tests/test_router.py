"""The router carrying out the request book's decisions, on its real sockets (no daemon, no agent)."""
from __future__ import annotations

import zmq

from sunsetd.auth import Authenticator
from sunsetd.protocol import Request
from sunsetd.requestbook import AgentView, Availability, Pending, RequestBook
from sunsetd.router import Router
from sunsetd.timers import Timers


class FullServer:
    """An MCP channel whose server never reads its stdin: every forward comes back overloaded."""

    def __init__(self, book: RequestBook):
        self.book = book
        self.names = {"srv"}
        self.forwards = 0

    def forward(self, p: Pending, incarnation: int) -> list:
        self.forwards += 1
        return self.book.forward_failed(p, peer_gone=False)

    def cancel(self, p: Pending, incarnation: int) -> None:
        pass


def test_a_long_queue_behind_a_full_pipe_is_answered_without_exhausting_the_stack(tmp_path):
    # found by attacking it: each refused forward flushed the next one a call deeper, and about 490
    # queued requests took the daemon down with a RecursionError, 147 of them never answered
    ctx = zmq.Context()
    book = RequestBook()
    timers = Timers()
    guard = Authenticator(ctx, timers)
    router = Router(ctx, tmp_path, book, timers, guard)
    try:
        router.mcp = FullServer(book)
        book.update("srv", AgentView(Availability.COMING, max_queue=5000))
        for i in range(3000):
            router.execute(book.accept([b"client"], Request(i, "srv", "tools/list", None, 10_000, False), 0.0))
        router.execute(book.update("srv", AgentView(Availability.READY, 1, max_inflight=1, max_queue=5000)))
        assert router.mcp.forwards == 3000 and router.replies["overloaded"] == 3000 and not book.pending
        assert not [k for k in router.counters if k.startswith("internal_errors")]  # none on the way
    finally:
        router.close()
        guard.close()
        ctx.term()
