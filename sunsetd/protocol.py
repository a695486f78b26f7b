"""Wire protocol, version 1 (DESIGN §4), and the launch contract (DESIGN §1, §7).

This module owns what goes on the wire and how bad input is recognised: message shapes, error codes,
control ops, encoding and validation, the routing id of an agent's incarnation, and `Launch`, the one
description of what an agent process is told when it is started. It never touches a socket or a
process: the router, the spawners and the agent runtime call it to turn bytes into checked messages.
"""
from __future__ import annotations

import enum
import functools
import json
import math
import reprlib
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

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


# Topics of the events socket (PUB, $RUNTIME/events.sock; see sunsetd.events): the first frame of each
# message, the second its msgpack body.
LOG_TOPIC = b"log:"  # [seq, time, agent, incarnation, stream, text]: a line of an agent's log
EVENT_TOPIC = b"event:"  # {time, level, agent, event, msg, fields, incarnation, pid}: anything but output


class ControlOp(str, enum.Enum):
    """Ops of requests addressed to the daemon itself (`to: "sunsetd"`)."""

    STATUS = "status"
    START = "start"
    STOP = "stop"
    RESTART = "restart"
    RELOAD = "reload"
    RELOAD_WAIT = "reload_wait"  # the outcome of a reload once it has settled
    SIGNAL = "signal"
    LOGS = "logs"
    SHUTDOWN = "shutdown"


class RemoteError(Exception):
    """A request through sunsetd was answered with an error: raised by the client library and by an
    agent's `self.call(...)` alike. `code` is an ErrorCode value, `message` says why."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


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


_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxstring, _SHOW.maxother, _SHOW.maxlist, _SHOW.maxdict = 2, 40, 40, 4, 4


def show(value: Any) -> str:
    """A client's value quoted in an error: a bounded prefix whatever its size or depth (never an echo
    of the whole value, and never a RecursionError)."""
    return _SHOW.repr(value)[:80]


def parse_request(msg: Any) -> Request:
    """Validate a decoded front-socket message; raise ProtocolError naming the field at fault."""
    if not isinstance(msg, dict):
        raise ProtocolError(f"request must be a map, got {type(msg).__name__}")
    unknown = set(msg) - _REQUEST_FIELDS
    if unknown:
        raise ProtocolError(f"request has unknown field {min(show(k) for k in unknown)}")
    v = msg.get("v")
    if type(v) is not int or v != VERSION:  # exactly the integer: True == 1 and 1.0 == 1 in Python
        raise ProtocolError(f"request field 'v' must be the integer {VERSION}, got {show(v)}")
    rid = msg.get("id")
    if rid is None or isinstance(rid, bool) or not isinstance(rid, (int, str, bytes)):
        raise ProtocolError("request field 'id' must be an integer or string")
    to, op = msg.get("to"), msg.get("op")
    if not isinstance(to, str) or not to:
        raise ProtocolError("request field 'to' must be a non-empty string")
    if not isinstance(op, str) or not op:
        raise ProtocolError("request field 'op' must be a non-empty string")
    timeout_ms = msg.get("timeout_ms", DEFAULT_TIMEOUT_MS)
    if type(timeout_ms) is not int or not 0 < timeout_ms <= MAX_TIMEOUT_MS:
        raise ProtocolError(f"request field 'timeout_ms' must be an integer from 1 to {MAX_TIMEOUT_MS}, "
                            f"got {show(timeout_ms)}")
    retry = msg.get("retry", False)
    if not isinstance(retry, bool):
        raise ProtocolError("request field 'retry' must be a boolean")
    return Request(rid, to, op, msg.get("body"), timeout_ms, retry)


def ok_reply(rid: Any, body: Any) -> dict:
    return {"v": VERSION, "id": rid, "ok": True, "body": body}


def error_reply(rid: Any, code: ErrorCode, message: str) -> dict:
    return {"v": VERSION, "id": rid, "ok": False, "error": {"code": code.value, "message": message}}


def parse_agent_frames(frames: list[bytes]) -> tuple[Kind, Any]:
    """[kind, body] from an agent; body may be absent for READY and HEARTBEAT."""
    if not 1 <= len(frames) <= 2:
        raise ProtocolError(f"agent message has {len(frames)} frames, expected [kind, body]")
    kind = _KINDS.get(frames[0])
    if kind is None:
        raise ProtocolError(f"agent frame kind {frames[0][:32]!r} is unknown")
    body = unpack(frames[1], f"{kind.name} body") if len(frames) == 2 and frames[1] else None
    return kind, body


_KINDS = {k.value: k for k in Kind}  # a dict lookup: Kind(...) costs a microsecond per frame

# Codes an agent may put on its own error replies; any other code is reported as agent_error. An
# agent's `timeout` (it dropped a request whose deadline had passed) is kept for the request book,
# which gives it only when the deadline has passed by the daemon's clock too.
AGENT_REPLY_CODES = frozenset({ErrorCode.AGENT_ERROR, ErrorCode.BAD_REQUEST, ErrorCode.UNAVAILABLE,
                               ErrorCode.TIMEOUT})


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


# ---- routing ids --------------------------------------------------------------------------------------
# An agent's DEALER on the agents socket is known by `name#incarnation`: a restarted agent is a new peer,
# because a ROUTER refuses a second connection that claims an id in use (DESIGN §4). These two functions
# are the only place that knows the format.


@functools.lru_cache(maxsize=4096)  # every forward and heartbeat asks: the answer is always the same
def routing_id(name: str, incarnation: int, tag: str = "") -> bytes:
    """`name#incarnation~tag`. The tag is random hex the daemon picks for each incarnation when it starts
    it (DESIGN §9): libzmq keeps the first holder of a routing id, so an id anyone could work out from
    `status` could be taken before its incarnation connects."""
    return f"{name}#{incarnation}~{tag}".encode() if tag else f"{name}#{incarnation}".encode()


@functools.lru_cache(maxsize=4096)  # bounded: a peer making up ids only churns the cache
def parse_routing_id(rid: bytes) -> tuple[str, int] | None:
    """(name, incarnation) of a routing id, or None when it is not one of ours."""
    name, sep, rest = rid.decode(errors="replace").rpartition("#")
    number, tilde, tag = rest.partition("~")
    if not sep or not name or not number.isdigit() or len(number) > 18 or not _is_tag(tag) or (tilde and not tag):
        return None
    return name, int(number)


def _is_tag(v: object) -> bool:
    return isinstance(v, str) and len(v) <= MAX_TAG_CHARS and all(c in "0123456789abcdef" for c in v)


# ---- the launch contract ------------------------------------------------------------------------------
LAUNCH_VERSION = 1
LAUNCH_ENV = "SUNSETD_LAUNCH"  # where a spawner puts the encoded Launch for the agent runtime
SECRET_FD_ENV = "SUNSETD_SECRET_FD"  # an exec'd agent's inherited pipe holding its secret (DESIGN §9)
_ENDPOINT_SCHEMES = ("ipc://", "tcp://")
MAX_TAG_CHARS = 32  # of a routing id's tag


@dataclass(frozen=True)
class Launch:
    """What an agent process is told when it starts: who it is, where to connect, how often to speak.

    Frozen and versioned: every spawner (fork, exec, and later programs and remote nodes) hands the same
    description to the agent runtime, which refuses a version it does not know. Endpoints are URLs
    (`ipc:///run/sunsetd/agents.sock`, `tcp://10.0.0.2:7000`), so an agent never builds a path itself.
    """

    name: str
    incarnation: int
    agents_endpoint: str  # the daemon's (or a node's) agents ROUTER: HELLO, heartbeats, replies
    front_endpoint: str  # the daemon's front ROUTER: the agent's own calls to other agents
    heartbeat_ms: int
    liveness: int  # heartbeats the agent may miss from the daemon before it exits
    stop_timeout_s: float
    parent_pid: int  # the process the agent must be a child of; 0: no such check (a remote agent)
    run: str = ""  # module:Class of a Python agent
    concurrency: int = 1
    config: Mapping[str, Any] = field(default_factory=dict)
    profile: str = ""  # the profile it was started in: for its process title
    tag: str = ""  # its routing id's tag: chosen when this incarnation's process is made
    # how long the agent waits for the daemon's first word: a daemon starting many agents at once may
    # read a HELLO late, and a start under load is not a lost daemon (its start timeout bounds it)
    start_timeout_s: float = 10.0
    version: int = LAUNCH_VERSION

    @property
    def routing_id(self) -> bytes:
        return routing_id(self.name, self.incarnation, self.tag)

    @property
    def title(self) -> str:
        """What `ps`, `systemctl status` and `systemd-cgls` show for this incarnation: the agent, its
        incarnation, the profile and the runtime directory (several daemons may run side by side)."""
        title = f"sunsetd-agent {self.name}#{self.incarnation}"
        if self.profile:
            title += f" profile={self.profile}"
        if self.agents_endpoint.startswith("ipc://"):
            title += f" rundir={self.agents_endpoint[len('ipc://'):].rpartition('/')[0]}"
        return title

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> "Launch":
        """The Launch in `text`; ProtocolError naming the field at fault otherwise."""
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ProtocolError(f"launch is not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise ProtocolError("launch must be a JSON object")
        if raw.get("version") != LAUNCH_VERSION:
            raise ProtocolError(f"launch field 'version' must be {LAUNCH_VERSION}, got {raw.get('version')!r}")
        checks = {
            "name": lambda v: isinstance(v, str) and bool(v),
            "incarnation": lambda v: _is_int(v) and v >= 1,
            "agents_endpoint": _is_endpoint,
            "front_endpoint": _is_endpoint,
            "heartbeat_ms": lambda v: _is_int(v) and v >= 1,
            "liveness": lambda v: _is_int(v) and v >= 1,
            "stop_timeout_s": lambda v: _is_number(v) and v > 0,
            "parent_pid": lambda v: _is_int(v) and v >= 0,
            "run": lambda v: isinstance(v, str),
            "concurrency": lambda v: _is_int(v) and v >= 1,
            "config": lambda v: isinstance(v, dict),
            "profile": lambda v: isinstance(v, str),
            "tag": _is_tag,
            "start_timeout_s": lambda v: _is_number(v) and v > 0,
        }
        unknown = set(raw) - set(checks) - {"version"}
        if unknown:
            raise ProtocolError(f"launch has unknown field {sorted(unknown)[0]!r}")
        for key, ok in checks.items():
            if key not in raw and key in ("run", "concurrency", "config", "profile", "tag", "start_timeout_s"):
                continue
            if key not in raw or not ok(raw[key]):
                raise ProtocolError(f"launch field {key!r} is missing or invalid: {raw.get(key)!r:.80}")
        return cls(**raw)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_endpoint(v: Any) -> bool:
    return isinstance(v, str) and v.startswith(_ENDPOINT_SCHEMES) and len(v) > 6
