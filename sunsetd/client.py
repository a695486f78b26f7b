"""Client of the front socket: what sunsetctl, the chaos harness, benchmarks and tests talk through.

One DEALER per Client. `call()` is the simple blocking form; `send()` and `recv()` let one client keep
many requests outstanding. A Client is not thread-safe (ZeroMQ sockets are not): use one per thread.
"""
from __future__ import annotations

import itertools
import os
import time
from typing import Any

import zmq

from sunsetd import protocol, rundir
from sunsetd.protocol import RemoteError

REPLY_SLACK_S = 2.0  # the daemon answers `timeout` itself; beyond this we conclude it is not there
__all__ = ["Client", "DaemonUnreachable", "RemoteError"]


class DaemonUnreachable(Exception):
    """No daemon answers on this runtime directory."""


class Client:
    def __init__(self, runtime_dir: str | os.PathLike | None = None, context: zmq.Context | None = None):
        self.runtime_dir = rundir.resolve(runtime_dir, client=True)
        rundir.check_path_length(self.runtime_dir)  # the daemon's own one-line message
        self.socket_path = self.runtime_dir / rundir.FRONT_SOCKET
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(rundir.endpoint(self.runtime_dir, rundir.FRONT_SOCKET))
        self.ids = itertools.count(1)

    def close(self) -> None:
        self.sock.close(linger=0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, to: str, op: str, body: Any = None, timeout: float = 5.0, retry: bool = False,
             rid: Any = None) -> Any:
        rid = next(self.ids) if rid is None else rid
        request = {"v": protocol.VERSION, "id": rid, "to": to, "op": op, "body": body,
                   "timeout_ms": max(1, int(timeout * 1000))}
        if retry:
            request["retry"] = True
        frame = protocol.pack(request)
        if len(frame) > protocol.MAX_FRAME_BYTES:
            raise ValueError(f"request of {len(frame)} bytes is over the {protocol.MAX_FRAME_BYTES}-byte frame limit")
        self.sock.send(frame)
        return rid

    def recv(self, timeout: float) -> dict | None:
        """The next reply, or None if none arrives within `timeout` seconds."""
        if not self.sock.poll(max(0, int(timeout * 1000))):
            return None
        return protocol.unpack(self.sock.recv(), "reply frame")

    def check(self) -> None:
        """DaemonUnreachable unless a daemon's socket is there and ours to use."""
        try:
            self.socket_path.stat()
        except PermissionError:
            raise DaemonUnreachable(self._denied()) from None
        except OSError:
            raise DaemonUnreachable(f"sunsetd is not running on {self.runtime_dir} (no {self.socket_path.name})") \
                from None
        if not os.access(self.socket_path, os.R_OK | os.W_OK):
            raise DaemonUnreachable(self._denied())

    def _denied(self) -> str:
        try:
            import grp

            group = grp.getgrgid(self.runtime_dir.stat().st_gid).gr_name
        except (OSError, KeyError):
            group = None
        how = f"; members of group {group} may (usermod -aG {group} $USER)" if group else ""
        return f"permission denied: {self.socket_path} is not yours to use{how}, or use sudo"

    def subscribe(self, topic: bytes) -> zmq.Socket:
        """A SUB socket on the daemon's events socket, for one topic (protocol.LOG_TOPIC, EVENT_TOPIC)."""
        self.check()
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, topic)
        sub.connect(rundir.endpoint(self.runtime_dir, rundir.EVENTS_SOCKET))
        return sub

    def next_event(self, sub: zmq.Socket, timeout: float) -> Any:
        """The body of the next message on a subscription, or None after `timeout` seconds (a frame
        that cannot be read is skipped: a watcher outlives one bad event)."""
        deadline = time.monotonic() + timeout
        while sub.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            frames = sub.recv_multipart()
            try:
                return protocol.unpack(frames[-1], "event frame")
            except protocol.ProtocolError:
                continue
        return None

    def call(self, to: str, op: str, body: Any = None, timeout: float = 5.0, retry: bool = False) -> Any:
        """Send one request and wait for its reply: the body, or RemoteError."""
        self.check()
        rid = self.send(to, op, body, timeout, retry)
        while True:
            reply = self.recv(timeout + REPLY_SLACK_S)
            if reply is None:
                raise DaemonUnreachable(f"no reply from sunsetd on {self.runtime_dir} within {timeout + REPLY_SLACK_S:g}s")
            if reply.get("id") == rid:
                break  # replies to earlier, abandoned requests are skipped
        if reply.get("ok"):
            return reply.get("body")
        error = reply.get("error") or {}
        raise RemoteError(str(error.get("code")), str(error.get("message")))
