"""Reference agents of the utility group: CodeGenerator, Executor, FixedStreamingTranslation,
TinyLlamaServiceEnhanced, NLLBAdapter, PredictiveHealthMonitor.

Each does its job for real at a small scale: code from templates checked by compiling it, commands run
under an allow-list with timeouts and no survivors, streaming translation with a wait-k policy over the
language group's phrase tables, n-gram generation with extractive summaries and answers, an NLLB-style
interface over the same tables, and failure prediction from sunsetd's restart history. What stands in
is the models (code LLM, TinyLlama, NLLB): templates, n-grams and phrase tables replace them.
"""
from __future__ import annotations

import ast
import ctypes
import json
import keyword
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from collections import Counter, deque
from typing import Any

from sunsetd.agent import AgentError, BadRequest, RemoteError

from agents.infrastructure import DAEMON, HUB, TWIN, CatalogAgent, field
from agents.language import LANGUAGES, LEX, PHRASES, _from_english, _join, _lookup_phrase, detect_language, \
    tokenize, translate
from agents.memory import terms
from agents.speech import ModelBacked

MMS = "ModelManagerSuite"
CODEGEN = "CodeGenerator"


# ---- CodeGenerator ---------------------------------------------------------------------------------------
# (pattern over the description, function name, parameters, body lines, docstring, examples: [(args, result)])
TEMPLATES: list[tuple[str, str, list[str], list[str], str, list[tuple[list, Any]]]] = [
    (r"\b(?:celsius|centigrade) to fahrenheit\b", "celsius_to_fahrenheit", ["celsius"],
     ["return celsius * 9 / 5 + 32"], "Convert degrees Celsius to Fahrenheit.", [([100], 212.0), ([0], 32.0)]),
    (r"\bfahrenheit to (?:celsius|centigrade)\b", "fahrenheit_to_celsius", ["fahrenheit"],
     ["return (fahrenheit - 32) * 5 / 9"], "Convert degrees Fahrenheit to Celsius.", [([212], 100.0), ([32], 0.0)]),
    (r"\bfactorial\b", "factorial", ["n"],
     ["if n < 0:", "    raise ValueError('n must not be negative')", "result = 1", "for k in range(2, n + 1):",
      "    result *= k", "return result"], "n! for a whole number n.", [([5], 120), ([0], 1)]),
    (r"\bfibonacci\b", "fibonacci", ["n"],
     ["a, b = 0, 1", "for _ in range(n):", "    a, b = b, a + b", "return a"], "The n-th Fibonacci number.",
     [([10], 55), ([1], 1)]),
    (r"\bprime\b", "is_prime", ["n"],
     ["if n < 2:", "    return False", "k = 2", "while k * k <= n:", "    if n % k == 0:", "        return False",
      "    k += 1", "return True"], "Whether n is a prime number.", [([13], True), ([15], False)]),
    (r"\bpalindrome\b", "is_palindrome", ["text"],
     ["letters = [c.lower() for c in text if c.isalnum()]", "return letters == letters[::-1]"],
     "Whether text reads the same backwards, ignoring case and punctuation.",
     [(["A man, a plan, a canal: Panama"], True), (["sunset"], False)]),
    (r"\b(?:filter|keep|select)\b.*\beven\b", "even_numbers", ["numbers"],
     ["return [x for x in numbers if x % 2 == 0]"], "The even numbers of a list, in order.",
     [([[1, 2, 3, 4]], [2, 4])]),
    (r"\beven\b", "is_even", ["n"], ["return n % 2 == 0"], "Whether n is even.", [([4], True), ([7], False)]),
    (r"\bodd\b", "is_odd", ["n"], ["return n % 2 == 1"], "Whether n is odd.", [([7], True), ([4], False)]),
    (r"\b(?:average|mean)\b", "average", ["numbers"],
     ["if not numbers:", "    raise ValueError('no numbers to average')", "return sum(numbers) / len(numbers)"],
     "The arithmetic mean of a list of numbers.", [([[1, 2, 3, 4]], 2.5)]),
    (r"\b(?:maximum|max|largest|biggest)\b", "maximum", ["numbers"], ["return max(numbers)"],
     "The largest item of a list.", [([[3, 9, 2]], 9)]),
    (r"\b(?:minimum|min|smallest)\b", "minimum", ["numbers"], ["return min(numbers)"],
     "The smallest item of a list.", [([[3, 9, 2]], 2)]),
    (r"\bsort", "sort_items", ["items"], ["return sorted(items)"], "The items in ascending order.",
     [([[3, 1, 2]], [1, 2, 3])]),
    (r"\breverse", "reverse", ["items"], ["return items[::-1]"], "The items (or characters) in reverse order.",
     [(["abc"], "cba"), ([[1, 2]], [2, 1])]),
    (r"\bcount(?:s|ing)? (?:the )?words\b|\bword count\b", "count_words", ["text"], ["return len(text.split())"],
     "How many words a text has.", [(["to be or not"], 4)]),
    (r"\b(?:upper ?case|capitali[sz]e|shout)", "to_upper", ["text"], ["return text.upper()"],
     "The text in capitals.", [(["sunset"], "SUNSET")]),
    (r"\bsquare\b|\bsquares\b", "square", ["x"], ["return x * x"], "x squared.", [([7], 49)]),
    (r"\bcube\b|\bcubes\b", "cube", ["x"], ["return x * x * x"], "x cubed.", [([3], 27)]),
    (r"\b(?:add|adds|sum|plus)\b", "add", ["a", "b"], ["return a + b"], "The sum of a and b.", [([2, 3], 5)]),
    (r"\b(?:subtract|subtracts|difference|minus)\b", "subtract", ["a", "b"], ["return a - b"], "a minus b.",
     [([5, 3], 2)]),
    (r"\b(?:multiply|multiplies|product|times)\b", "multiply", ["a", "b"], ["return a * b"], "a times b.",
     [([4, 5], 20)]),
    (r"\b(?:divide|divides|quotient)\b", "divide", ["a", "b"],
     ["if b == 0:", "    raise ZeroDivisionError('cannot divide by zero')", "return a / b"], "a divided by b.",
     [([7, 2], 3.5)]),
]
SAFE_CALLS = {"abs", "min", "max", "sum", "len", "round", "sorted", "int", "float", "str", "bool", "range", "list",
              "all", "any", "reversed", "enumerate", "zip"}
SAFE_METHODS = {"upper", "lower", "strip", "split", "join", "replace", "startswith", "endswith", "count", "title",
                "isdigit", "isalpha"}
_SAFE_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Call, ast.Name,
               ast.Load, ast.Store, ast.Constant, ast.List, ast.Tuple, ast.Subscript, ast.Slice, ast.ListComp,
               ast.GeneratorExp, ast.comprehension, ast.Attribute, ast.operator, ast.unaryop, ast.cmpop, ast.boolop)
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")


def check_expression(expression: str, params: list[str]) -> ast.Expression:
    """Parse an expression and allow only arithmetic, comparisons, comprehensions, the parameters and a few
    safe built-ins and string methods: no imports, no dunders, no attribute other than SAFE_METHODS."""
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise BadRequest(f"expression does not parse: {exc.msg}") from None
    bound = set(params) | {t.id for n in ast.walk(tree) if isinstance(n, ast.comprehension)
                           for t in ast.walk(n.target) if isinstance(t, ast.Name)}
    for node in ast.walk(tree):
        if not isinstance(node, _SAFE_NODES):
            raise BadRequest(f"{type(node).__name__} is not allowed in generated code")
        if isinstance(node, ast.Name) and node.id not in bound and node.id not in SAFE_CALLS:
            raise BadRequest(f"unknown name {node.id!r} (parameters: {', '.join(params) or 'none'})")
        if isinstance(node, ast.Attribute) and node.attr not in SAFE_METHODS:
            raise BadRequest(f"attribute {node.attr!r} is not allowed")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id not in SAFE_CALLS:
            raise BadRequest(f"call of {node.func.id!r} is not allowed")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) > 200:
            raise BadRequest("string constants are limited to 200 characters")
    return tree


def render(name: str, params: list[str], body: list[str], doc: str) -> str:
    lines = [f"def {name}({', '.join(params)}):", f'    """{doc}"""'] + [f"    {line}" for line in body]
    return "\n".join(lines) + "\n"


class CodeGenerator(ModelBacked):
    """Code generation from a description or a spec, checked by compiling it.

    Real: a description is matched against templates (conversions, factorial, Fibonacci, primes,
    palindromes, filters, aggregates, sorting, string and arithmetic functions); a spec {name, params,
    expression} becomes a function whose expression is checked against a whitelist (arithmetic,
    comparisons, comprehensions, the parameters, a few built-ins and string methods: nothing that imports,
    reaches dunders or touches the system); every result is compiled with `compile()` and comes with
    example calls and their expected results, which Executor can run. The model is pinned in
    ModelManagerSuite; each generation is one use. Stands in: templates for a code model.
    """

    CAPABILITIES = ("code.generate", "code.check")
    MODEL = "code-templates"

    def setup(self) -> None:
        self.load_model()
        self.templates = [(re.compile(p, re.I), *rest) for p, *rest in TEMPLATES]
        super().setup()

    def _compiled(self, source: str) -> dict:
        code = compile(source, "<generated>", "exec")
        return {"compiled": True, "lines": source.count("\n"), "names": sorted(code.co_names)}

    def handle_generate(self, body: Any) -> dict:
        """{description} or {name, params, expression} -> {name, params, source, compiled, examples, template}."""
        if isinstance(body, str):
            body = {"description": body}
        description = field(body, "description", str, None)
        if description is not None:
            for rx, name, params, lines, doc, examples in self.templates:
                if rx.search(description):
                    source = render(name, params, lines, doc)
                    template = name
                    break
            else:
                raise AgentError(f"no template for {description!r}; give a spec {{name, params, expression}}")
            examples = [{"args": a, "result": r} for a, r in examples]
        else:
            name = field(body, "name", str)
            params = field(body, "params", list)
            if not all(isinstance(n, str) and _IDENT.match(n) and not keyword.iskeyword(n) for n in [name, *params]):
                raise BadRequest("name and params must be lower-case identifiers (not keywords)")
            if len(set(params)) != len(params):
                raise BadRequest("params must be distinct")
            expression = field(body, "expression", str)
            check_expression(expression, params)
            doc = field(body, "doc", str, "Generated from a spec.").replace('"', "'").replace("\\", "")
            source = render(name, params, [f"return {expression}"], doc)
            template, examples = None, list(field(body, "examples", list, []))
        self.use_model()
        out = {"name": name, "params": params, "source": source, "template": template, "examples": examples,
               **self._compiled(source)}
        self.counters["generated"] += 1
        return out

    def handle_check(self, body: Any) -> dict:
        """{source} -> {compiled, error?: {line, message}}: does it compile (nothing is run)."""
        source = field(body, "source", str)
        try:
            return self._compiled(source)
        except SyntaxError as exc:
            return {"compiled": False, "error": {"line": exc.lineno, "message": exc.msg}}

    def handle_templates(self, body: Any) -> list[str]:
        return [t[1] for t in TEMPLATES]


# ---- Executor --------------------------------------------------------------------------------------------
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_RUNNER = """
import json, sys
{source}
calls = json.loads(sys.argv[1])
out = []
for args in calls:
    try:
        out.append({{"ok": True, "value": {name}(*args)}})
    except Exception as exc:
        out.append({{"ok": False, "error": type(exc).__name__ + ": " + str(exc)}})
sys.stdout.write(json.dumps(out))
"""


def _children_of(pid: int) -> list[int]:
    """Direct children of a process (from /proc/<pid>/task/*/children)."""
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids += [int(x) for x in f.read().split()]
            except OSError:
                continue
    except OSError:
        pass
    return kids


class Executor(CatalogAgent):
    """Runs allow-listed commands only, and nothing it starts outlives it.

    Real: `run` takes an argv (no shell, ever): its program must be a bare name on `config.allow`, found
    on `config.path`, and no argument may contain '/' or '..' (so files named are the working directory's);
    anything else is refused. It runs in the agent's working directory (`config.workdir`, by default a
    fresh temporary directory), with a minimal environment, no stdin unless given, output
    captured to files there and cut at `max_output` bytes, CPU and file-size limits, and a timeout (at
    most `max_timeout_s`) after which it is killed. No child outlives a request or the agent: each child
    gets PR_SET_PDEATHSIG (killed if this agent dies), this agent is a child subreaper (grandchildren
    that lose their parent come back to it), and after every command whatever is left of the command's
    descendants is killed and reaped; if the agent is killed, sunsetd kills its process group.
    `run_code` has CodeGenerator generate a function (checked and compiled there) and runs it in an
    isolated interpreter child under the same limits (only with `allow_code`). Stands in: nothing.
    """

    CAPABILITIES = ("exec.run", "exec.code")

    def setup(self) -> None:
        self.allow = sorted(set(self.config.get("allow") or []))
        self.path = str(self.config.get("path", os.defpath))
        self.own_workdir = not self.config.get("workdir")
        self.workdir = str(self.config.get("workdir") or tempfile.mkdtemp(prefix="executor-"))
        os.makedirs(self.workdir, exist_ok=True)
        self.timeout_s = float(self.config.get("timeout_s", 5.0))
        self.max_timeout_s = float(self.config.get("max_timeout_s", 30.0))
        self.max_output = int(self.config.get("max_output", 65536))
        self.allow_code = bool(self.config.get("allow_code", False))
        self.running: dict[int, subprocess.Popen] = {}
        self.lock = threading.Lock()
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.prctl = self.libc.prctl  # resolved before any fork: the child only calls it
        self.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self.pid = os.getpid()
        super().setup()

    def teardown(self) -> None:
        with self.lock:
            procs = list(self.running.values())
        for p in procs:
            self._kill_tree(p.pid)
        self._sweep()
        if self.own_workdir:  # a directory we made for ourselves goes with us
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- processes
    def _preexec(self, cpu_s: int) -> None:
        """In the child, before exec: die with this agent, and cap CPU time and file sizes. (Between fork and
        exec only what was imported and resolved before the fork is used: other threads may hold locks.)"""
        self.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != self.pid:  # we died between fork and prctl
            os._exit(125)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))

    def _kill_tree(self, pid: int) -> None:
        """SIGKILL a process and every descendant it has (children first found, then the process)."""
        stack, seen = [pid], []
        while stack:
            p = stack.pop()
            seen.append(p)
            stack += _children_of(p)
        for p in reversed(seen):
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _sweep(self) -> int:
        """Kill and reap every process left under this agent that is not a command still being waited for
        (orphaned grandchildren come back to us: we are a child subreaper)."""
        killed = 0
        for _ in range(50):
            with self.lock:
                active = set(self.running)
            stray = [p for p in _children_of(self.pid) if p not in active]
            if not stray:
                break
            for p in stray:
                self._kill_tree(p)
                killed += 1
                try:
                    os.waitpid(p, 0)
                except ChildProcessError:
                    pass
        return killed

    def _spawn(self, argv: list[str], timeout: float, stdin: bytes | None) -> dict:
        """Run argv under the limits; its stdin, stdout and stderr are files of the working directory (a
        command that does not read its input can never block us on a full pipe)."""
        paths = {}
        for key in ("in", "out", "err"):
            fd, paths[key] = tempfile.mkstemp(prefix=f".{key}-", dir=self.workdir)
            os.close(fd)
        with open(paths["in"], "wb") as f:
            f.write(stdin or b"")
        env = {"PATH": self.path, "LANG": "C.UTF-8", "HOME": self.workdir, "TMPDIR": self.workdir}
        started = time.monotonic()
        with open(paths["in"], "rb") as inp, open(paths["out"], "wb") as out, open(paths["err"], "wb") as err:
            proc = subprocess.Popen(argv, cwd=self.workdir, env=env, stdout=out, stderr=err,
                                    stdin=inp if stdin is not None else subprocess.DEVNULL,
                                    close_fds=True, preexec_fn=lambda: self._preexec(int(timeout) + 1))
            with self.lock:
                self.running[proc.pid] = proc
            timed_out = False
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                self._kill_tree(proc.pid)
                proc.wait()
            finally:
                with self.lock:
                    self.running.pop(proc.pid, None)
        leftovers = self._sweep()
        result = {"exit_code": proc.returncode, "timed_out": timed_out, "leftovers_killed": leftovers,
                  "duration_ms": round((time.monotonic() - started) * 1000)}
        for key, path in (("stdout", paths["out"]), ("stderr", paths["err"])):
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                data = f.read(self.max_output)
            result[key] = data.decode("utf-8", "replace")
            result[f"{key}_truncated"] = size > self.max_output
        for path in paths.values():
            os.unlink(path)
        return result

    def _timeout(self, body: dict) -> float:
        t = field(body, "timeout_s", float, self.timeout_s)
        if not 0 < t <= self.max_timeout_s:
            raise BadRequest(f"timeout_s must be in (0, {self.max_timeout_s:g}]")
        return t

    # ---- ops
    def handle_run(self, body: Any) -> dict:
        """{argv: [program, args...], timeout_s?, stdin?} -> {exit_code, stdout, stderr, timed_out, ...}.
        The program must be on the allow-list; the request's own timeout must be longer than timeout_s."""
        argv = field(body, "argv", list)
        if not argv or not all(isinstance(a, str) for a in argv):
            raise BadRequest("argv must be a non-empty list of strings")
        program = argv[0]
        if program not in self.allow or "/" in program:
            self.counters["refused"] += 1
            raise BadRequest(f"refused: {program!r} is not on the allow-list ({', '.join(self.allow) or 'empty'})")
        if any("/" in a or ".." in a for a in argv[1:]):
            self.counters["refused"] += 1
            raise BadRequest("refused: arguments may not contain '/' or '..' (files stay in the working directory)")
        resolved = shutil.which(program, path=self.path)
        if resolved is None:
            raise AgentError(f"{program} is allowed but not installed on {self.path}")
        stdin = field(body, "stdin", (str, bytes), None)
        result = self._spawn([resolved, *argv[1:]], self._timeout(body),
                             stdin.encode() if isinstance(stdin, str) else stdin)
        self.counters["runs"] += 1
        self.counters["timeouts"] += result["timed_out"]
        return {"argv": argv, **result}

    def handle_run_code(self, body: Any) -> dict:
        """{description | spec, calls: [[args...], ...], timeout_s?}: CodeGenerator writes the function, an
        isolated interpreter runs it on each argument list; -> {name, results, source}. With `test: true`
        the template's own examples are run and checked instead."""
        if not self.allow_code:
            raise BadRequest("refused: running generated code is not allowed here (config allow_code)")
        spec = {k: body[k] for k in ("description", "name", "params", "expression", "examples") if k in body} \
            if isinstance(body, dict) else {}
        gen = self.call(CODEGEN, "generate", spec, timeout=5.0)
        test = field(body, "test", bool, False)
        calls = [e["args"] for e in gen["examples"]] if test else field(body, "calls", list)
        if not all(isinstance(c, list) for c in calls) or not calls or len(calls) > 100:
            raise BadRequest("calls must be 1 to 100 lists of arguments")
        runner = _RUNNER.format(source=gen["source"], name=gen["name"])
        result = self._spawn([sys.executable, "-I", "-S", "-c", runner, json.dumps(calls)], self._timeout(body), None)
        self.counters["code_runs"] += 1
        if result["exit_code"] != 0 or result["timed_out"]:
            raise AgentError(f"generated code failed (exit {result['exit_code']}, timed out {result['timed_out']}): "
                             f"{result['stderr'][-500:]}")
        outputs = json.loads(result["stdout"])
        out = {"name": gen["name"], "source": gen["source"], "results": outputs, "duration_ms": result["duration_ms"]}
        if test:
            passed = [o.get("ok") and o.get("value") == e["result"] for o, e in zip(outputs, gen["examples"])]
            out.update(passed=sum(passed), failed=len(passed) - sum(passed))
        return out

    def handle_allowed(self, body: Any) -> dict:
        return {"allow": self.allow, "workdir": self.workdir, "allow_code": self.allow_code,
                "max_timeout_s": self.max_timeout_s}


# ---- FixedStreamingTranslation ---------------------------------------------------------------------------
class FixedStreamingTranslation(ModelBacked):
    """Simultaneous translation of a text that arrives in pieces, with fixed (never revised) output.

    Real: a wait-k policy over the language group's phrase tables (English into Spanish, French or
    German): source words are committed once `k` more words have arrived after them, and never inside a
    phrase of the table that may still be growing or before a determiner or adjective whose noun (which
    decides its gender and, in Spanish and French, its place) has not arrived yet; each committed stretch
    is translated once and emitted; `final: true` flushes the rest. The emitted pieces join into the same
    text as translating the whole at once when the boundaries fall between phrases. Lag is measured in
    words. The model is pinned in ModelManagerSuite, each push one use. Stands in: phrase tables for a
    simultaneous neural translation model.
    """

    CAPABILITIES = ("language.streaming_translation",)
    MODEL = "streaming-translation"

    def setup(self) -> None:
        self.load_model()
        self.k = int(self.config.get("k", 2))
        self.streams: dict[str, dict] = {}
        super().setup()

    def _boundary(self, tokens: list[str], start: int, end: int) -> int:
        """The last safe commit point in tokens[start:end]: not inside a phrase, not after a word waiting for
        its noun."""
        b = end
        while b > start:
            inside = any((hit := _lookup_phrase(tokens, i, PHRASES)) and i + hit[1] > b
                         for i in range(max(start, b - 5), b))
            waiting = LEX.get(tokens[b - 1].lower(), {}).get("es", {}).get("pos") in ("det", "adj")
            if not inside and not waiting:
                return b
            b -= 1
        return start

    def handle_push(self, body: Any) -> dict:
        """{stream, text, to, final?} -> {emitted: this push's translated piece, committed, pending, lag_words}."""
        name, target = field(body, "stream", str), field(body, "to", str)
        if target not in LANGUAGES or target == "en":
            raise BadRequest("to must be es, fr or de (the source is English)")
        s = self.streams.setdefault(name, {"tokens": [], "committed": 0, "output": [], "to": target, "lags": [],
                                           "gender": None})
        if s["to"] != target:
            raise BadRequest(f"stream {name} translates to {s['to']}")
        s["tokens"] += tokenize(field(body, "text", str))
        final = field(body, "final", bool, False)
        end = len(s["tokens"]) if final else max(s["committed"], len(s["tokens"]) - self.k)
        boundary = len(s["tokens"]) if final else self._boundary(s["tokens"], s["committed"], end)
        piece = ""
        if boundary > s["committed"]:
            items, _ = _from_english(s["tokens"][s["committed"]:boundary], target, s["gender"])
            s["gender"] = next((i["gender"] for i in reversed(items) if i["pos"] == "n"), s["gender"])
            piece = _join(items, capitalize=not s["output"])
            if s["output"] and items and items[0]["pos"] != "punct":
                piece = " " + piece
            s["lags"].append(len(s["tokens"]) - boundary)
            s["output"].append(piece)
            s["committed"] = boundary
            self.use_model()
        out = {"stream": name, "emitted": piece, "committed": s["committed"],
               "pending": len(s["tokens"]) - s["committed"], "text": "".join(s["output"]),
               "lag_words": s["lags"][-1] if s["lags"] else 0}
        if final:
            out["mean_lag_words"] = round(sum(s["lags"]) / len(s["lags"]), 2) if s["lags"] else 0.0
            del self.streams[name]
        self.counters["pushes"] += 1
        return out


# ---- TinyLlamaServiceEnhanced ----------------------------------------------------------------------------
CORPUS = """sunsetd starts agents in dependency order and stops them in reverse order.
Every request sent to sunsetd gets exactly one reply.
An agent that misses its heartbeats is restarted by the supervisor.
Lazy agents start on their first request and stop when they are idle.
The memory budget keeps lazy agents within the limits of the host.
The supervisor restarts a crashed agent with exponential backoff.
Agents call each other through the router and never directly.
The health score is computed from the state of every agent."""
_SENTENCES = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCES.split(text.strip()) if s.strip()]


class TinyLlamaServiceEnhanced(ModelBacked):
    """A small local language model service, used when the big model routes remote.

    Real: a word trigram model (built-in corpus plus what `learn` adds) with greedy, deterministic
    decoding (`generate`), extractive summaries (sentences ranked by the frequency of their content words,
    kept in their original order) and extractive answers (the context sentence sharing the most weighted
    terms with the question); ModelManagerSuite says where the preferred big model (`preferred_model`)
    would run, and this service answers locally either way, saying so. The model is pinned in
    ModelManagerSuite; each request is one use. Stands in: trigrams and extraction for TinyLlama.
    """

    CAPABILITIES = ("llm.generate", "llm.summarize", "llm.answer")
    MODEL = "tinyllama-trigram"

    def setup(self) -> None:
        self.load_model()
        self.trigrams: dict[tuple[str, str], Counter] = {}
        self.starts: Counter = Counter()
        self._learn(CORPUS)
        self.preferred = str(self.config.get("preferred_model", "llm-7b"))
        super().setup()

    def _learn(self, text: str) -> int:
        n = 0
        for sent in sentences(text):
            words = ["<s>", "<s>"] + re.findall(r"[\w'-]+|[.,!?]", sent.lower()) + ["</s>"]
            self.starts[words[2]] += 1
            for a, b, c in zip(words, words[1:], words[2:]):
                self.trigrams.setdefault((a, b), Counter())[c] += 1
                n += 1
        return n

    def _backend(self) -> dict:
        route = self.call(MMS, "route", {"model": self.preferred}, timeout=2.0)
        return {"preferred": self.preferred, "route": route["route"], "reason": route["reason"],
                "served_by": self.MODEL}

    def handle_learn(self, body: Any) -> dict:
        """{text}: add sentences to the trigram model."""
        n = self._learn(field(body, "text", str))
        return {"trigrams_added": n, "contexts": len(self.trigrams)}

    def handle_generate(self, body: Any) -> dict:
        """{prompt, max_tokens?} -> {text: the prompt's continuation, tokens, backend}."""
        prompt = field(body, "prompt", str)
        max_tokens = min(200, field(body, "max_tokens", int, 30))
        words = ["<s>", "<s>"] + re.findall(r"[\w'-]+|[.,!?]", prompt.lower())
        out: list[str] = []
        for _ in range(max_tokens):
            ctx = (words[-2], words[-1])
            options = self.trigrams.get(ctx)
            if not options:  # back off to the last word alone
                merged: Counter = Counter()
                for (a, b), c in self.trigrams.items():
                    if b == ctx[1]:
                        merged.update(c)
                options = merged
            if not options:
                break
            nxt = min(options, key=lambda w: (-options[w], not w[0].isalnum(), w))  # ties: words before stops
            if nxt == "</s>":
                break
            out.append(nxt)
            words.append(nxt)
        self.use_model()
        text = " ".join(out).replace(" .", ".").replace(" ,", ",")
        self.counters["generated_tokens"] += len(out)
        return {"prompt": prompt, "text": text, "tokens": len(out), "backend": self._backend()}

    def handle_summarize(self, body: Any) -> dict:
        """{text, sentences?} -> {summary, picked: indices of the sentences kept}."""
        sents = sentences(field(body, "text", str))
        if not sents:
            raise BadRequest("nothing to summarise")
        n = field(body, "sentences", int, 2)
        freq = Counter(t for s in sents for t in terms(s))
        scores = [(sum(freq[t] for t in terms(s)) / (len(terms(s)) or 1), i) for i, s in enumerate(sents)]
        picked = sorted(i for _, i in sorted(scores, key=lambda x: (-x[0], x[1]))[:n])
        self.use_model()
        return {"summary": " ".join(sents[i] for i in picked), "picked": picked, "of": len(sents)}

    def handle_answer(self, body: Any) -> dict:
        """{question, context} -> {answer: the best sentence of the context or None, score}."""
        question, context = field(body, "question", str), field(body, "context", str)
        q = set(terms(question))
        sents = sentences(context)
        df = Counter(t for s in sents for t in set(terms(s)))
        best, best_score = None, 0.0
        for s in sents:
            score = sum(math.log(1 + len(sents) / df[t]) for t in q & set(terms(s)))
            if score > best_score + 1e-12:
                best, best_score = s, score
        self.use_model()
        return {"question": question, "answer": best, "score": round(best_score, 4)}


# ---- NLLBAdapter -----------------------------------------------------------------------------------------
FLORES = {"en": "eng_Latn", "es": "spa_Latn", "fr": "fra_Latn", "de": "deu_Latn", "it": "ita_Latn",
          "pt": "por_Latn", "ru": "rus_Cyrl", "zh": "zho_Hans", "ja": "jpn_Jpan", "ar": "arb_Arab",
          "hi": "hin_Deva", "ko": "kor_Hang", "el": "ell_Grek", "he": "heb_Hebr"}
_SCRIPT_OF = {"LATIN": "Latn", "CYRILLIC": "Cyrl", "CJK": "Hans", "HIRAGANA": "Jpan", "KATAKANA": "Jpan",
              "ARABIC": "Arab", "DEVANAGARI": "Deva", "HANGUL": "Hang", "GREEK": "Grek", "HEBREW": "Hebr"}


def script_of(text: str) -> str | None:
    """The dominant Unicode script of the letters of a text, as an ISO 15924 code."""
    counts: Counter = Counter()
    for ch in text:
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            counts[next((code for key, code in _SCRIPT_OF.items() if name.startswith(key)), "Zyyy")] += 1
    return min(counts, key=lambda c: (-counts[c], c)) if counts else None


class NLLBAdapter(CatalogAgent):
    """An NLLB-style translation interface.

    Real: NLLB's FLORES-200 language codes (eng_Latn, spa_Latn, ...) mapped to and from ISO 639-1;
    requests in NLLB's shape ({text, src_lang, tgt_lang} -> {translation_text}, and batches); the
    script of the text detected from Unicode and checked against the code's script; translation through
    the language group's phrase tables for the pairs they cover (English, Spanish, French, German), and
    a clear refusal for codes that are known but not covered. Its weights are admitted by
    SystemDigitalTwin before they are held. Stands in: the tables for the NLLB model, `weights_mb` of held
    memory for its weights.
    """

    CAPABILITIES = ("language.nllb", "language.codes")

    def setup(self) -> None:
        fit = self.call(TWIN, "can_fit", {"mb": int(self.config.get("weights_mb", 0))}, timeout=3.0)
        if not fit.get("fits"):
            raise RuntimeError(f"weights do not fit: {fit}")
        self.hold_weights()
        self.iso = {v: k for k, v in FLORES.items()}
        super().setup()

    def _iso(self, code: str) -> str:
        if code in self.iso:
            iso = self.iso[code]
        elif code in FLORES:
            iso = code
        else:
            raise BadRequest(f"unknown language code {code!r} (FLORES-200 like eng_Latn, or ISO 639-1)")
        if iso not in LANGUAGES:
            raise AgentError(f"{FLORES[iso]} is a known code, but this adapter's tables do not cover it")
        return iso

    def _one(self, text: str, src: str, tgt: str) -> dict:
        src_iso, tgt_iso = self._iso(src), self._iso(tgt)
        script = script_of(text)
        expected = FLORES[src_iso].split("_")[1]
        if script not in (None, expected):
            raise BadRequest(f"the text is in script {script}, but {FLORES[src_iso]} is written in {expected}")
        out = translate(text, src_iso, tgt_iso)
        return {"translation_text": out["text"], "unknown_words": out["unknown"]}

    def handle_translate(self, body: Any) -> dict:
        """{text, src_lang, tgt_lang} (FLORES-200 or ISO codes) -> {translation_text, unknown_words}."""
        out = self._one(field(body, "text", str), field(body, "src_lang", str), field(body, "tgt_lang", str))
        self.counters["translations"] += 1
        return out

    def handle_translate_batch(self, body: Any) -> dict:
        texts = field(body, "texts", list)
        if not all(isinstance(t, str) for t in texts) or len(texts) > 64:
            raise BadRequest("texts must be at most 64 strings")
        src, tgt = field(body, "src_lang", str), field(body, "tgt_lang", str)
        return {"translations": [self._one(t, src, tgt)["translation_text"] for t in texts]}

    def handle_codes(self, body: Any) -> dict:
        """-> {iso: flores} for every known code, and which are covered by the tables."""
        return {"codes": dict(FLORES), "covered": sorted(FLORES[k] for k in LANGUAGES)}

    def handle_detect(self, body: Any) -> dict:
        """{text} -> {script, language (FLORES code) when the tables can tell}."""
        text = field(body, "text", str)
        d = detect_language(text)
        return {"script": script_of(text), "language": FLORES.get(d["language"]) if d["language"] else None,
                "confidence": d["confidence"]}


# ---- PredictiveHealthMonitor -----------------------------------------------------------------------------
def poisson_tail(mean: float, k: int) -> float:
    """P(N >= k) for N ~ Poisson(mean)."""
    if k <= 0:
        return 1.0
    term = total = math.exp(-mean)
    for i in range(1, k):
        term *= mean / i
        total += term
    return max(0.0, min(1.0, 1.0 - total))


def predict_failures(samples: list[dict], horizon_s: float, window_s: float, max_restarts: int,
                     within_s: float) -> list[dict]:
    """Failure risk per agent from a time series of sunsetd status snapshots ({t, agents: [...]}) (pure).

    The restart rate is the restarts counted in the window divided by the window's span; the risk is the
    chance of at least one more failure within the horizon (Poisson), raised for agents now in backoff
    or failed; `p_circuit` is the chance of reaching the intensity limit (max_restarts within within_s)."""
    if not samples:
        return []
    samples = sorted(samples, key=lambda s: s["t"])
    last_t = samples[-1]["t"]
    window = [s for s in samples if s["t"] >= last_t - window_s]
    first = window[0]
    span = max(last_t - first["t"], 1.0)
    out = []
    now = {a["name"]: a for a in samples[-1]["agents"]}
    before = {a["name"]: a for a in first["agents"]}
    for name, a in sorted(now.items()):
        restarts = int(a.get("restarts") or 0) - int(before.get(name, {}).get("restarts") or 0)
        recent = [s for s in samples if s["t"] >= last_t - within_s]
        r0 = next((int(x.get("restarts") or 0) for x in recent[0]["agents"] if x["name"] == name), 0)
        in_intensity = int(a.get("restarts") or 0) - r0
        rate = max(0, restarts) / span
        risk = 1.0 - math.exp(-rate * horizon_s)
        reasons = []
        if restarts > 0:
            reasons.append(f"{restarts} restarts in {span:.0f}s")
        state = a.get("state")
        if state == "failed":
            risk = 1.0
            reasons.append("circuit open")
        elif state == "backoff":
            risk = max(risk, 0.75)
            reasons.append("in backoff")
        p_circuit = poisson_tail(rate * within_s, max_restarts - in_intensity) if rate > 0 else 0.0
        if state == "failed":
            p_circuit = 1.0
        out.append({"agent": name, "state": state, "risk": round(risk, 4), "restarts_in_window": max(0, restarts),
                    "rate_per_min": round(rate * 60, 3), "p_circuit": round(p_circuit, 4), "reasons": reasons})
    out.sort(key=lambda x: (-x["risk"], x["agent"]))
    return out


class PredictiveHealthMonitor(CatalogAgent):
    """Failure prediction from restart history.

    Real: samples sunsetd's status (each `sample`, and every `sample_s` in the background when set) into
    a bounded history of restarts, states and RSS per agent; `predict` turns the restarts counted over
    the last `window_s` into a rate and that into the chance of another failure within `horizon_s` and of
    the circuit opening (the profile's intensity limit, `max_restarts` within `within_s`), ranks the
    agents, has SystemDigitalTwin forecast the RSS of those whose memory keeps growing, and raises a
    warning event at ObservabilityHub for each agent at or above `alert_risk`. A history may also be
    given whole. Stands in: nothing; the model is a Poisson rate.
    """

    CAPABILITIES = ("health.prediction",)

    def setup(self) -> None:
        self.samples: deque = deque(maxlen=int(self.config.get("history", 64)))  # (t, {agent: (state, restarts, rss)})
        self.window_s = float(self.config.get("window_s", 300))
        self.horizon_s = float(self.config.get("horizon_s", 60))
        self.max_restarts = int(self.config.get("max_restarts", 5))
        self.within_s = float(self.config.get("within_s", 60))
        self.alert_risk = float(self.config.get("alert_risk", 0.5))
        self.sample_s = float(self.config.get("sample_s", 0))
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        super().setup()
        if self.sample_s > 0:
            threading.Thread(target=self._watch, name="health-sampler", daemon=True).start()

    def teardown(self) -> None:
        self.stopping.set()

    def _sample(self) -> int:
        status = self.call(DAEMON, "status", timeout=2.0)
        snap = (time.monotonic(), {a["name"]: (a["state"], a["restarts"], a.get("rss_bytes"))
                                   for a in status["agents"]})
        with self.lock:
            self.samples.append(snap)
        self.counters["samples"] += 1
        return len(snap[1])

    def _history(self) -> list[dict]:
        with self.lock:
            samples = list(self.samples)
        return [{"t": t, "agents": [{"name": n, "state": s, "restarts": r, "rss_bytes": rss}
                                    for n, (s, r, rss) in agents.items()]} for t, agents in samples]

    def _watch(self) -> None:
        while not self.stopping.wait(self.sample_s):
            try:
                self._sample()
            except RemoteError:
                self.counters["sample_failures"] += 1

    def handle_sample(self, body: Any) -> dict:
        """Take a sample of sunsetd's status now; -> {samples kept, agents}."""
        agents = self._sample()
        return {"samples": len(self.samples), "agents": agents}

    def handle_predict(self, body: Any) -> dict:
        """{history?: [{t, agents}], horizon_s?, top?} -> {risks: ranked, alerts, samples}; without a history,
        a fresh sample is taken and the kept history is used."""
        body = body if isinstance(body, dict) else {}
        history = field(body, "history", list, None)
        given = history is not None
        if given and not all(isinstance(s, dict) and isinstance(s.get("t"), (int, float))
                             and isinstance(s.get("agents"), list)
                             and all(isinstance(a, dict) and isinstance(a.get("name"), str) for a in s["agents"])
                             for s in history):
            raise BadRequest("history must be a list of {t: seconds, agents: [{name, state, restarts}]}")
        if not given:
            self._sample()
            history = self._history()
        horizon = field(body, "horizon_s", float, self.horizon_s)
        risks = predict_failures(history, horizon, self.window_s, self.max_restarts, self.within_s)
        top = field(body, "top", int, 10)
        for r in risks[:top]:
            rss = [next((a.get("rss_bytes") for a in s["agents"] if a["name"] == r["agent"]), None) for s in history]
            rss = [x / 1048576.0 for x in rss if isinstance(x, (int, float))]
            if not given and len(rss) >= 3 and rss[-1] > rss[0] * 1.05:
                f = self.call(TWIN, "predict", {"series": rss[-16:], "steps": 1}, timeout=2.0)
                r["rss_next_mb"] = f["forecast"][0]
        alerts = [r["agent"] for r in risks if r["risk"] >= self.alert_risk]
        if alerts and not given:
            try:
                self.call(HUB, "event", {"source": self.name, "level": "warning",
                                         "message": "failure predicted: " + ", ".join(alerts)}, timeout=2.0)
            except RemoteError as exc:
                self.log(f"event to {HUB} failed: {exc}")
        self.counters["predictions"] += 1
        return {"risks": risks[:top], "alerts": alerts, "samples": len(history), "horizon_s": horizon}
