"""MCP over stdio, the client's side, with no I/O ([programs] item 4).

A `Session` is sunsetd's half of one MCP server's stdin and stdout: it makes the lines to write
(`opening`, `request`, `cancel`, `ping`, `closing`) and turns each line the server prints into events
(`received`). It never touches a pipe, a process or a clock; `mcpchannel` carries its lines to and
from the process and its events to the request book and the supervisor.

JSON-RPC ids: a request from a client keeps the request book's own id (an int, unique for the daemon's
life), so an answer goes straight back to the book and a cancellation names it; sunsetd's own
requests (the handshake, pings) have string ids no book id can collide with. An MCP method carries the
client's `body` as its params; `ping` and `info` are the two ops every sunsetd agent answers, and an
MCP server answers them too: `ping` by MCP ping ("pong"), `info` from what its handshake said.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

PROTOCOL_VERSION = "2025-06-18"  # what sunsetd asks for; a server may answer with an older one it speaks
KNOWN_VERSIONS = frozenset({"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"})
# what a client may ask an MCP server through sunsetd: its request methods, less the handshake (ours)
METHODS = frozenset({
    "tools/list", "tools/call", "resources/list", "resources/templates/list", "resources/read",
    "resources/subscribe", "resources/unsubscribe", "prompts/list", "prompts/get", "completion/complete",
    "logging/setLevel", "ping"})
INFO_OP = "info"  # answered by sunsetd from the handshake, without asking the server
INIT_ID = "sunsetd:initialize"
PING_ID = "sunsetd:ping:"
INVALID_REQUEST, METHOD_NOT_FOUND = -32600, -32601
MAX_NOTICE = 2000  # characters of a notification kept for the logs
MAX_ID = 256  # a server's request id that we echo back: longer is refused (it would be written back whole)
_LEVELS = {"debug": "DEBUG", "info": "INFO", "notice": "INFO", "warning": "WARNING", "error": "ERROR",
           "critical": "ERROR", "alert": "ERROR", "emergency": "ERROR"}


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the server said of itself in its answer to `initialize`."""

    name: str
    version: str
    protocol: str
    capabilities: dict
    instructions: str = ""

    def describe(self) -> dict:
        return {"server": self.name, "version": self.version, "protocol": self.protocol,
                "capabilities": sorted(self.capabilities)}


# ---- events: what a line from the server means ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Initialized:
    """The handshake is done (`notifications/initialized` is in `write`): the server takes requests."""

    server: ServerInfo
    write: bytes


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class Answer:
    """The server answered a client's request: `value` is its result, or (JSON-RPC code, message)."""

    rid: int
    ok: bool
    value: Any


@dataclass(frozen=True, slots=True)
class Pong:
    """The server answered one of our pings (any line from it says it is alive; this says it listens)."""


@dataclass(frozen=True, slots=True)
class Notice:
    """A notification (log message, progress, list changed) for the agent's logs."""

    level: str  # a loguru level
    text: str


@dataclass(frozen=True, slots=True)
class ServerRequest:
    """The server asked something of its client: `write` is the answer (ping and configured roots) or the
    refusal (sampling, elicitation, anything else sunsetd does not offer)."""

    method: str
    refused: bool
    write: bytes


@dataclass(frozen=True, slots=True)
class Garbage:
    """A line that is not JSON-RPC (a banner printed on stdout, a cut line): counted and logged."""

    why: str
    line: str


Event = Initialized | HandshakeFailed | Answer | Pong | Notice | ServerRequest | Garbage


class BadCall(ValueError):
    """A client's request that cannot become an MCP request (not a method, params that are not JSON)."""


def _line(message: dict) -> bytes:
    # one message per line: compact JSON escapes every newline inside strings
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode(errors="replace") + b"\n"  # a lone surrogate a server sent us comes back as "?"


# an answer's opening as the JSON-RPC libraries write it: {"jsonrpc":"2.0","id":7,"result"... or {"id":7,...
_ANSWER_HEAD = re.compile(
    r'\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*(\d{1,18})\s*,\s*"(?:result|error|jsonrpc)"')


def _brief(value: Any) -> str:
    """A decoded value for a log line, bounded in size, whatever its depth."""
    try:
        return json.dumps(value, ensure_ascii=False, default=str)[:MAX_NOTICE]
    except (RecursionError, ValueError):
        return "(nested too deep to show)"


def root_uri(root: str) -> str:
    """A `roots:` entry: a URI as it is, a path as a file:// URI."""
    return root if "://" in root else "file://" + quote(root)


@dataclass
class Session:
    client_version: str
    roots: tuple[str, ...] = ()  # offered to the server when it asks (roots/list); none: refused like sampling
    server: ServerInfo | None = None
    pings: int = 0
    counters: dict[str, int] = field(default_factory=dict)

    # ---- lines to write
    def opening(self) -> bytes:
        capabilities = {"roots": {"listChanged": False}} if self.roots else {}
        return _line({"jsonrpc": "2.0", "id": INIT_ID, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL_VERSION, "capabilities": capabilities,
            "clientInfo": {"name": "sunsetd", "version": self.client_version}}})

    def request(self, rid: int, op: str, body: Any) -> bytes:
        """The line for a client's request; BadCall says why there is none."""
        if op not in METHODS:
            raise BadCall(f"{op!r} is not an MCP method this server can be asked through sunsetd "
                          f"(one of {', '.join(sorted(METHODS))}, or info)")
        if body is not None and not isinstance(body, dict):
            raise BadCall(f"the body of an MCP request is its params: a map, not {type(body).__name__}")
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": op}
        if body:
            message["params"] = body
        try:
            return _line(message)
        except (TypeError, ValueError, RecursionError) as exc:  # bytes, NaN, a non-string key, a deep nest
            raise BadCall(f"the body cannot be sent as JSON: {exc.__class__.__name__}: {str(exc)[:200]}") from None

    def cancel(self, rid: int, reason: str) -> bytes:
        return _line({"jsonrpc": "2.0", "method": "notifications/cancelled",
                      "params": {"requestId": rid, "reason": reason}})

    def ping(self) -> bytes:
        self.pings += 1
        return _line({"jsonrpc": "2.0", "id": f"{PING_ID}{self.pings}", "method": "ping"})

    # ---- a line the server printed
    def received(self, line: str, cut: bool = False) -> list[Event]:
        """What one line means; `cut`: the reader cut it at its length limit (the rest is lost)."""
        if not line.strip():
            return []
        if cut:
            return self._cut(line)
        try:
            message = json.loads(line)
        except (ValueError, RecursionError) as exc:  # a number over Python's 4300 digits is a ValueError
            return [self._garbage(f"not JSON ({exc.__class__.__name__})", line)]
        try:
            if isinstance(message, list):  # a batch (protocol 2025-03-26)
                return [e for m in message for e in self._message(m, line)] if message else \
                    [self._garbage("an empty batch", line)]
            return self._message(message, line)
        except RecursionError:  # nested just under the parser's limit: anything that walks it again fails
            return [self._garbage("nested too deep", line)]

    def _cut(self, line: str) -> list[Event]:
        """A line too long to read: when it plainly opens as an answer to a request of ours, that
        request is answered with the reason at once instead of timing out."""
        head = _ANSWER_HEAD.match(line)
        garbage = self._garbage("a line over the length limit, cut", line)
        if head is None:
            return [garbage]
        return [garbage, Answer(int(head.group(1)), False, (0, "the server's answer is longer than sunsetd reads "
                                                               "(8 MiB on one line)"))]

    def _message(self, m: Any, line: str) -> list[Event]:
        if not isinstance(m, dict) or m.get("jsonrpc") != "2.0":
            return [self._garbage("not a JSON-RPC 2.0 message", line)]
        method, mid = m.get("method"), m.get("id")
        if isinstance(method, str):
            if "id" in m:
                return [self._server_request(method, mid, m.get("params"))]
            return [self._notification(method, m.get("params"))]
        if "result" in m or "error" in m:
            return self._response(mid, m, line)
        return [self._garbage("neither a request, a notification nor a response", line)]

    def _response(self, mid: Any, m: dict, line: str) -> list[Event]:
        error = m.get("error")
        if mid == INIT_ID:
            return [self._handshake(m.get("result"), error)]
        if isinstance(mid, str) and mid.startswith(PING_ID):
            return [Pong()]
        if isinstance(mid, bool) or not isinstance(mid, int):
            return [self._garbage(f"an answer to no request of ours (id {str(mid)[:40]})", line)]
        if error is None:
            return [Answer(mid, True, m.get("result"))]
        if isinstance(error, dict):
            code, message = error.get("code"), error.get("message")
            return [Answer(mid, False, (code if isinstance(code, int) and not isinstance(code, bool) else 0,
                                        str(message)[:MAX_NOTICE] if message is not None else "no message"))]
        return [Answer(mid, False, (0, f"malformed error: {str(error)[:200]}"))]

    def _handshake(self, result: Any, error: Any) -> Event:
        if error is not None:
            message = error.get("message") if isinstance(error, dict) else error
            return HandshakeFailed(f"the server refused initialize: {str(message)[:300]}")
        if not isinstance(result, dict):
            return HandshakeFailed("initialize answered without a result map")
        version = result.get("protocolVersion")
        if not isinstance(version, str) or version not in KNOWN_VERSIONS:
            return HandshakeFailed(f"the server speaks MCP {str(version)[:40]!r}, which sunsetd does not "
                                   f"(it speaks {', '.join(sorted(KNOWN_VERSIONS))})")
        info = result.get("serverInfo") if isinstance(result.get("serverInfo"), dict) else {}
        capabilities = result.get("capabilities") if isinstance(result.get("capabilities"), dict) else {}
        instructions = result.get("instructions")
        self.server = ServerInfo(str(info.get("name", "?"))[:200], str(info.get("version", "?"))[:100], version,
                                 capabilities, str(instructions)[:MAX_NOTICE] if instructions else "")
        return Initialized(self.server, _line({"jsonrpc": "2.0", "method": "notifications/initialized"}))

    def _server_request(self, method: str, mid: Any, params: Any) -> Event:
        """A request from server to client: ping and (when configured) roots are answered, the rest refused."""
        if isinstance(mid, bool) or not isinstance(mid, (str, int)) or isinstance(mid, str) and len(mid) > MAX_ID:
            self._count("refused_requests")
            return ServerRequest(method, True, _line({"jsonrpc": "2.0", "id": None, "error": {
                "code": INVALID_REQUEST,
                "message": f"a request id is an integer or a string of at most {MAX_ID} characters"}}))
        if method == "ping":
            return ServerRequest(method, False, _line({"jsonrpc": "2.0", "id": mid, "result": {}}))
        if method == "roots/list" and self.roots:
            roots = [{"uri": root_uri(r), "name": r} for r in self.roots]
            return ServerRequest(method, False, _line({"jsonrpc": "2.0", "id": mid, "result": {"roots": roots}}))
        self._count("refused_requests")
        return ServerRequest(method, True, _line({"jsonrpc": "2.0", "id": mid, "error": {
            "code": METHOD_NOT_FOUND, "message": f"sunsetd does not offer {method[:100]} to the MCP servers it runs"}}))

    def _notification(self, method: str, params: Any) -> Event:
        params = params if isinstance(params, dict) else {}
        if method == "notifications/message":
            data = params.get("data")
            text = data if isinstance(data, str) else _brief(data)
            logger = params.get("logger")
            level = params.get("level")
            return Notice(_LEVELS.get(level, "INFO") if isinstance(level, str) else "INFO",
                          (f"{logger}: {text}" if logger else text)[:MAX_NOTICE])
        if method == "notifications/progress":
            total = params.get("total")
            done = f"{params.get('progress')}/{total}" if total is not None else f"{params.get('progress')}"
            note = params.get("message")
            return Notice("DEBUG", f"progress {done} of {params.get('progressToken')!s:.80}"
                          + (f": {note!s:.500}" if note else ""))
        detail = f" {_brief(params)[:500]}" if params else ""
        return Notice("INFO" if method.endswith("list_changed") else "DEBUG", method[:100] + detail)

    def _garbage(self, why: str, line: str) -> Garbage:
        self._count("garbage_lines")
        return Garbage(why, line[:200])

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1
