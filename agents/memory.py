"""Reference agents of the memory group: MemoryClient, KnowledgeBase, SessionMemoryAgent.

MemoryClient owns the store (SQLite); KnowledgeBase and SessionMemoryAgent keep their data in it
through sunsetd, so a restart of either loses nothing.
"""
from __future__ import annotations

import math
import re
import threading
from collections import Counter
from typing import Any

import msgpack
from sunsetd.agent import BadRequest

from agents.infrastructure import TWIN, CatalogAgent, field

MEMORY = "MemoryClient"
RC = "RequestCoordinator"

STOPWORDS = frozenset("""a an and are as at be been by can do does for from has have how i in is it its me my
of on or our so that the their then there these this to was we were what when where which who why will
with you your""".split())
_WORD = re.compile(r"[a-z0-9]+")


def stem(word: str) -> str:
    """A light suffix stripper: enough for 'agents'/'agent' and 'restarted'/'restart' to meet."""
    if word.endswith(("ss", "is", "us")):  # class, analysis, status: not plurals
        return word
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def terms(text: str) -> list[str]:
    return [stem(w) for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def _searchable(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return " ".join(_searchable(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return " ".join(_searchable(v) for v in value)
    return ""


# ---- MemoryClient ----------------------------------------------------------------------------------------
class MemoryClient(CatalogAgent):
    """API over the memory store: namespaced keys and values, ordered appends, text search.

    Real: an SQLite database (`config.database`, `:memory:` by default) holding msgpack values per
    (namespace, key), with prefix listing, ordered appends, word search over the values' text and usage
    figures whose growth SystemDigitalTwin forecasts. An in-memory store is emptied by a restart of this
    agent; a file path keeps it. Stands in: nothing. In the full profile the store belongs to
    MemoryOrchestratorService; in core this agent keeps it itself.
    """

    CAPABILITIES = ("memory.store", "memory.search")

    def setup(self) -> None:
        import sqlite3  # here, so that KnowledgeBase and SessionMemoryAgent do not load it (start time, RSS)

        self.lock = threading.Lock()  # setup and handlers run on different threads
        self.db = sqlite3.connect(self.config.get("database", ":memory:"), check_same_thread=False,
                                  isolation_level=None)
        self.db.execute("CREATE TABLE IF NOT EXISTS items (ns TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,"
                        " text TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (ns, key))")
        self.seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM items").fetchone()[0]
        super().setup()

    def teardown(self) -> None:
        self.db.close()

    def _put(self, ns: str, key: str, value: Any) -> bool:
        self.seq += 1
        blob = msgpack.packb(value, use_bin_type=True)
        created = self.db.execute("SELECT 1 FROM items WHERE ns=? AND key=?", (ns, key)).fetchone() is None
        self.db.execute("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?)",
                        (ns, key, blob, _searchable(value).lower(), self.seq))
        return created

    @staticmethod
    def _value(blob: bytes) -> Any:
        return msgpack.unpackb(blob, raw=False, strict_map_key=False)

    def handle_put(self, body: Any) -> dict:
        """{ns, key, value}: store any value; says whether the key is new."""
        ns, key = field(body, "ns", str), field(body, "key", str)
        if "value" not in body:
            raise BadRequest("missing field 'value'")
        with self.lock:
            created = self._put(ns, key, body["value"])
        return {"ns": ns, "key": key, "created": created}

    def handle_put_many(self, body: Any) -> dict:
        ns, items = field(body, "ns", str), field(body, "items", dict)
        with self.lock:
            self.db.execute("BEGIN")
            created = sum(self._put(ns, str(k), v) for k, v in items.items())
            self.db.execute("COMMIT")
        return {"ns": ns, "written": len(items), "created": created}

    def handle_get(self, body: Any) -> dict:
        ns, key = field(body, "ns", str), field(body, "key", str)
        with self.lock:
            row = self.db.execute("SELECT value FROM items WHERE ns=? AND key=?", (ns, key)).fetchone()
        return {"ns": ns, "key": key, "found": row is not None, "value": self._value(row[0]) if row else None}

    def handle_delete(self, body: Any) -> dict:
        ns, key = field(body, "ns", str), field(body, "key", str)
        with self.lock:
            n = self.db.execute("DELETE FROM items WHERE ns=? AND key=?", (ns, key)).rowcount
        return {"ns": ns, "key": key, "deleted": n > 0}

    def handle_clear(self, body: Any) -> dict:
        ns = field(body, "ns", str)
        with self.lock:
            n = self.db.execute("DELETE FROM items WHERE ns=?", (ns,)).rowcount
        return {"ns": ns, "deleted": n}

    def handle_append(self, body: Any) -> dict:
        """{ns, value}: store under the next key of the namespace (00000001, 00000002, ...)."""
        ns = field(body, "ns", str)
        if "value" not in body:
            raise BadRequest("missing field 'value'")
        with self.lock:
            last = self.db.execute("SELECT MAX(key) FROM items WHERE ns=? AND key GLOB '[0-9]*'", (ns,)).fetchone()[0]
            index = int(last) + 1 if last else 1
            key = f"{index:08d}"
            self._put(ns, key, body["value"])
        return {"ns": ns, "key": key, "index": index}

    def handle_list(self, body: Any) -> dict:
        """{ns, prefix?, limit?, last?}: items in key order; `last: n` gives the last n."""
        ns = field(body, "ns", str)
        prefix = field(body, "prefix", str, "")
        limit, last = field(body, "limit", int, None), field(body, "last", int, None)
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self.lock:
            rows = self.db.execute("SELECT key, value FROM items WHERE ns=? AND key LIKE ? ESCAPE '\\' ORDER BY key",
                                   (ns, pattern)).fetchall()
        total = len(rows)
        if last is not None:
            rows = rows[-last:] if last > 0 else []
        if limit is not None:
            rows = rows[:limit]
        return {"ns": ns, "total": total, "items": [{"key": k, "value": self._value(v)} for k, v in rows]}

    def handle_search(self, body: Any) -> dict:
        """{text, ns?, limit?}: items whose text contains every word of `text` (case-insensitive)."""
        words = _WORD.findall(field(body, "text", str).lower())
        if not words:
            raise BadRequest("text has no words to search for")
        ns, limit = field(body, "ns", str, None), field(body, "limit", int, 20)
        sql = "SELECT ns, key, value FROM items WHERE " + " AND ".join("text LIKE ?" for _ in words)
        args: list[Any] = [f"%{w}%" for w in words]
        if ns is not None:
            sql += " AND ns=?"
            args.append(ns)
        with self.lock:
            rows = self.db.execute(sql + " ORDER BY ns, key LIMIT ?", (*args, limit)).fetchall()
        return {"hits": [{"ns": n, "key": k, "value": self._value(v)} for n, k, v in rows]}

    def handle_namespaces(self, body: Any) -> dict:
        with self.lock:
            rows = self.db.execute("SELECT ns, COUNT(*) FROM items GROUP BY ns ORDER BY ns").fetchall()
        return dict(rows)

    def handle_usage(self, body: Any) -> dict:
        """{ns?}: rows and bytes held, and the next row count forecast from the past ones."""
        ns = field(body, "ns", str, None) if isinstance(body, dict) else None
        with self.lock:
            where, args = ("WHERE ns=?", (ns,)) if ns is not None else ("", ())
            rows, size = self.db.execute(f"SELECT COUNT(*), COALESCE(SUM(LENGTH(value)), 0) FROM items {where}",
                                         args).fetchone()
        forecast = self.forecast_rows(ns or "*", rows)
        self.report({"rows": rows, "bytes": size} if ns is None else {f"rows.{ns}": rows})
        return {"ns": ns, "rows": rows, "bytes": size, "rows_next": forecast["forecast"][0],
                "trend": forecast["trend"], "samples": forecast["n"]}

    def forecast_rows(self, series: str, rows: int) -> dict:
        """SystemDigitalTwin records the row count and forecasts the next one."""
        return self.call(TWIN, "observe", {"metric": f"memory.rows.{series}", "value": rows}, timeout=2.0)


# ---- KnowledgeBase ---------------------------------------------------------------------------------------
class KnowledgeBase(CatalogAgent):
    """Facts with search.

    Real: facts are kept in MemoryClient (namespace `kb`, reloaded at setup, so a restart loses none;
    `config.facts` seeds an empty store), indexed in-process with an inverted index and ranked with
    BM25 over stemmed, stop-word-free terms; `answer` is extractive: the best-ranked fact.
    Stands in: BM25 over words stands in for embeddings.
    """

    CAPABILITIES = ("knowledge.facts", "knowledge.search", "knowledge.answer")
    K1, B = 1.5, 0.75

    def setup(self) -> None:
        self.ns = self.config.get("namespace", "kb")
        self.docs: dict[str, dict] = {}
        self.df: Counter = Counter()
        stored = self.call(MEMORY, "list", {"ns": self.ns}, timeout=5.0)["items"]
        if not stored and self.config.get("facts"):
            seeds = {self._id(f): {"fact": f, "source": "config"} for f in self.config["facts"]}
            self.call(MEMORY, "put_many", {"ns": self.ns, "items": seeds}, timeout=5.0)
            stored = [{"key": k, "value": v} for k, v in seeds.items()]
        for item in stored:
            self._index(item["key"], item["value"]["fact"])
        super().setup()

    @staticmethod
    def _id(fact: str) -> str:
        import hashlib  # here: it loads OpenSSL (about 4 MB), which the other agents of this module do not need

        return hashlib.sha1(" ".join(fact.lower().split()).encode()).hexdigest()[:12]

    def _index(self, doc_id: str, fact: str) -> None:
        tf = Counter(terms(fact))
        self.docs[doc_id] = {"fact": fact, "tf": tf, "len": sum(tf.values())}
        self.df.update(tf.keys())

    def _unindex(self, doc_id: str) -> dict | None:
        doc = self.docs.pop(doc_id, None)
        if doc is not None:
            self.df.subtract(doc["tf"].keys())
        return doc

    def _rank(self, query: str, k: int) -> list[dict]:
        q = terms(query)
        n = len(self.docs)
        if not q or not n:
            return []
        avg_len = sum(d["len"] for d in self.docs.values()) / n or 1.0
        scores = []
        for doc_id, d in self.docs.items():
            score = 0.0
            for t in q:
                tf = d["tf"].get(t, 0)
                if tf:
                    idf = math.log(1 + (n - self.df[t] + 0.5) / (self.df[t] + 0.5))
                    score += idf * tf * (self.K1 + 1) / (tf + self.K1 * (1 - self.B + self.B * d["len"] / avg_len))
            if score > 0:
                scores.append((round(score, 4), doc_id))
        scores.sort(key=lambda s: (-s[0], s[1]))
        return [{"id": i, "fact": self.docs[i]["fact"], "score": s} for s, i in scores[:k]]

    def handle_add(self, body: Any) -> dict:
        """{fact, source?}: store and index a fact; the same fact twice is stored once."""
        fact = " ".join(field(body, "fact", str).split())
        if not terms(fact):
            raise BadRequest("a fact needs at least one word that is not a stop word")
        doc_id = self._id(fact)
        if doc_id in self.docs:
            return {"id": doc_id, "added": False, "facts": len(self.docs)}
        self.call(MEMORY, "put", {"ns": self.ns, "key": doc_id,
                                  "value": {"fact": fact, "source": field(body, "source", str, "user")}}, timeout=2.0)
        self._index(doc_id, fact)
        self.counters["facts_added"] += 1
        return {"id": doc_id, "added": True, "facts": len(self.docs)}

    def handle_remove(self, body: Any) -> dict:
        doc_id = field(body, "id", str)
        if self._unindex(doc_id) is None:
            return {"id": doc_id, "removed": False}
        self.call(MEMORY, "delete", {"ns": self.ns, "key": doc_id}, timeout=2.0)
        return {"id": doc_id, "removed": True, "facts": len(self.docs)}

    def handle_search(self, body: Any) -> dict:
        """{query, k?} -> facts ranked by BM25, best first."""
        query = body if isinstance(body, str) else field(body, "query", str)
        k = field(body, "k", int, 3) if isinstance(body, dict) else 3
        self.counters["searches"] += 1
        return {"query": query, "results": self._rank(query, k)}

    def handle_answer(self, body: Any) -> dict:
        """{question} -> the best-ranked fact, or answer None when no fact shares a term with it."""
        question = body if isinstance(body, str) else field(body, "question", str)
        best = self._rank(question, 1)
        if not best:
            return {"question": question, "answer": None, "id": None, "score": 0.0}
        return {"question": question, "answer": best[0]["fact"], "id": best[0]["id"], "score": best[0]["score"]}

    def handle_count(self, body: Any) -> dict:
        return {"facts": len(self.docs), "terms": sum(1 for c in self.df.values() if c > 0)}


# ---- SessionMemoryAgent ----------------------------------------------------------------------------------
class SessionMemoryAgent(CatalogAgent):
    """Conversation history and context per session.

    Real: each turn is tagged with the intent RequestCoordinator classifies for it and appended to
    MemoryClient (namespace `session:<id>`), so history survives a restart of this agent; `context`
    gives the last turns, the intents seen and the session's topics (most frequent content words).
    Stands in: the word-count topics and the one-line summary stand in for a summarizer model.
    """

    CAPABILITIES = ("memory.sessions", "memory.context")

    @staticmethod
    def _ns(body: Any) -> tuple[str, str]:
        session = field(body, "session", str)
        return session, f"session:{session}"

    def handle_add_turn(self, body: Any) -> dict:
        """{session, text, role?}: append a turn, tagged with its intent."""
        session, ns = self._ns(body)
        text, role = field(body, "text", str), field(body, "role", str, "user")
        c = self.call(RC, "classify", {"text": text}, timeout=2.0)
        turn = {"role": role, "text": text, "intent": c["intent"]}
        stored = self.call(MEMORY, "append", {"ns": ns, "value": turn}, timeout=2.0)
        self.counters["turns"] += 1
        return {"session": session, "turn": stored["index"], "intent": c["intent"], "agent": c.get("agent")}

    def handle_history(self, body: Any) -> dict:
        """{session, last?} -> turns, oldest first."""
        session, ns = self._ns(body)
        listing = self.call(MEMORY, "list", {"ns": ns, "last": field(body, "last", int, None)}, timeout=2.0)
        return {"session": session, "total": listing["total"], "turns": [i["value"] for i in listing["items"]]}

    def handle_context(self, body: Any) -> dict:
        """{session, k?} -> the last k turns, intents seen, topics and a one-line summary."""
        session, ns = self._ns(body)
        k = field(body, "k", int, 5)
        turns = [i["value"] for i in self.call(MEMORY, "list", {"ns": ns}, timeout=2.0)["items"]]
        intents = Counter(t["intent"] for t in turns if t["role"] == "user")
        words = Counter(w for t in turns if t["role"] == "user" for w in _WORD.findall(t["text"].lower())
                        if len(w) > 2 and w not in STOPWORDS)
        topics = [w for w, _ in sorted(words.items(), key=lambda wc: (-wc[1], wc[0]))[:5]]
        top_intent = min(intents, key=lambda i: (-intents[i], i)) if intents else None
        summary = (f"{len(turns)} turns; mostly {top_intent}; topics: {', '.join(topics) or '-'}"
                   if turns else "empty session")
        return {"session": session, "turns": turns[-k:] if k > 0 else [], "total": len(turns),
                "intents": dict(sorted(intents.items())), "topics": topics, "summary": summary,
                "last_intent": turns[-1]["intent"] if turns else None}

    def handle_clear(self, body: Any) -> dict:
        session, ns = self._ns(body)
        return {"session": session, "deleted": self.call(MEMORY, "clear", {"ns": ns}, timeout=2.0)["deleted"]}
