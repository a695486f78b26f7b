"""Reference agents of the infrastructure group: ServiceRegistry, ObservabilityHub, SystemDigitalTwin.

Also the small base every reference agent of the core profile builds on (`CatalogAgent`): registering
its capabilities with ServiceRegistry at setup, holding declared "weights", counting its ops, and
pushing its counters to ObservabilityHub. The other groups import it from here, so that `agents/` stays
one module per group.

Calls only go down the dependency graph, so that no agent ever waits on one that waits on it. Every
core agent depends on ServiceRegistry, directly or through ObservabilityHub or SystemDigitalTwin, and
ServiceRegistry calls no one: registering with it at setup is a call down the graph even for agents
that do not list it in `depends_on`.
"""
from __future__ import annotations

import math
import os
from collections import Counter, deque
from typing import Any

from sunsetd.agent import Agent, BadRequest, RemoteError

REGISTRY = "ServiceRegistry"
HUB = "ObservabilityHub"
TWIN = "SystemDigitalTwin"
DAEMON = "sunsetd"

_MISSING = object()


# ---- body checking, shared by every reference agent ------------------------------------------------------
def field(body: Any, key: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
    """body[key], checked to be of `kind` (bool is never a number); BadRequest names the field at fault."""
    if not isinstance(body, dict):
        raise BadRequest(f"body must be a map with {key!r}, got {type(body).__name__}")
    value = body.get(key)
    if value is None:
        if default is _MISSING:
            raise BadRequest(f"missing field {key!r}")
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and int not in kinds:
        kinds = kinds + (int,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise BadRequest(f"field {key!r} must be {names}, got {type(value).__name__}")
    return value


def hold_memory(mb: int) -> bytearray:
    """`mb` MiB, written to so that every page is resident and counts in the process's RSS."""
    return bytearray(b"\x5a") * (mb << 20) if mb > 0 else bytearray()


class CatalogAgent(Agent):
    """Base of the reference agents: capabilities, weights, op counters, and reports to the hub."""

    CAPABILITIES: tuple[str, ...] = ()
    REPORTS_TO_HUB = True  # False only below ObservabilityHub in the graph (ServiceRegistry)

    def setup(self) -> None:
        """Subclasses set their state up first, then call this: it registers once everything works."""
        self.register()

    # ---- services for subclasses
    @property
    def capabilities(self) -> list[str]:
        return sorted(self.config.get("capabilities", self.CAPABILITIES))

    @property
    def counters(self) -> Counter:
        counters = self.__dict__.get("_counters")
        if counters is None:
            counters = self.__dict__["_counters"] = Counter()
        return counters

    def hold_weights(self) -> int:
        """Allocate the declared `weights_mb`: what stands in for a model's weights. Returns MiB held."""
        mb = int(self.config.get("weights_mb", 0))
        self.weights = hold_memory(mb)
        return mb

    def register(self) -> None:
        """Tell ServiceRegistry what this agent offers; an unreachable registry is logged, not fatal."""
        try:
            self.call(REGISTRY, "register", {"agent": self.name, "capabilities": self.capabilities,
                                             "ops": self.ops()}, timeout=3.0)
        except RemoteError as exc:
            self.log(f"not registered with {REGISTRY}: {exc}")

    def report(self, metrics: dict[str, float]) -> list[dict]:
        """Push numeric metrics to ObservabilityHub; returns the alerts they raise there (none if unreachable)."""
        try:
            reply = self.call(HUB, "report", {"source": self.name, "metrics": metrics}, timeout=2.0)
        except RemoteError as exc:
            self.counters["report_failures"] += 1
            self.log(f"report to {HUB} failed: {exc}")
            return []
        return reply.get("alerts", []) if isinstance(reply, dict) else []

    # ---- ops every reference agent answers
    def dispatch(self, op: str, body: Any) -> Any:
        self.counters[f"op.{op}"] += 1
        return super().dispatch(op, body)

    def handle_info(self, body: Any) -> dict:
        info = super().handle_info(body)
        info["capabilities"] = self.capabilities
        info["weights_mb"] = len(getattr(self, "weights", b"")) >> 20
        return info

    def handle_stats(self, body: Any) -> dict:
        """This agent's counters (ops served, work done), also pushed to ObservabilityHub as metrics."""
        counters = dict(sorted(self.counters.items()))
        alerts = self.report(counters) if self.REPORTS_TO_HUB else []
        return {"agent": self.name, "counters": counters, "alerts": alerts}


# ---- ServiceRegistry -------------------------------------------------------------------------------------
class ServiceRegistry(CatalogAgent):
    """Capability directory: which agent offers which capability, and with which ops.

    Real: every reference agent registers its capabilities and ops here at setup (re-registering after a
    restart replaces its entry); `lookup` answers exact names and `prefix.*` patterns; `config.static`
    may declare agents that have not started yet (lazy ones), so they can be found before they run.
    Stands in: nothing. Entries live in this process: a restarted registry knows the agents that have
    registered since (ObservabilityHub flags ready agents missing from it).
    """

    CAPABILITIES = ("registry.lookup", "registry.register")
    REPORTS_TO_HUB = False  # ObservabilityHub depends on us: we never call it

    def setup(self) -> None:
        self.entries: dict[str, dict] = {}
        for agent, caps in sorted((self.config.get("static") or {}).items()):
            self._put(agent, caps, [], "config")
        self._put(self.name, self.capabilities, self.ops(), "self")

    def _put(self, agent: str, capabilities: list, ops: list, source: str) -> dict:
        if not all(isinstance(c, str) and c for c in capabilities) or not all(isinstance(o, str) for o in ops):
            raise BadRequest("capabilities and ops must be lists of non-empty strings")
        old = self.entries.get(agent, {})
        entry = self.entries[agent] = {"capabilities": sorted(set(capabilities)), "ops": sorted(set(ops)),
                                       "source": source, "registrations": old.get("registrations", 0) + 1}
        return entry

    def handle_register(self, body: Any) -> dict:
        agent = field(body, "agent", str)
        entry = self._put(agent, field(body, "capabilities", list), field(body, "ops", list, []), "agent")
        self.counters["registrations"] += 1
        return {"agent": agent, "capabilities": entry["capabilities"], "registrations": entry["registrations"]}

    def handle_deregister(self, body: Any) -> dict:
        agent = field(body, "agent", str)
        return {"agent": agent, "removed": self.entries.pop(agent, None) is not None}

    def handle_lookup(self, body: Any) -> dict:
        """{capability} -> the agents offering it, sorted; `speech.*` matches every `speech.` capability."""
        capability = field(body, "capability", str)
        prefix = capability[:-1] if capability.endswith(".*") else None
        matches: dict[str, list[str]] = {}
        for agent, entry in sorted(self.entries.items()):
            caps = [c for c in entry["capabilities"] if (c.startswith(prefix) if prefix else c == capability)]
            if caps:
                matches[agent] = caps
        self.counters["lookups"] += 1
        self.counters["lookup_misses"] += not matches
        return {"capability": capability, "agents": list(matches), "matches": matches}

    def handle_list(self, body: Any) -> dict:
        return {"agents": {a: dict(e) for a, e in sorted(self.entries.items())}}

    def handle_capabilities(self, body: Any) -> dict:
        """Every capability -> the agents offering it."""
        index: dict[str, list[str]] = {}
        for agent, entry in sorted(self.entries.items()):
            for cap in entry["capabilities"]:
                index.setdefault(cap, []).append(agent)
        return dict(sorted(index.items()))


# ---- ObservabilityHub ------------------------------------------------------------------------------------
_LEVELS = {"critical": 0, "warning": 1, "info": 2}


def health_of(status: dict, registered: set[str] | None, metrics: dict[str, dict], thresholds: dict,
              late_ms: float) -> dict:
    """Health score and alerts from sunsetd's status, the registry and the reported metrics (pure).

    Per agent: ready 1.0 less 0.1 per restart (floor 0.5); starting, stopping or in backoff 0.25; an idle
    lazy agent 1.0 (stopped is its normal state); any other state 0. The score is the mean weighted 3
    for essential agents and 1 for the others, as a percentage. Late heartbeats, missing registrations and
    metric thresholds raise alerts but do not change the score (they depend on timing, not on state).
    """
    total = weights = 0.0
    alerts: list[dict] = []
    states: Counter = Counter()
    for a in status.get("agents", []):
        name, state, restarts = a.get("name"), a.get("state"), int(a.get("restarts") or 0)
        essential, lazy = bool(a.get("essential")), bool(a.get("lazy"))
        states[state] += 1
        if state == "ready":
            h = max(0.5, 1.0 - 0.1 * restarts)
        elif state in ("starting", "stopping", "backoff"):
            h = 0.25
        elif state == "stopped" and lazy:
            h = 1.0
        else:
            h = 0.0
        w = 3.0 if essential else 1.0
        total += w * h
        weights += w
        if state != "ready" and not (state == "stopped" and lazy):
            level = "critical" if essential or state == "failed" else "warning"
            alerts.append({"agent": name, "level": level, "reason": f"{state}: {a.get('reason') or '-'}"})
        if restarts:
            alerts.append({"agent": name, "level": "warning", "reason": f"restarted {restarts} times"})
        age = a.get("heartbeat_age_ms")
        if state == "ready" and isinstance(age, (int, float)) and age > late_ms:
            alerts.append({"agent": name, "level": "warning", "reason": f"heartbeat {age:.0f}ms old"})
        if registered is not None and state == "ready" and name not in registered:
            alerts.append({"agent": name, "level": "warning", "reason": f"not registered with {REGISTRY}"})
    if status.get("state") == "degraded":
        alerts.append({"agent": DAEMON, "level": "critical", "reason": "daemon degraded"})
    for key, rule in sorted(thresholds.items()):
        source, _, metric = key.rpartition(".")
        value = metrics.get(source, {}).get(metric)
        if not isinstance(value, (int, float)) or not isinstance(rule, dict):
            continue
        if "max" in rule and value > rule["max"]:
            breach = f"{metric}={value:g} above {rule['max']:g}"
        elif "min" in rule and value < rule["min"]:
            breach = f"{metric}={value:g} below {rule['min']:g}"
        else:
            continue
        alerts.append({"agent": source, "level": rule.get("level", "warning"), "reason": breach})
    alerts.sort(key=lambda x: (_LEVELS.get(x["level"], 9), str(x["agent"]), x["reason"]))
    score = round(100.0 * total / weights) if weights else 0
    overall = "critical" if any(a["level"] == "critical" for a in alerts) else \
        "warning" if any(a["level"] == "warning" for a in alerts) else "ok"
    return {"score": score, "status": overall, "alerts": alerts, "states": dict(sorted(states.items())),
            "agents": sum(states.values())}


class ObservabilityHub(CatalogAgent):
    """Health score and alerts for the whole profile.

    Real: `health` reads sunsetd's status (states, restarts, heartbeat ages) and ServiceRegistry's table,
    and computes a weighted score and a sorted alert list (see `health_of`); agents push numeric metrics
    with `report`, which are checked against `config.thresholds` ("Agent.metric": {max|min, level});
    `event` keeps a bounded log of notable events. Stands in: nothing (no model).
    """

    CAPABILITIES = ("observability.health", "observability.metrics", "observability.alerts")

    def setup(self) -> None:
        self.metrics: dict[str, dict[str, float]] = {}
        self.events: deque = deque(maxlen=int(self.config.get("max_events", 256)))
        self.thresholds: dict = dict(self.config.get("thresholds") or {})
        super().setup()

    def _alerts_for(self, source: str) -> list[dict]:
        rules = {k: v for k, v in self.thresholds.items() if k.rpartition(".")[0] == source}
        return health_of({}, None, self.metrics, rules, 0)["alerts"]

    def handle_report(self, body: Any) -> dict:
        """{source, metrics: {name: number}} -> the alerts those metrics raise now."""
        source = field(body, "source", str)
        metrics = field(body, "metrics", dict)
        clean = {str(k): v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.metrics.setdefault(source, {}).update(clean)
        self.counters["reports"] += 1
        return {"source": source, "accepted": len(clean), "alerts": self._alerts_for(source)}

    def handle_event(self, body: Any) -> dict:
        """{source, level, message}: an event worth keeping (model evicted, agent pre-warmed, ...)."""
        level = field(body, "level", str, "info")
        if level not in _LEVELS:
            raise BadRequest(f"level must be one of {', '.join(_LEVELS)}")
        self.events.append({"seq": self.counters["events"] + 1, "source": field(body, "source", str),
                            "level": level, "message": field(body, "message", str)})
        self.counters["events"] += 1
        return {"seq": self.counters["events"]}

    def handle_events(self, body: Any) -> list[dict]:
        source = field(body, "source", str, None) if isinstance(body, dict) else None
        return [e for e in self.events if source is None or e["source"] == source]

    def handle_metrics(self, body: Any) -> dict:
        source = field(body, "source", str, None) if isinstance(body, dict) else None
        if source is not None:
            return dict(self.metrics.get(source, {}))
        return {s: dict(m) for s, m in sorted(self.metrics.items())}

    def handle_health(self, body: Any) -> dict:
        """Health of the running profile; body {status, registered} instead evaluates a given snapshot."""
        given = body if isinstance(body, dict) else {}
        status = given.get("status")
        if status is None:
            status = self.call(DAEMON, "status", timeout=2.0)
        elif not isinstance(status, dict):
            raise BadRequest("status must be a map like sunsetd's status")
        registered = given.get("registered")
        if registered is None:
            registered = set(self.call(REGISTRY, "list", timeout=2.0)["agents"])
        elif not isinstance(registered, list):
            raise BadRequest("registered must be a list of agent names")
        late_ms = float(self.config.get("late_heartbeat_ms", 1000))
        metrics = {} if given.get("status") is not None else self.metrics  # a given snapshot stands alone
        result = health_of(status, set(registered), metrics, self.thresholds, late_ms)
        result["profile"] = status.get("profile")
        self.counters["health_checks"] += 1
        return result

    def handle_alerts(self, body: Any) -> list[dict]:
        return self.handle_health(body)["alerts"]

    def handle_stats(self, body: Any) -> dict:
        counters = dict(sorted(self.counters.items()))
        self.metrics.setdefault(self.name, {}).update(counters)  # our own metrics: never a call to ourselves
        return {"agent": self.name, "counters": counters, "alerts": self._alerts_for(self.name)}


# ---- SystemDigitalTwin -----------------------------------------------------------------------------------
def linear_forecast(series: list[float], steps: int = 1, limit: float | None = None) -> dict:
    """Least-squares line through the series (x = 0..n-1); its value `steps` ahead, and when it reaches `limit`."""
    n = len(series)
    if n == 0:
        raise BadRequest("series is empty")
    mean_x, mean_y = (n - 1) / 2.0, sum(series) / n
    sxx = sum((i - mean_x) ** 2 for i in range(n))
    slope = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(series)) / sxx if sxx else 0.0
    intercept = mean_y - slope * mean_x
    ahead = [round(intercept + slope * (n - 1 + k), 3) for k in range(1, steps + 1)]
    out = {"n": n, "slope": round(slope, 6), "forecast": ahead,
           "trend": "rising" if slope > 1e-9 else "falling" if slope < -1e-9 else "flat"}
    if limit is not None:
        now = intercept + slope * (n - 1)
        if now >= limit:
            out["steps_to_limit"] = 0
        elif slope > 1e-9:
            out["steps_to_limit"] = math.ceil((limit - now) / slope - 1e-9)
        else:
            out["steps_to_limit"] = None
    return out


def read_meminfo() -> dict[str, int]:
    """/proc/meminfo in kB."""
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                out[key] = int(parts[0])
    return out


class SystemDigitalTwin(CatalogAgent):
    """Live host metrics and resource prediction.

    Real: `metrics` reads the host from /proc (memory, load) and the agents' RSS from sunsetd's status,
    keeps each as a time series and pushes it to ObservabilityHub; `can_fit` says whether a new memory
    footprint fits in what the host has available less a reserve; `observe`/`forecast`/`predict` fit a
    least-squares trend to a series (an agent's growth, a buffer's fill) and say where it goes and when
    it reaches a limit. Stands in: nothing; the "twin" is these series and their linear models.
    """

    CAPABILITIES = ("system.metrics", "system.prediction", "system.admission")

    def setup(self) -> None:
        self.series: dict[str, deque] = {}
        self.history = int(self.config.get("history", 64))
        self.reserve_mb = int(self.config.get("reserve_mb", 256))
        super().setup()

    def _record(self, metric: str, value: float) -> deque:
        s = self.series.get(metric)
        if s is None:
            s = self.series[metric] = deque(maxlen=self.history)
        s.append(float(value))
        return s

    def handle_metrics(self, body: Any) -> dict:
        mem = read_meminfo()
        total_mb, avail_mb = mem["MemTotal"] / 1024.0, mem.get("MemAvailable", mem["MemFree"]) / 1024.0
        with open("/proc/loadavg") as f:
            load1 = float(f.read().split()[0])
        status = self.call(DAEMON, "status", timeout=2.0)
        agents = status.get("agents", [])
        rss_mb = sum(a.get("rss_bytes") or 0 for a in agents) / 1048576.0
        metrics = {
            "mem_total_mb": round(total_mb, 1), "mem_available_mb": round(avail_mb, 1),
            "mem_available_pct": round(100.0 * avail_mb / total_mb, 1) if total_mb else 0.0,
            "load1": load1, "cpus": os.cpu_count() or 1,
            "agents_running": sum(a.get("pid") is not None for a in agents),
            "agents_rss_mb": round(rss_mb, 1),
        }
        for key in ("mem_available_mb", "agents_rss_mb", "load1"):
            self._record(f"host.{key}", metrics[key])
        self.report(metrics)
        self.counters["samples"] += 1
        return metrics

    def handle_can_fit(self, body: Any) -> dict:
        """{mb} -> whether that much more memory fits in what is available, keeping `reserve_mb` free."""
        mb = field(body, "mb", float)
        avail_mb = read_meminfo().get("MemAvailable", 0) / 1024.0
        fits = avail_mb - self.reserve_mb >= mb
        self.counters["admissions" if fits else "refusals"] += 1
        return {"mb": mb, "fits": fits, "available_mb": round(avail_mb, 1), "reserve_mb": self.reserve_mb}

    def handle_observe(self, body: Any) -> dict:
        """{metric, value, steps?, limit?}: add a point to a series, and forecast it."""
        metric = field(body, "metric", str)
        series = self._record(metric, field(body, "value", float))
        out = linear_forecast(list(series), int(field(body, "steps", int, 1)), field(body, "limit", float, None))
        out["metric"] = metric
        return out

    def handle_forecast(self, body: Any) -> dict:
        """{metric, steps?, limit?}: forecast a recorded series."""
        metric = field(body, "metric", str)
        if metric not in self.series:
            raise BadRequest(f"no series {metric!r} (known: {', '.join(sorted(self.series)) or 'none'})")
        out = linear_forecast(list(self.series[metric]), int(field(body, "steps", int, 1)),
                              field(body, "limit", float, None))
        out["metric"] = metric
        return out

    def handle_predict(self, body: Any) -> dict:
        """{series: [numbers], steps?, limit?}: forecast a series given whole."""
        series = field(body, "series", list)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in series):
            raise BadRequest("series must be a list of numbers")
        return linear_forecast([float(v) for v in series], int(field(body, "steps", int, 1)),
                               field(body, "limit", float, None))

    def handle_series(self, body: Any) -> dict:
        return {k: list(v) for k, v in sorted(self.series.items())}
