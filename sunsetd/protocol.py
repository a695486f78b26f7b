"""Wire protocol, version 1 (DESIGN §4): message shapes, error codes, encoding and validation.

This module owns what goes on the wire and how bad input is recognised. It never touches a socket:
the router and the agent runtime call it to turn bytes into checked messages and back.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import msgpack

VERSION = 1
CONTROL_TARGET = "sunsetd"
# Largest frame we accept and answer; larger frames get a `bad_request` naming the size.
MAX_FRAME_BYTES = 1 << 20
# Hard cap handed to libzmq (ZMQ_MAXMSGSIZE): beyond it libzmq drops the connection before the daemon
# ever buffers the frame, so a client cannot make the daemon hold an arbitrary amount of memory.
HARD_FRAME_BYTES = 8 * MAX_FRAME_BYTES
DEFAULT_TIMEOUT_MS = 30_000
MAX_TIMEOUT_MS = 24 * 3600 * 1000


class ErrorCode(str, enum.Enum):
    BAD_REQUEST = "bad_request"
    UNKNOWN_AGENT = "unknown_agent"
    UNAVAILABLE = "unavailable"
    OVERLOADED = "overloaded"
    TIMEOUT = "timeout"
    AGENT_CRASHED = "agent_crashed"
    AGENT_ERROR = "agent_error"
    SHUTTING_DOWN = "shutting_down"


class Kind(bytes, enum.Enum):
    """Frame kinds on the agents socket: frames are [kind, msgpack body]."""

    HELLO = b"HELLO"
    READY = b"READY"
    HEARTBEAT = b"HEARTBEAT"
    REPLY = b"REPLY"
    REQUEST = b"REQUEST"
    STOP = b"STOP"


class ProtocolError(ValueError):
    """Input that does not follow the protocol; the message names the frame or field at fault."""


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes, what: str) -> Any:
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"{what} is {len(data)} bytes, over the {MAX_FRAME_BYTES}-byte limit")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise ProtocolError(f"{what} is not valid msgpack ({type(exc).__name__})") from None


@dataclass(frozen=True, slots=True)
class Request:
    """A client request as accepted on the front socket."""

    id: Any
    to: str
    op: str
    body: Any
    timeout_ms: int
    retry: bool


_REQUEST_FIELDS = {"v", "id", "to", "op", "body", "timeout_ms", "retry"}


def request_id_of(msg: Any) -> Any:
    """The id of a possibly invalid request, if it has a usable one, so the error reply can carry it."""
    if isinstance(msg, dict):
        rid = msg.get("id")
        if isinstance(rid, (int, str, bytes)) and not isinstance(rid, bool):
            return rid
    return None


def parse_request(msg: Any) -> Request:
    """Validate a decoded front-socket message; raise ProtocolError naming the field at fault."""
    if not isinstance(msg, dict):
        raise ProtocolError(f"request must be a map, got {type(msg).__name__}")
    unknown = set(msg) - _REQUEST_FIELDS
    if unknown:
        raise ProtocolError(f"request has unknown field {sorted(map(str, unknown))[0]!r}")
    if msg.get("v") != VERSION:
        raise ProtocolError(f"request field 'v' must be {VERSION}, got {msg.get('v')!r}")
    rid = msg.get("id")
    if rid is None or isinstance(rid, bool) or not isinstance(rid, (int, str, bytes)):
        raise ProtocolError("request field 'id' must be an integer or string")
    to, op = msg.get("to"), msg.get("op")
    if not isinstance(to, str) or not to:
        raise ProtocolError("request field 'to' must be a non-empty string")
    if not isinstance(op, str) or not op:
        raise ProtocolError("request field 'op' must be a non-empty string")
    timeout_ms = msg.get("timeout_ms", DEFAULT_TIMEOUT_MS)
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, (int, float)) or not (
        0 < timeout_ms <= MAX_TIMEOUT_MS
    ):
        raise ProtocolError(f"request field 'timeout_ms' must be a number in (0, {MAX_TIMEOUT_MS}]")
    retry = msg.get("retry", False)
    if not isinstance(retry, bool):
        raise ProtocolError("request field 'retry' must be a boolean")
    return Request(rid, to, op, msg.get("body"), int(timeout_ms), retry)


def ok_reply(rid: Any, body: Any) -> dict:
    return {"v": VERSION, "id": rid, "ok": True, "body": body}


def error_reply(rid: Any, code: ErrorCode, message: str) -> dict:
    return {"v": VERSION, "id": rid, "ok": False, "error": {"code": code.value, "message": message}}


def parse_agent_frames(frames: list[bytes]) -> tuple[Kind, Any]:
    """[kind, body] from an agent; body may be absent for READY and HEARTBEAT."""
    if not 1 <= len(frames) <= 2:
        raise ProtocolError(f"agent message has {len(frames)} frames, expected [kind, body]")
    try:
        kind = Kind(frames[0])
    except ValueError:
        raise ProtocolError(f"agent frame kind {frames[0][:32]!r} is unknown") from None
    body = unpack(frames[1], f"{kind.name} body") if len(frames) == 2 and frames[1] else None
    return kind, body


# Codes an agent may put on its own error replies; any other code is reported as agent_error.
AGENT_REPLY_CODES = frozenset({ErrorCode.AGENT_ERROR, ErrorCode.BAD_REQUEST, ErrorCode.UNAVAILABLE})


def parse_agent_reply(body: Any) -> tuple[int, bool, Any]:
    """(request id, True, body) or (request id, False, (ErrorCode, message)) from a REPLY body."""
    if not isinstance(body, dict) or not isinstance(body.get("id"), int):
        raise ProtocolError("REPLY body must be a map with an integer 'id'")
    ok = body.get("ok")
    if ok is True:
        return body["id"], True, body.get("body")
    error = body.get("error")
    if ok is False and isinstance(error, dict) and isinstance(error.get("message"), str):
        try:
            code = ErrorCode(error.get("code"))
        except ValueError:
            code = ErrorCode.AGENT_ERROR
        return body["id"], False, (code if code in AGENT_REPLY_CODES else ErrorCode.AGENT_ERROR, error["message"])
    raise ProtocolError("REPLY body must have ok:true and a body, or ok:false and error.message")
