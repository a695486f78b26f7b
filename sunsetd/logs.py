"""Daemon logging: one loguru logger, one line per event, the agent's name first, key=value fields.

Every record carries the structured fields AGENT, EVENT, INCARNATION and PID as loguru extras, so a
journald sink can index them; on a terminal they read as a plain line.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from loguru import logger

from sunsetd.journal import JOURNAL_SOCKET, JournalSink, under_systemd

DAEMON = "sunsetd"  # the AGENT field of the daemon's own records


def configure(level: str = "INFO", profile: str = "-", journal: bool | None = None) -> str:
    """Log to journald with fields when under systemd (or `journal` says so), else to stderr.
    Returns where records go."""
    logger.remove()
    logger.configure(extra={"agent": DAEMON, "event": "-", "profile": profile, "incarnation": None, "pid": None})
    if journal is None:
        journal = under_systemd()
    if journal:
        try:
            logger.add(JournalSink(os.environ.get("SUNSETD_JOURNAL_SOCKET", JOURNAL_SOCKET)), level=level,
                       format="{message}")
            return "journal"
        except OSError:
            pass  # no journald here: stderr it is
    logger.add(
        sys.stderr,
        level=level,
        colorize=sys.stderr.isatty(),
        format="{time:HH:mm:ss.SSS} {level: <7} {extra[agent]} {extra[event]} {message}",
        backtrace=False,
        diagnose=False,
    )
    return "stderr"


def _fmt(value: Any) -> str:
    text = str(value)
    return repr(text) if (" " in text or not text) else text


def event(agent: str, name: str, message: str = "", level: str = "INFO", *,
          incarnation: int | None = None, pid: int | None = None, **fields: Any) -> None:
    """Log one event: `<agent> <name> <message> k=v ...`."""
    parts = [message] if message else []
    parts += [f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None]
    if incarnation is not None:
        parts.append(f"incarnation={incarnation}")
    if pid is not None:
        parts.append(f"pid={pid}")
    logger.bind(agent=agent, event=name, incarnation=incarnation, pid=pid).log(level, " ".join(parts))


def agent_output(agent: str, stream: str, line: str, incarnation: int, pid: int) -> None:
    """A line an agent printed; stderr is where tracebacks and warnings go, so it logs as a warning."""
    logger.bind(agent=agent, event=stream, incarnation=incarnation, pid=pid).log(
        "WARNING" if stream == "stderr" else "INFO", line)
