"""Reference agents of the dream group: DreamWorldAgent, DreamingModeAgent.

A "scenario" is a small deterministic world: a grid of cells given as strings, `S` the start, `G` a goal
(+1, ends the episode), `X` a pit (-1, ends it), `#` a wall, `.` open ground; moves N, E, S, W, a move
into a wall or off the grid stays put, each step costs 0.01. DreamWorldAgent plans in it with Monte Carlo
tree search; DreamingModeAgent rehearses variations of a scenario while the system is idle.
"""
from __future__ import annotations

import math
import random
from collections import deque
from typing import Any

from sunsetd.agent import BadRequest

from agents.infrastructure import DAEMON, field
from agents.pc2_core import MOS, EdgeAgent

WORLD = "DreamWorldAgent"
ACTIONS = (("N", -1, 0), ("E", 0, 1), ("S", 1, 0), ("W", 0, -1))
STEP_COST = 0.01
MAX_SIDE = 12


class GridWorld:
    """The simulator: deterministic moves and rewards on a parsed grid."""

    def __init__(self, grid: Any):
        if not isinstance(grid, list) or not grid or not all(isinstance(r, str) for r in grid):
            raise BadRequest("grid must be a list of strings")
        if len(grid) > MAX_SIDE or len({len(r) for r in grid}) != 1 or not 0 < len(grid[0]) <= MAX_SIDE:
            raise BadRequest(f"grid rows must have one length, and each side at most {MAX_SIDE}")
        if set("".join(grid)) - set("SG#X."):
            raise BadRequest("grid cells must be S, G, X, # or .")
        starts = [(r, c) for r, row in enumerate(grid) for c, ch in enumerate(row) if ch == "S"]
        if len(starts) != 1 or "G" not in "".join(grid):
            raise BadRequest("a grid needs exactly one S and at least one G")
        self.grid, self.start = grid, starts[0]
        self.h, self.w = len(grid), len(grid[0])
        self.goals = [(r, c) for r, row in enumerate(grid) for c, ch in enumerate(row) if ch == "G"]

    def step(self, pos: tuple[int, int], a: int) -> tuple[tuple[int, int], float, bool]:
        _, dr, dc = ACTIONS[a]
        r, c = pos[0] + dr, pos[1] + dc
        if not (0 <= r < self.h and 0 <= c < self.w) or self.grid[r][c] == "#":
            r, c = pos
        cell = self.grid[r][c]
        if cell == "G":
            return (r, c), 1.0, True
        if cell == "X":
            return (r, c), -1.0, True
        return (r, c), -STEP_COST, False

    def moves(self, pos: tuple[int, int]) -> list[int]:
        """The moves that go somewhere (bumping into a wall or the edge is never worth trying)."""
        out = [a for a in range(4) if self.step(pos, a)[0] != pos]
        return out or [0]

    def distance(self, pos: tuple[int, int]) -> int:
        """Manhattan distance to the nearest goal (walls ignored): the rollouts' sense of direction."""
        return min(abs(pos[0] - r) + abs(pos[1] - c) for r, c in self.goals)

    def shortest(self) -> int | None:
        """Fewest moves from S to a goal, avoiding pits (breadth-first search); None if there is no way."""
        seen, todo = {self.start}, deque([(self.start, 0)])
        while todo:
            pos, d = todo.popleft()
            for a in range(4):
                nxt, reward, done = self.step(pos, a)
                if nxt in seen or (done and reward < 0):
                    continue
                if done:
                    return d + 1
                seen.add(nxt)
                todo.append((nxt, d + 1))
        return None


class _Node:
    __slots__ = ("pos", "done", "reward", "moves", "children", "n", "total")

    def __init__(self, world: GridWorld, pos: tuple[int, int], done: bool, reward: float):
        self.pos, self.done, self.reward = pos, done, reward
        self.moves = world.moves(pos)
        self.children: dict[int, _Node] = {}
        self.n, self.total = 0, 0.0


def rollout_move(world: GridWorld, pos: tuple[int, int], rng: random.Random, greed: float) -> int:
    """The rollout policy: mostly a move that avoids pits and gets closer to a goal, sometimes any move."""
    moves = world.moves(pos)
    if rng.random() < greed:
        safe = [a for a in moves if not (lambda s: s[2] and s[1] < 0)(world.step(pos, a))] or moves
        best = min(world.distance(world.step(pos, a)[0]) for a in safe)
        return rng.choice([a for a in safe if world.distance(world.step(pos, a)[0]) == best])
    return rng.choice(moves)


def mcts_action(world: GridWorld, pos: tuple[int, int], horizon: int, iterations: int, rng: random.Random,
                gamma: float, greed: float = 0.7, c: float = 1.0) -> tuple[int, dict[int, int]]:
    """UCT from `pos`: the most visited first move, and every move's visits."""
    root = _Node(world, pos, False, 0.0)
    depth_limit = min(horizon, 2 * (world.h + world.w))
    for _ in range(iterations):
        node, path, depth = root, [root], 0
        while not node.done and depth < depth_limit:  # selection, then expansion of one new move
            untried = [a for a in node.moves if a not in node.children]
            if untried:
                a = untried[0]
                nxt, r, done = world.step(node.pos, a)
                node.children[a] = node = _Node(world, nxt, done, r)
                path.append(node)
                depth += 1
                break
            log_n = math.log(node.n)
            parent = node
            a = max(parent.moves, key=lambda i: parent.children[i].total / parent.children[i].n
                    + c * math.sqrt(log_n / parent.children[i].n))
            node = parent.children[a]
            path.append(node)
            depth += 1
        g, discount, p, done = 0.0, 1.0, node.pos, node.done  # rollout from the leaf
        while not done and depth < depth_limit:
            p, r, done = world.step(p, rollout_move(world, p, rng, greed))
            g += discount * r
            discount *= gamma
            depth += 1
        for n in reversed(path):  # back-up: a node's value is the return from the move into it
            if n is not root:
                g = n.reward + gamma * g
            n.n += 1
            n.total += g
    visits = {a: ch.n for a, ch in root.children.items()}
    best = max(sorted(visits), key=lambda a: (visits[a], root.children[a].total / root.children[a].n))
    return best, visits


def plan(world: GridWorld, iterations: int, max_steps: int, seed: int, gamma: float) -> dict:
    """Receding-horizon MCTS: search, take the best move, repeat until the episode ends or max_steps."""
    rng = random.Random(seed)
    pos, moves, path, ret, discount, outcome = world.start, [], [list(world.start)], 0.0, 1.0, "none"
    first_visits: dict[int, int] = {}
    for step in range(max_steps):
        a, visits = mcts_action(world, pos, max_steps - step, iterations, rng, gamma)
        if step == 0:
            first_visits = visits
        pos, r, done = world.step(pos, a)
        moves.append(ACTIONS[a][0])
        path.append(list(pos))
        ret += discount * r
        discount *= gamma
        if done:
            outcome = "goal" if r > 0 else "pit"
            break
    return {"actions": "".join(moves), "path": path, "outcome": outcome, "steps": len(moves),
            "return": round(ret, 4), "first_move_visits": {ACTIONS[a][0]: n for a, n in sorted(first_visits.items())}}


class DreamWorldAgent(EdgeAgent):
    """Scenario simulation: plans through a small deterministic world with Monte Carlo tree search.

    Real: the grid-world simulator, UCT search (random rollouts from a seeded generator, so a given seed
    gives the same plan every time) replanned after every move, the breadth-first optimum to measure the
    plan's regret against, `replay` of a given move string; every simulation is recorded in
    MemoryOrchestratorService (namespace `dreams`) and `history` reads them back. Stands in: the grid
    world stands in for a learned world model, `weights_mb` of held memory for its weights.
    """

    CAPABILITIES = ("dream.simulate", "dream.mcts")

    def setup(self) -> None:
        self.iterations = int(self.config.get("iterations", 300))
        self.gamma = float(self.config.get("gamma", 0.95))
        self.hold_weights()
        super().setup()

    def handle_simulate(self, body: Any) -> dict:
        """{grid, seed?, iterations?, max_steps?, name?} -> the plan, its outcome, return and regret."""
        world = GridWorld(field(body, "grid", list))
        iterations = field(body, "iterations", int, self.iterations)
        if not 1 <= iterations <= 5000:
            raise BadRequest("iterations must be 1..5000")
        max_steps = field(body, "max_steps", int, 4 * (world.h + world.w))
        if not 1 <= max_steps <= 200:
            raise BadRequest("max_steps must be 1..200")
        result = plan(world, iterations, max_steps, field(body, "seed", int, 0), self.gamma)
        optimal = world.shortest()
        result["optimal_steps"] = optimal
        result["regret"] = result["steps"] - optimal if result["outcome"] == "goal" and optimal is not None else None
        record = {"name": field(body, "name", str, None), "grid": world.grid,
                  **{k: result[k] for k in ("actions", "outcome", "steps", "optimal_steps", "regret", "return")}}
        result["dream"] = self.call(MOS, "append", {"ns": "dreams", "value": record}, timeout=2.0)["index"]
        self.counters["simulations"] += 1
        self.counters[f"outcome.{result['outcome']}"] += 1
        return result

    def handle_replay(self, body: Any) -> dict:
        """{grid, actions: "EESN..."} -> the path those moves take and how the episode ends."""
        world = GridWorld(field(body, "grid", list))
        actions = field(body, "actions", str)
        index = {name: i for i, (name, _, _) in enumerate(ACTIONS)}
        if set(actions) - set(index):
            raise BadRequest("actions must be a string of N, E, S, W")
        pos, path, ret, discount, outcome = world.start, [list(world.start)], 0.0, 1.0, "none"
        for ch in actions:
            pos, r, done = world.step(pos, index[ch])
            path.append(list(pos))
            ret += discount * r
            discount *= self.gamma
            if done:
                outcome = "goal" if r > 0 else "pit"
                break
        return {"path": path, "outcome": outcome, "steps": len(path) - 1, "return": round(ret, 4)}

    def handle_history(self, body: Any) -> dict:
        """{last?} -> recorded simulations, oldest first (from MemoryOrchestratorService)."""
        last = field(body, "last", int, None) if isinstance(body, dict) else None
        listing = self.call(MOS, "list", {"ns": "dreams", "last": last}, timeout=2.0)
        return {"total": listing["total"], "dreams": [dict(i["value"], index=int(i["key"])) for i in listing["items"]]}


# ---- DreamingModeAgent -----------------------------------------------------------------------------------
def variants(grid: list[str], n: int, seed: int, pits: int = 1) -> list[list[str]]:
    """n solvable variations of a grid: `pits` (+ k % 2) more pits on open ground, from a seeded generator."""
    out, rng, tries = [], random.Random(seed), 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        cells = [list(row) for row in grid]
        free = [(r, c) for r, row in enumerate(cells) for c, ch in enumerate(row) if ch == "."]
        for r, c in rng.sample(free, min(len(free), pits + len(out) % 2)):
            cells[r][c] = "X"
        v = ["".join(row) for row in cells]
        if GridWorld(v).shortest() is not None and v not in out:
            out.append(v)
    return out


class DreamingModeAgent(EdgeAgent):
    """Dreaming mode: while the system is idle, rehearses variations of a scenario and keeps what it learnt.

    Real: `dream` first asks sunsetd's status whether the system is busy (a backlog at any other agent,
    or `busy_inflight` agents at work; with `when_idle`, the default, a busy system means no dream),
    then makes seeded, solvable variations of the scenario (extra pits), has DreamWorldAgent plan through
    each, and sums them up: success rate, mean regret against the optimum, the hardest variation; insights
    are kept (bounded) and pushed to ObservabilityHub_PC2. Stands in: rehearsal in a grid world stands in
    for offline replay of real episodes.
    """

    CAPABILITIES = ("dream.mode", "dream.insights")

    def setup(self) -> None:
        self.insights: deque = deque(maxlen=int(self.config.get("keep", 32)))
        self.mode = "awake"
        self.busy_inflight = int(self.config.get("busy_inflight", 3))
        super().setup()

    def _busy(self) -> list[str]:
        """Agents with a backlog (requests queued at sunsetd, or more than one in flight: with the default
        concurrency of 1, all but one wait), or every agent with a request in flight when `busy_inflight` or
        more have one; a lone call in flight somewhere is background noise, not a busy system."""
        others = [a for a in self.call(DAEMON, "status", timeout=2.0)["agents"] if a["name"] != self.name]
        backlog = sorted(a["name"] for a in others if a.get("queued") or (a.get("inflight") or 0) > 1)
        if backlog:
            return backlog
        inflight = sorted(a["name"] for a in others if a.get("inflight"))
        return inflight if len(inflight) >= self.busy_inflight else []

    def handle_dream(self, body: Any) -> dict:
        """{grid, variants?: 4, seed?: 0, iterations?, when_idle?: true} -> what the rehearsal taught."""
        grid = field(body, "grid", list)
        GridWorld(grid)
        n = field(body, "variants", int, 4)
        if not 1 <= n <= 16:
            raise BadRequest("variants must be 1..16")
        if field(body, "when_idle", bool, True):
            busy = self._busy()
            if busy:
                self.counters["postponed"] += 1
                return {"dreamed": False, "reason": f"busy: {', '.join(busy)}"}
        seed = field(body, "seed", int, 0)
        self.mode = "dreaming"
        try:
            runs = []
            for i, v in enumerate(variants(grid, n, seed)):
                req = {"grid": v, "seed": seed + i, "name": f"variant {i}"}
                if isinstance(body.get("iterations"), int):
                    req["iterations"] = body["iterations"]
                r = self.call(WORLD, "simulate", req, timeout=20.0)
                runs.append({"grid": v, "outcome": r["outcome"], "steps": r["steps"], "regret": r["regret"]})
        finally:
            self.mode = "awake"
        solved = [r for r in runs if r["outcome"] == "goal"]
        hardest = max(runs, key=lambda r: (r["outcome"] != "goal", r["regret"] or 0, r["steps"]), default=None)
        insight = {"variants": len(runs), "solved": len(solved),
                   "success_rate": round(len(solved) / len(runs), 3) if runs else 0.0,
                   "mean_regret": round(sum(r["regret"] for r in solved) / len(solved), 3) if solved else None,
                   "hardest": hardest, "runs": runs}
        self.insights.append({k: v for k, v in insight.items() if k != "runs"})
        self.counters["dreams"] += 1
        self.report({"success_rate": insight["success_rate"], "dreams": self.counters["dreams"]})
        return {"dreamed": True, **insight}

    def handle_insights(self, body: Any) -> dict:
        return {"mode": self.mode, "insights": list(self.insights)}
