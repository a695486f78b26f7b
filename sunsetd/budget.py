"""The memory budget (DESIGN §2, §5): may a lazy agent start, and which idle ones make room for it.

A pure function of the agents as the budget sees them: what each counts now, what a starting one will
count, which of them could be stopped. It chooses the least recently used idle lazy agents that nothing
running or starting needs, and only as many as the start requires; or it says why the start cannot fit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True, slots=True)
class BudgetAgent:
    name: str
    footprint_mb: float  # what it counts now: observed RSS, its declared size while starting, 0 if no process
    memory_mb: int  # its declared size: what it will count when it starts
    running: bool  # it has a process, or one is being made
    evictable: bool  # lazy, ready, idle, and nothing running depends on it
    last_used: float  # when its last request came
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Room:
    victims: tuple[str, ...]  # stop these first (least recently used first); empty: it fits as it is


@dataclass(frozen=True, slots=True)
class NoRoom:
    reason: str


def make_room(budget_mb: int | None, start: str, agents: Mapping[str, BudgetAgent]) -> Room | NoRoom:
    """Room for `start` and everything it needs that is not running yet, within `budget_mb`."""
    if budget_mb is None:
        return Room(())
    starting: list[str] = []
    stack = [start]
    while stack:  # the agent and what it needs that does not run yet: all of them will count
        name = stack.pop()
        agent = agents.get(name)
        if agent is not None and name not in starting and not agent.running:
            starting.append(name)
            stack.extend(agent.depends_on)
    need = sum(agents[n].memory_mb for n in starting)
    used = sum(a.footprint_mb for a in agents.values())
    if used + need <= budget_mb:
        return Room(())
    needed: set[str] = set()
    stack = list(starting)
    while stack:  # never evict what the start itself needs
        name = stack.pop()
        if name not in needed and name in agents:
            needed.add(name)
            stack.extend(agents[name].depends_on)
    candidates = sorted((a for a in agents.values() if a.evictable and a.name not in needed),
                        key=lambda a: (a.last_used, a.name))
    victims: list[BudgetAgent] = []
    for victim in candidates:
        if used + need <= budget_mb:
            break
        victims.append(victim)
        used -= victim.footprint_mb
    if used + need > budget_mb:
        in_use = used + sum(v.footprint_mb for v in victims)
        return NoRoom(f"memory budget of {budget_mb} MB: starting {start} needs {need} MB, running agents use "
                      f"{in_use:.0f} MB and no idle lazy agent can be stopped to make room")
    return Room(tuple(v.name for v in victims))
