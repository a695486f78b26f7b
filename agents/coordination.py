"""Reference agents of the coordination group: ModelManagerSuite, VRAMOptimizerAgent, RequestCoordinator,
LazyLoader.

Model memory is accounted in MiB and in a logical clock (`tick`, one per load or use), so that which
model is least recently used, and how idle a model is, are deterministic answers; wall-clock idleness
is reported too and only drives VRAMOptimizerAgent's slow background watch.
"""
from __future__ import annotations

import re
import threading
import time
from collections import deque
from typing import Any

from sunsetd.agent import AgentError, BadRequest, RemoteError

from agents.infrastructure import DAEMON, HUB, REGISTRY, TWIN, CatalogAgent, field, hold_memory

MMS = "ModelManagerSuite"
VRAM = "VRAMOptimizerAgent"
RC = "RequestCoordinator"


# ---- ModelManagerSuite -----------------------------------------------------------------------------------
class ModelManagerSuite(CatalogAgent):
    """Loads and unloads models within a memory budget, and routes each model local or remote.

    Real: the budget accounting (`budget_mb`), least-recently-used eviction on a logical clock, admission
    of each load against the host (SystemDigitalTwin.can_fit), and the local/remote decision (a model
    bigger than what the budget leaves, or not in the local catalog, goes remote). Models of other agents
    (STTService, TTSService) are registered here as pinned: counted in the budget, never evicted, and
    dropped once sunsetd's status shows their owner no longer runs.
    Stands in: a loaded model is `config.models[name]` MiB of touched memory, not weights; "remote" is
    only the decision, there is no remote endpoint to call.
    """

    CAPABILITIES = ("models.budget", "models.load", "models.route")

    def setup(self) -> None:
        self.budget_mb = int(self.config.get("budget_mb", 64))
        self.catalog = {str(k): int(v) for k, v in (self.config.get("models") or {}).items()}
        self.models: dict[str, dict] = {}
        self.buffers: dict[str, bytearray] = {}
        self.tick = 0
        for model in self.config.get("preload") or ():
            self._load(model)
        super().setup()

    # ---- accounting
    def _used_mb(self) -> int:
        return sum(m["mb"] for m in self.models.values())

    def _pinned_mb(self) -> int:
        return sum(m["mb"] for m in self.models.values() if m["pinned"])

    def _touch(self, model: str) -> dict:
        self.tick += 1
        m = self.models[model]
        m["last_used"] = self.tick
        m["last_used_at"] = time.monotonic()
        m["uses"] += 1
        return m

    def _victims(self, need_mb: int) -> list[str]:
        """Least recently used unpinned models to evict so that `need_mb` more fits in the budget."""
        used, victims = self._used_mb(), []
        for name, m in sorted(self.models.items(), key=lambda kv: (kv[1]["last_used"], kv[0])):
            if used + need_mb <= self.budget_mb:
                break
            if not m["pinned"]:
                victims.append(name)
                used -= m["mb"]
        return victims

    def _prune_pins(self) -> None:
        """Drop the pins of owners that no longer run (sunsetd's status): their memory went with them."""
        if not any(m["pinned"] for m in self.models.values()):
            return
        running = {a["name"] for a in self.call(DAEMON, "status", timeout=2.0)["agents"]
                   if a["state"] in ("starting", "ready")}
        for name, m in list(self.models.items()):
            if m["pinned"] and m["owner"] not in running:
                del self.models[name]
                self.counters["pins_dropped"] += 1

    def _room_mb(self) -> int:
        return self.budget_mb - self._pinned_mb()

    def _metrics(self) -> dict:
        used = self._used_mb()
        return {"used_mb": used, "used_pct": round(100.0 * used / self.budget_mb, 1) if self.budget_mb else 0.0,
                "models_loaded": len(self.models)}

    def _load(self, model: str) -> dict:
        if model in self.models:
            self._touch(model)
            return {"model": model, "loaded": True, "already": True, "evicted": [], "used_mb": self._used_mb()}
        if model not in self.catalog:
            raise BadRequest(f"no model {model!r} in the local catalog ({', '.join(sorted(self.catalog))})")
        mb = self.catalog[model]
        self._prune_pins()
        if mb > self._room_mb():
            raise AgentError(f"{model} needs {mb} MB, more than the {self._room_mb()} MB the budget leaves "
                             f"for loadable models: it routes remote")
        victims = self._victims(mb)
        fit = self.call(TWIN, "can_fit", {"mb": mb}, timeout=2.0)
        if not fit.get("fits"):
            raise AgentError(f"the host cannot fit {model} ({mb} MB; {fit.get('available_mb')} MB available)")
        for victim in victims:
            self._unload(victim)
        self.buffers[model] = hold_memory(mb)
        self.models[model] = {"mb": mb, "owner": self.name, "pinned": False, "last_used": 0, "uses": 0,
                              "last_used_at": 0.0}
        self._touch(model)
        self.counters["loads"] += 1
        return {"model": model, "loaded": True, "already": False, "evicted": victims, "used_mb": self._used_mb()}

    def _unload(self, model: str) -> int:
        m = self.models.pop(model)
        self.buffers.pop(model, None)
        self.counters["unloads"] += 1
        return m["mb"]

    # ---- ops
    def handle_load(self, body: Any) -> dict:
        """{model}: load it (evicting least recently used models if the budget needs it)."""
        result = self._load(field(body, "model", str))
        if not result["already"]:
            self.report(self._metrics())
        return result

    def handle_unload(self, body: Any) -> dict:
        model = field(body, "model", str)
        m = self.models.get(model)
        if m is None:
            return {"model": model, "unloaded": False, "freed_mb": 0, "used_mb": self._used_mb()}
        if m["pinned"]:
            raise AgentError(f"{model} is pinned by {m['owner']}; it is released by its owner only")
        freed = self._unload(model)
        self.report(self._metrics())
        return {"model": model, "unloaded": True, "freed_mb": freed, "used_mb": self._used_mb()}

    def handle_use(self, body: Any) -> dict:
        """{model}: one use of a model (loads it on demand); feeds least-recently-used and idleness."""
        model = field(body, "model", str)
        if model in self.models:
            m = self._touch(model)
        else:
            self._load(model)
            m = self.models[model]
            self.report(self._metrics())
        return {"model": model, "uses": m["uses"], "tick": self.tick}

    def handle_register_model(self, body: Any) -> dict:
        """{model, mb, owner}: a model resident in another agent; counted in the budget, pinned."""
        model, owner = field(body, "model", str), field(body, "owner", str)
        mb = field(body, "mb", int)
        old = self.models.get(model)
        if old is not None and not old["pinned"]:
            raise AgentError(f"{model} is a model loaded here; {owner} cannot pin it")
        self.tick += 1
        self.models[model] = {"mb": mb, "owner": owner, "pinned": True, "last_used": self.tick, "uses": 0,
                              "last_used_at": time.monotonic()}
        over = self._used_mb() > self.budget_mb
        if over:
            self.log(f"{owner} pinned {model} ({mb} MB): {self._used_mb()} MB used, "
                     f"over the {self.budget_mb} MB budget")
        return {"model": model, "pinned": True, "used_mb": self._used_mb(), "over_budget": over}

    def handle_route(self, body: Any) -> dict:
        """{model} -> local or remote, and why; loads nothing."""
        model = field(body, "model", str)
        if model in self.models:
            return {"model": model, "route": "local", "reason": "loaded"}
        if model not in self.catalog:
            return {"model": model, "route": "remote", "reason": "not in the local catalog"}
        mb = self.catalog[model]
        self._prune_pins()
        if mb > self._room_mb():
            return {"model": model, "route": "remote",
                    "reason": f"needs {mb} MB, the budget leaves {self._room_mb()} MB for loadable models"}
        victims = self._victims(mb)
        return {"model": model, "route": "local", "reason": "fits after evicting " + ", ".join(victims)
                if victims else "fits", "would_evict": victims}

    def handle_status(self, body: Any) -> dict:
        self._prune_pins()
        now = time.monotonic()
        models = [{"name": name, "mb": m["mb"], "owner": m["owner"], "pinned": m["pinned"], "uses": m["uses"],
                   "last_used": m["last_used"], "idle_ticks": self.tick - m["last_used"],
                   "idle_s": round(now - m["last_used_at"], 1)} for name, m in sorted(self.models.items())]
        return {"budget_mb": self.budget_mb, "used_mb": self._used_mb(), "pinned_mb": self._pinned_mb(),
                "tick": self.tick, "models": models, "catalog": dict(sorted(self.catalog.items()))}


# ---- VRAMOptimizerAgent ----------------------------------------------------------------------------------
def eviction_plan(status: dict, target_mb: float | None = None, max_idle_ticks: int | None = None,
                  max_idle_s: float | None = None) -> dict:
    """Which unpinned models to evict (pure): the idle ones, then least recently used ones down to a target."""
    candidates = sorted((m for m in status["models"] if not m["pinned"]), key=lambda m: (m["last_used"], m["name"]))
    evict: dict[str, str] = {}
    for m in candidates:
        if max_idle_ticks is not None and m["idle_ticks"] > max_idle_ticks:
            evict[m["name"]] = f"idle for {m['idle_ticks']} ticks"
        elif max_idle_s is not None and m["idle_s"] > max_idle_s:
            evict[m["name"]] = f"idle for {m['idle_s']:g}s"
    sizes = {m["name"]: m["mb"] for m in candidates}
    used = status["used_mb"] - sum(sizes[n] for n in evict)
    if target_mb is not None:
        for m in candidates:
            if used <= target_mb:
                break
            if m["name"] not in evict:
                evict[m["name"]] = f"least recently used, over {target_mb:g} MB"
                used -= m["mb"]
    return {"evict": list(evict), "reasons": evict, "used_mb": status["used_mb"], "used_mb_after": used,
            "target_mb": target_mb, "fits_target": target_mb is None or used <= target_mb}


class VRAMOptimizerAgent(CatalogAgent):
    """Watches model memory and evicts idle models.

    Real: reads ModelManagerSuite's accounting, plans evictions (models idle for more than N ticks or
    seconds, then least recently used ones until usage is under a target, by default `high_water_pct` of
    the budget), carries them out through ModelManagerSuite.unload and records them at ObservabilityHub;
    a background watch every `watch_s` evicts models idle for over `idle_evict_s`. Stands in: the memory is
    host RAM held by ModelManagerSuite, not GPU memory.
    """

    CAPABILITIES = ("models.eviction",)

    def setup(self) -> None:
        self.high_water_pct = float(self.config.get("high_water_pct", 90))
        self.idle_evict_s = float(self.config.get("idle_evict_s", 600))
        self.watch_s = float(self.config.get("watch_s", 0))
        self.stopping = threading.Event()
        super().setup()
        if self.watch_s > 0:
            threading.Thread(target=self._watch, name="vram-watch", daemon=True).start()

    def teardown(self) -> None:
        self.stopping.set()

    def _plan(self, body: Any) -> tuple[dict, dict]:
        body = body if isinstance(body, dict) else {}
        status = self.call(MMS, "status", timeout=2.0)
        target = field(body, "target_mb", float, None)
        idle_ticks = field(body, "max_idle_ticks", int, None)
        idle_s = field(body, "max_idle_s", float, None)
        if target is None and idle_ticks is None and idle_s is None:
            target = status["budget_mb"] * self.high_water_pct / 100.0
        return status, eviction_plan(status, target, idle_ticks, idle_s)

    def _carry_out(self, plan: dict, why: str) -> dict:
        evicted, freed = [], 0
        for model in plan["evict"]:
            try:
                reply = self.call(MMS, "unload", {"model": model}, timeout=2.0)
            except RemoteError as exc:
                self.log(f"could not evict {model}: {exc}")
                continue
            if reply.get("unloaded"):
                evicted.append(model)
                freed += reply.get("freed_mb", 0)
        if evicted:
            self.counters["evictions"] += len(evicted)
            try:
                self.call(HUB, "event", {"source": self.name, "level": "info",
                                         "message": f"{why}: evicted {', '.join(evicted)} ({freed} MB)"}, timeout=2.0)
            except RemoteError as exc:
                self.log(f"event to {HUB} failed: {exc}")
        return {**plan, "evicted": evicted, "freed_mb": freed}

    def handle_plan(self, body: Any) -> dict:
        """{target_mb?, max_idle_ticks?, max_idle_s?} -> what optimize would evict; evicts nothing."""
        return self._plan(body)[1]

    def handle_optimize(self, body: Any) -> dict:
        """Plan as `plan` does, and evict."""
        return self._carry_out(self._plan(body)[1], "optimize")

    def _watch(self) -> None:
        while not self.stopping.wait(self.watch_s):
            try:
                status = self.call(MMS, "status", timeout=2.0)
                plan = eviction_plan(status, status["budget_mb"] * self.high_water_pct / 100.0,
                                     max_idle_s=self.idle_evict_s)
                if plan["evict"]:
                    self._carry_out(plan, "watch")
                self.counters["watches"] += 1
            except RemoteError:
                self.counters["watch_failures"] += 1


# ---- RequestCoordinator ----------------------------------------------------------------------------------
# intent -> {keyword or two-word phrase: weight}; ties go to the intent listed first.
INTENTS: dict[str, dict[str, float]] = {
    "health": {"health": 2, "healthy": 2, "status": 1, "alert": 2, "alerts": 2, "alive": 1, "failing": 2,
               "broken": 1, "down": 1},
    "resources": {"memory": 1, "cpu": 2, "load": 1, "ram": 2, "resources": 2, "resource": 2, "host": 1,
                  "usage": 1, "disk": 1},
    "optimize": {"evict": 3, "optimize": 3, "free up": 3, "vram": 2, "unload": 3, "reclaim": 2, "idle": 1},
    "models": {"model": 2, "models": 2, "translator": 1, "summarizer": 1, "remote": 1, "local": 1},
    "speak": {"say": 3, "speak": 3, "read aloud": 3, "pronounce": 3, "announce": 2, "voice": 1},
    "transcribe": {"transcribe": 3, "listen": 2, "dictate": 3, "dictation": 3, "hear": 1, "recording": 1},
    "remember": {"remember": 3, "recall": 3, "forget": 3, "note": 2, "save": 1, "earlier": 1},
    "question": {"what": 1, "who": 1, "why": 1, "how": 1, "when": 1, "where": 1, "which": 1, "explain": 2,
                 "tell me": 2, "define": 2},
    "greeting": {"hello": 2, "hi": 2, "hey": 1, "good morning": 3, "thanks": 2, "thank you": 3, "bye": 2},
}
# Who handles each intent. RequestCoordinator forwards only along ROUTES, whose agents it depends on (a
# call never goes up the graph); the other specialists are advice for the caller and for LazyLoader.
SPECIALISTS = {"health": HUB, "resources": TWIN, "optimize": VRAM, "models": MMS, "speak": "StreamingTTSAgent",
               "transcribe": "StreamingSpeechRecognition", "remember": "SessionMemoryAgent",
               "question": "KnowledgeBase", "greeting": "SessionMemoryAgent"}
ROUTES = {"health": {"agent": HUB, "op": "health"}, "resources": {"agent": TWIN, "op": "metrics"},
          "optimize": {"agent": VRAM, "op": "optimize"}}
_WORD = re.compile(r"[a-z0-9']+")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")
_QUOTED = re.compile(r"\"([^\"]+)\"|'([^']+)'")


def classify(text: str, intents: dict[str, dict[str, float]] = INTENTS) -> dict:
    """Rule-based intent: weighted keyword and two-word phrase matches; a question mark or a leading
    question word leans to `question`. Entities: numbers and quoted strings."""
    words = _WORD.findall(text.lower())
    grams = set(words) | {f"{a} {b}" for a, b in zip(words, words[1:])}
    scores = {intent: float(sum(w for kw, w in kws.items() if kw in grams)) for intent, kws in intents.items()}
    if "question" in scores and (text.rstrip().endswith("?") or (words and words[0] in intents["question"])):
        scores["question"] += 1
    best = max(scores, key=lambda i: (scores[i], -list(scores).index(i))) if scores else None
    total = sum(scores.values())
    if best is None or scores[best] == 0:
        best, confidence = "unknown", 0.0
    else:
        confidence = round(scores[best] / total, 2)
    numbers = [float(n) if "." in n else int(n) for n in _NUMBER.findall(text)]
    quoted = [a or b for a, b in _QUOTED.findall(text)]
    return {"intent": best, "confidence": confidence, "scores": {i: s for i, s in scores.items() if s},
            "entities": {"numbers": numbers, "quoted": quoted}, "words": len(words)}


class RequestCoordinator(CatalogAgent):
    """Front door: classifies a task and forwards it to the right specialist.

    Real: rule-based intent classification (weighted keywords and phrases, entities), the specialist
    for each intent, and forwarding through sunsetd along `routes` (in core: health to ObservabilityHub,
    host resources to SystemDigitalTwin, model memory to VRAMOptimizerAgent) with per-intent counts.
    Intents whose specialist sits above us in the dependency graph are classified and named, not
    forwarded: the caller sends the task there. Stands in: the rules stand in for an intent model.
    """

    CAPABILITIES = ("requests.classify", "requests.route")

    def setup(self) -> None:
        self.specialists = {**SPECIALISTS, **(self.config.get("specialists") or {})}
        self.routes = {**ROUTES, **(self.config.get("routes") or {})}
        self.forward_timeout_s = float(self.config.get("forward_timeout_s", 5.0))
        super().setup()

    def _classify(self, body: Any) -> dict:
        text = body if isinstance(body, str) else field(body, "text", str)
        result = classify(text)
        result["agent"] = self.specialists.get(result["intent"])
        route = self.routes.get(result["intent"])
        result["route"] = dict(route) if route else None
        self.counters[f"intent.{result['intent']}"] += 1
        return result

    def handle_classify(self, body: Any) -> dict:
        """{text} (or a bare string) -> intent, confidence, scores, entities, specialist agent, route."""
        return self._classify(body)

    def handle_route(self, body: Any) -> dict:
        """{text, body?}: classify, then forward `body` (or the route's own body) to the specialist."""
        result = self._classify(body)
        route = result["route"]
        if route is None:
            result.update(forwarded=False, reason=f"no route for intent {result['intent']!r} in this profile"
                          + (f"; its specialist is {result['agent']}" if result["agent"] else ""))
            return result
        payload = body.get("body", route.get("body")) if isinstance(body, dict) else route.get("body")
        result["result"] = self.call(route["agent"], route["op"], payload, timeout=self.forward_timeout_s)
        result["forwarded"] = True
        self.counters["forwarded"] += 1
        return result


# ---- LazyLoader ------------------------------------------------------------------------------------------
class LazyLoader(CatalogAgent):
    """Predicts which agents will be needed next and pre-warms them.

    Real: keeps a bounded history of which agents requests went to (`observe`), ranks agents by
    recency-weighted frequency (each past request counts `decay`^age), boosts the specialist that
    RequestCoordinator names for an upcoming task's text, finds agents by capability in ServiceRegistry,
    and pre-warms through sunsetd (`start` for any target not ready; ready ones are left alone), recording
    each start at ObservabilityHub. Stands in: nothing; in core every agent is eager, so pre-warming only
    restarts agents an operator stopped.
    """

    CAPABILITIES = ("agents.predict", "agents.prewarm")

    def setup(self) -> None:
        self.history: deque = deque(maxlen=int(self.config.get("history", 256)))
        self.decay = float(self.config.get("decay", 0.8))
        self.start_timeout_s = float(self.config.get("start_timeout_s", 10.0))
        super().setup()

    def handle_observe(self, body: Any) -> dict:
        """{agent} or {agents: [...]}: requests that went to these agents, oldest first."""
        agents = field(body, "agents", list, None)
        if agents is None:
            agents = [field(body, "agent", str)]
        if not all(isinstance(a, str) and a for a in agents):
            raise BadRequest("agents must be a list of agent names")
        self.history.extend(agents)
        return {"observed": len(agents), "history": len(self.history)}

    def _predict(self, k: int, text: str | None) -> dict:
        scores: dict[str, float] = {}
        for age, agent in enumerate(reversed(self.history)):
            scores[agent] = scores.get(agent, 0.0) + self.decay ** age
        hint = intent = None
        if text:
            c = self.call(RC, "classify", {"text": text}, timeout=2.0)
            hint, intent = c.get("agent"), c.get("intent")
            if hint:
                scores[hint] = max(scores.values(), default=0.0) + 1.0
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return {"predictions": [{"agent": a, "score": round(s, 4)} for a, s in ranked], "hint": hint,
                "intent": intent}

    def handle_predict(self, body: Any) -> dict:
        """{k?, text?} -> the k agents most likely to be needed next."""
        body = body if isinstance(body, dict) else {}
        return self._predict(field(body, "k", int, 3), field(body, "text", str, None))

    def handle_prewarm(self, body: Any) -> dict:
        """{agents?, capability?, text?, k?}: make these targets (and the k predicted for `text`) ready."""
        body = body if isinstance(body, dict) else {}
        targets: list[str] = list(field(body, "agents", list, []))
        capability = field(body, "capability", str, None)
        if capability:
            targets += self.call(REGISTRY, "lookup", {"capability": capability}, timeout=2.0)["agents"]
        text = field(body, "text", str, None)
        if text:
            targets += [p["agent"] for p in self._predict(field(body, "k", int, 1), text)["predictions"]]
        targets = list(dict.fromkeys(t for t in targets if isinstance(t, str)))
        if not targets:
            raise BadRequest("nothing to pre-warm: give agents, a capability or a text")
        states = {a["name"]: a["state"] for a in self.call(DAEMON, "status", timeout=2.0)["agents"]}
        outcome: dict[str, str] = {}
        for agent in targets:
            if agent not in states:
                outcome[agent] = "unknown"
            elif states[agent] == "ready":
                outcome[agent] = "ready"
            else:
                try:
                    self.call(DAEMON, "start", {"agent": agent}, timeout=self.start_timeout_s)
                    outcome[agent] = "started"
                    self.counters["prewarmed"] += 1
                except RemoteError as exc:
                    outcome[agent] = f"failed: {exc.code}"
        started = [a for a, o in outcome.items() if o == "started"]
        if started:
            try:
                self.call(HUB, "event", {"source": self.name, "level": "info",
                                         "message": f"pre-warmed {', '.join(started)}"}, timeout=2.0)
            except RemoteError as exc:
                self.log(f"event to {HUB} failed: {exc}")
        return {"targets": targets, "outcome": outcome}

    def handle_history(self, body: Any) -> list[str]:
        return list(self.history)
