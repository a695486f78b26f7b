"""Reference agents of the core optional group: UnifiedSystemAgent, ModelOrchestrator, GoalManager,
IntentionValidatorAgent.

They sit on top of the core agents: one view of the whole system, the choice of a model for a task,
goals broken into steps that are routed and kept in the memory store, and a check of what a request
intends before anything acts on it. What stands in is judgement: tables and rules, no model.
"""
from __future__ import annotations

import re
from typing import Any

from sunsetd.agent import BadRequest

from agents.infrastructure import DAEMON, HUB, TWIN, CatalogAgent, field

RC = "RequestCoordinator"
MMS = "ModelManagerSuite"
MEMORY = "MemoryClient"
ORCHESTRATOR = "ModelOrchestrator"


# ---- UnifiedSystemAgent ----------------------------------------------------------------------------------
class UnifiedSystemAgent(CatalogAgent):
    """One view of the whole system.

    Real: `overview` joins sunsetd's status (agents by state, lazy agents running, memory against the
    budget, the biggest agents by RSS), SystemDigitalTwin's host metrics and ObservabilityHub's health
    score and alerts into one report with a one-line summary; `diagnose` explains one agent: its state,
    restarts, last reason, heartbeat, memory, and the alerts and events that name it.
    Stands in: nothing.
    """

    CAPABILITIES = ("system.overview", "system.diagnose")

    def handle_overview(self, body: Any) -> dict:
        """-> {profile, state, agents_by_state, lazy_running, memory, top_rss, host, health, summary}."""
        status = self.call(DAEMON, "status", timeout=2.0)
        host = self.call(TWIN, "metrics", timeout=3.0)
        health = self.call(HUB, "health", timeout=3.0)
        agents = status["agents"]
        by_state: dict[str, int] = {}
        for a in agents:
            by_state[a["state"]] = by_state.get(a["state"], 0) + 1
        lazy_running = sorted(a["name"] for a in agents if a["lazy"] and a["state"] in ("starting", "ready"))
        top = sorted((a for a in agents if a.get("rss_bytes")), key=lambda a: (-a["rss_bytes"], a["name"]))[:3]
        critical = [a for a in health["alerts"] if a["level"] == "critical"]
        summary = (f"{status['profile']}: {status['state']}, {by_state.get('ready', 0)}/{len(agents)} agents ready "
                   f"({len(lazy_running)} lazy running), health {health['score']}%, {len(critical)} critical alerts, "
                   f"{host['mem_available_mb']:.0f} MB free on the host")
        self.counters["overviews"] += 1
        return {"profile": status["profile"], "state": status["state"], "agents": len(agents),
                "agents_by_state": dict(sorted(by_state.items())), "lazy_running": lazy_running,
                "memory": status.get("memory"),
                "top_rss": [{"agent": a["name"], "rss_mb": round(a["rss_bytes"] / 1048576, 1)} for a in top],
                "host": {k: host[k] for k in ("mem_available_mb", "mem_available_pct", "load1", "cpus")},
                "health": {"score": health["score"], "status": health["status"], "critical": len(critical)},
                "summary": summary}

    def handle_diagnose(self, body: Any) -> dict:
        """{agent} -> its state and history, the alerts and events naming it, and a verdict."""
        name = field(body, "agent", str)
        status = self.call(DAEMON, "status", timeout=2.0)
        a = next((x for x in status["agents"] if x["name"] == name), None)
        if a is None:
            raise BadRequest(f"no agent {name!r} in profile {status['profile']}")
        alerts = [x for x in self.call(HUB, "alerts", timeout=3.0) if x["agent"] == name]
        events = self.call(HUB, "events", {"source": name}, timeout=2.0)
        if a["state"] == "ready":
            verdict = "healthy" if not a["restarts"] else f"running, but restarted {a['restarts']} times"
        elif a["state"] == "stopped" and a["lazy"]:
            verdict = "idle (lazy: starts on its next request)"
        elif a["state"] == "failed":
            verdict = f"failed: circuit open ({a['reason']})"
        else:
            verdict = f"{a['state']}: {a['reason'] or '-'}"
        return {"agent": name, "state": a["state"], "restarts": a["restarts"], "reason": a["reason"],
                "lazy": a["lazy"], "essential": a["essential"], "pid": a["pid"],
                "rss_mb": round(a["rss_bytes"] / 1048576, 1) if a.get("rss_bytes") else None,
                "heartbeat_age_ms": a.get("heartbeat_age_ms"), "alerts": alerts, "events": events[-5:],
                "verdict": verdict}


# ---- ModelOrchestrator -----------------------------------------------------------------------------------
TASKS = {  # task -> (keywords, models in order of preference)
    "summarize": (("summarize", "summarise", "summary", "tl;dr", "shorten"), ("summarizer", "llm-7b")),
    "translate": (("translate", "translation", "in french", "in spanish", "in german"), ("translator", "llm-7b")),
    "embed": (("similar", "embed", "embedding", "search", "find documents"), ("kb-embedder",)),
    "generate": (("write", "draft", "compose", "generate", "story", "poem", "essay"), ("llm-7b", "summarizer")),
    "classify": (("classify", "categorize", "label", "intent"), ("intent-small",)),
}
INTENT_TASKS = {"question": "embed", "remember": "embed", "greeting": "classify", "unknown": "generate"}


class ModelOrchestrator(CatalogAgent):
    """Chooses the model for a task and gets it ready.

    Real: the task is found from its text (keywords for summarising, translating, embedding, generating,
    classifying; otherwise from RequestCoordinator's intent); each model able to do it, in order of
    preference, is placed by ModelManagerSuite (local if it fits the budget, remote if not or not in the
    catalogue); the first local one is chosen, and `run` loads it (a use at ModelManagerSuite, which
    evicts least recently used models if needed). Stands in: the "run" ends at a loaded model; there is
    no inference.
    """

    CAPABILITIES = ("models.orchestrate", "models.select")

    def setup(self) -> None:
        self.tasks = {t: (kw, list(models)) for t, (kw, models) in TASKS.items()}
        for task, models in (self.config.get("models") or {}).items():
            self.tasks[task] = (self.tasks.get(task, ((),))[0], list(models))
        super().setup()

    def _plan(self, text: str) -> dict:
        low = text.lower()
        task = next((t for t, (kws, _) in self.tasks.items() if any(k in low for k in kws)), None)
        intent = None
        if task is None:
            intent = self.call(RC, "classify", {"text": text}, timeout=2.0)["intent"]
            task = INTENT_TASKS.get(intent, "classify")
        candidates = []
        for model in self.tasks[task][1]:
            r = self.call(MMS, "route", {"model": model}, timeout=2.0)
            candidates.append({"model": model, "route": r["route"], "reason": r["reason"]})
        chosen = next((c["model"] for c in candidates if c["route"] == "local"), None)
        return {"text": text, "task": task, "intent": intent, "candidates": candidates, "chosen": chosen,
                "route": "local" if chosen else "remote"}

    def handle_plan(self, body: Any) -> dict:
        """{text} -> {task, candidates: [{model, route, reason}], chosen: first local model or None}."""
        return self._plan(body if isinstance(body, str) else field(body, "text", str))

    def handle_run(self, body: Any) -> dict:
        """{text}: plan, then load the chosen model at ModelManagerSuite (a use)."""
        plan = self._plan(body if isinstance(body, str) else field(body, "text", str))
        plan["loaded"] = None
        if plan["chosen"]:
            use = self.call(MMS, "use", {"model": plan["chosen"]}, timeout=5.0)
            plan["loaded"] = {"model": plan["chosen"], "uses": use["uses"]}
            self.counters[f"model.{plan['chosen']}"] += 1
        return plan


# ---- GoalManager -----------------------------------------------------------------------------------------
_STEPS = re.compile(r"\s*(?:;|,?\s+and then\s+|,?\s+then\s+|,\s+|\s+and\s+)\s*", re.I)


class GoalManager(CatalogAgent):
    """Goals, broken into steps, each routed, kept in the memory store.

    Real: a goal's text is split into steps ("..., then ...", "... and ..."); RequestCoordinator names
    each step's intent and specialist and ModelOrchestrator the model it would need; goals live in
    MemoryClient (namespace `goals`), so they survive restarts of this agent; steps are completed one by
    one, progress is counted, and `next` gives the first open step of the most urgent goal (priority,
    then age). Stands in: the splitting rules for a planner.
    """

    CAPABILITIES = ("goals.manage", "goals.plan")
    NS = "goals"

    def _goals(self) -> list[dict]:
        return [i["value"] for i in self.call(MEMORY, "list", {"ns": self.NS}, timeout=3.0)["items"]]

    def _save(self, goal: dict) -> None:
        self.call(MEMORY, "put", {"ns": self.NS, "key": goal["id"], "value": goal}, timeout=2.0)

    def _get(self, goal_id: str) -> dict:
        got = self.call(MEMORY, "get", {"ns": self.NS, "key": goal_id}, timeout=2.0)
        if not got["found"]:
            raise BadRequest(f"no goal {goal_id!r}")
        return got["value"]

    def handle_add(self, body: Any) -> dict:
        """{goal, priority?: 1 (urgent) .. 5} -> the goal with its steps, each with intent, agent and model."""
        text = field(body, "goal", str).strip()
        priority = field(body, "priority", int, 3)
        if not 1 <= priority <= 5:
            raise BadRequest("priority must be 1 (most urgent) to 5")
        parts = [p.strip(" .") for p in _STEPS.split(text) if p.strip(" .")]
        if not parts or len(parts) > 20:
            raise BadRequest("a goal needs 1 to 20 steps")
        steps = []
        for part in parts:
            c = self.call(RC, "classify", {"text": part}, timeout=2.0)
            plan = self.call(ORCHESTRATOR, "plan", {"text": part}, timeout=5.0)
            steps.append({"text": part, "intent": c["intent"], "agent": c["agent"], "model": plan["chosen"],
                          "done": False})
        seq = self.call(MEMORY, "append", {"ns": "goals.seq", "value": text}, timeout=2.0)["index"]
        goal = {"id": f"g{seq:04d}", "goal": text, "priority": priority, "seq": seq, "steps": steps, "status": "open"}
        self._save(goal)
        self.counters["goals"] += 1
        return goal

    def handle_complete(self, body: Any) -> dict:
        """{id, step: index} -> {progress, status}."""
        goal = self._get(field(body, "id", str))
        i = field(body, "step", int)
        if not 0 <= i < len(goal["steps"]):
            raise BadRequest(f"step must be 0..{len(goal['steps']) - 1}")
        goal["steps"][i]["done"] = True
        done = sum(s["done"] for s in goal["steps"])
        goal["status"] = "done" if done == len(goal["steps"]) else "open"
        self._save(goal)
        return {"id": goal["id"], "progress": round(done / len(goal["steps"]), 3), "status": goal["status"]}

    def handle_list(self, body: Any) -> dict:
        goals = sorted(self._goals(), key=lambda g: (g["status"] == "done", g["priority"], g["seq"]))
        return {"goals": [{"id": g["id"], "goal": g["goal"], "priority": g["priority"], "status": g["status"],
                           "progress": round(sum(s["done"] for s in g["steps"]) / len(g["steps"]), 3)}
                          for g in goals]}

    def handle_get(self, body: Any) -> dict:
        return self._get(field(body, "id", str))

    def handle_next(self, body: Any) -> dict:
        """-> the first open step of the most urgent open goal (or None)."""
        open_goals = sorted((g for g in self._goals() if g["status"] == "open"),
                            key=lambda g: (g["priority"], g["seq"]))
        for g in open_goals:
            for i, s in enumerate(g["steps"]):
                if not s["done"]:
                    return {"id": g["id"], "goal": g["goal"], "step": i, **s}
        return {"id": None}


# ---- IntentionValidatorAgent -----------------------------------------------------------------------------
DESTRUCTIVE = re.compile(r"\b(?:delete|remove|erase|wipe|format|shut ?down|kill|reboot|drop|uninstall|destroy|"
                         r"purge|reset|forget everything|rm -rf)\b", re.I)
OPPOSITES = (("start", "stop"), ("enable", "disable"), ("load", "unload"), ("open", "close"), ("add", "remove"))
HEAVY = re.compile(r"\b(?:load|train|fine-?tune|download)\b", re.I)


class IntentionValidatorAgent(CatalogAgent):
    """Checks what a request intends before anything acts on it.

    Real: RequestCoordinator classifies the request; rules then find what is wrong with it: not understood
    (unknown intent), destructive (delete, wipe, shut down, kill, ...: needs an explicit confirmation),
    self-contradictory (start and stop, load and unload, ...), missing what it needs (a `remember` with
    nothing to remember), and heavy work (load, train, download) checked against the host's free memory
    with SystemDigitalTwin (`heavy_mb`). The decision is allow, confirm or deny, with the reasons.
    Stands in: rules for a learned policy.
    """

    CAPABILITIES = ("safety.intent_validation",)

    def setup(self) -> None:
        self.heavy_mb = int(self.config.get("heavy_mb", 512))
        super().setup()

    def handle_validate(self, body: Any) -> dict:
        """{text, confirmed?} -> {decision: allow | confirm | deny, intent, agent, issues}."""
        text = body if isinstance(body, str) else field(body, "text", str)
        confirmed = field(body, "confirmed", bool, False) if isinstance(body, dict) else False
        c = self.call(RC, "classify", {"text": text}, timeout=2.0)
        low = text.lower()
        deny, confirm = [], []
        if c["intent"] == "unknown" and not DESTRUCTIVE.search(text):
            deny.append("not understood")
        if DESTRUCTIVE.search(text) and not confirmed:
            confirm.append(f"destructive: {DESTRUCTIVE.search(text).group(0).lower()!r} needs confirmation")
        words = set(re.findall(r"[a-z]+", low))
        for a, b in OPPOSITES:
            if a in words and b in words:
                deny.append(f"contradictory: both {a!r} and {b!r}")
        if c["intent"] == "remember" and len(re.sub(r"\b(?:please|remember|that|this|it|to)\b", " ", low).split()) == 0:
            deny.append("nothing to remember")
        fit = None
        if HEAVY.search(text):
            fit = self.call(TWIN, "can_fit", {"mb": self.heavy_mb}, timeout=2.0)
            if not fit["fits"]:
                deny.append(f"heavy work needs {self.heavy_mb} MB; {fit['available_mb']:.0f} MB available")
        decision = "deny" if deny else "confirm" if confirm else "allow"
        self.counters[f"decision.{decision}"] += 1
        return {"text": text, "decision": decision, "intent": c["intent"], "agent": c["agent"],
                "issues": deny + confirm, "resources": fit}
