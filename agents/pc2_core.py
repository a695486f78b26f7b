"""Reference agents of the pc2 core group: ObservabilityHub_PC2, and (below) the agents of the second
machine's core that build on it.

The "PC2" agents once ran on a second machine with a hub of their own. They keep that shape: their hub is
ObservabilityHub_PC2, which depends on no agent, so every agent of the PC2 side reports there
(`EdgeAgent`), never to the core ObservabilityHub, which is not in their dependencies. Like every
reference agent they register with ServiceRegistry at setup (ServiceRegistry calls no one, so that call
can never come back to them), so that the core hub does not flag them as unregistered.
"""
from __future__ import annotations

import heapq
import os
import re
import threading
import time
from collections import Counter, deque
from typing import Any

from sunsetd.agent import AgentError, BadRequest, RemoteError

from agents.infrastructure import (DAEMON, CatalogAgent, ObservabilityHub, field, health_of, linear_forecast,
                                   read_meminfo)
from agents.memory import STOPWORDS, MemoryClient, terms

OH2 = "ObservabilityHub_PC2"
MOS = "MemoryOrchestratorService"
RESOURCES = "ResourceManager"
PROCESSOR = "AsyncProcessor"
CONTEXT = "ContextManager"
SCHEDULER = "TaskScheduler"


class EdgeAgent(CatalogAgent):
    """Base of the PC2-side reference agents: CatalogAgent, reporting to ObservabilityHub_PC2."""

    HUB_AGENT = OH2

    def report(self, metrics: dict[str, float]) -> list[dict]:
        """Push numeric metrics to ObservabilityHub_PC2; the alerts they raise there (none if unreachable)."""
        try:
            reply = self.call(self.HUB_AGENT, "report", {"source": self.name, "metrics": metrics}, timeout=2.0)
        except RemoteError as exc:
            self.counters["report_failures"] += 1
            self.log(f"report to {self.HUB_AGENT} failed: {exc}")
            return []
        return reply.get("alerts", []) if isinstance(reply, dict) else []

    def event(self, message: str, level: str = "info") -> None:
        """A notable event, kept by ObservabilityHub_PC2; an unreachable hub is logged, not fatal."""
        try:
            self.call(self.HUB_AGENT, "event", {"source": self.name, "level": level, "message": message}, timeout=2.0)
        except RemoteError as exc:
            self.log(f"event to {self.HUB_AGENT} failed: {exc}")


# ---- ObservabilityHub_PC2 --------------------------------------------------------------------------------
class ObservabilityHubPC2(ObservabilityHub):
    """Edge health hub: health score, metrics, thresholds and events for the PC2 side of the system.

    Real: the core hub's job (see ObservabilityHub and `health_of`) over the agents it watches: the ones
    in `config.watch` and every agent that has reported to it; `health` reads their states, restarts and
    heartbeats from sunsetd's status (it depends on no agent, so it asks no registry); `report`, `event`,
    `metrics` and thresholds as in the core hub. Stands in: nothing (no model).
    """

    CAPABILITIES = ("observability.edge.health", "observability.edge.metrics", "observability.edge.alerts")

    def setup(self) -> None:
        self.watch = [str(a) for a in self.config.get("watch") or ()]
        super().setup()

    def watched(self) -> list[str]:
        return sorted(set(self.watch) | set(self.metrics) | {self.name})

    def handle_health(self, body: Any) -> dict:
        """Health of the watched agents; body {status} instead evaluates a given snapshot of sunsetd's status."""
        given = body.get("status") if isinstance(body, dict) else None
        if given is not None and not isinstance(given, dict):
            raise BadRequest("status must be a map like sunsetd's status")
        status = given if given is not None else self.call(DAEMON, "status", timeout=2.0)
        names = set(self.watched())
        agents = status.get("agents", []) if given is not None else \
            [a for a in status.get("agents", []) if a.get("name") in names]
        late_ms = float(self.config.get("late_heartbeat_ms", 1000))
        result = health_of({"state": status.get("state"), "agents": agents}, None,
                           {} if given is not None else self.metrics, self.thresholds, late_ms)
        result["profile"] = status.get("profile")
        result["watched"] = sorted(a.get("name") for a in agents)
        self.counters["health_checks"] += 1
        return result

    def handle_watch(self, body: Any) -> dict:
        """{agent}: watch one more agent (one that never reports, say)."""
        agent = field(body, "agent", str)
        if agent not in self.watch:
            self.watch.append(agent)
        return {"watched": self.watched()}


# ---- MemoryOrchestratorService ---------------------------------------------------------------------------
class MemoryOrchestratorService(EdgeAgent, MemoryClient):
    """The memory store of the PC2 side (SQLite), with short-term entries that expire.

    Real: MemoryClient's store and API (namespaced msgpack values in SQLite, prefix listing, ordered appends,
    word search), plus entries written with `ttl_s` that expire on the writer's clock (`now` in the request,
    else the host's monotonic clock): `get` no longer finds them, `sweep` deletes them; `usage` keeps its own
    series of row counts per namespace and forecasts the next with a least-squares line (it depends on no
    SystemDigitalTwin), and pushes the figures to ObservabilityHub_PC2. The database is `config.database`:
    `:memory:` (the default; a restart empties it) or a file name inside `config.dir` (without a dir, a
    fresh temporary one, removed at a clean stop), never elsewhere.
    Stands in: nothing.
    """

    CAPABILITIES = ("memory.store", "memory.search", "memory.expiry")

    def setup(self) -> None:
        database = str(self.config.get("database", ":memory:"))
        if database != ":memory:":
            if os.sep in database or database in (".", ".."):
                raise ValueError(f"database must be ':memory:' or a file name inside config.dir, not {database!r}")
            if not self.config.get("dir"):
                import tempfile  # here: only a file-backed store without a dir needs it

                self.config["dir"] = self.own_dir = tempfile.mkdtemp(prefix="mos-")
            directory = self.config["dir"]
            os.makedirs(directory, mode=0o700, exist_ok=True)
            self.config["database"] = os.path.join(directory, database)
        self.series: dict[str, deque] = {}
        super().setup()
        self.db.execute("CREATE TABLE IF NOT EXISTS expiry (ns TEXT NOT NULL, key TEXT NOT NULL, at REAL NOT NULL,"
                        " PRIMARY KEY (ns, key))")

    @staticmethod
    def _now(body: Any) -> float:
        now = field(body, "now", float, None) if isinstance(body, dict) else None
        return time.monotonic() if now is None else float(now)

    own_dir: str | None = None

    def teardown(self) -> None:
        super().teardown()
        if self.own_dir:  # a store in a fresh directory could never be found again: it goes with us
            import shutil

            shutil.rmtree(self.own_dir, ignore_errors=True)

    def handle_put(self, body: Any) -> dict:
        """{ns, key, value, ttl_s?, now?}: store a value; with ttl_s it expires ttl_s after `now`."""
        ttl = field(body, "ttl_s", float, None)
        out = super().handle_put(body)
        with self.lock:
            if ttl is None:
                self.db.execute("DELETE FROM expiry WHERE ns=? AND key=?", (out["ns"], out["key"]))
            else:
                self.db.execute("INSERT OR REPLACE INTO expiry VALUES (?, ?, ?)",
                                (out["ns"], out["key"], self._now(body) + ttl))
                out["expires"] = round(self._now(body) + ttl, 3)
        return out

    def handle_get(self, body: Any) -> dict:
        """{ns, key, now?}: the value, unless it has expired at `now`."""
        ns, key = field(body, "ns", str), field(body, "key", str)
        with self.lock:
            row = self.db.execute("SELECT at FROM expiry WHERE ns=? AND key=?", (ns, key)).fetchone()
        if row is not None and row[0] <= self._now(body):
            return {"ns": ns, "key": key, "found": False, "value": None, "expired": True}
        return super().handle_get(body)

    def handle_delete(self, body: Any) -> dict:
        out = super().handle_delete(body)
        with self.lock:
            self.db.execute("DELETE FROM expiry WHERE ns=? AND key=?", (out["ns"], out["key"]))
        return out

    def handle_sweep(self, body: Any) -> dict:
        """{now?, ns?}: delete every entry expired at `now`."""
        now = self._now(body)
        ns = field(body, "ns", str, None) if isinstance(body, dict) else None
        where, args = ("at <= ?" + (" AND ns=?" if ns else ""), (now, ns) if ns else (now,))
        with self.lock:
            rows = self.db.execute(f"SELECT ns, key FROM expiry WHERE {where}", args).fetchall()
            self.db.execute("BEGIN")
            for n, k in rows:
                self.db.execute("DELETE FROM items WHERE ns=? AND key=?", (n, k))
            self.db.execute(f"DELETE FROM expiry WHERE {where}", args)
            self.db.execute("COMMIT")
        self.counters["expired"] += len(rows)
        return {"swept": len(rows), "keys": [f"{n}/{k}" for n, k in sorted(rows)]}

    def forecast_rows(self, series: str, rows: int) -> dict:
        """Forecast here, from the past row counts: this store does not depend on SystemDigitalTwin."""
        history = self.series.setdefault(series, deque(maxlen=64))
        history.append(float(rows))
        return linear_forecast(list(history))


# ---- ResourceManager -------------------------------------------------------------------------------------
class ResourceManager(EdgeAgent):
    """Resource accounting: CPU slots and memory granted to tasks, within a capacity.

    Real: a ledger of grants ({owner, cpu, mb}) against `config.cpu_slots` (the host's CPU count by
    default) and `config.memory_mb`; `allocate` grants or refuses with the reason (refusals are counted
    and its figures pushed to ObservabilityHub_PC2 at `status`), `release` returns a grant, `release_owner`
    all of an owner's;
    `status` adds what the host has (/proc: available memory, load) beside the ledger, and `allocate`
    refuses memory the host does not have. Stands in: nothing; the slots are a ledger, not cgroups.
    """

    CAPABILITIES = ("resources.accounting", "resources.allocate")

    def setup(self) -> None:
        self.cpu_slots = int(self.config.get("cpu_slots") or os.cpu_count() or 1)
        self.memory_mb = int(self.config.get("memory_mb", 1024))
        self.grants: dict[str, dict] = {}
        self.seq = 0
        self.lock = threading.Lock()
        super().setup()

    def _used(self) -> tuple[int, int]:
        return sum(g["cpu"] for g in self.grants.values()), sum(g["mb"] for g in self.grants.values())

    def _free(self) -> dict:
        cpu, mb = self._used()
        return {"cpu": self.cpu_slots - cpu, "mb": self.memory_mb - mb}

    def handle_allocate(self, body: Any) -> dict:
        """{owner, cpu?: 1, mb?: 0} -> {granted, id} or {granted: false, reason}."""
        owner = field(body, "owner", str)
        cpu, mb = field(body, "cpu", int, 1), field(body, "mb", int, 0)
        if cpu < 0 or mb < 0 or cpu > self.cpu_slots or mb > self.memory_mb:
            raise BadRequest(f"cannot ever grant cpu={cpu} mb={mb} "
                             f"(capacity {self.cpu_slots} cpu, {self.memory_mb} MB)")
        with self.lock:
            free = self._free()
            reason = None
            if cpu > free["cpu"]:
                reason = f"{cpu} cpu wanted, {free['cpu']} free"
            elif mb > free["mb"]:
                reason = f"{mb} MB wanted, {free['mb']} MB free in the ledger"
            elif mb and mb > read_meminfo().get("MemAvailable", 0) / 1024.0:
                reason = f"{mb} MB wanted, the host has less available"
            if reason is None:
                self.seq += 1
                gid = f"g{self.seq}"
                self.grants[gid] = {"owner": owner, "cpu": cpu, "mb": mb}
                self.counters["grants"] += 1
                return {"granted": True, "id": gid, "free": self._free()}
            self.counters["refusals"] += 1
        return {"granted": False, "reason": reason, "free": free}

    def handle_release(self, body: Any) -> dict:
        gid = field(body, "id", str)
        with self.lock:
            grant = self.grants.pop(gid, None)
            return {"id": gid, "released": grant is not None, "free": self._free()}

    def handle_release_owner(self, body: Any) -> dict:
        owner = field(body, "owner", str)
        with self.lock:
            gone = [g for g, v in self.grants.items() if v["owner"] == owner]
            for g in gone:
                del self.grants[g]
            return {"owner": owner, "released": len(gone), "free": self._free()}

    def handle_status(self, body: Any) -> dict:
        mem = read_meminfo()
        with open("/proc/loadavg") as f:
            load1 = float(f.read().split()[0])
        with self.lock:
            cpu, mb = self._used()
            by_owner: dict[str, dict] = {}
            for g in self.grants.values():
                o = by_owner.setdefault(g["owner"], {"cpu": 0, "mb": 0, "grants": 0})
                o["cpu"] += g["cpu"]
                o["mb"] += g["mb"]
                o["grants"] += 1
            out = {"capacity": {"cpu": self.cpu_slots, "mb": self.memory_mb}, "used": {"cpu": cpu, "mb": mb},
                   "free": self._free(), "grants": len(self.grants), "owners": dict(sorted(by_owner.items())),
                   "host": {"mem_available_mb": round(mem.get("MemAvailable", 0) / 1024.0, 1), "load1": load1}}
        self.report({"cpu_used": cpu, "mb_used": mb, "cpu_used_pct": round(100.0 * cpu / self.cpu_slots, 1)})
        return out


# ---- AsyncProcessor --------------------------------------------------------------------------------------
def _numbers(args: Any, what: str) -> list[float]:
    if not isinstance(args, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in args):
        raise BadRequest(f"{what} needs a list of numbers")
    if len(args) > 100_000:
        raise BadRequest(f"{what}: at most 100000 numbers")
    return args


def _count_primes(n: Any) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 2_000_000:
        raise BadRequest("primes needs an int 0..2000000")
    if n < 2:
        return 0
    sieve = bytearray([1]) * (n + 1)
    sieve[0] = sieve[1] = 0
    for i in range(2, int(n ** 0.5) + 1):
        if sieve[i]:
            sieve[i * i::i] = bytes(len(range(i * i, n + 1, i)))
    return sum(sieve)


def _fib(n: Any) -> str:
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 5000:
        raise BadRequest("fib needs an int 0..5000")
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return str(a)  # as text: it outgrows msgpack's 64-bit ints


def _wordcount(text: Any) -> dict:
    if not isinstance(text, str):
        raise BadRequest("wordcount needs a text")
    words = Counter(w for w in re.findall(r"[a-z0-9']+", text.lower()))
    return {"words": sum(words.values()), "distinct": len(words),
            "top": [[w, c] for w, c in sorted(words.items(), key=lambda wc: (-wc[1], wc[0]))[:5]]}


def _sleep(s: Any) -> float:
    if not isinstance(s, (int, float)) or isinstance(s, bool) or not 0 <= s <= 5:
        raise BadRequest("sleep needs 0..5 seconds")
    time.sleep(s)
    return s


TASK_KINDS: dict[str, Any] = {
    "sum": lambda a: sum(_numbers(a, "sum")),
    "sort": lambda a: sorted(_numbers(a, "sort")),
    "mean": lambda a: sum(_numbers(a, "mean")) / len(a) if a else 0.0,
    "primes": _count_primes,
    "fib": _fib,
    "wordcount": _wordcount,
    "sleep": _sleep,
    "echo": lambda a: a,
}


def check_task(body: Any) -> dict:
    """A task as AsyncProcessor takes it: {kind, args, priority?, cpu?, mb?}, checked."""
    kind = field(body, "kind", str)
    if kind not in TASK_KINDS:
        raise BadRequest(f"unknown task kind {kind!r} (kinds: {', '.join(sorted(TASK_KINDS))})")
    return {"kind": kind, "args": body.get("args"), "priority": field(body, "priority", int, 5),
            "cpu": field(body, "cpu", int, 1), "mb": field(body, "mb", int, 0)}


class AsyncProcessor(EdgeAgent):
    """A task queue whose tasks run only when ResourceManager grants them CPU and memory.

    Real: `submit` queues a task (a small deterministic computation: sum, sort, mean, prime counting, big
    Fibonacci numbers, word counts, a bounded sleep) by priority, then arrival; `workers` threads take the
    head of the queue one at a time, ask ResourceManager for its cpu/mb, run it, release the grant and keep
    the result; a refused task waits, in its place, until a grant comes back (gating: strict priority, no
    task behind it starts first); `result` waits for a task's end; `pause`
    and `resume` hold the queue. Stands in: nothing; tasks are in-process computations.
    """

    CAPABILITIES = ("tasks.queue", "tasks.execute")

    def setup(self) -> None:
        self.tasks: dict[str, dict] = {}
        self.queue: list[tuple[int, int, str]] = []  # (priority, seq, id), a heap
        self.seq = 0
        self.paused = False
        self.retry_s = float(self.config.get("retry_s", 0.2))
        self.finished = 0
        self.keep = int(self.config.get("keep_results", 1024))
        self.cond = threading.Condition()
        self.dispatching = threading.Lock()
        self.stopping = False
        self.workers = [threading.Thread(target=self._work, name=f"worker-{i}", daemon=True)
                        for i in range(int(self.config.get("workers", 2)))]
        super().setup()
        for w in self.workers:
            w.start()

    def teardown(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def _next(self) -> dict | None:
        with self.cond:
            while not self.stopping and (self.paused or not self.queue):
                self.cond.wait()
            if self.stopping:
                return None
            _, _, tid = heapq.heappop(self.queue)
            task = self.tasks[tid]
            task["state"] = "claimed"
            return task

    def _requeue(self, task: dict) -> None:
        with self.cond:  # no notify: the task waits for a grant to come back, not for another worker
            task["state"] = "queued"
            heapq.heappush(self.queue, (task["priority"], task["seq"], task["id"]))

    def _work(self) -> None:
        while True:
            # One worker dispatches at a time, always the head of the queue: a task that ResourceManager
            # refuses goes back in its place, and no task behind it starts first (strict priority).
            with self.dispatching:
                task = self._next()
                if task is None:
                    return
                try:
                    grant = self.call(RESOURCES, "allocate", {"owner": f"{self.name}:{task['id']}",
                                                              "cpu": task["cpu"], "mb": task["mb"]}, timeout=2.0)
                except RemoteError as exc:
                    grant = {"granted": False, "reason": str(exc)}
                if grant.get("granted"):
                    with self.cond:
                        task["state"] = "running"
                else:
                    task["gated"] += 1
                    task["gate_reason"] = grant.get("reason")
                    self.counters["gated"] += 1
                    self._requeue(task)
            if not grant.get("granted"):
                with self.cond:  # wait for a release here or a new submission, or retry after retry_s
                    self.cond.wait(self.retry_s)
                continue
            try:
                result, error = TASK_KINDS[task["kind"]](task["args"]), None
            except Exception as exc:  # a task's failure is its result, never a dead worker
                result, error = None, f"{type(exc).__name__}: {exc}"
            try:
                self.call(RESOURCES, "release", {"id": grant["id"]}, timeout=2.0)
            except RemoteError as exc:
                self.log(f"release of {grant['id']} failed: {exc}")
            with self.cond:
                self.counters["done" if error is None else "failed"] += 1
                self.finished += 1
                task.update(state="done" if error is None else "failed", result=result, error=error,
                            order=self.finished)
                self.cond.notify_all()
                self._forget_old()

    def _forget_old(self) -> None:
        over = len(self.tasks) - self.keep
        if over > 0:
            for tid in [t for t, v in self.tasks.items() if v["state"] in ("done", "failed")][:over]:
                del self.tasks[tid]

    @staticmethod
    def _public(task: dict) -> dict:
        out = {k: task[k] for k in ("id", "kind", "state", "result", "error", "priority", "gated", "order")}
        if out["state"] == "claimed":  # a worker is asking ResourceManager for it: still waiting, to a caller
            out["state"] = "queued"
        return out

    def handle_submit(self, body: Any) -> dict:
        """{kind, args, priority? (lower first, 5), cpu? (1), mb? (0)} -> {id, queued}."""
        task = check_task(body)
        with self.cond:
            self.seq += 1
            task.update(id=f"t{self.seq}", seq=self.seq, state="queued", result=None, error=None, gated=0,
                        order=None, gate_reason=None)
            self.tasks[task["id"]] = task
            heapq.heappush(self.queue, (task["priority"], task["seq"], task["id"]))
            self.cond.notify_all()
            self.counters["submitted"] += 1
            return {"id": task["id"], "queued": len(self.queue)}

    def handle_result(self, body: Any) -> dict:
        """{id, wait_s?}: the task's state and, once done, its result (waits up to wait_s for the end)."""
        tid = field(body, "id", str)
        deadline = time.monotonic() + min(field(body, "wait_s", float, 0.0), 30.0)
        with self.cond:
            task = self.tasks.get(tid)
            if task is None:
                raise BadRequest(f"no task {tid!r}")
            while task["state"] not in ("done", "failed", "cancelled") and time.monotonic() < deadline:
                self.cond.wait(deadline - time.monotonic())
            out = self._public(task)
            if task["state"] in ("queued", "claimed") and task["gate_reason"]:
                out["gate_reason"] = task["gate_reason"]
            return out

    def handle_cancel(self, body: Any) -> dict:
        tid = field(body, "id", str)
        with self.cond:
            task = self.tasks.get(tid)
            if task is None or task["state"] != "queued":
                return {"id": tid, "cancelled": False, "state": task["state"] if task else None}
            self.queue = [q for q in self.queue if q[2] != tid]
            heapq.heapify(self.queue)
            task["state"] = "cancelled"
            return {"id": tid, "cancelled": True, "state": "cancelled"}

    def handle_pause(self, body: Any) -> dict:
        with self.cond:
            self.paused = True
            return {"paused": True, "queued": len(self.queue)}

    def handle_resume(self, body: Any) -> dict:
        with self.cond:
            self.paused = False
            self.cond.notify_all()
            return {"paused": False, "queued": len(self.queue)}

    def handle_queue(self, body: Any) -> dict:
        with self.cond:
            return {"paused": self.paused, "queued": [tid for _, _, tid in sorted(self.queue)],
                    "running": sorted(t for t, v in self.tasks.items() if v["state"] == "running"),
                    "done": self.counters["done"], "failed": self.counters["failed"]}

    def handle_kinds(self, body: Any) -> list[str]:
        return sorted(TASK_KINDS)


# ---- ContextManager --------------------------------------------------------------------------------------
_CUES = frozenset("remember important always never must deadline allergic prefer call name birthday".split())
_ROLE_WEIGHT = {"system": 1.0, "user": 0.6, "assistant": 0.4, "tool": 0.3}


def importance(role: str, text: str) -> float:
    """How much a message matters to keep in context (0..1): its role, cue words, numbers."""
    words = set(re.findall(r"[a-z0-9']+", text.lower()))
    score = _ROLE_WEIGHT.get(role, 0.3) + (0.3 if words & _CUES else 0.0)
    score += 0.1 if any(w.isdigit() for w in words) else 0.0
    return round(min(1.0, score), 3)


def pack_context(messages: list[dict], budget: int, query: str | None, keep_last: int, decay: float) -> dict:
    """Which messages fit a budget of `budget` tokens (pure). Pinned and system messages and the last
    `keep_last` come first; the rest by importance, decayed by age, plus relevance to `query`; the chosen
    ones are given back in conversation order."""
    n = len(messages)
    q = set(terms(query)) if query else set()

    def score(i: int, m: dict) -> float:
        rel = len(q & set(terms(m["text"]))) / len(q) if q else 0.0
        return m["importance"] * decay ** (n - 1 - i) + 0.5 * rel

    must = [i for i, m in enumerate(messages) if m.get("pinned") or m["role"] == "system"]
    must += [i for i in range(max(0, n - keep_last), n) if i not in must]
    rest = sorted((i for i in range(n) if i not in must), key=lambda i: (-score(i, messages[i]), -i))
    chosen, used = set(), 0
    for i in must + rest:
        t = messages[i]["tokens"]
        if used + t <= budget:
            chosen.add(i)
            used += t
    picked = [dict(messages[i], index=i + 1) for i in sorted(chosen)]
    return {"messages": picked, "tokens": used, "budget": budget, "dropped": n - len(picked), "total": n}


class ContextManager(EdgeAgent):
    """Conversation context: which part of a conversation fits a model's context window.

    Real: messages are scored for importance (role, cue words like "remember" or "allergic", numbers)
    and appended to MemoryOrchestratorService (namespace `ctx:<session>`), so a restart loses nothing;
    `context` packs them into a token budget: pinned and system messages and the last `keep_last` first,
    then the rest by importance decayed with age plus relevance to a query, returned in conversation
    order with what was dropped. Stands in: a token is a word (no tokenizer model).
    """

    CAPABILITIES = ("context.window", "context.sessions")

    def setup(self) -> None:
        self.budget = int(self.config.get("budget_tokens", 256))
        self.keep_last = int(self.config.get("keep_last", 2))
        self.decay = float(self.config.get("decay", 0.9))
        super().setup()

    @staticmethod
    def _ns(body: Any) -> tuple[str, str]:
        session = field(body, "session", str)
        return session, f"ctx:{session}"

    def _messages(self, ns: str) -> list[dict]:
        return [i["value"] for i in self.call(MOS, "list", {"ns": ns}, timeout=2.0)["items"]]

    def handle_add(self, body: Any) -> dict:
        """{session, text, role?: user, pinned?: false}: append a message, scored for importance."""
        session, ns = self._ns(body)
        text, role = field(body, "text", str), field(body, "role", str, "user")
        if not text.strip():
            raise BadRequest("text must not be empty")
        message = {"role": role, "text": text, "importance": importance(role, text), "tokens": len(text.split()),
                   "pinned": bool(field(body, "pinned", bool, False))}
        stored = self.call(MOS, "append", {"ns": ns, "value": message}, timeout=2.0)
        self.counters["messages"] += 1
        return {"session": session, "index": stored["index"], "importance": message["importance"],
                "tokens": message["tokens"]}

    def handle_context(self, body: Any) -> dict:
        """{session, budget?, query?} -> the messages that fit `budget` tokens, in order, and how many were dropped."""
        session, ns = self._ns(body)
        budget = field(body, "budget", int, self.budget)
        out = pack_context(self._messages(ns), budget, field(body, "query", str, None), self.keep_last, self.decay)
        self.counters["packs"] += 1
        self.counters["dropped"] += out["dropped"]
        return {"session": session, **out}

    def handle_history(self, body: Any) -> dict:
        """{session, last?} -> messages, oldest first."""
        session, ns = self._ns(body)
        listing = self.call(MOS, "list", {"ns": ns, "last": field(body, "last", int, None)}, timeout=2.0)
        return {"session": session, "total": listing["total"],
                "messages": [dict(i["value"], index=int(i["key"])) for i in listing["items"]]}

    def handle_topics(self, body: Any) -> dict:
        """{session, k?} -> the most frequent content words of the user's messages."""
        session, ns = self._ns(body)
        words = Counter(w for m in self._messages(ns) if m["role"] == "user"
                        for w in re.findall(r"[a-z0-9']+", m["text"].lower()) if len(w) > 2 and w not in STOPWORDS)
        k = field(body, "k", int, 5)
        return {"session": session, "topics": [w for w, _ in sorted(words.items(), key=lambda wc: (-wc[1], wc[0]))[:k]]}

    def handle_sessions(self, body: Any) -> dict:
        spaces = self.call(MOS, "namespaces", None, timeout=2.0)
        return {ns[4:]: n for ns, n in sorted(spaces.items()) if ns.startswith("ctx:")}

    def handle_clear(self, body: Any) -> dict:
        session, ns = self._ns(body)
        return {"session": session, "deleted": self.call(MOS, "clear", {"ns": ns}, timeout=2.0)["deleted"]}


# ---- UnifiedMemoryReasoningAgent -------------------------------------------------------------------------
Fact = tuple[str, str, str]
DEFAULT_RULES = {
    "transitive": ["is_a", "part_of", "located_in", "ancestor_of", "before"],
    "symmetric": ["sibling_of", "married_to", "near", "same_as"],
    "inverse": {"parent_of": "child_of", "contains": "located_in", "teaches": "taught_by"},
    "inherit": ["has", "can", "needs"],  # x is_a y, y has z  =>  x has z
}


def _norm(term: str) -> str:
    return "_".join(term.lower().split())


def closure(facts: set[Fact], rules: dict, limit: int = 20_000) -> dict[Fact, tuple]:
    """Every fact that follows from `facts` by the rules, each with how: ("asserted",) or (rule, premises...)."""
    transitive, symmetric = set(rules["transitive"]), set(rules["symmetric"])
    inverse = dict(rules["inverse"])
    inverse.update({v: k for k, v in rules["inverse"].items()})
    inherit = set(rules["inherit"])
    known: dict[Fact, tuple] = {f: ("asserted",) for f in sorted(facts)}
    frontier = sorted(known)
    while frontier:
        by_subject: dict[tuple[str, str], list[str]] = {}
        for s, r, o in sorted(known):
            by_subject.setdefault((r, s), []).append(o)
        new: dict[Fact, tuple] = {}

        def add(f: Fact, how: tuple) -> None:
            if f not in known and f not in new and f[0] != f[2]:
                new[f] = how

        for f in frontier:
            s, r, o = f
            if r in symmetric:
                add((o, r, s), ("symmetric", f))
            if r in inverse:
                add((o, inverse[r], s), ("inverse", f))
            if r in transitive:
                for o2 in by_subject.get((r, o), ()):
                    add((s, r, o2), ("transitive", f, (o, r, o2)))
                for (r0, s0), objs in by_subject.items():
                    if r0 == r and s in objs:
                        add((s0, r, o), ("transitive", (s0, r, s), f))
            if r == "is_a":
                for rel in sorted(inherit):
                    for z in by_subject.get((rel, o), ()):
                        add((s, rel, z), ("inherit", f, (o, rel, z)))
            if r in inherit:
                for (r0, s0), objs in sorted(by_subject.items()):
                    if r0 == "is_a" and s in objs:
                        add((s0, r, o), ("inherit", (s0, "is_a", s), f))
        known.update(new)
        if len(known) > limit:
            raise BadRequest(f"more than {limit} facts follow: the rules run away")
        frontier = sorted(new)
    return known


def proof(fact: Fact, known: dict[Fact, tuple]) -> list[str]:
    """The steps that lead to a fact, premises first, each once."""
    steps: list[str] = []
    seen: set[Fact] = set()

    def walk(f: Fact) -> None:
        if f in seen:
            return
        seen.add(f)
        how = known[f]
        for premise in how[1:]:
            walk(premise)
        steps.append(f"{' '.join(f)} ({how[0]})")

    walk(fact)
    return steps


class UnifiedMemoryReasoningAgent(EdgeAgent):
    """Memory plus reasoning context: facts kept in MemoryOrchestratorService, conclusions drawn from them.

    Real: subject-relation-object facts are stored in MemoryOrchestratorService (namespace `umra:facts`,
    reloaded at setup, so a restart forgets nothing); forward chaining to a fixpoint over transitive,
    symmetric, inverse and inheritance rules (`config.rules`) answers `ask` with a proof (the chain of
    asserted facts and rules), and `context` gives everything known about an entity, asserted or derived.
    Stands in: symbolic rules stand in for a reasoning model; `weights_mb` of held memory for its weights.
    """

    CAPABILITIES = ("memory.reasoning", "memory.facts")
    NS = "umra:facts"

    def setup(self) -> None:
        rules = self.config.get("rules") or {}
        self.rules = {k: rules.get(k, v) for k, v in DEFAULT_RULES.items()}
        self.facts: set[Fact] = set()
        for item in self.call(MOS, "list", {"ns": self.NS}, timeout=5.0)["items"]:
            self.facts.add(tuple(item["value"]))
        self._known: dict[Fact, tuple] | None = None
        self.hold_weights()
        super().setup()

    def _fact(self, body: Any) -> Fact:
        f = (_norm(field(body, "subject", str)), _norm(field(body, "relation", str)), _norm(field(body, "object", str)))
        if not all(f):
            raise BadRequest("subject, relation and object must not be empty")
        return f

    def known(self) -> dict[Fact, tuple]:
        if self._known is None:
            self._known = closure(self.facts, self.rules)
        return self._known

    def handle_assert(self, body: Any) -> dict:
        """{subject, relation, object}: remember a fact (in MemoryOrchestratorService)."""
        f = self._fact(body)
        new = f not in self.facts
        if new:
            self.call(MOS, "put", {"ns": self.NS, "key": "|".join(f), "value": list(f)}, timeout=2.0)
            self.facts.add(f)
            self._known = None
            self.counters["asserted"] += 1
        return {"fact": list(f), "new": new, "facts": len(self.facts)}

    def handle_retract(self, body: Any) -> dict:
        f = self._fact(body)
        if f not in self.facts:
            return {"fact": list(f), "retracted": False}
        self.call(MOS, "delete", {"ns": self.NS, "key": "|".join(f)}, timeout=2.0)
        self.facts.discard(f)
        self._known = None
        return {"fact": list(f), "retracted": True, "facts": len(self.facts)}

    def handle_ask(self, body: Any) -> dict:
        """{subject, relation, object?}: with an object, whether it holds and why; without, every object."""
        s, r = _norm(field(body, "subject", str)), _norm(field(body, "relation", str))
        known = self.known()
        self.counters["questions"] += 1
        if field(body, "object", str, None) is not None:
            f = (s, r, _norm(body["object"]))
            holds = f in known
            return {"fact": list(f), "holds": holds, "derived": holds and known[f][0] != "asserted",
                    "proof": proof(f, known) if holds else []}
        objects = sorted(o for (s2, r2, o) in known if s2 == s and r2 == r)
        return {"subject": s, "relation": r, "objects": objects}

    def handle_context(self, body: Any) -> dict:
        """{entity} -> every fact about it, asserted or derived, as subject or object."""
        e = _norm(field(body, "entity", str))
        known = self.known()
        about = sorted(f for f in known if e in (f[0], f[2]))
        return {"entity": e, "facts": [{"fact": list(f), "how": known[f][0]} for f in about],
                "asserted": sum(1 for f in about if known[f][0] == "asserted"), "derived":
                sum(1 for f in about if known[f][0] != "asserted")}

    def handle_facts(self, body: Any) -> dict:
        return {"asserted": [list(f) for f in sorted(self.facts)], "known": len(self.known()), "rules": self.rules}


# ---- TaskScheduler ---------------------------------------------------------------------------------------
def dag_levels(tasks: list[dict]) -> list[list[str]]:
    """Kahn's algorithm by levels: each level's tasks depend only on earlier levels; BadRequest on a cycle."""
    names = [t["name"] for t in tasks]
    if len(set(names)) != len(names):
        raise BadRequest("task names must be unique")
    after = {t["name"]: list(t.get("after") or []) for t in tasks}
    for n, deps in after.items():
        unknown = [d for d in deps if d not in after]
        if unknown:
            raise BadRequest(f"task {n!r} runs after unknown tasks {unknown}")
    levels, done = [], set()
    while len(done) < len(names):
        level = [n for n in names if n not in done and all(d in done for d in after[n])]
        if not level:
            raise BadRequest(f"dependency cycle among {sorted(set(names) - done)}")
        levels.append(level)
        done.update(level)
    return levels


def _substitute(args: Any, results: dict[str, Any]) -> Any:
    """'$name' in a task's args (whole, or as an item of a list) becomes that earlier task's result."""
    if isinstance(args, str) and args.startswith("$") and args[1:] in results:
        return results[args[1:]]
    if isinstance(args, list):
        out = []
        for a in args:
            v = _substitute(a, results)
            out.extend(v if isinstance(a, str) and a.startswith("$") and isinstance(v, list) else [v])
        return out
    return args


class TaskScheduler(EdgeAgent):
    """Schedules tasks onto AsyncProcessor: at a time, periodically, or as a dependency graph.

    Real: `schedule` keeps one-shot (`at`, `in_s`) and periodic (`every`) entries on a clock: the
    request's `now` (a logical clock: such entries fire only on `tick {now}`) or the host's monotonic
    clock (fired by `tick` without `now`, and by a background tick every `tick_s` when set); `tick`
    submits what is due to AsyncProcessor (a periodic entry that missed runs fires once and counts them
    skipped); `run_dag` submits a graph of tasks level by level (Kahn's order), each level's results
    feeding the next through `$name` arguments. Stands in: nothing.
    """

    CAPABILITIES = ("tasks.schedule", "tasks.dag")

    def setup(self) -> None:
        self.entries: dict[str, dict] = {}
        self.lock = threading.RLock()
        self.tick_s = float(self.config.get("tick_s", 0))
        self.stopping = threading.Event()
        super().setup()
        if self.tick_s > 0:
            threading.Thread(target=self._ticker, name="ticker", daemon=True).start()

    def teardown(self) -> None:
        self.stopping.set()

    def _ticker(self) -> None:
        while not self.stopping.wait(self.tick_s):
            try:
                self._tick(None)
            except (RemoteError, BadRequest) as exc:
                self.counters["tick_failures"] += 1
                self.log(f"background tick failed: {exc}")

    def _submit(self, task: dict) -> dict:
        return self.call(PROCESSOR, "submit", task, timeout=2.0)

    def handle_schedule(self, body: Any) -> dict:
        """{name, task: {kind, args, ...}, at? | in_s?, every?, now?}: a one-shot or periodic entry."""
        name = field(body, "name", str)
        task = check_task(field(body, "task", dict))
        now = field(body, "now", float, None)
        clock = "monotonic" if now is None else "logical"
        now = time.monotonic() if now is None else now
        at, every = field(body, "at", float, None), field(body, "every", float, None)
        if every is not None and every <= 0:
            raise BadRequest("every must be positive")
        first = at if at is not None else now + field(body, "in_s", float, 0.0)
        with self.lock:
            self.entries[name] = {"task": {k: v for k, v in task.items()}, "next": first, "every": every,
                                  "clock": clock, "runs": 0, "skipped": 0, "last_id": None}
        return {"name": name, "next": first, "every": every, "clock": clock}

    def handle_unschedule(self, body: Any) -> dict:
        name = field(body, "name", str)
        with self.lock:
            return {"name": name, "removed": self.entries.pop(name, None) is not None}

    def _tick(self, now: float | None) -> list[dict]:
        clock = "monotonic" if now is None else "logical"
        now = time.monotonic() if now is None else now
        fired = []
        with self.lock:
            due = sorted((e["next"], n) for n, e in self.entries.items() if e["clock"] == clock and e["next"] <= now)
            for _, name in due:
                e = self.entries[name]
                reply = self._submit(e["task"])
                e["runs"] += 1
                e["last_id"] = reply["id"]
                fired.append({"name": name, "id": reply["id"], "due": e["next"]})
                if e["every"] is None:
                    del self.entries[name]
                else:
                    missed = int((now - e["next"]) // e["every"])
                    e["skipped"] += missed
                    e["next"] += (missed + 1) * e["every"]
            self.counters["fired"] += len(fired)
        return fired

    def handle_tick(self, body: Any) -> dict:
        """{now?}: submit what is due at `now` (logical entries) or now on the monotonic clock."""
        now = field(body, "now", float, None) if isinstance(body, dict) else None
        return {"fired": self._tick(now)}

    def handle_entries(self, body: Any) -> dict:
        with self.lock:
            return {n: {"kind": e["task"]["kind"], **{k: e[k] for k in ("next", "every", "clock", "runs", "skipped",
                                                                        "last_id")}}
                    for n, e in sorted(self.entries.items())}

    def handle_submit(self, body: Any) -> dict:
        """{kind, args, priority?, cpu?, mb?}: straight onto AsyncProcessor's queue."""
        return self._submit(check_task(body))

    def handle_result(self, body: Any) -> dict:
        """{id, wait_s?}: a task's state and result, from AsyncProcessor."""
        wait = min(field(body, "wait_s", float, 0.0), 20.0)
        return self.call(PROCESSOR, "result", {"id": field(body, "id", str), "wait_s": wait}, timeout=wait + 3.0)

    def handle_run_dag(self, body: Any) -> dict:
        """{tasks: [{name, kind, args, after?, priority?, cpu?, mb?}], wait_s?}: run the graph to its end."""
        tasks = field(body, "tasks", list)
        if not tasks or not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in tasks):
            raise BadRequest("tasks must be a non-empty list of {name, kind, args, after?}")
        for t in tasks:
            check_task(t)
        by_name = {t["name"]: t for t in tasks}
        levels = dag_levels(tasks)
        deadline = time.monotonic() + min(field(body, "wait_s", float, 10.0), 30.0)
        results: dict[str, Any] = {}
        for level in levels:
            ids = {}
            for name in level:
                task = check_task({**by_name[name], "args": _substitute(by_name[name].get("args"), results)})
                ids[name] = self._submit(task)["id"]
            for name, tid in ids.items():
                wait = max(0.0, deadline - time.monotonic())
                r = self.call(PROCESSOR, "result", {"id": tid, "wait_s": wait}, timeout=wait + 3.0)
                if r["state"] != "done":
                    raise AgentError(f"task {name!r} ({tid}) ended {r['state']}: "
                                     f"{r.get('error') or 'no result in time'}")
                results[name] = r["result"]
        self.counters["dags"] += 1
        return {"levels": levels, "results": results}


# ---- TieredResponder -------------------------------------------------------------------------------------
_GREETINGS = {"hello": "Hello!", "hi": "Hi!", "hey": "Hey!", "thanks": "You're welcome.", "thank": "You're welcome.",
              "bye": "Goodbye!", "goodbye": "Goodbye!", "morning": "Good morning!", "evening": "Good evening!"}
_ARITH = re.compile(r"^[\d\s.+\-*/%()]+$")
_PRIMES = re.compile(r"\bprimes?\b.*?(?:up to|below|under|to|<=?)\s*(\d+)")
_FIB = re.compile(r"\bfib(?:onacci)?\b\D*(\d+)")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def safe_arithmetic(expr: str) -> float | int:
    """Evaluate + - * / // % ** and parentheses over numbers (ast, no names, no calls; bounded powers)."""
    import ast
    import operator as op

    ops = {ast.Add: op.add, ast.Sub: op.sub, ast.Mult: op.mul, ast.Div: op.truediv, ast.FloorDiv: op.floordiv,
           ast.Mod: op.mod, ast.Pow: op.pow, ast.USub: op.neg, ast.UAdd: op.pos}

    def ev(node: ast.AST) -> float | int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 10 ** 6):
                raise BadRequest("power too large")
            return ops[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in ops:
            return ops[type(node.op)](ev(node.operand))
        raise BadRequest("not plain arithmetic")

    try:
        return ev(ast.parse(expr.strip(), mode="eval"))
    except (SyntaxError, ZeroDivisionError, OverflowError) as exc:
        raise BadRequest(f"cannot evaluate {expr!r}: {exc}") from None


def summarize(text: str) -> str:
    """Extractive: the sentence whose content words are most frequent in the whole text (first on ties)."""
    sentences = [s for s in _SENTENCE.split(text.strip()) if s]
    freq = Counter(terms(text))
    return max(sentences, key=lambda s: (sum(freq[t] for t in set(terms(s))), -sentences.index(s)))


class TieredResponder(EdgeAgent):
    """Answers in fast, medium or slow tiers by what a request costs, and what resources are free.

    Real: rule-based tiering of a request's text: fast (greetings; arithmetic, evaluated safely) answered
    at once; medium (extractive summaries, word counts, small prime counts and Fibonacci numbers)
    computed here; slow (large computations) scheduled through TaskScheduler onto AsyncProcessor, answered
    with a ticket that `poll` redeems. A medium request is moved to the slow tier when ResourceManager has no
    free CPU slot. Stands in: the rules stand in for a small/large model cascade; `weights_mb` of held
    memory for the fast tier's model.
    """

    CAPABILITIES = ("respond.tiered",)

    def setup(self) -> None:
        self.medium_primes = int(self.config.get("medium_max_primes", 100_000))
        self.medium_fib = int(self.config.get("medium_max_fib", 300))
        self.hold_weights()
        super().setup()

    def _plan(self, text: str) -> tuple[str, dict | None, Any]:
        """(tier, task for the slow tier or None, the answer when known now)."""
        low = text.lower().strip()
        words = re.findall(r"[a-z']+", low)
        expr = low.rstrip("?= ").removeprefix("what is").removeprefix("compute").removeprefix("calculate").strip()
        if expr and _ARITH.match(expr) and any(c.isdigit() for c in expr):
            return "fast", None, safe_arithmetic(expr)
        greeting = [_GREETINGS[w] for w in words if w in _GREETINGS]
        if greeting and len(words) <= 4 and (words[0] in _GREETINGS or words[0] == "good"):
            return "fast", None, greeting[0]
        if m := _PRIMES.search(low):
            n = int(m.group(1))
            task = {"kind": "primes", "args": n}
            return ("medium", task, None) if n <= self.medium_primes else ("slow", task, None)
        if m := _FIB.search(low):
            n = int(m.group(1))
            task = {"kind": "fib", "args": n}
            return ("medium", task, None) if n <= self.medium_fib else ("slow", task, None)
        if low.startswith(("summarize", "summarise", "tl;dr")):
            body = text.split(":", 1)[1] if ":" in text else text.split(None, 1)[-1]
            return "medium", None, summarize(body)
        if low.startswith(("count words", "word count")):
            body = text.split(":", 1)[1] if ":" in text else ""
            return "medium", None, _wordcount(body)
        return "fast", None, None

    def handle_respond(self, body: Any) -> dict:
        """{text} -> {tier, answer} now, or {tier: slow, ticket} to `poll` later."""
        text = body if isinstance(body, str) else field(body, "text", str)
        started = time.perf_counter()
        tier, task, answer = self._plan(text)
        out: dict[str, Any] = {"text": text}
        if tier == "medium" and task is not None:
            free = self.call(RESOURCES, "status", timeout=2.0)["free"]
            if free["cpu"] <= 0:
                tier = "slow"
                out["downgraded"] = "no free CPU slot at ResourceManager"
            else:
                answer = TASK_KINDS[task["kind"]](task["args"])
        if isinstance(answer, int) and not isinstance(answer, bool) and abs(answer) >= 1 << 63:
            answer = str(answer)  # beyond what msgpack carries as an integer
        if tier == "slow":
            reply = self.call(SCHEDULER, "submit", task, timeout=2.0)
            out.update(tier="slow", ticket=reply["id"], answer=None)
        else:
            out.update(tier=tier, answer=answer)
            if answer is None:
                out["reason"] = "no rule for this request"
        self.counters[f"tier.{out['tier']}"] += 1
        out["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 2)
        return out

    def handle_poll(self, body: Any) -> dict:
        """{ticket, wait_s?} -> {ready, answer} for a slow-tier request (through TaskScheduler)."""
        wait = min(field(body, "wait_s", float, 0.0), 20.0)
        r = self.call(SCHEDULER, "result", {"id": field(body, "ticket", str), "wait_s": wait}, timeout=wait + 4.0)
        return {"ticket": r["id"], "ready": r["state"] in ("done", "failed", "cancelled"), "state": r["state"],
                "answer": r["result"], "error": r["error"]}

    def handle_tiers(self, body: Any) -> dict:
        return {t: self.counters[f"tier.{t}"] for t in ("fast", "medium", "slow")}
