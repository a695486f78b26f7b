"""logfmt: `key=value` pairs on one line, values double-quoted and escaped only when they must be.

The one format of the daemon's log lines, its --log-dir files and `sunsetctl events`, so that grep,
awk and any logfmt parser read them alike. Tiny and import-free: sunsetctl uses it too.
"""
from __future__ import annotations

import json
import re
from typing import Any, Iterable

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/@#,+%")


def quote(value: Any) -> str:
    """A value: bare when it is one plain word, else a double-quoted, escaped string (never a repr)."""
    text = value if isinstance(value, str) else str(value)
    if text and all(c in _PLAIN for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def logfmt(pairs: Iterable[tuple[str, Any]]) -> str:
    """The pairs whose value is not None, as one line."""
    return " ".join(f"{k}={quote(v)}" for k, v in pairs if v is not None)


def event_text(event: dict) -> str:
    """An event of the event stream (see sunsetd.events) without its time."""
    return logfmt([("agent", event.get("agent")), ("event", event.get("event")), ("msg", event.get("msg") or None),
                   *(event.get("fields") or {}).items(), ("incarnation", event.get("incarnation")),
                   ("pid", event.get("pid"))])


_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse(line: str) -> dict[str, str]:
    """The pairs of one logfmt line (quoted values unescaped), for tools and tests that read logs."""
    return {k: json.loads(v) if v.startswith('"') else v for k, v in _PAIR.findall(line)}
