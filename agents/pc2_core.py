"""Reference agents of the pc2 core group: ObservabilityHub_PC2, and (below) the agents of the second
machine's core that build on it.

The "PC2" agents once ran on a second machine with a hub of their own. They keep that shape: their hub is
ObservabilityHub_PC2, which depends on no agent, so every agent of the PC2 side reports there
(`EdgeAgent`), never to the core ObservabilityHub, which is not in their dependencies. Like every
reference agent they register with ServiceRegistry at setup (ServiceRegistry calls no one, so that call
can never come back to them), so that the core hub does not flag them as unregistered.
"""
from __future__ import annotations

from typing import Any

from sunsetd.agent import CallError

from agents.infrastructure import DAEMON, CatalogAgent, ObservabilityHub, field, health_of

OH2 = "ObservabilityHub_PC2"


class EdgeAgent(CatalogAgent):
    """Base of the PC2-side reference agents: CatalogAgent, reporting to ObservabilityHub_PC2."""

    HUB_AGENT = OH2

    def report(self, metrics: dict[str, float]) -> list[dict]:
        """Push numeric metrics to ObservabilityHub_PC2; the alerts they raise there (none if unreachable)."""
        try:
            reply = self.call(self.HUB_AGENT, "report", {"source": self.name, "metrics": metrics}, timeout=2.0)
        except CallError as exc:
            self.counters["report_failures"] += 1
            self.log(f"report to {self.HUB_AGENT} failed: {exc}")
            return []
        return reply.get("alerts", []) if isinstance(reply, dict) else []

    def event(self, message: str, level: str = "info") -> None:
        """A notable event, kept by ObservabilityHub_PC2; an unreachable hub is logged, not fatal."""
        try:
            self.call(self.HUB_AGENT, "event", {"source": self.name, "level": level, "message": message}, timeout=2.0)
        except CallError as exc:
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
            from sunsetd.agent import BadRequest

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
