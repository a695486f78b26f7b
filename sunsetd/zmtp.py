"""A ZMTP/3.0 DEALER over AF_UNIX with the NULL mechanism: what `sunsetctl`'s one-shot commands speak
to the daemon's front ROUTER instead of importing pyzmq (about 30 ms, of a command that must take 40).

Only what a DEALER talking to a libzmq ROUTER needs (RFC 23, and RFC 37's PING, answered with PONG):
the greeting, the READY command (or the ERROR command of a refusal: the daemon's ZAP handler judges
the kernel's credentials of any AF_UNIX connector, this one too), and frames with the MORE, LONG and
COMMAND flags. Imports nothing but `_socket` and `time`, both built in.

Like libzmq, a connection that cannot be made or is closed before its handshake is done is tried again
every RECONNECT_S until the deadline (a daemon starting or restarting is then reached, and a request
is sent only once there is a peer to take it); unlike libzmq, a refusal (ERROR) and a peer that does not
speak ZMTP end at once, with an exception naming what happened.
"""
from __future__ import annotations

import _socket
import time

SIGNATURE = b"\xff" + bytes(8) + b"\x7f"
GREETING = SIGNATURE + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\x00" + bytes(31)  # 64 bytes, as client
GREETING_BYTES = 64
MORE, LONG, COMMAND = 0x01, 0x02, 0x04
RECONNECT_S = 0.1  # libzmq's default ZMQ_RECONNECT_IVL
MAX_COMMAND_BYTES = 1 << 16  # READY, ERROR, PING: a few dozen bytes from libzmq
PEER_TYPES = (b"ROUTER", b"DEALER")  # the socket types a DEALER may talk to (RFC 28)
CHUNK = 1 << 16


class ZmtpError(Exception):
    """The conversation failed; the message says how, in one line."""


class Refused(ZmtpError):
    """The peer sent ERROR during the handshake: it will not talk to us (for sunsetd, its ZAP handler
    refused the connection). `reason` is the peer's, e.g. b"400"."""

    def __init__(self, reason: bytes):
        super().__init__(f"the connection was refused ({reason.decode('ascii', 'replace')[:255]})")
        self.reason = reason


class NotZmtp(ZmtpError):
    """The peer does not speak ZMTP 3 as a DEALER's peer must."""


class TooLarge(ZmtpError):
    """A data frame larger than the caller's limit (nothing of it is read)."""

    def __init__(self, size: int):
        super().__init__(f"a frame of {size} bytes")
        self.size = size


class Timeout(ZmtpError):
    """The deadline passed."""


class _Closed(Exception):
    """The peer closed the connection (or reset it)."""


def frame(data: bytes, more: bool = False, command: bool = False) -> bytes:
    flags = (MORE if more else 0) | (COMMAND if command else 0)
    n = len(data)
    if n < 256:
        return bytes((flags, n)) + data
    return bytes((flags | LONG,)) + n.to_bytes(8, "big") + data


def command(name: bytes, body: bytes = b"") -> bytes:
    return frame(bytes((len(name),)) + name + body, command=True)


def properties(**props: bytes) -> bytes:
    """Metadata of READY: each name a short string, each value a long one."""
    out = b""
    for name, value in props.items():
        key = name.replace("_", "-").encode()
        out += bytes((len(key),)) + key + len(value).to_bytes(4, "big") + value
    return out


def parse_properties(data: bytes) -> dict[bytes, bytes]:
    props, at = {}, 0
    while at < len(data):
        n = data[at]
        name = data[at + 1:at + 1 + n]
        at += 1 + n
        if len(name) != n or at + 4 > len(data):
            raise NotZmtp("its READY has a truncated property")
        size = int.from_bytes(data[at:at + 4], "big")
        value = data[at + 4:at + 4 + size]
        if len(value) != size:
            raise NotZmtp("its READY has a truncated property")
        props[name.lower()] = value
        at += 4 + size
    return props


READY = command(b"READY", properties(Socket_Type=b"DEALER", Identity=b""))


class Dealer:
    """One connection to a ROUTER at an AF_UNIX path, made on the first `send` (or `connect`)."""

    def __init__(self, path: str, max_frame: int = 1 << 20):
        self.path = path
        self.max_frame = max_frame
        self.sock: _socket.socket | None = None
        self.buf = bytearray()
        self.peer: dict[bytes, bytes] = {}
        self.lost = False  # the connection closed after its handshake: what was sent on it is gone

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.buf.clear()

    def __enter__(self) -> "Dealer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- connecting
    def connect(self, deadline: float) -> None:
        """Connect and shake hands, trying again like libzmq until `deadline` (time.monotonic()).
        Timeout, Refused, NotZmtp, or an OSError that trying again will not mend (PermissionError)."""
        while True:
            try:
                self._connect_once(deadline)
                self.lost = False
                return
            except (_Closed, FileNotFoundError, ConnectionRefusedError, ConnectionResetError, BrokenPipeError,
                    BlockingIOError, InterruptedError):
                self.close()
            except BaseException:
                self.close()
                raise
            pause = min(RECONNECT_S, deadline - time.monotonic())
            if pause <= 0:
                raise Timeout("no connection within the deadline")
            time.sleep(pause)

    def _connect_once(self, deadline: float) -> None:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        self.sock = sock
        self._timeout(deadline)
        try:
            sock.connect(self.path)
            sock.sendall(GREETING + READY)  # libzmq reads the greeting first, then the rest
        except _socket.timeout:
            raise Timeout("no connection within the deadline") from None
        greeting = self._read(GREETING_BYTES, deadline)
        if greeting[0] != 0xFF or not greeting[9] & 1:
            raise NotZmtp(f"its greeting begins {bytes(greeting[:10])!r}, not ZMTP's signature")
        if greeting[10] < 3:
            raise NotZmtp(f"it speaks ZMTP {greeting[10]}.{greeting[11]}, not 3")
        mechanism = bytes(greeting[12:32]).rstrip(b"\0")
        if mechanism != b"NULL":
            raise NotZmtp(f"it asks for the {mechanism[:20].decode('ascii', 'replace')} mechanism, not NULL")
        flags, body = self._frame(deadline)
        if not flags & COMMAND:
            raise NotZmtp("it sent a message before its READY")
        name, rest = _command_name(body)
        if name == b"ERROR":
            raise Refused(rest[1:1 + rest[0]] if rest else b"")
        if name != b"READY":
            raise NotZmtp(f"it sent {name[:20]!r} instead of READY")
        self.peer = parse_properties(rest)
        kind = self.peer.get(b"socket-type")
        if kind not in PEER_TYPES:
            raise NotZmtp(f"its socket type is {kind!r}, not one a DEALER talks to")

    # ---- messages
    def send(self, data: bytes, deadline: float) -> None:
        """One single-part message; connects first if need be."""
        if self.sock is None:
            self.connect(deadline)
        self._timeout(deadline)
        try:
            self.sock.sendall(frame(data))
        except _socket.timeout:
            raise Timeout("the peer did not take the message before the deadline") from None
        except (BrokenPipeError, ConnectionResetError):
            self.lost = True  # as with libzmq: what was written to a connection that closed is gone
            self.close()

    def recv(self, deadline: float) -> bytes | None:
        """The next data frame (each part of a multi-part message in turn), or None at `deadline`.
        PINGs are answered on the way. A connection that closes loses what was sent on it: nothing
        more can come, and None is returned at the deadline, as libzmq's DEALER would."""
        while True:
            if self.sock is None:
                pause = deadline - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                return None
            try:
                flags, body = self._frame(deadline)
            except Timeout:
                return None
            except (_Closed, ConnectionResetError):
                self.lost = True
                self.close()
                continue
            if not flags & COMMAND:
                return bytes(body)
            name, rest = _command_name(body)
            if name == b"PING":  # TTL (2 bytes), then a context to echo back (RFC 37)
                self._timeout(deadline)
                try:
                    self.sock.sendall(command(b"PONG", rest[2:18]))
                except (_socket.timeout, BrokenPipeError, ConnectionResetError):
                    pass  # the next read tells
            elif name == b"ERROR":
                self.lost = True
                self.close()
            # any other command is ignored, as libzmq ignores what it does not know

    # ---- the wire
    def _timeout(self, deadline: float) -> None:
        self.sock.settimeout(max(0.0, deadline - time.monotonic()))

    def _read(self, n: int, deadline: float) -> bytearray:
        buf = self.buf
        while len(buf) < n:
            self._timeout(deadline)
            try:
                chunk = self.sock.recv(max(CHUNK, n - len(buf)))
            except _socket.timeout:
                raise Timeout("no answer before the deadline") from None
            if not chunk:
                raise _Closed()
            buf += chunk
        out = buf[:n]
        del buf[:n]
        return out

    def _frame(self, deadline: float) -> tuple[int, bytearray]:
        head = self._read(2, deadline)
        flags = head[0]
        if flags & ~(MORE | LONG | COMMAND):
            raise NotZmtp(f"it sent a frame with flags {flags:#04x}")
        if flags & COMMAND and flags & MORE:
            raise NotZmtp("it sent a command with the MORE flag")
        if flags & LONG:
            size = int.from_bytes(bytes(head[1:2]) + bytes(self._read(7, deadline)), "big")
        else:
            size = head[1]
        if flags & COMMAND and size > MAX_COMMAND_BYTES:
            raise NotZmtp(f"it sent a command of {size} bytes")
        if size > self.max_frame:
            raise TooLarge(size)
        return flags, self._read(size, deadline)


def _command_name(body: bytearray) -> tuple[bytes, bytes]:
    if not body or len(body) < 1 + body[0]:
        raise NotZmtp("it sent a command without a name")
    return bytes(body[1:1 + body[0]]), bytes(body[1 + body[0]:])
