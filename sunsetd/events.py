"""What happens, as it happens: the daemon's records, fanned out to operators.

Every record the daemon logs (a transition, an exit, a kill, a reload, an agent's output line) passes
through `EventStream.sink` (a loguru sink, beside stderr or journald). A record about an agent goes
into that agent's ring buffer (agentlogs) and, with `--log-dir`, its file; every record is published
on the PUB socket `events.sock`, which has the front socket's permissions:

    topic b"log:"    [seq, time, agent, incarnation, stream, text]   an agent's line (sunsetctl logs -f)
    topic b"event:"  {time, level, agent, event, msg, fields, incarnation, pid}   anything but output
                                                                                   (sunsetctl events)

A PUB socket never blocks its publisher: a subscriber that reads too slowly loses messages (past
EVENTS_HWM), never the daemon its loop. `sunsetctl logs -f` fills such gaps from the ring buffer by
line number; `sunsetctl events` is a live view, not a ledger (the journal or --log-dir is).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

import zmq

from sunsetd import auth, logs, protocol, rundir
from sunsetd.agentlogs import AgentLogs, LogFiles
from sunsetd.logfmt import event_text
from sunsetd.protocol import EVENT_TOPIC, LOG_TOPIC

EVENTS_HWM = 10_000
OUTPUT = ("stdout", "stderr")
MAX_EVENT_TEXT = 16 * 1024  # a message or field longer than this is cut: an event is a line, not a payload


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return _cut(value)
    return value if value is None or isinstance(value, (bool, int, float)) else _cut(str(value))


def _cut(text: str) -> str:
    return text if len(text) <= MAX_EVENT_TEXT else text[:MAX_EVENT_TEXT] + " [cut]"


def record_of(record: dict) -> dict:
    """A loguru record as the event stream carries it."""
    extra = record["extra"]
    return {"time": record["time"].timestamp(), "level": record["level"].name.lower(),
            "agent": extra.get("agent", logs.DAEMON), "event": extra.get("event", "-"), "msg": _cut(record["message"]),
            "fields": {k: _plain(v) for k, v in extra.get("fields", {}).items()},
            "incarnation": extra.get("incarnation"), "pid": extra.get("pid")}


class EventStream:
    def __init__(self, ctx: zmq.Context, runtime_dir: Path, access: rundir.Access, agent_logs: AgentLogs,
                 guard: auth.Authenticator, files: LogFiles | None = None,
                 defer: Callable[[Callable[[], None]], Any] = lambda f: f()):
        self.agent_logs = agent_logs
        self.files = files
        self.defer = defer  # the loop's call_soon: a sink must not log while loguru is inside it
        self.pub = ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, EVENTS_HWM)
        self.pub.setsockopt(zmq.LINGER, 0)
        guard.guard(self.pub, auth.CLIENTS)  # the front socket's rule: who may read what sunsetd does
        self.pub.bind(rundir.endpoint(runtime_dir, rundir.EVENTS_SOCKET))
        access.socket(runtime_dir / rundir.EVENTS_SOCKET, shared=True)
        self._thread = threading.get_ident()  # the loop's: a ZeroMQ socket is used from one thread only
        self.published = 0

    def close(self) -> None:
        self.pub.close(linger=0)
        if self.files is not None:
            self.files.close()

    def sink(self, message: Any) -> None:
        record = message.record
        if record["thread"].id != self._thread:
            return  # not the loop's thread: nothing of ours logs from one, and the socket is not theirs
        event = record_of(record)
        agent = event["agent"]
        if agent != logs.DAEMON:
            self._agent_line(agent, event, record)
        if event["event"] not in OUTPUT:
            self._send(EVENT_TOPIC, event)

    def _agent_line(self, agent: str, event: dict, record: dict) -> None:
        output = event["event"] in OUTPUT
        incarnation = event["incarnation"]
        if incarnation is None:  # a record about the agent, not about one incarnation: its latest
            known = self.agent_logs.incarnations(agent)
            incarnation = known[-1] if known else 0
        text = event["msg"] if output else event_text(event)
        line = self.agent_logs.append(agent, incarnation, event["event"] if output else "sunsetd", text,
                                      event["time"])
        if self.files is not None:
            why = self.files.write(agent, logs.line_of(record))
            if why is not None:
                self.defer(lambda: logs.event(logs.DAEMON, "log_dir", why, "ERROR"))
        self._send(LOG_TOPIC, list(line))

    def _send(self, topic: bytes, body: Any) -> None:
        try:
            self.pub.send_multipart([topic, protocol.pack(body)], flags=zmq.NOBLOCK)
            self.published += 1
        except zmq.ZMQError:
            pass  # PUB drops rather than blocks; an error here is a closing socket

