"""Daemon logging: one loguru logger, one record per event, in logfmt.

Every record carries the structured fields AGENT, EVENT, INCARNATION and PID as loguru extras, and its
own key=value fields, so a journald sink indexes them and a terminal or a file gets one logfmt line:

    time=2026-12-02T01:23:45.678+00:00 level=warning agent=KnowledgeBase event=exit msg="killed by SIGKILL" uptime_s=3.2 incarnation=2 pid=4711

Values are quoted with double quotes (and escaped) only when they must be, so `grep`, `awk` and any
logfmt parser read the same thing; nothing is a Python repr.
"""
from __future__ import annotations

import os
import sys
from typing import IO, Any

from loguru import logger

from sunsetd.journal import JOURNAL_SOCKET, JournalSink, under_systemd
from sunsetd.logfmt import logfmt

DAEMON = "sunsetd"  # the AGENT field of the daemon's own records


def line_of(record: dict) -> str:
    """A loguru record as one logfmt line with the date."""
    extra = record["extra"]
    pairs: list[tuple[str, Any]] = [
        ("time", record["time"].isoformat(timespec="milliseconds")),
        ("level", record["level"].name.lower()),
        ("agent", extra.get("agent", DAEMON)),
        ("event", extra.get("event", "-")),
    ]
    if record["message"]:
        pairs.append(("msg", record["message"]))
    pairs += list(extra.get("fields", {}).items())
    pairs += [("incarnation", extra.get("incarnation")), ("pid", extra.get("pid"))]
    return logfmt(pairs)


def journal_text(record: dict) -> str:
    """MESSAGE of a journal record: the agent, the event, the message and its fields (journald keeps
    the date, the level and the agent's fields itself)."""
    extra = record["extra"]
    fields = logfmt(list(extra.get("fields", {}).items()))
    return " ".join(p for p in (extra.get("agent", DAEMON), extra.get("event", "-"), record["message"], fields) if p)


class LogfmtSink:
    """Writes each record as one logfmt line to a stream (stderr for the daemon)."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def __call__(self, message: Any) -> None:
        try:
            self.stream.write(line_of(message.record) + "\n")
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass  # whoever read our stderr went away: the journal, the ring buffers and files still hold it


def configure(level: str = "INFO", profile: str = "-", journal: bool | None = None) -> str:
    """Log to journald with fields when under systemd (or `journal` says so), else to stderr.
    Returns where records go."""
    logger.remove()
    logger.configure(extra={"agent": DAEMON, "event": "-", "profile": profile, "incarnation": None, "pid": None,
                            "fields": {}})
    if journal is None:
        journal = under_systemd()
    if journal:
        try:
            logger.add(JournalSink(os.environ.get("SUNSETD_JOURNAL_SOCKET", JOURNAL_SOCKET), render=journal_text),
                       level=level, format="{message}")
            return "journal"
        except OSError:
            pass  # no journald here: stderr it is
    logger.add(LogfmtSink(sys.stderr), level=level, format="{message}", backtrace=False, diagnose=False)
    return "stderr"


def sparse(n: int) -> bool:
    """Whether the n-th of a repeated warning is logged: the 1st, 2nd, 4th, 8th... (a flood of bad input
    cannot become a flood of log lines, and the count still says how bad it is)."""
    return n & (n - 1) == 0


def event(agent: str, name: str, message: str = "", level: str = "INFO", *,
          incarnation: int | None = None, pid: int | None = None, **fields: Any) -> None:
    """Log one event of `agent`: a short message and key=value fields."""
    logger.bind(agent=agent, event=name, incarnation=incarnation, pid=pid,
                fields={k: v for k, v in fields.items() if v is not None}).log(level, message)


def agent_output(agent: str, stream: str, line: str, incarnation: int, pid: int | None) -> None:
    """A line an agent printed; stderr is where tracebacks and warnings go, so it logs as a warning."""
    logger.bind(agent=agent, event=stream, incarnation=incarnation, pid=pid, fields={}).log(
        "WARNING" if stream == "stderr" else "INFO", line)
