"""The MCP servers' channel: requests to them over their stdin, their answers back to the request book.

What the agents socket is for Python agents, this is for programs with `protocol: mcp`. The router
hands it the book's forwards and cancellations for those agents; the supervisor hands it each server's
process (at its spawn), the lines it prints on stdout, and its heartbeats and stops. Each incarnation
has one `mcp.Session`, which decides what every line means; this file only carries lines and events:

- the handshake's end is the agent's HELLO and READY, and the supervisor's heartbeat is an MCP ping
  whose answer (or any answer) is the agent's heartbeat, so readiness, liveness and the hung path are the
  ones every agent has;
- an answer goes to the book as that incarnation's reply (DESIGN §5 holds as for any agent: the book
  answers what a dead server held, retries, and drops late answers);
- a deadline's cancellation becomes `notifications/cancelled`; a stop closes the server's stdin, as the
  MCP specification asks, before the supervisor's stop signal;
- notifications go to the agent's logs (up to MAX_NOTICES_PER_S); what the server asks of its client
  is answered or refused there; garbage is counted and logged (at the 1st, 2nd, 4th, 8th... line);
- what sunsetd writes to a server is bounded (MAX_INPUT_BACKLOG): one that stops reading stops
  answering pings too, and is restarted as hung.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from sunsetd import __version__, logs, mcp
from sunsetd.protocol import ErrorCode, Kind
from sunsetd.requestbook import Decision, Pending, RequestBook
from sunsetd.spawner import LINE_CUT, MAX_INPUT_BACKLOG, ProcessHandle

MAX_NOTICES_PER_S = 100  # a server's notifications logged per second; the rest are counted


class Owner(Protocol):
    """Who is told what a server's lines mean for its lifecycle (the supervisor)."""

    def on_agent_message(self, name: str, incarnation: int, kind: Kind, body: Any) -> None: ...
    def on_agent_broken(self, name: str, incarnation: int, reason: str) -> None: ...


@dataclass(eq=False)
class _Link:
    handle: ProcessHandle
    session: mcp.Session
    ready: bool = False
    started_at: float = field(default_factory=time.time)
    client_pings: set[int] = field(default_factory=set)  # book ids of `ping` ops: their {} is "pong"
    window_at: float = 0.0  # the second its notifications are counted in
    window_notices: int = 0


class McpChannel:
    unread = False  # what a server wrote is read as it comes: the heartbeat verdict need not wait for it

    def __init__(self, book: RequestBook, deliver: Callable[[list[Decision]], None]):
        self.book = book
        self.deliver = deliver  # carries the book's decisions out (the router's execute)
        self.owner: Owner | None = None
        self.links: dict[str, _Link] = {}  # agent name -> its current incarnation's link
        self.names: set[str] = set()  # agents whose current incarnation is an MCP server

    # ---- the supervisor's side
    def attach(self, handle: ProcessHandle, roots: tuple[str, ...] = ()) -> None:
        """A new incarnation of an MCP server was spawned (its process may not exist yet)."""
        self.names.add(handle.name)
        self.links[handle.name] = _Link(handle, mcp.Session(__version__, roots))

    def forget(self, name: str) -> None:
        """The agent's new incarnation is not an MCP server (a reload changed it), or it left the profile."""
        self.names.discard(name)
        self.links.pop(name, None)

    def opened(self, handle: ProcessHandle) -> None:
        """Its process runs: the handshake begins."""
        link = self._link(handle)
        if link is not None:
            link.started_at = time.time()
            handle.write(link.session.opening())

    def detach(self, handle: ProcessHandle) -> None:
        """Its process is gone (or never was): the book hears of it from the supervisor, not from here."""
        if self._link(handle) is not None:
            del self.links[handle.name]

    def line(self, handle: ProcessHandle, text: str) -> None:
        """A line the server printed on its stdout."""
        link = self._link(handle)
        if link is None:
            return
        cut = text.endswith(LINE_CUT)
        try:
            events = link.session.received(text[:-len(LINE_CUT)] if cut else text, cut)
            alive = False
            for event in events:
                # liveness is an answer: a server that prints but no longer reads its stdin is hung
                alive = alive or type(event) in (mcp.Pong, mcp.Answer)
                self._on_event(link, event)
        except Exception:  # a bug of ours must not let one line take the daemon and its agents down
            link.session.counters["internal_errors"] = link.session.counters.get("internal_errors", 0) + 1
            logs.event(handle.name, "internal_error", "while reading an MCP line:\n" + traceback.format_exc(),
                       "ERROR", incarnation=handle.incarnation)
            return
        if alive and link.ready and self.owner is not None and self._link(handle) is link:
            self.owner.on_agent_message(handle.name, handle.incarnation, Kind.HEARTBEAT, None)

    def send(self, name: str, incarnation: int, kind: Kind, body: Any = None) -> bool:
        """The supervisor's frames to an agent, in MCP: a heartbeat is a ping, STOP closes its stdin."""
        link = self.links.get(name)
        if link is None or link.handle.incarnation != incarnation:
            return False
        if kind is Kind.HEARTBEAT:
            return self._write(link, link.session.ping())
        if kind is Kind.STOP:
            link.handle.close_input()
            return True
        return False

    def describe(self, name: str) -> dict | None:
        """For status: who the server said it is, and what it did wrong."""
        link = self.links.get(name)
        if link is None or link.session.server is None:
            return None
        return {**link.session.server.describe(), **link.session.counters}

    # ---- the router's side
    def forward(self, p: Pending, incarnation: int) -> list[Decision]:
        name = p.to
        link = self.links.get(name)
        if link is None or link.handle.incarnation != incarnation or not link.ready:
            return self.book.forward_failed(p, peer_gone=True)
        if p.op == mcp.INFO_OP:
            return self.book.replied(name, incarnation, p.rid, True, self._info(link))
        try:
            data = link.session.request(p.rid, p.op, p.body)
        except mcp.BadCall as exc:
            return self.book.replied(name, incarnation, p.rid, False, (ErrorCode.BAD_REQUEST, str(exc)))
        if link.handle.input_backlog() + len(data) > MAX_INPUT_BACKLOG:
            return self.book.forward_failed(p, peer_gone=False)  # it does not read: overloaded, like a full pipe
        if p.op == "ping":
            link.client_pings.add(p.rid)
        if not link.handle.write(data):
            return self.book.forward_failed(p, peer_gone=True)
        return []

    def cancel(self, p: Pending, incarnation: int) -> None:
        """Its deadline passed while the server had it: tell the server to stop working on it."""
        link = self.links.get(p.to)
        if link is not None and link.handle.incarnation == incarnation:
            link.client_pings.discard(p.rid)
            self._write(link, link.session.cancel(p.rid, "the request's deadline passed"))

    # ---- what a line meant
    def _on_event(self, link: _Link, event: mcp.Event) -> None:
        handle = link.handle
        name, incarnation = handle.name, handle.incarnation
        if type(event) is mcp.Answer:
            if event.ok:
                value = "pong" if link.client_pings and event.rid in link.client_pings else event.value
            else:
                code, message = event.value
                value = (ErrorCode.AGENT_ERROR, f"JSON-RPC error {code}: {message}")
            link.client_pings.discard(event.rid)
            self.deliver(self.book.replied(name, incarnation, event.rid, event.ok, value))
        elif type(event) is mcp.Pong:
            pass  # the line itself is the heartbeat
        elif type(event) is mcp.Notice:
            now = time.monotonic()
            if now - link.window_at >= 1.0:
                link.window_at, link.window_notices = now, 0
            link.window_notices += 1
            if link.window_notices <= MAX_NOTICES_PER_S:
                logs.event(name, "mcp", event.text, event.level, incarnation=incarnation)
            else:  # a flood of notifications must not become a flood of log lines
                link.session.counters["notices_dropped"] = link.session.counters.get("notices_dropped", 0) + 1
                self._throttled(link, "notices_dropped", f"over {MAX_NOTICES_PER_S} notifications a second: "
                                                          f"not logged")
        elif type(event) is mcp.Initialized:
            self._write(link, event.write)
            link.ready = True
            server = event.server
            logs.event(name, "mcp", f"server {server.name} {server.version} (MCP {server.protocol}), offers "
                       + (", ".join(sorted(server.capabilities)) or "nothing"), incarnation=incarnation)
            if self.owner is not None:
                self.owner.on_agent_message(name, incarnation, Kind.HELLO, {"pid": handle.pid})
                self.owner.on_agent_message(name, incarnation, Kind.READY, None)
        elif type(event) is mcp.HandshakeFailed:
            if self.owner is not None:
                self.owner.on_agent_broken(name, incarnation, event.reason)
        elif type(event) is mcp.ServerRequest:
            self._write(link, event.write)
            if event.refused:
                self._throttled(link, "refused_requests", f"refused the server's request {event.method[:100]}")
        elif type(event) is mcp.Garbage:
            self._throttled(link, "garbage_lines", f"not MCP on stdout ({event.why}): {event.line}")

    def _write(self, link: _Link, data: bytes) -> bool:
        """sunsetd's own lines to the server (pings, cancellations, answers to its requests), within the
        same bound as requests: a server that does not read its stdin makes it drop them, never grow."""
        if link.handle.input_backlog() + len(data) > MAX_INPUT_BACKLOG:
            link.session.counters["writes_dropped"] = link.session.counters.get("writes_dropped", 0) + 1
            return False
        return link.handle.write(data)

    @staticmethod
    def _throttled(link: _Link, key: str, message: str) -> None:
        n = link.session.counters.get(key, 0)  # the session counted it
        if logs.sparse(n):
            logs.event(link.handle.name, "mcp", message, "WARNING", count=n, incarnation=link.handle.incarnation)

    def _info(self, link: _Link) -> dict:
        server = link.session.server
        return {"name": link.handle.name, "mcp": server.describe() if server else None,
                "instructions": server.instructions if server else "",
                "ops": sorted(mcp.METHODS | {mcp.INFO_OP}), "pid": link.handle.pid,
                "incarnation": link.handle.incarnation, "uptime_s": round(time.time() - link.started_at, 3)}

    def _link(self, handle: ProcessHandle) -> _Link | None:
        link = self.links.get(handle.name)
        return link if link is not None and link.handle is handle else None
