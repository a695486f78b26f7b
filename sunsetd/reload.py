"""Profile reload (DESIGN §6): what changed, and whether a changed agent's new definition holds.

`plan` is the pure diff between the agents running now and a new profile. A `SettleWatch` follows one
changed agent that had to restart: it settles when an incarnation of the new definition becomes ready,
and asks for a rollback when one dies or hangs while starting, or when its time is up. `ReloadOutcome`
collects what happened to each agent, which is what the operator is told. Nothing here touches a
process, a socket or a clock: the supervisor feeds transitions and `now`, and carries out the verdicts.
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, Mapping

from sunsetd.policy import State, Transition
from sunsetd.profile import AgentSpec, Profile

SETTLE_SLACK_S = 1.0


@dataclass(frozen=True)
class ReloadPlan:
    profile: Profile
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    unchanged: int
    previous: Mapping[str, AgentSpec]  # the definition each changed agent had


def differences(old: AgentSpec, new: AgentSpec) -> list[str]:
    """The fields in which two definitions of an agent differ."""
    return [f.name for f in dataclasses.fields(old) if getattr(old, f.name) != getattr(new, f.name)]


def preview(p: ReloadPlan) -> dict[str, Any]:
    """What applying the plan would do (`sunsetctl reload --dry-run`), and to which fields."""
    moved = set(p.added) | set(p.changed)
    return {"dry_run": True, "profile": p.profile.name, "added": list(p.added), "removed": list(p.removed),
            "changed": {n: differences(p.previous[n], p.profile.by_name[n]) for n in p.changed},
            "unchanged": [n for n in p.profile.by_name if n not in moved]}


def plan(current: Mapping[str, AgentSpec], new: Profile) -> ReloadPlan:
    """The difference between the running definitions and `new`, in the new profile's order."""
    specs = new.by_name
    added = tuple(n for n in specs if n not in current)
    removed = tuple(n for n in current if n not in specs)
    changed = tuple(n for n in specs if n in current and specs[n] != current[n])
    return ReloadPlan(new, added, removed, changed, len(specs) - len(added) - len(changed),
                      {n: current[n] for n in changed})


def settle_budget_s(previous: AgentSpec, new: AgentSpec, running: bool) -> float:
    """How long a changed agent may take: stop the old incarnation (if there is one), start the new."""
    stop = max(previous.stop_timeout_s, new.stop_timeout_s) if running else 0.0
    return stop + new.start_timeout_s + SETTLE_SLACK_S


def dependency_cycle(specs: Mapping[str, AgentSpec]) -> list[str] | None:
    """A cycle among these definitions' depends_on (names not among them are ignored), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in specs[name].depends_on:
            if dep not in specs or state.get(dep) == 2:
                continue
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            found = visit(dep)
            if found:
                return found
        path.pop()
        state[name] = 2
        return None

    for name in specs:
        if name not in state:
            found = visit(name)
            if found:
                return found
    return None


class Verdict(enum.Enum):
    SETTLED = "ready"
    ROLL_BACK = "rolled back"


@dataclass(frozen=True, slots=True)
class Settled:
    verdict = Verdict.SETTLED


@dataclass(frozen=True, slots=True)
class RollBack:
    reason: str
    verdict = Verdict.ROLL_BACK


@dataclass(slots=True)
class SettleWatch:
    """One changed agent on trial: incarnations up to `after` ran the old definition."""

    agent: str
    after: int
    deadline: float
    outcome: "ReloadOutcome"
    previous: AgentSpec  # what a rollback goes back to

    def on_transition(self, incarnation: int, t: Transition) -> Settled | RollBack | None:
        if incarnation <= self.after:
            return None  # still the old incarnation, stopping
        if t.new is State.READY:
            return Settled()
        if t.old is State.STARTING:  # the new definition's process died or hung while starting
            return RollBack(f"new spec did not become ready: {t.reason}")
        return None

    def on_deadline(self, now: float) -> RollBack | None:
        if now < self.deadline:
            return None
        return RollBack(f"new spec not ready within {self.deadline - self.outcome.applied_at:g}s")


@dataclass
class ReloadOutcome:
    """What one reload did, agent by agent; `settled` once no changed agent is on trial any more."""

    number: int
    plan: ReloadPlan
    applied_at: float
    settle_s: float = 0.0
    outcomes: dict[str, str] = field(default_factory=dict)  # changed agent -> what happened to it
    waiting: set[str] = field(default_factory=set)

    @property
    def settled(self) -> bool:
        return not self.waiting

    def watch(self, agent: str, after: int, budget_s: float, previous: AgentSpec) -> SettleWatch:
        self.waiting.add(agent)
        self.outcomes[agent] = "restarting"
        self.settle_s = max(self.settle_s, budget_s)
        return SettleWatch(agent, after, self.applied_at + budget_s, self, previous)

    def done(self, agent: str, what: str) -> None:
        self.waiting.discard(agent)
        self.outcomes[agent] = what

    def body(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "reload": self.number,
            "profile": plan.profile.name,
            "added": list(plan.added),
            "removed": list(plan.removed),
            "changed": list(plan.changed),
            "unchanged": plan.unchanged,
            "settled": self.settled,
            "settle_s": self.settle_s,
            "outcomes": dict(self.outcomes),
            "rolled_back": sorted(a for a, o in self.outcomes.items() if o.startswith(Verdict.ROLL_BACK.value)),
            "superseded": sorted(a for a, o in self.outcomes.items() if o == "superseded"),
        }
