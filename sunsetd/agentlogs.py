"""Every agent's last log lines, without journald: per-incarnation ring buffers, and optional files.

What an agent printed, and what the daemon said about it (its transitions, exits, kills), kept per
incarnation so that a crash's traceback stays with the incarnation that printed it, however often the
agent has restarted since. Bounded: the last LINES_PER_INCARNATION lines (and BYTES_PER_INCARNATION
bytes) of each of an agent's last INCARNATIONS_KEPT incarnations, so 77 agents hold at most a few MiB
whatever they print. Each line has a number, per agent, that only grows: a follower that missed some
(a subscription not yet in place) asks for the lines after the last one it has.

`LogFiles` writes the same lines to one file per agent, rotated by size, for hosts without journald.
"""
from __future__ import annotations

import os
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, NamedTuple

LINES_PER_INCARNATION = 500
BYTES_PER_INCARNATION = 128 * 1024
INCARNATIONS_KEPT = 4
REPLY_BYTES = 768 * 1024  # one `logs` answer stays well under the 1 MiB frame limit


class LogLine(NamedTuple):
    seq: int  # per agent, from 1, never reused while the daemon runs
    time: float  # wall clock, seconds since the epoch
    agent: str
    incarnation: int
    stream: str  # stdout, stderr, or "sunsetd" for what the daemon said about the agent
    text: str

    @property
    def size(self) -> int:
        """Bytes it takes on the wire (and about as many in memory): UTF-8, not characters."""
        return len(self.text.encode("utf-8", "replace")) + len(self.agent.encode("utf-8", "replace")) + 64


@dataclass(eq=False)
class _Incarnation:
    lines: deque
    size: int = 0


class AgentLogs:
    """The ring buffers of every agent. Pure: the caller gives the time."""

    def __init__(self, lines_per_incarnation: int = LINES_PER_INCARNATION,
                 bytes_per_incarnation: int = BYTES_PER_INCARNATION, incarnations_kept: int = INCARNATIONS_KEPT):
        self.lines_per_incarnation = lines_per_incarnation
        self.bytes_per_incarnation = bytes_per_incarnation
        self.incarnations_kept = incarnations_kept
        self._agents: dict[str, OrderedDict[int, _Incarnation]] = {}
        self._seq: dict[str, int] = {}
        self.dropped = 0  # lines pushed out of a full buffer

    def append(self, agent: str, incarnation: int, stream: str, text: str, time: float) -> LogLine:
        seq = self._seq[agent] = self._seq.get(agent, 0) + 1
        line = LogLine(seq, time, agent, incarnation, stream, text)
        kept = self._agents.setdefault(agent, OrderedDict())
        inc = kept.get(incarnation)
        if inc is None:
            inc = kept[incarnation] = _Incarnation(deque())
            while len(kept) > self.incarnations_kept:
                _, gone = kept.popitem(last=False)
                self.dropped += len(gone.lines)
        inc.lines.append(line)
        inc.size += line.size
        while len(inc.lines) > self.lines_per_incarnation or (inc.size > self.bytes_per_incarnation
                                                               and len(inc.lines) > 1):
            inc.size -= inc.lines.popleft().size
            self.dropped += 1
        return line

    def last_seq(self, agent: str) -> int:
        """The number of the agent's latest line (0: none yet)."""
        return self._seq.get(agent, 0)

    def agents(self) -> list[str]:
        return list(self._agents)

    def incarnations(self, agent: str) -> list[int]:
        return list(self._agents.get(agent, ()))

    def lines(self, agents: Iterable[str] | None = None, incarnation: int | None = None, n: int | None = None,
              after: dict[str, int] | None = None, max_bytes: int = REPLY_BYTES) -> list[LogLine]:
        """The last `n` lines (all when None) of these agents (every one when None), oldest first and
        interleaved by time; only those numbered after `after[agent]`; at most `max_bytes` of them,
        the newest kept."""
        names = self.agents() if agents is None else [a for a in agents if a in self._agents]
        found: list[LogLine] = []
        for name in names:
            since = (after or {}).get(name, 0)
            for k, inc in self._agents[name].items():
                if incarnation is None or k == incarnation:
                    found.extend(line for line in inc.lines if line.seq > since)
        found.sort(key=lambda line: (line.time, line.agent, line.seq))
        if n is not None:
            found = found[-n:] if n > 0 else []
        total, start = 0, len(found)
        while start > 0 and total + found[start - 1].size <= max_bytes:
            start -= 1
            total += found[start].size
        return found[start:]


class LogFiles:
    """One file per agent in `directory` (`NAME.log`), rotated at `max_bytes` to NAME.log.1 ... .N.

    Writes go straight to the file, one line each (small, appended: the kernel's page cache takes
    them; there is no fsync on the event loop). A file that cannot be written is reported once and
    then left alone, so a full disk never stops the daemon."""

    def __init__(self, directory: Path, max_bytes: int, backups: int):
        self.directory = directory
        self.max_bytes = max_bytes
        self.backups = backups
        self._files: dict[str, IO[str]] = {}
        self._sizes: dict[str, int] = {}
        self.failed: dict[str, str] = {}  # agent -> why its file is not written
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, agent: str) -> Path:
        return self.directory / f"{agent}.log"

    def write(self, agent: str, text: str) -> str | None:
        """Append one line; returns why it could not be written the first time that happens, else None."""
        if agent in self.failed:
            return None
        data = text + "\n"
        size = len(data.encode("utf-8", "replace"))
        try:
            f = self._files.get(agent)
            if f is None:
                f = self._open(agent)
            if self._sizes[agent] + size > self.max_bytes and self._sizes[agent] > 0:
                self._rotate(agent)
                f = self._open(agent)
            f.write(data)
            f.flush()
            self._sizes[agent] += size
        except OSError as exc:
            self.failed[agent] = f"cannot write {self.path(agent)}: {exc.strerror or exc}"
            self._close(agent)
            return self.failed[agent]
        return None

    def _open(self, agent: str) -> IO[str]:
        path = self.path(agent)
        f = open(path, "a", encoding="utf-8", errors="replace", opener=lambda p, fl: os.open(p, fl | os.O_CLOEXEC, 0o640))
        self._files[agent] = f
        self._sizes[agent] = f.tell()
        return f

    def _rotate(self, agent: str) -> None:
        self._close(agent)
        path = self.path(agent)
        if self.backups <= 0:
            path.unlink(missing_ok=True)
            return
        for k in range(self.backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{k}")
            if older.exists():
                os.replace(older, path.with_name(f"{path.name}.{k + 1}"))
        os.replace(path, path.with_name(f"{path.name}.1"))

    def _close(self, agent: str) -> None:
        f = self._files.pop(agent, None)
        if f is not None:
            try:
                f.close()
            except OSError:
                pass

    def reopen(self) -> int:
        """Close every file, to be opened again at its next line (logrotate moved them); a file that
        could not be written is tried again. Returns how many were open."""
        n = len(self._files)
        self.close()
        self.failed.clear()
        return n

    def close(self) -> None:
        for agent in list(self._files):
            self._close(agent)
