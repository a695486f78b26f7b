"""Reference agents of the pc2 utility group: UnifiedUtilsAgent, ProactiveContextMonitor.

UnifiedUtilsAgent owns one directory (`config.dir`, by default a fresh temporary one) and never touches
a file outside it: every operation goes through a file descriptor of that directory, names are plain
file names (no separators, no dot files), and symbolic links are never followed.
"""
from __future__ import annotations

import os
import re
import stat
import threading
import time
import zlib
from typing import Any

from sunsetd.agent import BadRequest, RemoteError

from agents.infrastructure import field
from agents.pc2_core import CONTEXT, EdgeAgent
from agents.memory import STOPWORDS, terms

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


def _fresh_dir(prefix: str) -> str:
    import tempfile  # here: an agent given its directory never loads it

    return tempfile.mkdtemp(prefix=prefix)


def plain_name(name: str) -> str:
    """A file name with no directory part, not hidden, not '.' or '..'; BadRequest otherwise."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise BadRequest(f"{name!r} is not a plain file name (letters, digits, _ . -; no separators)")
    return name


# ---- UnifiedUtilsAgent -----------------------------------------------------------------------------------
class UnifiedUtilsAgent(EdgeAgent):
    """Temporary files and their clean-up, inside its own directory; ids and checksums.

    Real: `write` makes a temporary file in this agent's directory (`config.dir`, else a fresh
    `tempfile.mkdtemp()`, removed with everything in it at a clean stop), `read`, `list`, `delete`;
    `cleanup` removes the files older than `max_age_s` (by modification time against `now`, the request's
    or the wall clock's) and then the oldest until the directory holds at most `max_bytes`, with `dry_run`
    to only say what would go; with `config.cleanup_every_s` a background sweep does the same with
    `config.max_age_s`. All of it through a descriptor of the directory (openat, unlinkat), never following
    a symbolic link (a link is removed as a link) and never leaving the directory. `new_id` gives random
    ids, `checksum` crc32/adler32.
    Stands in: nothing.
    """

    CAPABILITIES = ("utils.tempfiles", "utils.cleanup", "utils.ids")

    def setup(self) -> None:
        self.own_dir = not self.config.get("dir")  # a fresh directory of ours goes with this incarnation
        self.dir = self.config.get("dir") or _fresh_dir("uua-")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.dirfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.lock = threading.Lock()
        self.seq = 0
        self.stopping = threading.Event()
        super().setup()
        every, max_age = float(self.config.get("cleanup_every_s", 0)), self.config.get("max_age_s")
        if every > 0 and max_age is not None:
            threading.Thread(target=self._sweeper, args=(every, float(max_age)), name="sweeper", daemon=True).start()

    def teardown(self) -> None:
        self.stopping.set()
        with self.lock:
            os.close(self.dirfd)
            self.dirfd = -1
            if self.own_dir:
                import shutil

                shutil.rmtree(self.dir, ignore_errors=True)  # removes links, never what they point at

    def _sweeper(self, every: float, max_age: float) -> None:
        while not self.stopping.wait(every):
            try:
                removed = self._cleanup(max_age, None, time.time(), False)["removed"]
                self.counters["sweeps"] += 1
                if removed:
                    self.log(f"swept {len(removed)} files older than {max_age:g}s")
            except OSError as exc:
                self.log(f"sweep failed: {exc}")

    def _entries(self) -> list[dict]:
        out = []
        for e in os.scandir(self.dirfd):
            st = e.stat(follow_symlinks=False)
            kind = "file" if stat.S_ISREG(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else \
                "dir" if stat.S_ISDIR(st.st_mode) else "other"
            out.append({"name": e.name, "kind": kind, "bytes": st.st_size, "mtime": st.st_mtime})
        out.sort(key=lambda e: (e["mtime"], e["name"]))
        return out

    def handle_write(self, body: Any) -> dict:
        """{content: text or bytes, name?, suffix?, mtime?}: a new temporary file; its name."""
        content = field(body, "content", (str, bytes))
        data = content.encode() if isinstance(content, str) else content
        name = field(body, "name", str, None)
        with self.lock:
            if name is None:
                self.seq += 1
                suffix = field(body, "suffix", str, "")
                if not re.fullmatch(r"[A-Za-z0-9_.-]{0,16}", suffix):
                    raise BadRequest("suffix must be up to 16 letters, digits, _ . -")
                name = f"tmp-{os.getpid()}-{self.seq}{suffix}"
            plain_name(name)
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=self.dirfd)
            try:
                os.write(fd, data)
                mtime = field(body, "mtime", float, None)
                if mtime is not None:
                    os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)
        self.counters["written"] += 1
        return {"name": name, "bytes": len(data)}

    def handle_read(self, body: Any) -> dict:
        name = plain_name(field(body, "name", str))
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dirfd)
        except FileNotFoundError:
            raise BadRequest(f"no file {name!r}") from None
        except OSError as exc:
            raise BadRequest(f"cannot read {name!r}: {exc.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BadRequest(f"{name!r} is not a regular file")
            data = b"".join(iter(lambda: os.read(fd, 1 << 16), b""))
        finally:
            os.close(fd)
        return {"name": name, "bytes": len(data), "content": data}

    def handle_delete(self, body: Any) -> dict:
        name = plain_name(field(body, "name", str))
        try:
            os.unlink(name, dir_fd=self.dirfd)
        except FileNotFoundError:
            return {"name": name, "deleted": False}
        return {"name": name, "deleted": True}

    def handle_list(self, body: Any) -> dict:
        """Every entry of the directory, oldest first, with its kind (a link is shown, never followed)."""
        with self.lock:
            entries = self._entries()
        return {"entries": entries, "files": len(entries), "bytes": sum(e["bytes"] for e in entries)}

    def _cleanup(self, max_age: float | None, max_bytes: int | None, now: float, dry_run: bool) -> dict:
        with self.lock:
            entries = [e for e in self._entries() if e["kind"] in ("file", "symlink", "other")]
            remove = [e for e in entries if max_age is not None and now - e["mtime"] > max_age]
            kept = [e for e in entries if e not in remove]
            total = sum(e["bytes"] for e in kept)
            for e in kept:  # oldest first
                if max_bytes is None or total <= max_bytes:
                    break
                remove.append(e)
                total -= e["bytes"]
            if not dry_run:
                for e in remove:
                    try:
                        os.unlink(e["name"], dir_fd=self.dirfd)  # unlinkat: a link goes, not its target
                    except FileNotFoundError:
                        pass
        if not dry_run:
            self.counters["removed"] += len(remove)
            self.counters["freed_bytes"] += sum(e["bytes"] for e in remove)
        return {"removed": sorted(e["name"] for e in remove), "freed_bytes": sum(e["bytes"] for e in remove),
                "kept_bytes": total, "dry_run": dry_run}

    def handle_cleanup(self, body: Any) -> dict:
        """{max_age_s?, max_bytes?, now?, dry_run?}: remove old files, then the oldest down to max_bytes."""
        body = body if isinstance(body, dict) else {}
        max_age = field(body, "max_age_s", float, None)
        max_bytes = field(body, "max_bytes", int, None)
        if max_age is None and max_bytes is None:
            raise BadRequest("give max_age_s, max_bytes or both")
        out = self._cleanup(max_age, max_bytes, field(body, "now", float, time.time()),
                            field(body, "dry_run", bool, False))
        if not out["dry_run"]:
            self.report({"removed": self.counters["removed"], "freed_bytes": self.counters["freed_bytes"]})
        return out

    def handle_where(self, body: Any) -> dict:
        """The directory this agent owns."""
        return {"dir": self.dir}

    def handle_new_id(self, body: Any) -> dict:
        """{prefix?} -> a random id: prefix-<16 hex digits>."""
        prefix = field(body, "prefix", str, "id") if isinstance(body, dict) else "id"
        if not re.fullmatch(r"[a-z0-9]{1,16}", prefix):
            raise BadRequest("prefix must be 1..16 lower-case letters or digits")
        return {"id": f"{prefix}-{os.urandom(8).hex()}"}

    def handle_checksum(self, body: Any) -> dict:
        """{data: text or bytes, algo?: crc32 | adler32} -> hex checksum."""
        data = field(body, "data", (str, bytes))
        data = data.encode() if isinstance(data, str) else data
        algo = field(body, "algo", str, "crc32")
        fn = {"crc32": zlib.crc32, "adler32": zlib.adler32}.get(algo)
        if fn is None:
            raise BadRequest("algo must be crc32 or adler32")
        return {"algo": algo, "checksum": f"{fn(data):08x}", "bytes": len(data)}


# ---- ProactiveContextMonitor -----------------------------------------------------------------------------
_TIME_CUES = re.compile(r"\b(tomorrow|tonight|next (?:week|month|monday|tuesday|wednesday|thursday|friday|saturday|"
                        r"sunday)|on (?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)|at \d{1,2}(?::\d\d)?"
                        r"\s*(?:am|pm)?|remind me|deadline|in \d+ (?:minutes|hours|days))\b")


def suggestions_for(messages: list[dict], dropped: int, overlap: float = 0.7) -> list[dict]:
    """What is worth raising about a conversation (pure): pending and repeated questions, reminders,
    a topic shift, a context that no longer fits."""
    out: list[dict] = []
    user = [(m.get("index", i + 1), m) for i, m in enumerate(messages) if m["role"] == "user"]
    questions: list[tuple[int, set]] = []
    for idx, m in user:
        if m["text"].rstrip().endswith("?"):
            t = set(terms(m["text"]))
            for j, earlier in questions:
                if t and earlier and len(t & earlier) / len(t | earlier) >= overlap:
                    out.append({"kind": "repeated_question", "message": idx, "earlier": j,
                                "text": f"asked again (first at message {j}): the earlier answer may not have helped"})
                    break
            questions.append((idx, t))
        cue = _TIME_CUES.search(m["text"].lower())
        if cue:
            out.append({"kind": "reminder", "message": idx,
                        "text": f"'{cue.group(0)}': offer a reminder for: {m['text']}"})
    if messages and messages[-1]["role"] == "user" and messages[-1]["text"].rstrip().endswith("?"):
        out.append({"kind": "pending_question", "message": messages[-1].get("index", len(messages)),
                    "text": "the last question has no answer yet"})
    if len(user) >= 6:
        def top(ms):
            words: dict[str, int] = {}
            for _, m in ms:
                for w in re.findall(r"[a-z]+", m["text"].lower()):
                    if len(w) > 3 and w not in STOPWORDS:
                        words[w] = words.get(w, 0) + 1
            return {w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))[:5]}
        before, after = top(user[:-3]), top(user[-3:])
        if before and after and not before & after:
            out.append({"kind": "topic_shift", "message": user[-3][0],
                        "text": f"topic moved from {', '.join(sorted(before))} to {', '.join(sorted(after))}"})
    if dropped:
        out.append({"kind": "context_overflow", "message": None,
                    "text": f"{dropped} messages no longer fit the context window: summarise them"})
    return out


class ProactiveContextMonitor(EdgeAgent):
    """Watches conversations and raises what deserves attention before anyone asks.

    Real: reads a session's messages and packed context from ContextManager and finds, by rules, pending
    and repeated questions (term overlap), time cues worth a reminder ("tomorrow", "at 5pm", "remind me"),
    a topic shift (the last three user messages share no top word with the ones before) and a context
    that no longer fits its window; `scan` checks every watched session and reports only what is new,
    each new finding recorded as an event at ObservabilityHub_PC2; with `config.watch_s` a background
    scan does the same. Stands in: rules stand in for a model that would judge what is worth raising.
    """

    CAPABILITIES = ("context.monitor", "context.suggestions")

    def setup(self) -> None:
        self.watched: dict[str, set] = {}  # session -> keys of the suggestions already raised
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        super().setup()
        watch_s = float(self.config.get("watch_s", 0))
        if watch_s > 0:
            threading.Thread(target=self._watch, args=(watch_s,), name="watch", daemon=True).start()

    def teardown(self) -> None:
        self.stopping.set()

    def _check(self, session: str) -> list[dict]:
        history = self.call(CONTEXT, "history", {"session": session}, timeout=2.0)["messages"]
        packed = self.call(CONTEXT, "context", {"session": session}, timeout=2.0)
        found = suggestions_for(history, packed["dropped"])
        self.counters["checks"] += 1
        return found

    def handle_check(self, body: Any) -> dict:
        """{session} -> every suggestion for it now."""
        session = field(body, "session", str)
        return {"session": session, "suggestions": self._check(session)}

    def handle_watch(self, body: Any) -> dict:
        session = field(body, "session", str)
        with self.lock:
            self.watched.setdefault(session, set())
            return {"watched": sorted(self.watched)}

    def handle_unwatch(self, body: Any) -> dict:
        session = field(body, "session", str)
        with self.lock:
            return {"removed": self.watched.pop(session, None) is not None, "watched": sorted(self.watched)}

    def _scan(self) -> dict[str, list[dict]]:
        with self.lock:
            sessions = sorted(self.watched)
        new: dict[str, list[dict]] = {}
        for session in sessions:
            fresh = []
            for s in self._check(session):
                key = (s["kind"], s["message"])
                with self.lock:
                    seen = self.watched.get(session)
                    if seen is None or key in seen:
                        continue
                    seen.add(key)
                fresh.append(s)
                self.event(f"{session}: {s['kind']}: {s['text']}")
            if fresh:
                new[session] = fresh
        self.counters["raised"] += sum(map(len, new.values()))
        return new

    def handle_scan(self, body: Any) -> dict:
        """Check every watched session; what is new since the last scan (each also an event at the hub)."""
        return {"new": self._scan()}

    def _watch(self, every: float) -> None:
        while not self.stopping.wait(every):
            try:
                self._scan()
            except RemoteError as exc:
                self.log(f"scan failed: {exc}")
