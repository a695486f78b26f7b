"""Readiness and health probes of programs ([programs] item 3): what they are, and running them.

A `Probe` is what a profile's `ready:` or `health:` says: `http: URL` (a 2xx), `tcp: HOST:PORT` (it
connects), `exec: ARGV` (exits 0), or, for `ready:` only, `log: REGEX` (a line of its stdout or
stderr) or `notify: true` (sd_notify READY=1 on its own NOTIFY_SOCKET, notify.py; with `watchdog_ms`
it also gets WATCHDOG_USEC and must send WATCHDOG=1 that often once ready), with `interval_ms`,
`timeout_ms` and (for `health:`) `failures`.

`Prober` runs one probe at a time per call, on the daemon's event loop and never blocking it: sockets
are non-blocking and watched by the loop, `exec` probes are children of the spawner like any other, and
every probe ends exactly once, by its answer or by its timeout. The supervisor decides what a result
means (ready, or one failure more); it never touches a socket itself.
"""
from __future__ import annotations

import errno
import re
import socket
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

import zmq

KINDS = ("http", "tcp", "exec", "log", "notify")
MAX_ANSWER = 4096  # an HTTP probe reads the status line, not the page


@dataclass(frozen=True)
class Probe:
    kind: str  # http, tcp, exec, log, notify
    target: Any  # URL, (host, port), argv tuple, regex pattern text, or True (notify)
    interval_ms: int
    timeout_ms: int
    failures: int = 1
    watchdog_ms: int | None = None  # notify: WATCHDOG=1 expected this often once ready

    def describe(self) -> str:
        if self.kind == "notify":
            return "notify" + (f" (watchdog {self.watchdog_ms}ms)" if self.watchdog_ms else "")
        target = " ".join(self.target) if self.kind == "exec" else (
            f"{self.target[0]}:{self.target[1]}" if self.kind == "tcp" else self.target)
        return f"{self.kind} {target}"


def parse(value: Any, health: bool) -> Probe:
    """A `ready:` or `health:` mapping; ValueError naming what is wrong."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping with one of {', '.join(KINDS if not health else KINDS[:3])}")
    kinds = [k for k in value if k in KINDS]
    allowed = KINDS[:3] if health else KINDS
    if len(kinds) != 1 or kinds[0] not in allowed:
        raise ValueError(f"expected exactly one of {', '.join(allowed)}")
    kind = kinds[0]
    raw = value[kind]
    if kind == "notify":
        unknown = set(value) - {kind, "watchdog_ms"}
        if unknown:
            raise ValueError(f"unknown field {sorted(unknown)[0]!r} (notify takes watchdog_ms)")
        if raw is not True:
            raise ValueError("notify: expected true")
        watchdog = value.get("watchdog_ms")
        if watchdog is not None and (isinstance(watchdog, bool) or not isinstance(watchdog, int)
                                     or not 10 <= watchdog <= 24 * 3600 * 1000):
            raise ValueError("watchdog_ms: expected an integer from 10 to 86400000")
        return Probe(kind, True, 0, 0, 1, watchdog)
    unknown = set(value) - {kind, "interval_ms", "timeout_ms", "failures"}
    if unknown or (not health and "failures" in value):
        raise ValueError(f"unknown field {sorted(unknown or {'failures'})[0]!r}")
    if kind == "http":
        parts = urlsplit(raw) if isinstance(raw, str) else None
        try:
            port_ok = parts is not None and (parts.port is None or 0 < parts.port)
        except ValueError:  # urllib's "Port out of range", "invalid literal"
            port_ok = False
        if parts is None or parts.scheme != "http" or not parts.hostname or not port_ok:
            raise ValueError("http: expected a URL such as http://127.0.0.1:8080/health")
        target: Any = raw
    elif kind == "tcp":
        host, _, port = raw.rpartition(":") if isinstance(raw, str) else ("", "", "")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("tcp: expected HOST:PORT")
        target = (host.strip("[]"), int(port))
    elif kind == "exec":
        if isinstance(raw, str):
            import shlex

            raw = shlex.split(raw)
        if not isinstance(raw, list) or not raw or not all(isinstance(a, str) for a in raw):
            raise ValueError("exec: expected an argv list")
        target = tuple(raw)
    else:
        try:
            re.compile(raw)
        except (re.error, TypeError) as exc:
            raise ValueError(f"log: not a regular expression: {exc}") from None
        target = raw
    numbers = {"interval_ms": 1000 if health else 100, "timeout_ms": 500 if health else 1000,
               "failures": 3 if health else 1}
    for key in numbers:
        if key in value:
            v = value[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{key}: expected an integer >= 1")
            numbers[key] = v
    return Probe(kind, target, numbers["interval_ms"], numbers["timeout_ms"], numbers["failures"])


# ---- running them -------------------------------------------------------------------------------------

Done = Callable[[bool, str], None]  # (ok, what happened)


class Prober:
    """Runs probes on the event loop; `run(probe, done)` returns a cancel function."""

    def __init__(self, loop: Any, timers: Any, spawn_helper: Callable[..., Any]):
        self.loop = loop
        self.timers = timers
        self.spawn_helper = spawn_helper

    def run(self, probe: Probe, done: Done) -> Callable[[], None]:
        if probe.kind == "exec":
            return self._exec(probe, done)
        return _SocketProbe(self, probe, done).start()

    def _exec(self, probe: Probe, done: Done) -> Callable[[], None]:
        from sunsetd.spawner import Exited, SpawnFailed

        state = {"over": False}

        def finish(ok: bool, what: str) -> None:
            if not state["over"]:
                state["over"] = True
                self.timers.cancel(timer)
                done(ok, what)

        def on_event(event: Any) -> None:
            if isinstance(event, Exited):
                finish(event.code == 0, "exit code 0" if event.code == 0 else event.description)
            elif isinstance(event, SpawnFailed):
                finish(False, event.error)

        handle = self.spawn_helper("probe", list(probe.target), on_event)

        def expire() -> None:
            handle.kill()
            finish(False, f"no answer within {probe.timeout_ms} ms")

        timer = self.timers.call_later(probe.timeout_ms / 1000, expire)

        def cancel() -> None:
            if not state["over"]:
                state["over"] = True
                self.timers.cancel(timer)
                handle.kill()
        return cancel


class _SocketProbe:
    """tcp: connect. http: connect, GET, read the status line. Non-blocking, on the loop."""

    def __init__(self, prober: Prober, probe: Probe, done: Done):
        self.prober, self.probe, self.done = prober, probe, done
        self.sock: socket.socket | None = None
        self.timer = None
        self.answer = b""
        if probe.kind == "http":
            parts = urlsplit(probe.target)
            self.address = (parts.hostname, parts.port or 80)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            self.request = f"GET {path} HTTP/1.0\r\nHost: {parts.netloc}\r\nUser-Agent: sunsetd-probe\r\n\r\n".encode()
        else:
            self.address = probe.target
            self.request = b""

    def start(self) -> Callable[[], None]:
        self.timer = self.prober.timers.call_later(self.probe.timeout_ms / 1000,
                                                   lambda: self._finish(False, f"no answer within {self.probe.timeout_ms} ms"))
        try:
            family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
            self.sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            code = self.sock.connect_ex(self.address)
        except OSError as exc:  # a name that does not resolve, no fds left
            why = str(exc.strerror or exc)
            self.prober.timers.call_soon(lambda: self._finish(False, why))
            return self.cancel
        if code not in (0, errno.EINPROGRESS):
            self.prober.timers.call_soon(lambda: self._finish(False, errno.errorcode.get(code, str(code))))
            return self.cancel
        # by its fd: the loop's poller answers with fds for anything that is not a ZeroMQ socket
        self.prober.loop.watch(self.sock.fileno(), self._connected, events=zmq.POLLOUT)
        return self.cancel

    def _connected(self) -> None:
        error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self.prober.loop.unwatch(self.sock.fileno())
        if error:
            self._finish(False, f"connect: {errno.errorcode.get(error, error)}")
            return
        if self.probe.kind == "tcp":
            self._finish(True, "connected")
            return
        try:
            self.sock.send(self.request)  # a few dozen bytes into an empty socket buffer
        except OSError as exc:
            self._finish(False, f"send: {exc.strerror}")
            return
        self.prober.loop.watch(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            data = self.sock.recv(MAX_ANSWER)
        except BlockingIOError:
            return
        except OSError as exc:
            self._finish(False, f"recv: {exc.strerror}")
            return
        self.answer += data
        if b"\r\n" not in self.answer and data and len(self.answer) < MAX_ANSWER:
            return  # the status line is not complete yet
        line = self.answer.split(b"\r\n", 1)[0].decode("latin-1")
        m = re.match(r"HTTP/\d(?:\.\d)? (\d{3})", line)
        if m is None:
            self._finish(False, f"not an HTTP answer: {line[:60]!r}")
        else:
            self._finish(200 <= int(m.group(1)) < 300, f"HTTP {m.group(1)}")

    def _finish(self, ok: bool, what: str) -> None:
        if self.done is None:
            return
        done, self.done = self.done, None
        self._close()
        done(ok, what)

    def cancel(self) -> None:
        self.done = None
        self._close()

    def _close(self) -> None:
        self.prober.timers.cancel(self.timer)
        if self.sock is not None:
            self.prober.loop.unwatch(self.sock.fileno())
            self.sock.close()
            self.sock = None
