"""Reference agents of the pc2 infrastructure group: CacheManager, AdvancedRouter, RemoteConnectorAgent.

CacheManager is the PC2 side's shared cache (VisionProcessingAgent keeps its results there); AdvancedRouter
classifies tasks by type and routes the computational ones onto TaskScheduler; RemoteConnectorAgent is the
link to a remote peer, with idempotent sends, retries and a circuit breaker, whose only peer here is the
local AdvancedRouter.
"""
from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from typing import Any

import msgpack
from sunsetd.agent import AgentError, BadRequest, RemoteError

from agents.infrastructure import field
from agents.pc2_core import MOS, SCHEDULER, TASK_KINDS, EdgeAgent

ROUTER = "AdvancedRouter"


def _clock(body: Any) -> float:
    """The request's `now` (a logical clock a caller drives, deterministic), else the monotonic clock."""
    now = field(body, "now", float, None) if isinstance(body, dict) else None
    return time.monotonic() if now is None else float(now)


# ---- CacheManager ----------------------------------------------------------------------------------------
class CacheManager(EdgeAgent):
    """A shared key-value cache: least recently used eviction within a byte bound, expiry, write-through.

    Real: entries per (namespace, key) in an LRU order bounded by `max_entries` and `max_mb` (sizes are
    the values' msgpack encodings), each with an optional TTL on the writer's clock (the request's `now`,
    else monotonic); hits, misses, evictions and expiries are counted and pushed to ObservabilityHub_PC2;
    namespaces in `config.persist_namespaces` are written through to MemoryOrchestratorService (namespace
    `cache:<ns>`) and read back from it on a miss, so they survive a restart of this agent. Stands in:
    nothing.
    """

    CAPABILITIES = ("cache.kv", "cache.lru")

    def setup(self) -> None:
        self.max_entries = int(self.config.get("max_entries", 10_000))
        self.max_bytes = int(float(self.config.get("max_mb", 16)) * 1048576)
        self.persist = set(self.config.get("persist_namespaces") or ())
        self.entries: OrderedDict[tuple[str, str], dict] = OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()
        super().setup()

    def _drop(self, k: tuple[str, str]) -> None:
        self.bytes -= self.entries.pop(k)["size"]

    def _store(self, ns: str, key: str, value: Any, expires: float | None) -> list[str]:
        size = len(msgpack.packb(value, use_bin_type=True))
        if size > self.max_bytes:
            raise BadRequest(f"a value of {size} bytes is over the cache's {self.max_bytes} bytes")
        evicted = []
        with self.lock:
            if (ns, key) in self.entries:
                self._drop((ns, key))
            while self.entries and (len(self.entries) >= self.max_entries or self.bytes + size > self.max_bytes):
                old = next(iter(self.entries))
                self._drop(old)
                evicted.append(f"{old[0]}/{old[1]}")
            self.entries[(ns, key)] = {"value": value, "size": size, "expires": expires}
            self.bytes += size
        self.counters["evictions"] += len(evicted)
        return evicted

    def handle_put(self, body: Any) -> dict:
        """{ns, key, value, ttl_s?, now?}: cache a value (evicting least recently used entries to fit)."""
        ns, key = field(body, "ns", str), field(body, "key", str)
        if "value" not in body:
            raise BadRequest("missing field 'value'")
        ttl = field(body, "ttl_s", float, None)
        expires = None if ttl is None else _clock(body) + ttl
        evicted = self._store(ns, key, body["value"], expires)
        if ns in self.persist:
            self.call(MOS, "put", {"ns": f"cache:{ns}", "key": key,
                                   "value": {"value": body["value"], "expires": expires}}, timeout=2.0)
        self.counters["puts"] += 1
        return {"ns": ns, "key": key, "evicted": evicted, "entries": len(self.entries), "bytes": self.bytes,
                "persisted": ns in self.persist}

    def handle_get(self, body: Any) -> dict:
        """{ns, key, now?} -> {hit, value, source: memory | store}."""
        ns, key = field(body, "ns", str), field(body, "key", str)
        now = _clock(body)
        with self.lock:
            e = self.entries.get((ns, key))
            if e is not None and e["expires"] is not None and e["expires"] <= now:
                self._drop((ns, key))
                self.counters["expired"] += 1
                e = None
            if e is not None:
                self.entries.move_to_end((ns, key))
                self.counters["hits"] += 1
                return {"hit": True, "value": e["value"], "source": "memory"}
        if ns in self.persist:
            stored = self.call(MOS, "get", {"ns": f"cache:{ns}", "key": key}, timeout=2.0)
            if stored["found"] and (stored["value"]["expires"] is None or stored["value"]["expires"] > now):
                self._store(ns, key, stored["value"]["value"], stored["value"]["expires"])
                self.counters["hits"] += 1
                self.counters["store_hits"] += 1
                return {"hit": True, "value": stored["value"]["value"], "source": "store"}
        self.counters["misses"] += 1
        return {"hit": False, "value": None, "source": None}

    def handle_delete(self, body: Any) -> dict:
        ns, key = field(body, "ns", str), field(body, "key", str)
        with self.lock:
            found = (ns, key) in self.entries
            if found:
                self._drop((ns, key))
        if ns in self.persist:
            found = self.call(MOS, "delete", {"ns": f"cache:{ns}", "key": key}, timeout=2.0)["deleted"] or found
        return {"ns": ns, "key": key, "deleted": found}

    def handle_clear(self, body: Any) -> dict:
        ns = field(body, "ns", str)
        with self.lock:
            gone = [k for k in self.entries if k[0] == ns]
            for k in gone:
                self._drop(k)
        if ns in self.persist:
            self.call(MOS, "clear", {"ns": f"cache:{ns}"}, timeout=2.0)
        return {"ns": ns, "deleted": len(gone)}

    def handle_status(self, body: Any) -> dict:
        """Entries, bytes, the bound, hit rate; the figures are pushed to ObservabilityHub_PC2."""
        c = self.counters
        lookups = c["hits"] + c["misses"]
        with self.lock:
            namespaces: dict[str, int] = {}
            for ns, _ in self.entries:
                namespaces[ns] = namespaces.get(ns, 0) + 1
            out = {"entries": len(self.entries), "bytes": self.bytes, "max_bytes": self.max_bytes,
                   "max_entries": self.max_entries, "namespaces": dict(sorted(namespaces.items())),
                   "hits": c["hits"], "misses": c["misses"], "evictions": c["evictions"], "expired": c["expired"],
                   "hit_rate": round(c["hits"] / lookups, 4) if lookups else 0.0,
                   "persist_namespaces": sorted(self.persist)}
        self.report({k: out[k] for k in ("entries", "bytes", "hits", "misses", "evictions", "hit_rate")})
        return out


# ---- AdvancedRouter --------------------------------------------------------------------------------------
TASK_TYPES: dict[str, dict[str, float]] = {
    "compute": {"compute": 3, "calculate": 3, "sum": 2, "sort": 2, "primes": 3, "prime": 3, "fibonacci": 3,
                "mean": 2, "average": 2, "count": 1, "numbers": 1},
    "schedule": {"schedule": 3, "every": 2, "remind": 3, "later": 1, "tomorrow": 2, "daily": 2, "hourly": 2},
    "vision": {"image": 3, "photo": 3, "picture": 3, "face": 3, "edges": 2, "camera": 2},
    "memory": {"remember": 3, "recall": 3, "forget": 2, "fact": 2, "facts": 2, "know": 1},
    "web": {"fetch": 3, "download": 3, "url": 3, "website": 3, "page": 1, "http": 2},
    "files": {"file": 3, "files": 3, "folder": 3, "directory": 3, "save": 1, "read": 1},
    "code": {"code": 3, "function": 2, "python": 3, "script": 2, "bug": 2, "compile": 2},
    "chat": {"hello": 2, "hi": 2, "thanks": 2, "how": 1, "you": 1, "chat": 2},
}
# Where each type goes. Only `compute` is forwarded (TaskScheduler is our dependency); the others name the
# agent for the caller, since calling them would go up or across the dependency graph.
TYPE_AGENTS = {"compute": SCHEDULER, "schedule": SCHEDULER, "vision": "VisionProcessingAgent",
               "memory": "UnifiedMemoryReasoningAgent", "web": "UnifiedWebAgent", "files": "FileSystemAssistantAgent",
               "code": "CodeGenerator", "chat": "TieredResponder"}
PAYLOAD_HINTS = {"image": "vision", "url": "web", "path": "files", "kind": "compute", "every": "schedule",
                 "code": "code"}
_WORDS = re.compile(r"[a-z0-9]+")
_INTS = re.compile(r"-?\d+")


def classify_task(text: str, payload: dict | None = None) -> dict:
    """Task type by weighted keywords, with a payload's fields as strong hints; ties go to the type listed first."""
    words = _WORDS.findall(text.lower())
    scores = {t: float(sum(kws.get(w, 0) for w in words)) for t, kws in TASK_TYPES.items()}
    for key, t in PAYLOAD_HINTS.items():
        if payload and key in payload:
            scores[t] += 5
    best = max(scores, key=lambda t: (scores[t], -list(TASK_TYPES).index(t)))
    total = sum(scores.values())
    if scores[best] == 0:
        return {"type": "chat", "confidence": 0.0, "scores": {}}
    return {"type": best, "confidence": round(scores[best] / total, 2),
            "scores": {t: s for t, s in scores.items() if s}}


def task_from_text(text: str) -> dict | None:
    """A computational task spelled in words: 'primes up to 1000', 'sum 1 2 3', 'sort 3 1 2', 'fibonacci 50'."""
    low = text.lower()
    numbers = [int(n) for n in _INTS.findall(low)]
    for word, kind in (("prime", "primes"), ("fibonacci", "fib")):
        if word in low and numbers:
            return {"kind": kind, "args": numbers[-1]}
    for word, kind in (("sum", "sum"), ("sort", "sort"), ("mean", "mean"), ("average", "mean")):
        if re.search(rf"\b{word}\b", low) and numbers:
            return {"kind": kind, "args": numbers}
    return None


class AdvancedRouter(EdgeAgent):
    """Task-type classification and routing.

    Real: classifies a task by type (compute, schedule, vision, memory, web, files, code, chat) from
    weighted keywords and the fields of its payload, names the agent for that type, and forwards
    computational tasks onto TaskScheduler (the payload's {kind, args}, or one read from the text: "sum
    1 2 3", "primes up to 1000"), optionally waiting for the result; other types are named, not forwarded
    (their agents are not below us in the dependency graph). Stands in: keyword rules stand in for a
    task classifier model.
    """

    CAPABILITIES = ("routing.classify", "routing.tasks")

    def setup(self) -> None:
        self.agents = {**TYPE_AGENTS, **(self.config.get("agents") or {})}
        super().setup()

    def handle_classify(self, body: Any) -> dict:
        """{text, payload?} -> type, confidence, scores and the agent for it."""
        text = body if isinstance(body, str) else field(body, "text", str)
        payload = field(body, "payload", dict, None) if isinstance(body, dict) else None
        c = classify_task(text, payload)
        c["agent"] = self.agents.get(c["type"])
        self.counters[f"type.{c['type']}"] += 1
        return c

    def handle_route(self, body: Any) -> dict:
        """{text, payload?, wait_s?}: classify; a compute task goes to TaskScheduler (with wait_s, its result
        comes back)."""
        c = self.handle_classify(body)
        payload = field(body, "payload", dict, None) if isinstance(body, dict) else None
        if c["type"] != "compute":
            return {**c, "forwarded": False, "reason": f"{c['type']} tasks go to {c['agent']}"}
        task = {k: payload[k] for k in ("kind", "args", "priority", "cpu", "mb") if k in payload} if payload and \
            "kind" in payload else task_from_text(body if isinstance(body, str) else body["text"])
        if task is None or task.get("kind") not in TASK_KINDS:
            raise BadRequest("a compute task needs payload {kind, args} or words like 'sum 1 2 3'")
        submitted = self.call(SCHEDULER, "submit", task, timeout=2.0)
        out = {**c, "forwarded": True, "task": task, "ticket": submitted["id"]}
        wait = field(body, "wait_s", float, 0.0) if isinstance(body, dict) else 0.0
        if wait > 0:
            r = self.call(SCHEDULER, "result", {"id": submitted["id"], "wait_s": min(wait, 20.0)}, timeout=wait + 4.0)
            out.update(state=r["state"], result=r["result"], error=r["error"])
        self.counters["forwarded"] += 1
        return out


# ---- RemoteConnectorAgent --------------------------------------------------------------------------------
_TRANSPORT_FAILURES = {"timeout", "unavailable", "agent_crashed", "overloaded", "unknown_agent", "shutting_down"}


class RemoteConnectorAgent(EdgeAgent):
    """The link to remote peers: idempotent sends, bounded retries, and a circuit breaker per remote.

    Real: each remote (`config.remotes`: {name: {agent, max_failures, cooldown_s, retries}}) has a
    sequence of envelopes and a breaker: consecutive transport failures (timeout, unavailable, crashed,
    overloaded) open it for `cooldown_s` on the caller's clock (`now`, else monotonic), during which sends
    fail at once; after it one trial send is let through (half-open) and its outcome closes or re-opens
    it. A send carrying an idempotency `key` already delivered gets the stored reply, not a second
    delivery. Answers from the peer, even errors, count as a working link. Stands in: there is no network;
    the only peer is AdvancedRouter, reached through sunsetd as if it were the remote machine's router.
    """

    CAPABILITIES = ("remote.connect", "remote.send")

    def setup(self) -> None:
        remotes = self.config.get("remotes") or {"pc2": {"agent": ROUTER}}
        self.remotes: dict[str, dict] = {}
        for name, spec in sorted(remotes.items()):
            if spec.get("agent", ROUTER) != ROUTER:
                raise ValueError(f"remote {name}: the only reachable peer is {ROUTER} (a dependency)")
            self.remotes[name] = {"agent": ROUTER, "max_failures": int(spec.get("max_failures", 3)),
                                  "cooldown_s": float(spec.get("cooldown_s", 30)),
                                  "retries": int(spec.get("retries", 1)), "state": "closed", "failures": 0,
                                  "open_until": None, "seq": 0, "sent": 0, "failed": 0, "short_circuited": 0}
        self.delivered: OrderedDict[str, dict] = OrderedDict()
        self.max_keys = int(self.config.get("max_keys", 1024))
        super().setup()

    def _remote(self, body: Any) -> tuple[str, dict]:
        name = field(body, "remote", str, next(iter(self.remotes)))
        r = self.remotes.get(name)
        if r is None:
            raise BadRequest(f"no remote {name!r} (remotes: {', '.join(self.remotes)})")
        return name, r

    def _admit(self, r: dict, now: float) -> bool:
        if r["state"] == "open":
            if now < r["open_until"]:
                return False
            r["state"] = "half-open"
        return True

    def _failed(self, name: str, r: dict, now: float, why: str) -> None:
        r["failures"] += 1
        r["failed"] += 1
        if r["state"] == "half-open" or r["failures"] >= r["max_failures"]:
            r["state"], r["open_until"] = "open", now + r["cooldown_s"]
            self.event(f"circuit to {name} open until {r['open_until']:g}: {why}", "warning")

    def handle_send(self, body: Any) -> dict:
        """{remote?, text, payload?, wait_s?, key?, timeout_s?, now?}: deliver a task to the remote's router."""
        name, r = self._remote(body)
        key = field(body, "key", str, None)
        if key is not None and key in self.delivered:
            self.counters["duplicates"] += 1
            return {**self.delivered[key], "duplicate": True}
        now = _clock(body)
        if not self._admit(r, now):
            r["short_circuited"] += 1
            raise AgentError(f"circuit to {name} is open until {r['open_until']:g} (now {now:g})", code="unavailable")
        r["seq"] += 1
        envelope = {"text": field(body, "text", str)}
        for k in ("payload", "wait_s"):
            if isinstance(body, dict) and body.get(k) is not None:
                envelope[k] = body[k]
        timeout = field(body, "timeout_s", float, 5.0)
        attempts, last = 0, None
        for _ in range(1 + (r["retries"] if r["state"] == "closed" else 0)):
            attempts += 1
            try:
                reply = self.call(r["agent"], "route", envelope, timeout=timeout)
            except RemoteError as exc:
                if exc.code not in _TRANSPORT_FAILURES:  # the peer answered: the link works
                    r["failures"], r["state"] = 0, "closed"
                    raise AgentError(f"{name} refused: {exc.message}", code=exc.code) from None
                last = exc
                continue
            r["failures"], r["state"], r["open_until"] = 0, "closed", None
            r["sent"] += 1
            out = {"remote": name, "seq": r["seq"], "attempts": attempts, "reply": reply, "duplicate": False}
            if key is not None:
                self.delivered[key] = out
                while len(self.delivered) > self.max_keys:
                    self.delivered.popitem(last=False)
            return out
        self._failed(name, r, now, str(last))
        raise AgentError(f"{name}: {last} after {attempts} attempts", code="unavailable")

    def handle_remotes(self, body: Any) -> dict:
        """Each remote's breaker: state, consecutive failures, open_until, and its counts."""
        return {n: {k: r[k] for k in ("agent", "state", "failures", "open_until", "max_failures", "cooldown_s",
                                      "seq", "sent", "failed", "short_circuited")} for n, r in self.remotes.items()}

    def handle_reset(self, body: Any) -> dict:
        """{remote?}: close the breaker by hand (after a repair)."""
        name, r = self._remote(body)
        r.update(state="closed", failures=0, open_until=None)
        return {"remote": name, "state": "closed"}
