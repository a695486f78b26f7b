"""Reference agents of the reasoning group: ChainOfThoughtAgent, GoTToTAgent, CognitiveModelAgent.

Reasoning here is symbolic and exact: arithmetic on fractions, forward chaining over propositions,
search over partial solutions with an exact evaluator. Every step is recorded, so an answer always comes
with the chain that produced it. What stands in is the language model a "chain of thought" would come
from: the steps are computed, not generated.
"""
from __future__ import annotations

import ast
import itertools
import re
from fractions import Fraction
from typing import Any

from sunsetd.agent import BadRequest

from agents.infrastructure import TWIN, CatalogAgent, field
from agents.speech import ModelBacked

COT = "ChainOfThoughtAgent"

_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**"}
_WORD_OPS = [  # word problems and spoken arithmetic -> symbols; longest first
    (r"\bmultiplied by\b", "*"), (r"\bdivided by\b", "/"), (r"\bto the power of\b", "**"), (r"\btimes\b", "*"),
    (r"\bplus\b", "+"), (r"\bminus\b", "-"), (r"\bover\b", "/"), (r"\bsquared\b", "** 2"), (r"\bcubed\b", "** 3"),
    (r"\bmod(?:ulo)?\b", "%"), (r"\bx\b", "*"), ("×", "*"), ("÷", "/"), (r"\^", "**")]
_EXPR_CHARS = re.compile(r"[^0-9+\-*/%().\s]")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
# verbs of a word problem -> the operation they apply to the running quantity
_VERBS = [("*", ("times as many", "doubles", "triples")),
          ("/", ("splits", "shares", "divides", "halves")),
          ("-", ("gives", "loses", "eats", "spends", "sells", "drops", "uses", "away", "fewer", "less", "removes",
                 "breaks", "lends", "pays")),
          ("+", ("buys", "gets", "finds", "receives", "adds", "more", "earns", "gains", "picks", "collects",
                 "borrows", "makes", "wins"))]
MAX_EXPONENT = 64
MAX_DIGITS = 200


def as_number(x: Fraction) -> int | float:
    return x.numerator if x.denominator == 1 else round(float(x), 10)


def fmt(x: Fraction, operand: bool = False) -> str:
    if x.denominator == 1:
        return str(x.numerator)
    return f"({x.numerator}/{x.denominator})" if operand else f"{x.numerator}/{x.denominator}"


def evaluate_steps(expression: str) -> tuple[Fraction, list[dict]]:
    """Exact value of an arithmetic expression, and each operation in the order it is carried out."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise BadRequest(f"not an arithmetic expression: {expression!r} ({exc.msg})") from None
    steps: list[dict] = []

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            a, b = ev(node.left), ev(node.right)
            op = _OPS[type(node.op)]
            if op in ("/", "//", "%") and b == 0:
                raise BadRequest(f"division by zero in {fmt(a)} {op} {fmt(b)}")
            if op == "**":
                if b.denominator != 1 or abs(b) > MAX_EXPONENT:
                    raise BadRequest(f"exponent {fmt(b)} must be a whole number of at most {MAX_EXPONENT}")
                if a == 0 and b < 0:
                    raise BadRequest("zero to a negative power")
                r = a ** int(b)
            elif op == "+":
                r = a + b
            elif op == "-":
                r = a - b
            elif op == "*":
                r = a * b
            elif op == "/":
                r = a / b
            elif op == "//":
                r = Fraction(a // b)
            else:
                r = a % b
            if len(str(r.numerator)) > MAX_DIGITS or len(str(r.denominator)) > MAX_DIGITS:
                raise BadRequest("numbers grow too large")
            steps.append({"step": len(steps) + 1, "op": op, "left": as_number(a), "right": as_number(b),
                          "result": as_number(r), "text": f"{fmt(a, True)} {op} {fmt(b, True)} = {fmt(r)}"})
            return r
        raise BadRequest(f"only numbers and + - * / // % ** are allowed, not {type(node).__name__}")

    return ev(tree.body), steps


def word_problem(text: str) -> tuple[str, list[str]] | None:
    """A word problem as a left-to-right chain of operations on a running quantity, or None.

    The first number is the start; each later clause with a number applies the operation its verb
    implies ("buys 3 more": + 3, "gives away 2": - 2, "shares equally among 4": / 4)."""
    clauses = [c for c in re.split(r"[.,;!?]|\band then\b|\bthen\b|\band\b", text.lower()) if c.strip()]
    expr, notes = "", []
    for clause in clauses:
        numbers = _NUMBER.findall(clause)
        if not numbers:
            continue
        if not expr:
            expr = numbers[0]
            notes.append(f"start with {numbers[0]}")
            numbers = numbers[1:]
            if not numbers:
                continue
        op = next((o for o, verbs in _VERBS if any(re.search(rf"\b{v}\b", clause) for v in verbs)), None)
        if op is None:
            return None
        for n in numbers:
            expr = f"({expr} {op} {n})"
            notes.append(f"'{clause.strip()}': {op} {n}")
    return (expr, notes) if expr and notes[1:] else None


def to_expression(problem: str) -> tuple[str, list[str]]:
    text = problem.strip().lower().rstrip("?.! ")
    text = re.sub(r"^(what is|what's|calculate|compute|evaluate|how much is|solve)\s+", "", text)
    spoken = text
    for pattern, symbol in _WORD_OPS:
        spoken = re.sub(pattern, f" {symbol} ", spoken)
    if not re.search(r"[a-z]", spoken):
        return " ".join(spoken.split()), []
    chain = word_problem(problem)
    if chain is not None:
        return chain
    candidate = " ".join(_EXPR_CHARS.sub(" ", spoken).split())
    if not _NUMBER.search(candidate):
        raise BadRequest(f"no arithmetic found in {problem!r}")
    return candidate, []


def forward_chain(facts: list[str], rules: list[tuple[list[str], str]], max_steps: int = 1000) -> tuple[dict, list]:
    """Forward chaining to a fixpoint: every derived fact with the rule and premises that gave it first."""
    known: dict[str, dict | None] = {f: None for f in facts}  # fact -> how it was derived (None: given)
    steps = []
    changed = True
    while changed and len(steps) < max_steps:
        changed = False
        for i, (premises, conclusion) in enumerate(rules):
            if conclusion not in known and all(p in known for p in premises):
                known[conclusion] = {"rule": i, "from": list(premises)}
                steps.append({"step": len(steps) + 1, "rule": i, "from": list(premises), "derived": conclusion})
                changed = True
    return known, steps


def proof_of(goal: str, known: dict) -> tuple[list[dict], list[str]]:
    """The derivation steps a goal needs (premises first), and the given facts it rests on."""
    steps, given, seen = [], [], set()

    def walk(fact: str) -> None:
        if fact in seen:
            return
        seen.add(fact)
        how = known[fact]
        if how is None:
            given.append(fact)
            return
        for p in how["from"]:
            walk(p)
        steps.append({"rule": how["rule"], "from": how["from"], "derived": fact})

    walk(goal)
    return steps, sorted(given)


def norm_prop(text: str) -> str:
    return " ".join(str(text).lower().strip().rstrip(".").split())


def negation(prop: str) -> str:
    return prop[4:] if prop.startswith("not ") else f"not {prop}"


def parse_rules(raw: Any) -> list[tuple[list[str], str]]:
    if not isinstance(raw, list):
        raise BadRequest("rules must be a list of {if: [...], then: ...}")
    rules = []
    for r in raw:
        premises, conclusion = field(r, "if", list), field(r, "then", str)
        if not premises or not all(isinstance(p, str) and p.strip() for p in premises):
            raise BadRequest("each rule needs a non-empty list of premises")
        rules.append(([norm_prop(p) for p in premises], norm_prop(conclusion)))
    return rules


# ---- ChainOfThoughtAgent ---------------------------------------------------------------------------------
class ChainOfThoughtAgent(ModelBacked):
    """Step-by-step reasoning: arithmetic and word problems, and deduction over rules.

    Real: `solve` turns a problem (an expression, spoken arithmetic, or a simple word problem whose verbs
    say what happens to a quantity) into an expression, evaluates it exactly on fractions one operation
    at a time (each operation is a step of the chain) and verifies the answer by evaluating it a second
    way; `deduce` forward-chains rules over facts to a fixpoint and gives the proof of a goal and any
    contradictions. The model is admitted by SystemDigitalTwin and pinned in ModelManagerSuite; each
    request is one use of it. Stands in: computed steps for a language model's generated ones,
    `weights_mb` of held memory for its weights.
    """

    CAPABILITIES = ("reasoning.chain_of_thought", "reasoning.arithmetic", "reasoning.deduction")
    MODEL = "cot-reasoner"

    def setup(self) -> None:
        self.load_model()
        super().setup()

    def handle_solve(self, body: Any) -> dict:
        """{problem} -> {expression, steps: [{op, left, right, result, text}], answer, fraction, verified}."""
        problem = body if isinstance(body, str) else field(body, "problem", str)
        expression, reading = to_expression(problem)
        value, steps = evaluate_steps(expression)
        self.use_model()
        try:  # a second, independent evaluation of the same whitelisted tree, in floating point
            check = float(eval(compile(ast.parse(expression, mode="eval"), "<expr>", "eval"), {"__builtins__": {}}))
            verified = abs(check - float(value)) <= 1e-9 * max(1.0, abs(check))
        except (ArithmeticError, ValueError):
            verified = False
        self.counters["solved"] += 1
        return {"problem": problem, "reading": reading, "expression": expression, "steps": steps,
                "answer": as_number(value), "fraction": fmt(value), "verified": verified}

    def handle_deduce(self, body: Any) -> dict:
        """{facts: [..], rules: [{if: [..], then}], goal?} -> derived facts in order, contradictions, and
        whether the goal follows (with its proof and the given facts it rests on)."""
        facts = [norm_prop(f) for f in field(body, "facts", list) if isinstance(f, str) and f.strip()]
        rules = parse_rules(field(body, "rules", list, []))
        known, steps = forward_chain(facts, rules, int(self.config.get("max_steps", 1000)))
        self.use_model()
        contradictions = sorted(f for f in known if not f.startswith("not ") and f"not {f}" in known)
        out = {"derived": [s["derived"] for s in steps], "steps": steps, "contradictions": contradictions,
               "facts": len(known)}
        goal = field(body, "goal", str, None)
        if goal is not None:
            goal = norm_prop(goal)
            if goal in known:
                proof, given = proof_of(goal, known)
                out.update(goal=goal, proved=True, proof=proof, given=given)
            else:
                out.update(goal=goal, proved=False, refuted=negation(goal) in known, proof=[], given=[])
        self.counters["deductions"] += 1
        return out


# ---- GoTToTAgent -----------------------------------------------------------------------------------------
def _combine(a: tuple[Fraction, str], b: tuple[Fraction, str]) -> list[tuple[Fraction, str]]:
    (x, ex), (y, ey) = a, b
    out = [(x + y, f"({ex} + {ey})"), (x * y, f"({ex} * {ey})"), (x - y, f"({ex} - {ey})"), (y - x, f"({ey} - {ex})")]
    if y != 0:
        out.append((x / y, f"({ex} / {ey})"))
    if x != 0:
        out.append((y / x, f"({ey} / {ex})"))
    return out


def _children(state: tuple) -> list[tuple]:
    kids = []
    for i, j in itertools.combinations(range(len(state)), 2):
        rest = [s for k, s in enumerate(state) if k not in (i, j)]
        for value in _combine(state[i], state[j]):
            kids.append(tuple(sorted(rest + [value], key=lambda s: (s[0], s[1]))))
    return kids


def _reachable(values: tuple[Fraction, ...], target: Fraction, memo: dict) -> bool:
    """Exact evaluator: can these numbers still make the target? (the 'sure / impossible' of a thought)"""
    key = tuple(sorted(values))
    if key in memo:
        return memo[key]
    if len(key) == 1:
        memo[key] = key[0] == target
        return memo[key]
    ok = False
    for i, j in itertools.combinations(range(len(key)), 2):
        rest = [v for k, v in enumerate(key) if k not in (i, j)]
        x, y = key[i], key[j]
        for v in {x + y, x - y, y - x, x * y} | ({x / y} if y else set()) | ({y / x} if x else set()):
            if _reachable(tuple(rest + [v]), target, memo):
                ok = True
                break
        if ok:
            break
    memo[key] = ok
    return ok


class GoTToTAgent(ModelBacked):
    """Tree-of-thought search: combine numbers into a target (the "Game of 24" of the ToT paper).

    Real: breadth-first tree-of-thought search with a beam: each thought combines two of the remaining
    numbers with + - * /; every thought is valued (1 "sure" when the numbers left can still make the
    target, found by an exact exhaustive evaluator on fractions while few numbers are left, 0
    "impossible", and a closeness heuristic while many are left), the best `beam` thoughts of each depth
    are kept, and the solution found is checked step by step by ChainOfThoughtAgent. The model is pinned
    in ModelManagerSuite and each search is a use. Stands in: the value function is exact arithmetic,
    not a language model's judgement.
    """

    CAPABILITIES = ("reasoning.tree_of_thought", "reasoning.search")
    MODEL = "tot-search"

    def setup(self) -> None:
        self.load_model()
        self.beam = int(self.config.get("beam", 5))
        self.exact_below = int(self.config.get("exact_below", 4))  # value thoughts exactly with <= this many numbers
        super().setup()

    def _value(self, state: tuple, target: Fraction, memo: dict) -> float:
        if len(state) <= self.exact_below:
            return 1.0 if _reachable(tuple(v for v, _ in state), target, memo) else 0.0
        closest = min(abs(v - target) for v, _ in state)
        return 0.5 / (1.0 + float(closest))

    def handle_search(self, body: Any) -> dict:
        """{numbers: [2..6 numbers], target?: 24, beam?} -> {solved, expression, tree: per-depth counts,
        nodes, verification: ChainOfThoughtAgent's steps for the expression found}."""
        numbers = field(body, "numbers", list)
        if not 2 <= len(numbers) <= 6 or not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
            raise BadRequest("numbers must be a list of 2 to 6 integers")
        target = Fraction(field(body, "target", int, 24))
        beam = field(body, "beam", int, self.beam)
        if beam < 1:
            raise BadRequest("beam must be at least 1")
        self.use_model()
        memo: dict = {}
        frontier = [tuple(sorted(((Fraction(n), str(n)) for n in numbers), key=lambda s: (s[0], s[1])))]
        tree, nodes = [], 0
        while frontier and len(frontier[0]) > 1:
            generated: dict[tuple, float] = {}
            for state in frontier:
                for kid in _children(state):
                    if kid not in generated:
                        generated[kid] = self._value(kid, target, memo)
            nodes += len(generated)
            ranked = sorted(generated.items(), key=lambda kv: (-kv[1], sum(len(e) for _, e in kv[0]),
                                                                [e for _, e in kv[0]]))
            frontier = [s for s, v in ranked[:beam] if v > 0.0]
            tree.append({"depth": len(tree) + 1, "generated": len(generated), "kept": len(frontier),
                         "sure": sum(1 for v in generated.values() if v == 1.0)})
        solutions = [s[0] for s in frontier if len(s) == 1 and s[0][0] == target]
        self.counters["searches"] += 1
        self.counters["nodes"] += nodes
        if not solutions:
            return {"numbers": numbers, "target": as_number(target), "solved": False, "expression": None,
                    "tree": tree, "nodes": nodes, "verification": None}
        expression = solutions[0][1][1:-1] if solutions[0][1].startswith("(") else solutions[0][1]
        check = self.call(COT, "solve", {"problem": expression}, timeout=5.0)
        return {"numbers": numbers, "target": as_number(target), "solved": check["answer"] == as_number(target),
                "expression": expression, "tree": tree, "nodes": nodes,
                "verification": {"steps": [s["text"] for s in check["steps"]], "answer": check["answer"]}}


# ---- CognitiveModelAgent ---------------------------------------------------------------------------------
class CognitiveModelAgent(CatalogAgent):
    """Beliefs: what the system holds true, how strongly, and what follows from it.

    Real: a belief base of propositions with confidences and sources; revision on contradiction (a new
    belief that contradicts a held one replaces it only if it is held more strongly, and the conflict is
    recorded); rules; `ask` has ChainOfThoughtAgent forward-chain the beliefs at or above `min_confidence`
    through the rules and answers true (proved), false (the negation is proved) or unknown, with the
    proof and a confidence that is the weakest belief the proof rests on. The belief count is recorded at
    SystemDigitalTwin. Stands in: nothing; propositions are normalised strings, not parsed meanings.
    """

    CAPABILITIES = ("reasoning.beliefs",)

    def setup(self) -> None:
        self.beliefs: dict[str, dict] = {}
        self.rules: list[tuple[list[str], str]] = []
        self.conflicts: list[dict] = []
        self.min_confidence = float(self.config.get("min_confidence", 0.5))
        for b in self.config.get("beliefs") or ():
            self._tell(norm_prop(b), 1.0, "config")
        self.rules = parse_rules(self.config.get("rules") or [])
        super().setup()

    def _tell(self, prop: str, confidence: float, source: str) -> dict:
        if not prop:
            raise BadRequest("a belief must say something")
        if not 0.0 <= confidence <= 1.0:
            raise BadRequest("confidence must be between 0 and 1")
        rival = negation(prop)
        held = self.beliefs.get(rival)
        if held is not None:
            if held["confidence"] >= confidence:
                self.conflicts.append({"kept": rival, "rejected": prop, "confidence": confidence})
                return {"belief": prop, "accepted": False, "conflicts_with": rival}
            del self.beliefs[rival]
            self.conflicts.append({"kept": prop, "rejected": rival, "confidence": held["confidence"]})
        self.beliefs[prop] = {"confidence": confidence, "source": source}
        return {"belief": prop, "accepted": True, "conflicts_with": rival if held else None}

    def handle_tell(self, body: Any) -> dict:
        """{belief, confidence?, source?}: add or revise a belief ("not x" contradicts "x")."""
        out = self._tell(norm_prop(field(body, "belief", str)), field(body, "confidence", float, 1.0),
                         field(body, "source", str, "user"))
        self.counters["told"] += 1
        self.call(TWIN, "observe", {"metric": f"{self.name}.beliefs", "value": len(self.beliefs)}, timeout=2.0)
        out["beliefs"] = len(self.beliefs)
        return out

    def handle_rule(self, body: Any) -> dict:
        """{if: [..], then}: add a rule."""
        self.rules += parse_rules([body])
        return {"rules": len(self.rules)}

    def handle_forget(self, body: Any) -> dict:
        prop = norm_prop(field(body, "belief", str))
        return {"belief": prop, "forgotten": self.beliefs.pop(prop, None) is not None}

    def handle_beliefs(self, body: Any) -> dict:
        return {"beliefs": {p: dict(b) for p, b in sorted(self.beliefs.items())},
                "rules": [{"if": p, "then": c} for p, c in self.rules], "conflicts": list(self.conflicts)}

    def handle_ask(self, body: Any) -> dict:
        """{query, min_confidence?} -> {answer: true | false | None, confidence, proof, because}."""
        query = norm_prop(body if isinstance(body, str) else field(body, "query", str))
        floor = field(body, "min_confidence", float, self.min_confidence) if isinstance(body, dict) \
            else self.min_confidence
        facts = [p for p, b in sorted(self.beliefs.items()) if b["confidence"] >= floor]
        rules = [{"if": p, "then": c} for p, c in self.rules]
        answer, confidence, proof, because = None, 0.0, [], []
        for goal, value in ((query, True), (negation(query), False)):
            d = self.call(COT, "deduce", {"facts": facts, "rules": rules, "goal": goal}, timeout=5.0)
            if d["proved"]:
                answer, proof, because = value, d["proof"], d["given"]
                confidence = min(self.beliefs[g]["confidence"] for g in because)
                break
        self.counters["asked"] += 1
        return {"query": query, "answer": answer, "confidence": round(confidence, 4), "proof": proof,
                "because": because}
