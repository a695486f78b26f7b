"""A loguru sink speaking journald's native protocol, so records keep their structured fields.

`journalctl -u sunsetd AGENT=NLUAgent` and `-p warning` work because every record is sent with its
fields (AGENT, PROFILE, EVENT, INCARNATION, PID) and a syslog PRIORITY, not as a line of text on stderr.
Pure Python: one datagram per record to /run/systemd/journal/socket.
"""
from __future__ import annotations

import os
import socket
import struct
from typing import Any, Callable

JOURNAL_SOCKET = "/run/systemd/journal/socket"
MAX_MESSAGE = 48 * 1024  # stays under the datagram limit; a longer message is cut, never lost entirely

PRIORITY = {"TRACE": 7, "DEBUG": 7, "INFO": 6, "SUCCESS": 5, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


def _field(name: str, value: Any) -> bytes:
    data = value if isinstance(value, bytes) else str(value).encode(errors="replace")
    if b"\n" in data:  # the protocol's binary form: name, newline, little-endian length, data
        return name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return name.encode() + b"=" + data + b"\n"


def under_systemd(environ: dict | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get("JOURNAL_STREAM") or env.get("NOTIFY_SOCKET"))


class JournalSink:
    def __init__(self, path: str = JOURNAL_SOCKET, identifier: str = "sunsetd",
                 render: Callable[[dict], str] = lambda r: f"{r['extra'].get('agent', '-')} {r['extra'].get('event', '-')} "
                                                         f"{r['message']}"):
        self.path = path
        self.render = render  # a record's MESSAGE text (its fields stay separate fields as well)
        self.identifier = identifier
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.connect(path)  # raises if there is no journald: the caller falls back to stderr
        # Never block the event loop on a slow journald: a full socket drops the record (and counts it).
        self.sock.setblocking(False)
        self.dropped = 0

    def __call__(self, message: Any) -> None:
        record = message.record
        extra = record["extra"]
        text = self.render(record)
        if len(text) > MAX_MESSAGE:
            text = text[:MAX_MESSAGE] + " [cut]"
        fields = [
            _field("MESSAGE", text),
            _field("PRIORITY", PRIORITY.get(record["level"].name, 6)),
            _field("SYSLOG_IDENTIFIER", self.identifier),
            _field("AGENT", extra.get("agent", "-")),
            _field("EVENT", extra.get("event", "-")),
            _field("PROFILE", extra.get("profile", "-")),
        ]
        for key in ("incarnation", "pid"):
            if extra.get(key) is not None:
                fields.append(_field(key.upper(), extra[key]))
        if record["exception"] is not None:
            fields.append(_field("EXCEPTION", str(record["exception"])))
        if self.dropped and self._send([_field("MESSAGE", f"sunsetd journal was full: {self.dropped} records dropped"),
                                        _field("PRIORITY", 4), _field("SYSLOG_IDENTIFIER", self.identifier),
                                        _field("EVENT", "log_dropped")]):
            self.dropped = 0
        if not self._send(fields):
            self.dropped += 1  # journald restarting or overloaded: dropping a line beats blocking the loop

    def _send(self, fields: list[bytes]) -> bool:
        try:
            self.sock.send(b"".join(fields))
            return True
        except OSError:
            return False
