"""Client of the front socket: what sunsetctl, the chaos harness, benchmarks and tests talk through.

One DEALER per Client. `call()` is the simple blocking form; `send()` and `recv()` let one client keep
many requests outstanding. A Client is not thread-safe (ZeroMQ sockets are not): use one per thread.
"""
from __future__ import annotations

import itertools
import os
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
        self.runtime_dir = rundir.resolve(runtime_dir)
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

    def call(self, to: str, op: str, body: Any = None, timeout: float = 5.0, retry: bool = False) -> Any:
        """Send one request and wait for its reply: the body, or RemoteError."""
        if not self.socket_path.exists():
            raise DaemonUnreachable(f"sunsetd is not running on {self.runtime_dir} (no {self.socket_path.name})")
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
