"""Router: the front and agents sockets (DESIGN §4, §5). It decodes, asks, and sends.

Owns both ROUTER sockets. A frame from a client is decoded and checked here, handed to the request
book, and the book's decisions are carried out: forwards to agents, replies to clients, control ops to
the control handlers, lazy starts to whoever starts agents. A frame from an agent is decoded here: a
REPLY goes to the book, HELLO, READY and HEARTBEAT to the supervisor. It decides nothing itself and
never blocks: every send is NOBLOCK with ROUTER_MANDATORY, and a failed send goes back to the book.
It reads a socket only when the event loop says it is readable, at most BATCH messages at a time.

Who may connect is the authenticator's to say (sunsetd.auth); what a connection may say is checked here:
a frame on the agents socket counts only under the routing id its connection was admitted as, and only
after that incarnation's HELLO carried its secret; a reply goes to a client only while the connection
that asked is still there.
"""
from __future__ import annotations

import time
import traceback
from collections import Counter, deque
from pathlib import Path
from typing import Any, Callable

import zmq

from sunsetd import auth, logs, protocol, rundir
from sunsetd.protocol import ErrorCode, Kind, ProtocolError
from sunsetd.requestbook import Cancel, Control, Decision, Forward, Pending, Reply, RequestBook, StartAgent
from sunsetd.timers import Timer, Timers

BATCH = 256  # messages read from one socket before the loop looks at the others
NOBLOCK = int(zmq.NOBLOCK)  # a plain int: pyzmq spends more on its flag enums than on the call itself
FRONT_SNDHWM = 10_000  # replies buffered for a client that reads slowly, before they count as undeliverable


def _router_socket(ctx: zmq.Context, runtime_dir: Path, name: str, access: rundir.Access, shared: bool,
                   guard: auth.Authenticator) -> zmq.Socket:
    sock = ctx.socket(zmq.ROUTER)
    guard.guard(sock, auth.CLIENTS if shared else auth.AGENTS)
    # Without ROUTER_MANDATORY a message to a gone or full peer vanishes silently; with it we learn
    # EHOSTUNREACH or EAGAIN and the book decides what the request gets.
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.MAXMSGSIZE, protocol.HARD_FRAME_BYTES)
    sock.setsockopt(zmq.LINGER, 100)
    sock.setsockopt(zmq.SNDHWM, FRONT_SNDHWM)
    sock.bind(rundir.endpoint(runtime_dir, name))
    access.socket(runtime_dir / name, shared)
    return sock


def _user_id(frame: zmq.Frame) -> bytes | None:
    """The User-Id the authenticator gave the connection a message came from."""
    try:
        return frame.get("User-Id").encode()
    except zmq.ZMQError:
        return None


def _origin(frame: zmq.Frame) -> tuple[int, int] | None:
    """The client connection a request came from: (its fd, when it was admitted)."""
    try:
        return frame.get(zmq.SRCFD), int(frame.get("User-Id"))
    except (zmq.ZMQError, ValueError):
        return None


class Router:
    def __init__(self, ctx: zmq.Context, runtime_dir: Path, book: RequestBook, timers: Timers,
                 guard: auth.Authenticator, access: rundir.Access = rundir.Access()):
        self.book = book
        self.timers = timers
        self.auth = guard
        self.front = _router_socket(ctx, runtime_dir, rundir.FRONT_SOCKET, access, True, guard)
        self.agents = _router_socket(ctx, runtime_dir, rundir.AGENTS_SOCKET, access, False, guard)
        self.replies: Counter[str] = Counter()  # "ok" or error code -> replies sent
        self.counters: Counter[str] = Counter()  # bad frames, unknown peers, undeliverable replies, ...
        # where the decisions that are not the router's own go (set by the daemon)
        self.on_control: Callable[[Pending], None] = lambda p: self.fail(p, ErrorCode.BAD_REQUEST, "no control")
        self.on_start: Callable[[str], str | None] = lambda name: "no supervisor"
        self.on_agent_message: Callable[[str, int, Kind, Any], None] = lambda *_: None
        self.on_reply: Callable[[str, str, float], None] | None = None  # (label, code, seconds): metrics
        self.mcp: Any = None  # the MCP servers' channel (mcpchannel.McpChannel): agents not on the agents socket
        self._deadline: Timer | None = None
        self._work: deque[Decision] = deque()  # decisions still to carry out (see execute)
        self._executing = False
        self._wall_offset = time.time() - timers.now()  # agents see wall-clock deadlines

    def close(self) -> None:
        self.front.close(linger=100)
        self.agents.close(linger=0)

    # ---- carrying out the book's decisions
    def execute(self, decisions: list[Decision]) -> None:
        """Carry decisions out in order. Carrying one out may produce more (a send that failed goes back to
        the book, whose answer may forward the next queued request): those wait in a work list drained
        here, never in a deeper call, so a long queue cannot exhaust the stack."""
        self._work.extend(decisions)
        if self._executing:
            return
        self._executing = True
        try:
            while self._work:
                d = self._work.popleft()
                try:
                    self._carry_out(d)
                except Exception:  # a bug of ours costs this decision, never the ones after it
                    self._internal_error("decisions", "a decision of the request book")
        finally:
            self._executing = False
        self._arm_deadline()

    def _carry_out(self, d: Decision) -> None:
        if type(d) is Forward:
            self._forward(d)
        elif type(d) is Reply:
            self._send_reply(d)
        elif type(d) is Control:
            self.on_control(d.request)
        elif type(d) is StartAgent:
            refusal = self.on_start(d.agent)
            if refusal is not None:
                self.execute(self.book.start_refused(d.agent, refusal))
        elif type(d) is Cancel:
            # A Python agent has no cancel frame: it finishes the request (or drops it unrun if it had not
            # begun) and its late reply frees the room it takes. An MCP server is told, and a cancelled
            # request is not answered (MCP says so): it is done with it now.
            if self.mcp is not None and d.request.to in self.mcp.names:
                self.mcp.cancel(d.request, d.incarnation)
                self.execute(self.book.dropped(d.request.to, d.incarnation, d.request.rid))

    def answer(self, p: Pending, body: Any) -> None:
        self.execute(self.book.answer(p.rid, body))

    def fail(self, p: Pending, code: ErrorCode, message: str) -> None:
        self.execute(self.book.fail(p.rid, code, message))

    def _forward(self, d: Forward) -> None:
        p = d.request
        if self.mcp is not None and p.to in self.mcp.names:
            self.execute(self.mcp.forward(p, d.incarnation))
            return
        peer = self.auth.route(p.to, d.incarnation)
        if peer is None:  # its process is gone though the book has not heard yet
            self.execute(self.book.forward_failed(p, peer_gone=True))
            return
        frame = protocol.pack({"id": p.rid, "op": p.op, "body": p.body, "deadline": p.deadline + self._wall_offset})
        try:
            self.agents.send_multipart([peer, Kind.REQUEST.value, frame], flags=NOBLOCK)
        except zmq.Again:
            self.execute(self.book.forward_failed(p, peer_gone=False))
        except zmq.ZMQError:  # EHOSTUNREACH: its connection is gone though its exit is not seen yet
            self.execute(self.book.forward_failed(p, peer_gone=True))

    def _send_reply(self, d: Reply) -> None:
        p = d.request
        if d.ok:
            code, reply = "ok", protocol.ok_reply(p.client_id, d.body)
        else:
            code, reply = d.code.value, protocol.error_reply(p.client_id, d.code, d.message)
        try:
            frame = protocol.pack(reply)
        except (TypeError, ValueError, OverflowError) as exc:  # an MCP server's JSON that msgpack cannot hold
            code = ErrorCode.AGENT_ERROR.value
            frame = protocol.pack(protocol.error_reply(p.client_id, ErrorCode.AGENT_ERROR,
                                                       f"{p.to}'s answer cannot be encoded: {exc}"))
        self.replies[code] += 1
        if self.on_reply is not None:
            self.on_reply(p.label, code, self.timers.now() - p.received_at)
        self._send_front_frame(p.envelope, frame, p.origin)

    def _send_front(self, envelope: list[bytes], reply: dict, origin: Any) -> None:
        self._send_front_frame(envelope, protocol.pack(reply), origin)

    def _send_front_frame(self, envelope: list[bytes], frame: bytes, origin: Any) -> None:
        if origin is not None and self.auth.client_gone(origin):
            # the routing id may be someone else's by now: what was owed to the client that left is dropped
            self.counters["replies_to_gone_clients"] += 1
            return
        try:
            self.front.send_multipart(envelope + [frame], flags=NOBLOCK)
        except zmq.ZMQError:  # EHOSTUNREACH (client gone) or EAGAIN (client not reading)
            self.counters["undeliverable_replies"] += 1

    def _arm_deadline(self) -> None:
        when = self.book.next_deadline()
        timer = self._deadline
        if when is None or (timer is not None and not timer.cancelled and timer.when <= when):
            return  # the armed timer fires first; it re-arms for what is left
        self.timers.cancel(timer)
        self._deadline = self.timers.call_at(when, self._expire)

    def _expire(self) -> None:
        self._deadline = None
        self.execute(self.book.expire(self.timers.now()))

    # ---- front socket
    def on_front_readable(self) -> None:
        self._wall_offset = time.time() - self.timers.now()
        for _ in range(BATCH):
            try:
                first = self.front.recv(NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                frames = [first.bytes] + (self.front.recv_multipart(NOBLOCK) if first.more else [])
                self._on_front_message(frames, _origin(first))
            except Exception:  # a bug of ours must not let one frame take the daemon and its agents down
                self._internal_error("front")

    def _on_front_message(self, frames: list[bytes], origin: Any = None) -> None:
        if len(frames) < 2:
            self._bad_frame("front", "a message with no payload frame")
            return
        envelope, payload = frames[:-1], frames[-1]
        if any(envelope[1:]):
            self._bad_frame("front", "request must be one frame, after an optional empty delimiter")
            self._refuse(envelope[:1], None, "request must be one msgpack frame (after an optional empty delimiter)",
                         origin)
            return
        msg = None
        if len(payload) > protocol.MAX_FRAME_BYTES:
            self.counters["oversized_frames"] += 1  # answered below; past HARD_FRAME_BYTES libzmq drops the connection
        try:
            msg = protocol.unpack(payload, "request frame")
            request = protocol.parse_request(msg)
        except ProtocolError as exc:
            self._bad_frame("front", str(exc))
            self._refuse(envelope, protocol.request_id_of(msg), str(exc), origin)
            return
        self.execute(self.book.accept(envelope, request, self.timers.now(), origin, len(payload)))

    def _refuse(self, envelope: list[bytes], client_id: Any, message: str, origin: Any) -> None:
        """A frame that is not a request is never accepted, so it is not the book's: answered here."""
        self.replies[ErrorCode.BAD_REQUEST.value] += 1
        self._send_front(envelope, protocol.error_reply(client_id, ErrorCode.BAD_REQUEST, message), origin)

    # ---- agents socket
    def on_agents_readable(self) -> None:
        for _ in range(BATCH):
            try:
                first = self.agents.recv(NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                frames = [first.bytes] + (self.agents.recv_multipart(NOBLOCK) if first.more else [])
                if _user_id(first) != frames[0]:
                    # a child of ours that claims another incarnation's routing id: it speaks for itself alone
                    self._dropped("impostor_frames", f"a frame under {frames[0][:64]!r} from a connection admitted "
                                  f"as {_user_id(first)!r}")
                    continue
                self._on_agent_message(frames)
            except Exception:
                self._internal_error("agents")

    @property
    def unread(self) -> bool:
        """Messages wait on the agents socket that the loop has not read yet (a peek, not a read)."""
        return bool(self.agents.getsockopt(zmq.EVENTS) & zmq.POLLIN)

    def _on_agent_message(self, frames: list[bytes]) -> None:
        peer = protocol.parse_routing_id(frames[0])
        if peer is None:
            self.counters["unknown_peers"] += 1  # not an id we give out
            return
        name, incarnation = peer
        if any(len(f) > protocol.MAX_FRAME_BYTES for f in frames[1:]):
            self.counters["oversized_frames"] += 1
        try:
            kind, body = protocol.parse_agent_frames(frames[1:])
            if kind is Kind.REPLY:
                rid, ok, value = protocol.parse_agent_reply(body)
            elif kind not in (Kind.HELLO, Kind.READY, Kind.HEARTBEAT):
                raise ProtocolError(f"agents do not send {kind.name}")
        except ProtocolError as exc:
            self._bad_frame("agents", f"from {frames[0].decode(errors='replace')}: {exc}")
            return
        if kind is Kind.HELLO:
            if not self.auth.hello(frames[0], body.get("secret") if isinstance(body, dict) else None):
                self._dropped("unproven_hellos", f"a HELLO from {frames[0].decode()} without its incarnation's secret")
                return
        elif frames[0] not in self.auth.proven:
            self._dropped("unproven_frames", f"a {kind.name} from {frames[0].decode()} before its HELLO")
            return
        if kind is Kind.REPLY:
            self.execute(self.book.replied(name, incarnation, rid, ok, value, self.timers.now()))
        else:
            self.on_agent_message(name, incarnation, kind, body)

    def send(self, name: str, incarnation: int, kind: Kind, body: Any = None) -> bool:
        """A frame to one incarnation (the supervisor's heartbeats and STOP)."""
        peer = self.auth.route(name, incarnation)
        if peer is None:
            return False
        frames = [peer, kind.value]
        if body is not None:
            frames.append(protocol.pack(body))
        try:
            self.agents.send_multipart(frames, flags=NOBLOCK)
            return True
        except zmq.ZMQError:
            return False

    # ---- bad input
    def _dropped(self, key: str, message: str) -> None:
        self.counters[key] += 1
        n = self.counters[key]
        if logs.sparse(n):
            logs.event(logs.DAEMON, "dropped", message, "WARNING", count=n)

    def _bad_frame(self, where: str, message: str) -> None:
        key = f"bad_frames_{where}"
        self.counters[key] += 1
        n = self.counters[key]
        if logs.sparse(n):
            logs.event(logs.DAEMON, "bad_frame", message, "WARNING", socket=where, count=n)

    def _internal_error(self, where: str, what: str = "") -> None:
        """Log and count an unexpected exception while handling one message. A request it concerned has
        its deadline in the book already, so it still gets its one reply (`timeout`)."""
        self.counters[f"internal_errors_{where}"] += 1
        logs.event(logs.DAEMON, "internal_error", f"while handling {what or f'a frame on the {where} socket'}:\n"
                   + traceback.format_exc(), "ERROR")
