"""Property tests of profiles (#11 item 4): a profile `--check` accepts is a profile the daemon can run, and
no profile can hurt a running daemon.

Thousands of generated profile files (plausible ones built from the fields of docs/PROFILES.md, with right
and wrong values of every kind; mutations of those texts; raw bytes; files near the size limit; deep
nesting) go through `load_profile` in-process: each one loads, or is refused with one-line, bounded
errors, quickly, and never raises anything else. What loads must be what the daemon assumes (numbers
finite and in bounds, plain config, a Launch that encodes and decodes, settings a child can be given...).
A smaller number go through the real `sunsetd --check`, and a handful of accepted ones with cheap agents
are run by a real daemon that must answer `sunsetctl status` and stop cleanly.

Every real failure these found is kept below as an explicit example (the `FOUND` table and the tests
after it), each failing before its fix in sunsetd/profile.py.
"""
from __future__ import annotations

import functools
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from conftest import _descendant_pids, assert_none_left, wait_until
from sunsetd import procsettings, protocol
from sunsetd.policy import backoff_delay
from sunsetd.profile import (MAX_INT, MAX_PROFILE_BYTES, MAX_SECONDS, Profile, ProfileError, RestartMode,
                             describe, load_profile)
from sunsetd.spawner import launch_of

REPO = Path(__file__).resolve().parent.parent
MAX_ERROR = 500  # characters of one error line
LOAD_LIMIT_S = 2.0  # per profile, in-process
CLI_TIMEOUT_S = 60.0  # a `sunsetd --check` that takes longer hangs

# ---- what profiles are made of ------------------------------------------------------------------------

REFERENCE_TARGETS = sorted(set(re.findall(r"run:\s*['\"]?([A-Za-z_][\w.]*:[A-Za-z_]\w*)",
                                          "\n".join(p.read_text() for p in (REPO / "profiles").glob("*.yaml")))))
CHEAP_TARGETS = ["agents.testing:Echo"]
BAD_TARGETS = ["this:X", "agents.testing:Nope", "zz_no_such_module:X", "os:path", "sunsetd.protocol:Request",
               "json:JSONDecoder", "agents.testing:Echo\n", "not a target", "a:B:C", ":X", "agents.testing:"]
REFERENCE_NAMES = sorted(set(re.findall(r"name:\s*([A-Za-z][\w.-]*)",
                                        (REPO / "profiles" / "full.yaml").read_text())))[:40]
SETTINGS_INT = {"memory_mb": 0, "heartbeat_ms": 10, "liveness": 1, "concurrency": 1, "max_inflight": 1,
                "max_queue": 0}
SETTINGS_NUM = {"idle_timeout_s": True, "start_timeout_s": True, "stop_timeout_s": True, "stable_s": False}
SIGNALS = ["SIGTERM", "SIGINT", "SIGKILL", "TERM", "hup", "SIGUSR1", "SIGRTMIN", "SIGSTOP", "SIGNOPE", 15, 2, 9,
           0, 65, -1, 10**30, "", "SIG"]
PROGRAMS = ["sleep", "true", "sh", "/bin/sleep", "/usr/bin/true", sys.executable, "zz-no-such-program",
            "./zz-relative", "ZZDIRZZ/notexec", "ZZDIRZZ", "/dev/null", "", "sle\0ep"]
PATHS = ["ZZDIRZZ", "ZZDIRZZ/env", "env", "/", "/tmp", ".", "/nonexistent/zz", "/dev/null", "ZZDIRZZ/fifo",
         "", "a\0b", "x" * 5000, "ZZDIRZZ/notexec"]
PROFILE_REFS = ["parent", "ZZDIRZZ/parent.yaml", "core", "full", "tools", "nosuchprofile", "ZZSELFZZ", "self",
                "", "/", "x" * 5000, "a\nb.yaml", "../" * 30 + "etc/passwd", "/dev/zero", "/proc/self/status",
                "ZZDIRZZ/fifo"]

# YAML that a dumper would never write: each is pasted in place of a string token after dumping
RAW = [
    ".inf", "-.inf", ".nan", ".NaN", "1e400", "-1e400", "1e-400", "0x" + "f" * 40, "0x" + "f" * 4000,
    "9" * 4300, "9" * 4301, "-" + "9" * 5000, "0o777", "0b" + "1" * 70, "1_000_000", "1:2:3", "1:" * 2000 + "1",
    "190:20:30.15", "2024-01-01", "2024-13-01", "0000-01-01", "2001-12-14t21:59:43.10-05:00",
    "!!binary aGVsbG8=", "!!binary '@@@'", "!!float abc", "!!int abc", "!!bool abc", "!!timestamp abc",
    "!!null x", "!!str 5", "!!set {a, b}", "!!omap [a: 1, b: 2]", "!!pairs [a: 1]", "!!python/object:os.system x",
    "!!python/name:os.system", "!<tag:yaml.org,2002:int> 5", "!local x", "!<%0A> x", "*nosuchalias",
    "&self [*self]", "&m {a: *m}", '"\\ud800"', '"\\udfff x"', '"a\\0b"', '"\\x85\\u2028\\u2029"', '"\\e[31m"',
    "'a\nb'", "|\n  block\n  text", ">-\n  folded", "~", "null", "yes", "no", "on", "off", "Y", "= ", "<<",
    "{<<: {a: 1}}", "[1, [2, [3, [4]]]]", "{? [a, b]: c}", "{[1]: 2}", "{{a: 1}: 2}", "@x", "`x", "%x",
    "'" + "a" * 70000 + "'", "[" * 70 + "]" * 70, "{a: " * 40 + "1" + "}" * 40, '"' + "\\t" * 10 + '"',
    "-", "- - -", "? x", "!!", "!", "&", "*", "&a", "\t", "\x00", "\x7f", "\ufeff", "\u200b",
]
YAML_TOKENS = ["\n", "\n  ", "- ", ": ", "? ", "{", "}", "[", "]", ",", "&a ", "*a", "&b ", "*b", "!!float ",
               "!!binary ", "<<: ", "---\n", "...\n", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "#", "'", '"',
               "|", ">", "\t", "\\", "\x00", "\r", "\ufeff", "é", "\U0001F600", "0x", "9" * 5000, ".nan",
               "2024-13-01", "\\ud800", "~", "null"]


def choice(items: Any) -> st.SearchStrategy:
    """st.sampled_from, drawn as an index: its repr (in hypothesis' notes and reports) does not hold the
    values, some of which are 70,000 characters long."""
    items = list(items)
    return st.integers(0, len(items) - 1).map(items.__getitem__)


class Raw:
    """A value written into the YAML text as it is, after dumping (see RAW). Not a str: hypothesis keeps
    the values it draws by their exact type."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text!r})"


def _strings() -> st.SearchStrategy:
    return st.one_of(st.text(max_size=12), st.text(st.characters(codec="ascii"), max_size=8),
                     choice(["", " ", "a\nb", "\0", "\x1b[2J", "é", "\u2028", "x" * 300, "sunsetd",
                             "${HOME}", "${ZZ_NOT_SET}", "$HOME", "unlimited", "mcp", "full", "none"]))


def _scalars() -> st.SearchStrategy:
    return st.one_of(
        st.none(), st.booleans(), st.integers(), st.integers(-10, 10),
        choice([MAX_INT, MAX_INT + 1, 2**63, -2**63, 2**64, 10**40]),
        st.floats(), st.floats(allow_nan=False, allow_infinity=False), _strings(), st.dates(),
        st.datetimes(), st.binary(max_size=8), choice(RAW).map(Raw))


def _data(max_leaves: int = 12) -> st.SearchStrategy:
    """Any YAML-ish data: nested lists and maps (string keys mostly), with odd scalars at the leaves."""
    keys = st.one_of(st.text(max_size=6), choice(["a", "b", "setup_s", "weights_mb"]), st.integers(0, 3),
                     st.booleans(), st.none(), st.floats(allow_nan=False))
    return st.recursive(_scalars(), lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)), max_leaves=max_leaves)


def _wrong() -> st.SearchStrategy:
    return st.one_of(_scalars(), _data(6))


STRINGS, SCALARS, DATA, WRONG = _strings(), _scalars(), _data(), _wrong()
UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LETTERS = UPPER.lower() + UPPER


def _word(first: str, rest: str, max_size: int) -> st.SearchStrategy:
    """A name of `first` then `rest` characters (cheaper to draw than st.from_regex)."""
    return st.tuples(choice(first), st.text(rest, max_size=max_size)).map("".join)


AGENT_NAMES = st.lists(st.one_of(choice(["A", "B", "C", "D", "Echo1", "x.y-z_1"] + REFERENCE_NAMES),
                                 _word(LETTERS, LETTERS + "0123456789_.-", 8)), min_size=1, max_size=6, unique=True)
PROFILE_NAME = _word("abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnopqrstuvwxyz0123456789-", 10)


def _int_setting(lo: int) -> st.SearchStrategy:
    return st.one_of(st.integers(lo, lo + 3), st.integers(lo, 10_000), st.integers(lo, MAX_INT),
                     choice([lo - 1, MAX_INT, MAX_INT + 1, 10**40, 250.0, True, "100", None]))


def _num_setting(strict: bool) -> st.SearchStrategy:
    return st.one_of(st.floats(0.001, 60.0), st.integers(0, 100), st.floats(0, MAX_SECONDS),
                     choice([0, 0.0, -1, 1e-300, MAX_SECONDS, MAX_SECONDS + 1, 1e300, math.inf, -math.inf,
                             math.nan, "10", True, None, Raw(".inf"), Raw(".nan"), Raw("1e400")]))


LIMITS = st.fixed_dictionaries({}, optional={"memory_mb": st.one_of(st.none(), _int_setting(1)), "cpu": SCALARS})
PROBE_NUMBER = st.one_of(st.integers(1, 2000), _int_setting(1), WRONG)


def _probe(health: bool) -> st.SearchStrategy:
    kinds = ["http", "tcp", "exec"] + ([] if health else ["log", "notify"])
    targets = {
        "http": choice(["http://127.0.0.1:1/", "http://127.0.0.1:8000/health", "https://x/", "http://",
                        "http://[::1]:80/", "http://a:99999/", "http://a\0b/", "http://" + "é" * 70 + "/",
                        "http://[::1/", "http://a:0/", 5]),
        "tcp": choice(["127.0.0.1:1", "localhost:65535", "[::1]:80", "a:0", "a:65536", ":80", "a:b",
                       "a\0b:1", "é" * 70 + ":80", "xn--" + "a" * 70 + ":1", "a:²", "a:٣", 80]),
        "exec": choice([["true"], "true", ["false"], "sh -c 'exit 0'", [], [""], ["tr\0ue"], [1],
                        "unterminated 'quote", [sys.executable, "-c", "pass"]]),
        "log": choice(["ready", "^listening on", "(", "[z-\n]", "(" * 3000 + ")" * 3000, "a{99999999999}",
                       "(?P<x>", 5, Raw("!!binary aGVsbG8="), "", ".*"]),
        "notify": choice([True, False, "yes", 1, None]),
    }

    @st.composite
    def probe(draw: Any) -> Any:
        kind = draw(choice(kinds + ["bogus"]))
        out: dict = {} if kind == "bogus" else {kind: draw(targets[kind])}
        for key in draw(st.lists(choice(["interval_ms", "timeout_ms", "failures", "watchdog_ms", "http",
                                         "log", 7, "extra"]), max_size=3)):
            out[key] = draw(PROBE_NUMBER)
        return out

    return st.one_of(probe(), WRONG)


@functools.lru_cache(maxsize=None)  # strategies are built once: building them per draw was most of the time
def _field_value(key: str, bias: int) -> st.SearchStrategy:
    """A value of an agent field (or a setting of `defaults`): right ones `bias` times as often as any.
    `name` and `depends_on` are drawn from the profile's names (agent_entry)."""
    right: st.SearchStrategy
    if key in SETTINGS_INT:
        right = _int_setting(SETTINGS_INT[key])
    elif key in SETTINGS_NUM:
        right = _num_setting(SETTINGS_NUM[key])
    elif key in ("lazy", "essential"):
        right = st.booleans()
    elif key == "max_rss_mb":
        right = st.one_of(st.none(), _int_setting(1))
    elif key == "restart":
        right = choice(["always", "on-failure", "never", "sometimes", "Always"])
    elif key == "stop_signal":
        right = choice(SIGNALS)
    elif key == "backoff":
        right = st.dictionaries(choice(["initial_ms", "max_ms", "multiplier", "jitter", "initial"]),
                                st.one_of(_int_setting(0), st.floats(1, 1e7), choice(
                                    ["full", "none", 2e6, 1e300, 65536.0, 1000, 1.0])), max_size=4)
    elif key == "intensity":
        right = st.dictionaries(choice(["max_restarts", "within_s", "cooldown_s", "window"]),
                                st.one_of(_int_setting(0), _num_setting(True)), max_size=3)
    elif key == "env":
        right = st.dictionaries(st.one_of(_word(UPPER + "_", UPPER + "0123456789_", 5),
                                          choice(["A\n", "1A", "A=B", "", "PATH"])),
                                st.one_of(STRINGS, st.integers(), st.booleans(), st.floats()), max_size=4)
    elif key in ("env_file", "cwd"):
        right = choice(PATHS)
    elif key in ("user", "group"):
        right = choice(["root", "nobody", "nogroup", 0, 65534, "65534", 2**32 - 2, 2**32, 10**30,
                        "zz-no-such-user", "a b", "-1", -1])
    elif key == "umask":
        right = choice(["0027", "077", "0", "0o27", 27, 777, 8, "abc", "00000"])
    elif key == "nice":
        right = st.one_of(st.integers(-21, 20), st.just(10**20))
    elif key.startswith("rlimit_"):
        right = st.one_of(choice(["unlimited", 0, 1, 1024, 4096, 10**9, 10**9 + 1, 10**40, 2**63]),
                          st.integers(0, 2**70))
    elif key == "run":
        right = choice(REFERENCE_TARGETS + CHEAP_TARGETS * 5 + BAD_TARGETS)
    elif key == "command":
        right = st.one_of(st.lists(st.one_of(choice(PROGRAMS), choice(["60", "-c", "exit 0"]),
                                             st.integers(), st.floats()), min_size=1, max_size=4),
                          choice(["sleep 60", "true", "sh -c 'sleep 60'", "unterminated 'quote", "", "  "]))
    elif key == "protocol":
        right = choice(["mcp", "MCP", "http"])
    elif key == "roots":
        right = st.lists(choice(["/srv/data", "rel", "file:///x", "", "a\0b", "x" * 3000]), max_size=3)
    elif key in ("ready", "health"):
        right = _probe(key == "health")
    elif key == "from":
        right = choice(PROFILE_REFS)
    elif key == "config":
        right = st.one_of(st.dictionaries(st.text(max_size=6), DATA, max_size=5), st.just({}))
    else:  # unknown fields, planned ones included
        right = WRONG
    return st.one_of(*[right] * bias, WRONG)


AGENT_FIELDS = ["run", "command", "protocol", "roots", "ready", "health", "from", "depends_on", "config",
                "lazy", "essential", "idle_timeout_s", "memory_mb", "max_rss_mb", "restart", "heartbeat_ms",
                "liveness", "start_timeout_s", "stop_timeout_s", "stable_s", "concurrency", "max_inflight",
                "max_queue", "backoff", "intensity", "env", "env_file", "cwd", "umask", "nice", "rlimit_nofile",
                "rlimit_as_mb", "rlimit_core", "stop_signal", "user", "group", "placement", "colour", "watchdog_ms"]
DEFAULT_FIELDS = [f for f in AGENT_FIELDS if f not in ("run", "command", "protocol", "roots", "ready", "health",
                                                        "from", "depends_on", "config")] + ["name", "config"]


def _agent_entry(draw: Any, names: list[str], bias: int) -> Any:
    """(A plain function of `draw`: a strategy made per draw costs more than the draw.)"""
    if draw(st.integers(0, 30)) == 0:
        return draw(WRONG)  # an entry that is not a mapping
    entry: dict = {}
    if draw(st.integers(0, 15)):
        entry["name"] = _pick(draw, names) if draw(st.integers(0, 8)) else draw(BAD_NAME)
    kind = draw(choice(["run", "run", "command", "mcp", "both", "neither", "from"]))
    if kind in ("run", "both"):
        entry["run"] = draw(_field_value("run", bias))
    if kind in ("command", "mcp", "both"):
        entry["command"] = draw(_field_value("command", bias))
    if kind == "mcp":
        entry["protocol"] = "mcp"
    if kind == "from":
        entry["from"] = draw(_field_value("from", bias))
    for key in draw(st.lists(choice(AGENT_FIELDS), max_size=6, unique=True)):
        entry[key] = _names_value(draw, key, names, bias)
    return entry


BAD_NAME = st.one_of(choice(["sunsetd", "1abc", "a b", "A\n", "x" * 101, "É", "", "-a"]),
                     st.text(max_size=5), SCALARS)


def _pick(draw: Any, items: list) -> Any:
    return items[draw(st.integers(0, len(items) - 1))]


def _names_value(draw: Any, key: str, names: list[str], bias: int) -> Any:
    if key == "name":
        return _pick(draw, names) if draw(st.integers(0, 4)) else draw(WRONG)
    if key == "depends_on":
        if not draw(st.integers(0, bias)):
            return draw(WRONG)
        return [_pick(draw, names + ["Ghost", "", "A\n"]) for _ in range(draw(st.integers(0, 3)))]
    return draw(_field_value(key, bias))


def _profile_object(draw: Any, bias: int = 3, parent: bool = True) -> tuple[dict, dict]:
    """A profile as data, and the other files it may name (parent.yaml, env, fifo, notexec)."""
    names = draw(AGENT_NAMES)
    doc: dict = {}
    for key in draw(st.lists(choice(["name", "description", "extends", "limits", "defaults", "hosts",
                                     "colour", 5, "name"]), max_size=4, unique=True)):
        if key == "name":
            doc["name"] = draw(st.one_of(*[PROFILE_NAME] * bias, STRINGS, SCALARS))
        elif key == "description":
            doc["description"] = draw(st.one_of(STRINGS, SCALARS))
        elif key == "extends":
            doc["extends"] = draw(st.one_of(*[choice(PROFILE_REFS)] * bias, WRONG))
        elif key == "limits":
            doc["limits"] = draw(st.one_of(LIMITS, WRONG))
        elif key == "defaults":
            fields = draw(st.lists(choice(DEFAULT_FIELDS), max_size=5, unique=True))
            doc["defaults"] = {f: _names_value(draw, f, names, bias) for f in fields}
        else:
            doc[key] = draw(WRONG)
    n_agents = draw(st.integers(0, 6))
    agents = [_agent_entry(draw, names, bias) for _ in range(n_agents)]
    if agents and draw(st.integers(0, 8)) == 0:  # the same mapping twice: an anchor and an alias
        agents.append(agents[0])
    if draw(st.integers(0, 20)):
        doc["agents"] = agents
    else:
        doc["agents"] = draw(WRONG)
    extra: dict = {}
    if parent and draw(st.booleans()):
        extra["parent.yaml"] = _profile_object(draw, bias, parent=False)[0]
    if draw(st.booleans()):
        extra["env"] = draw(choice(["A=1\nB='two'\n# c\nexport C=\"3\"\n", "garbage line\n", "",
                                    "A=${ZZ_NOT_SET}\n", "A=a\0b\n", "1A=x\n", "\xff\xfe"]))
    return doc, extra


def _dump(doc: Any, rnd: random.Random) -> str:
    """YAML text of `doc` (anchors and aliases for shared values, !!binary for bytes, dates), with each
    Raw value pasted in as written."""
    raws: dict[str, str] = {}

    def swap(value: Any) -> Any:
        if isinstance(value, Raw):
            token = f"ZZRAW{len(raws)}ZZ"
            raws[token] = value.text
            return token
        if isinstance(value, dict):
            return {swap(k): swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    if rnd.random() < 0.9:  # keep shared values shared (aliases), mostly
        memo: dict[int, Any] = {}

        def swap_shared(value: Any) -> Any:
            if isinstance(value, (dict, list)):
                if id(value) not in memo:
                    memo[id(value)] = {} if isinstance(value, dict) else []
                    out = memo[id(value)]
                    if isinstance(value, dict):
                        out.update({swap(k): swap_shared(v) for k, v in value.items()})
                    else:
                        out.extend(swap_shared(v) for v in value)
                return memo[id(value)]
            return swap(value)
        data = swap_shared(doc)
    else:
        data = swap(doc)
    try:
        text = yaml.dump(data, Dumper=DUMPER, sort_keys=False, allow_unicode=rnd.random() < 0.5,
                         default_flow_style=rnd.choice([None, True, False]), width=rnd.choice([80, 10**6]),
                         explicit_start=rnd.random() < 0.1)
    except (yaml.YAMLError, ValueError, TypeError, RecursionError):
        text = "agents: []\n"
    for token, raw in raws.items():
        text = text.replace(token, raw)
    return text


@st.composite
def plausible(draw: Any, bias: int = 3) -> tuple[str, dict]:
    doc, extra = _profile_object(draw, bias)
    rnd = random.Random(draw(st.integers(0, 2**32)))
    files = {name: _dump(value, rnd) if isinstance(value, dict) else value for name, value in extra.items()}
    return _dump(doc, rnd), files


@st.composite
def mutated(draw: Any) -> tuple[str, dict]:
    """A plausible profile's text with a few edits: tokens pasted in, parts cut or repeated."""
    text, files = draw(plausible())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        op = draw(choice(["insert", "insert", "delete", "repeat", "raw"]))
        if op == "insert":
            text = text[:at] + draw(choice(YAML_TOKENS)) + text[at:]
        elif op == "raw":
            text = text[:at] + draw(choice(RAW)) + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 20)):]
        else:
            end = min(len(text), at + draw(st.integers(1, 60)))
            text = text[:at] + text[at:end] * draw(st.integers(2, 4)) + text[end:]
    return text, files


DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
BASE = "name: p\nagents:\n  - name: A\n    run: agents.testing:Echo\n"


@st.composite
def garbage(draw: Any) -> tuple[bytes, dict]:
    """Bytes: random ones, text with undecodable sequences, and deep nesting."""
    kind = draw(choice(["bytes", "utf8", "deep", "deep_block", "nul", "empty"]))
    if kind == "bytes":
        return draw(st.binary(max_size=3000)), {}
    if kind == "utf8":
        text = draw(plausible())[0].encode("utf-8", "surrogatepass")
        at = draw(st.integers(0, len(text)))
        bad = draw(choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\x80",
                           b"\xef\xbb\xbf", b"\xe2\x82"]))
        return text[:at] + bad + text[at:], {}
    if kind == "deep":
        n = draw(choice([10, 30, 63, 64, 65, 100, 999, 1000, 5000, 200_000]))
        opener, closer = draw(choice([("[", "]"), ("{a: ", "}"), ("[{a: ", "}]")]))
        return (BASE + "    config: " + opener * n + "1" + closer * n + "\n").encode(), {}
    if kind == "deep_block":
        n = draw(choice([20, 40, 70, 300]))
        return (BASE + "    config:\n" + "".join("  " * (i + 3) + f"k{i}:\n" for i in range(n))
                + "  " * (n + 3) + "v\n").encode(), {}
    if kind == "nul":
        return BASE.encode().replace(b"A", b"A\0", 1), {}
    return b"", {}


@st.composite
def huge(draw: Any) -> tuple[bytes, dict]:
    """Files near the 1 MiB limit: padding, one long value, many agents, many values, an alias bomb."""
    kind = draw(choice(["padding", "long_value", "agents", "values", "bomb", "chain"]))
    delta = draw(choice([-2, -1, 0, 1, 2]))
    if kind == "padding":
        text = BASE + "# " + "x" * (MAX_PROFILE_BYTES - len(BASE) - 3 + delta) + "\n"
    elif kind == "long_value":
        head = BASE + "    config: {s: '"
        text = head + "x" * (MAX_PROFILE_BYTES - len(head) - 3 + delta) + "'}\n"
    elif kind == "agents":
        n = draw(choice([1000, 3000, 4000, 4500, 40_000]))
        line = draw(choice(["  - {{name: A{i}, run: 'agents.testing:Echo'}}\n",
                            "  - {{name: A{i}, command: [sleep, '60']}}\n",
                            "  - {{name: A{i}, run: 'agents.testing:Echo', depends_on: [A0]}}\n"]))
        text = "agents:\n" + "".join(line.format(i=i) for i in range(n))
    elif kind == "values":
        n = draw(choice([9_000, 19_990, 20_010, 200_000]))
        item = draw(choice(["1", "2024-01-01", "1:2:3", "x", "1.5e3", "{}"]))
        text = BASE + "    config: {l: [" + ", ".join([item] * n) + "]}\n"
    elif kind == "bomb":
        levels = draw(st.integers(5, 60))
        text = "x-0: &l0 [lol, lol]\n" + "".join(f"x-{i}: &l{i} [*l{i - 1}, *l{i - 1}]\n"
                                               for i in range(1, levels)) + BASE
        text += draw(choice([f"    config: {{a: *l{levels - 1}}}\n", f"    heartbeat_ms: *l{levels - 1}\n",
                             f"    env: *l{levels - 1}\n", f"    depends_on: *l{levels - 1}\n"]))
    else:
        n = draw(choice([99, 100, 101, 500, 2400]))
        order = draw(choice([range(n), reversed(range(n))]))
        text = "agents:\n" + "".join(
            f"  - {{name: A{i}, run: 'agents.testing:Echo'" + (f", depends_on: [A{i - 1}]" if i else "") + "}\n"
            for i in order)
    return text.encode(), {}


# ---- writing and checking one profile -------------------------------------------------------------------

def materialize(directory: Path, text: str | bytes, files: dict) -> Path:
    """Write the profile (and what it names) into `directory`; return the profile's path."""
    path = directory / "profile.yaml"

    def fill(value: str | bytes) -> bytes:
        data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        return data.replace(b"ZZDIRZZ", str(directory).encode()).replace(b"ZZSELFZZ", str(path).encode())

    path.write_bytes(fill(text))
    for name, value in files.items():
        (directory / name).write_bytes(fill(value))
    (directory / "notexec").write_text("#!/bin/sh\n")
    os.mkfifo(directory / "fifo")
    return path


def check_errors(errors: list[str]) -> None:
    assert errors, "a ProfileError with no error"
    for e in errors:
        assert isinstance(e, str), e
        assert "\n" not in e and len(e.splitlines()) == 1, f"not one line: {e!r}"
        assert e.isprintable(), f"not printable: {e!r}"
        assert len(e) <= MAX_ERROR, f"{len(e)} characters: {e[:200]!r}..."


def _strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings_in(k) + _strings_in(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings_in(v)]
    return []


def _finite(v: Any, lo: float, hi: float, strict: bool = False) -> bool:
    return isinstance(v, float) and math.isfinite(v) and lo <= v <= hi and not (strict and v == lo)


def _int_in(v: Any, lo: int, hi: int = MAX_INT) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def check_profile(profile: Profile) -> None:
    """What the daemon assumes of a profile that loaded (supervisor, policy, spawner, protocol.Launch)."""
    assert isinstance(profile.name, str) and 0 < len(profile.name) <= 100 and profile.name.isprintable()
    assert isinstance(profile.description, str)
    describe(profile).encode("utf-8")  # what --check prints
    assert profile.memory_mb is None or _int_in(profile.memory_mb, 1)
    names = [a.name for a in profile.agents]
    assert names and len(set(names)) == len(names)
    assert sorted(n for level in profile.levels for n in level) == sorted(names)
    assert len(profile.levels) <= 100  # the supervisor wants dependencies recursively
    level_of = {n: i for i, level in enumerate(profile.levels) for n in level}
    rng = random.Random(0)
    envs_seen: dict[int, Any] = {}
    for a in profile.agents:
        where = f"agent {a.name!r}"
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_.\-]{0,99}", a.name) and a.name != "sunsetd", where
        assert bool(a.run) != bool(a.command), where
        if a.run:
            assert re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", a.run), where
            assert a.ready is None and a.health is None and not a.protocol and not a.roots, where
            assert a.process.user is None and a.process.group is None, where
        else:
            assert all(isinstance(x, str) and "\0" not in x for x in a.command) and a.command[0], where
        assert a.protocol in ("", "mcp"), where
        if a.protocol == "mcp":
            assert a.ready is None and a.health is None, where
        assert all(isinstance(r, str) and r and "\0" not in r for r in a.roots), where
        for dep in a.depends_on:
            assert dep in level_of and level_of[dep] < level_of[a.name], where
            assert not (profile.agent(dep).lazy and not a.lazy), where
        assert isinstance(a.lazy, bool) and isinstance(a.essential, bool) and not (a.lazy and a.essential), where
        assert isinstance(a.restart, RestartMode), where
        assert a.stop_signal in set(signal.Signals), where
        for key, lo in SETTINGS_INT.items():
            assert _int_in(getattr(a, key), lo), (where, key)
        assert a.max_rss_mb is None or _int_in(a.max_rss_mb, 1), where
        for key, strict in SETTINGS_NUM.items():
            assert _finite(getattr(a, key), 0.0, MAX_SECONDS, strict), (where, key)
        b, i = a.backoff, a.intensity
        assert _int_in(b.initial_ms, 0) and _int_in(b.max_ms, 0) and b.jitter in ("full", "none"), where
        assert _finite(b.multiplier, 1.0, MAX_SECONDS), where
        assert _int_in(i.max_restarts, 0) and _finite(i.within_s, 0.0, MAX_SECONDS, True), where
        assert _finite(i.cooldown_s, 0.0, MAX_SECONDS), where
        for attempt in (1, 2, 3, 10, 50, 66, 100, 10**6):  # the delays of any run of failures
            delay = backoff_delay(attempt, b, rng)
            assert math.isfinite(delay) and 0 <= delay <= b.max_ms / 1000, where
        for probe in (a.ready, a.health):
            if probe is None:
                continue
            for key in ("interval_ms", "timeout_ms", "failures"):
                assert _int_in(getattr(probe, key), 0), (where, key)  # timeout_ms / 1000 must be a float
            if probe.kind == "log":
                assert isinstance(probe.target, str) and re.compile(probe.target), where
            if probe.kind in ("http", "tcp"):
                from urllib.parse import urlsplit
                host = probe.target[0] if probe.kind == "tcp" else urlsplit(probe.target).hostname
                assert "\0" not in host and host.encode("idna"), where  # what socket.connect() does
            if probe.kind == "exec":
                assert all(isinstance(x, str) and "\0" not in x for x in probe.target), where
        # the config and the launch, as the spawners hand them to the agent
        text = json.dumps(a.config, separators=(",", ":"))
        assert len(text) <= 64 * 1024 and json.loads(text) == a.config, where
        launch = launch_of(a, 1, "ipc:///tmp/sd-x/agents.sock", "ipc:///tmp/sd-x/sunsetd.sock", os.getpid(),
                           profile.name)
        encoded = launch.encode()
        assert protocol.Launch.decode(encoded) == launch, where
        assert len(encoded) + len(protocol.LAUNCH_ENV) + 1 < 128 * 1024, where  # one environment string
        launch.title.encode("utf-8")
        # the process settings, as the child applies them
        p = a.process
        assert procsettings.refusal(p) is None, where
        if id(p.env) not in envs_seen:  # agents share the env of defaults: check it once
            envs_seen[id(p.env)] = p.env
            for k, v in p.env:
                assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) and isinstance(v, str) and "\0" not in v, where
                k.encode("utf-8"), v.encode("utf-8")
            json.dumps(p.to_wire())
        assert p.umask is None or 0 <= p.umask <= 0o777, where
        assert p.nice is None or -20 <= p.nice <= 19, where
        for name, value in p.rlimits:
            assert value == procsettings.UNLIMITED or 0 <= value < 2**63, where
        for key in ("user", "group"):
            value = getattr(p, key)
            assert value is None or not value.isdigit() or int(value) < 2**32 - 1, where
        for s in _strings_in([a.name, a.run, a.command, a.roots, a.config, p.cwd, p.user, p.group]):
            s.encode("utf-8")  # no lone surrogate: exec, environ, the logs and msgpack need real text


def load_one(path: Path) -> Profile | None:
    """load_profile: a checked Profile, or None after a checked ProfileError; within the time limit."""
    t0 = time.monotonic()
    try:
        profile = load_profile(str(path))
    except ProfileError as exc:
        elapsed = time.monotonic() - t0
        check_errors(exc.errors)
        profile = None
    else:
        elapsed = time.monotonic() - t0
        check_profile(profile)
    assert elapsed < LOAD_LIMIT_S, f"load_profile took {elapsed:.2f}s"
    return profile


@pytest.fixture(scope="module")
def scratch() -> Any:
    root = Path(tempfile.mkdtemp(prefix="sd-props-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def run_example(scratch: Path, text: str | bytes, files: dict) -> Profile | None:
    directory = Path(tempfile.mkdtemp(dir=scratch))
    try:
        profile = load_one(materialize(directory, text, files))
        event("accepted" if profile is not None else "refused")  # --hypothesis-show-statistics
        return profile
    finally:
        shutil.rmtree(directory, ignore_errors=True)


FAST = settings(max_examples=800, deadline=2000, database=None, report_multiple_bugs=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


# ---- in-process: thousands of profiles -------------------------------------------------------------------

@FAST
@given(plausible())
def test_plausible_profiles_load_or_fail_in_one_line(scratch, doc):
    run_example(scratch, *doc)


@settings(FAST, max_examples=300)
@given(mutated())
def test_mutated_profiles_load_or_fail_in_one_line(scratch, doc):
    run_example(scratch, *doc)


@settings(FAST, max_examples=250)
@given(garbage())
def test_garbage_is_refused_in_one_line(scratch, doc):
    assert run_example(scratch, *doc) is None or doc[0].startswith(b"name: p")


@settings(FAST, max_examples=25, deadline=None)  # each file is up to 1 MiB: the load's own limit applies
@given(huge())
def test_huge_files_load_or_fail_quickly(scratch, doc):
    run_example(scratch, *doc)


# ---- through the command line: `sunsetd --check` ----------------------------------------------------------

@st.composite
def cheap_profile(draw: Any) -> tuple[str, dict]:
    """A profile that is mostly right, of agents that cost little to run (the testing Echo agent, sleep,
    true, sh): values anywhere in their documented bounds, a few set in `defaults`."""
    n = draw(st.integers(1, 3))
    names = [f"A{i}" for i in range(n)]
    settings_values: dict[str, st.SearchStrategy] = {
        "memory_mb": st.integers(0, 1000), "max_rss_mb": st.one_of(st.none(), st.integers(50, 4000)),
        "restart": choice(["always", "on-failure", "never"]), "heartbeat_ms": st.integers(50, 2000),
        "liveness": st.integers(2, 10), "start_timeout_s": st.floats(1.0, 10.0), "stop_timeout_s": st.floats(0.2, 3.0),
        "stable_s": st.floats(0, 20), "concurrency": st.integers(1, 8), "max_inflight": st.integers(1, 100),
        "max_queue": st.integers(0, 100), "stop_signal": choice(["SIGTERM", "SIGINT", "SIGKILL", "TERM", 15]),
        "idle_timeout_s": st.floats(0.5, 600),
        "backoff": st.fixed_dictionaries({}, optional={"initial_ms": st.integers(0, 500),
                                                       "max_ms": st.integers(0, 5000),
                                                       "multiplier": st.floats(1.0, 1000.0),
                                                       "jitter": choice(["full", "none"])}),
        "intensity": st.fixed_dictionaries({}, optional={"max_restarts": st.integers(0, 10),
                                                         "within_s": st.floats(0.5, 60),
                                                         "cooldown_s": st.floats(0, 60)}),
        "env": st.dictionaries(_word(UPPER, UPPER + "0123456789_", 4), st.text(
            st.characters(codec="utf-8", exclude_characters="\0"), max_size=5), max_size=3),
        "umask": choice(["0022", "077", "0027"]), "nice": st.integers(0, 19),
        "rlimit_core": choice([0, "unlimited", 1 << 20]), "rlimit_nofile": st.integers(256, 4096),
    }
    agents = []
    for i, name in enumerate(names):
        entry: dict = {"name": name}
        if draw(st.booleans()):
            entry["run"] = "agents.testing:Echo"
            if draw(st.booleans()):
                entry["config"] = draw(st.dictionaries(st.text(max_size=4).map(lambda k: "k_" + k), DATA, max_size=3))
            if draw(st.integers(0, 3)) == 0:
                entry["lazy"] = True
        else:
            entry["command"] = draw(choice([["sleep", "60"], "sleep 60", ["true"], ["sh", "-c", "exit 3"],
                                            ["/bin/sleep", 60], [sys.executable, "-c", "import time; time.sleep(60)"]]))
            probe = draw(choice([None, {"exec": ["true"]}, {"exec": "sh -c 'exit 1'", "timeout_ms": 200},
                                 {"tcp": "127.0.0.1:1", "timeout_ms": 100}, {"log": "never printed"}]))
            if probe is not None:
                entry["ready"] = probe
            if draw(st.integers(0, 3)) == 0:
                entry["health"] = {"exec": ["true"], "interval_ms": draw(st.integers(50, 1000)),
                                   "failures": draw(st.integers(1, 5))}
        if i and draw(st.booleans()):
            entry["depends_on"] = draw(st.lists(choice(names[:i]), max_size=2))
        for key in draw(st.lists(choice(sorted(settings_values)), max_size=4, unique=True)):
            entry[key] = draw(settings_values[key])
        agents.append(entry)
    doc: dict = {"name": draw(PROFILE_NAME), "agents": agents}
    if draw(st.booleans()):
        doc["description"] = draw(st.text(st.characters(codec="utf-8"), max_size=20))
    if draw(st.booleans()):
        doc["limits"] = {"memory_mb": draw(st.one_of(st.none(), st.integers(100, 10_000)))}
    if draw(st.booleans()):
        keys = draw(st.lists(choice(["heartbeat_ms", "liveness", "stop_timeout_s", "backoff", "restart", "env"]),
                             max_size=3, unique=True))
        doc["defaults"] = {k: draw(settings_values[k]) for k in keys}
    return _dump(doc, random.Random(draw(st.integers(0, 2**32)))), {}


@settings(FAST, max_examples=250)
@given(st.deferred(lambda: cheap_profile()))
def test_mostly_right_profiles_are_what_the_daemon_assumes(scratch, doc):
    """More profiles that load (most plausible ones do not): each must be what the daemon assumes."""
    run_example(scratch, *doc)


def sunsetd(*args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
    """The real command line (as tests/test_profile.py runs it); a hang is a failure."""
    try:
        return subprocess.run([sys.executable, "-m", "sunsetd", *args], capture_output=True, text=True,
                              errors="backslashreplace", cwd=REPO, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"sunsetd {' '.join(args)} did not answer within {timeout:g}s")


def check_cli(path: Path) -> int:
    t0 = time.monotonic()
    result = sunsetd("--profile", str(path), "--check")
    elapsed = time.monotonic() - t0
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr[-3000:]
    assert result.returncode in (0, 2), (result.returncode, result.stderr[-3000:])
    if result.returncode == 0:
        assert result.stdout.startswith("profile ") and "agents: " in result.stdout, result.stdout
        assert not result.stderr.strip(), result.stderr
    else:
        lines = result.stderr.splitlines()
        assert lines and lines[-1].endswith("error(s); not starting"), result.stderr[-3000:]
        assert f"has {len(lines) - 1} error(s)" in lines[-1], result.stderr[-3000:]
        for line in lines:
            assert line.startswith("sunsetd: ") and len(line) <= MAX_ERROR + 200, line[:300]
    assert elapsed < 20, f"--check took {elapsed:.1f}s"
    return result.returncode


@settings(max_examples=30, deadline=None, database=None, report_multiple_bugs=False,
          suppress_health_check=list(HealthCheck))
@given(st.one_of(cheap_profile(), cheap_profile(), plausible(bias=8), mutated(), garbage()))
def test_check_on_the_command_line_exits_0_or_2_with_one_line_errors(scratch, doc):
    directory = Path(tempfile.mkdtemp(dir=scratch))
    try:
        path = materialize(directory, *doc)
        code = check_cli(path)
        event(f"sunsetd --check exited {code}")
        try:  # what the command line says is what the loader says
            load_profile(str(path))
        except ProfileError:
            assert code == 2
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# ---- accepted profiles of cheap agents, run by a real daemon -----------------------------------------------

def sunsetctl_status(runtime_dir: Path) -> dict | None:
    """`sunsetctl status --json` (0: running, 3: degraded or not all ready); None when no daemon answers."""
    result = subprocess.run([str(Path(sys.executable).parent / "sunsetctl"), "--runtime-dir", str(runtime_dir),
                             "--timeout", "5", "status", "--json"], capture_output=True, text=True, timeout=30)
    if result.returncode not in (0, 3) or not result.stdout.strip():
        return None
    return json.loads(result.stdout)


@pytest.mark.slow
@settings(max_examples=5, deadline=None, database=None, report_multiple_bugs=False,
          suppress_health_check=list(HealthCheck))
@given(cheap_profile())
def test_accepted_profiles_of_cheap_agents_run(scratch, start_daemon, doc):
    directory = Path(tempfile.mkdtemp(dir=scratch))
    try:
        path = materialize(directory, *doc)
        try:
            profile = load_profile(str(path))
        except ProfileError:
            profile = None
        assume(profile is not None and check_cli(path) == 0)
        before = _descendant_pids()
        d = start_daemon(path, wait=False)
        status = wait_until(lambda: d.proc.poll() is not None or sunsetctl_status(d.runtime_dir), 30,
                            what="sunsetctl status")
        assert d.proc.poll() is None, f"sunsetd exited with {d.proc.returncode}:\n{d.log()[-4000:]}"
        assert sorted(a["name"] for a in status["agents"]) == sorted(a.name for a in profile.agents), status
        time.sleep(0.5)  # agents starting, failing, restarting: the daemon must keep answering
        assert sunsetctl_status(d.runtime_dir) is not None, d.log()[-4000:]
        code = d.terminate(timeout=45)
        log = d.log()
        assert code == 0, f"sunsetd exited {code}:\n{log[-4000:]}"
        assert not re.search(r"^Traceback", log, re.M), log[-4000:]  # the daemon's own (agents' are logged)
        assert_none_left(before, 10.0, "the daemon")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# ---- what these tests found: each example failed before its fix in sunsetd/profile.py ----------------------

AGENT = "name: p\nagents:\n  - name: W\n    run: agents.testing:Echo\n"
PROGRAM = "name: p\nagents:\n  - name: W\n    command: [sleep, '60']\n"

# (what, profile text, what the one error line says). Before the fix: a traceback (of --check, of the
# daemon's start, or raised in the daemon's loop by the running daemon), a multi-line or unbounded error
# line, or a profile accepted that the daemon could not run.
FOUND = [
    # tracebacks of `sunsetd --check` (and of the daemon's start)
    ("decimal integer of 4301 digits (ValueError)", AGENT + "    heartbeat_ms: " + "9" * 4301 + "\n",
     "cannot read '999"),
    ("hex integer past 4300 digits: repr() in the error raised", AGENT + "    heartbeat_ms: 0x" + "f" * 4000 + "\n",
     "an integer too large"),
    ("sexagesimal integer past 4300 digits", AGENT + "    config: {n: " + "1:" * 3000 + "1}\n", "an integer too large"),
    ("a sexagesimal integer too large for a float in a seconds field (OverflowError; found by CI)",
     AGENT + "    start_timeout_s: " + "1:" * 700 + "1\n", "expected a number"),
    ("huge integer as a key", "? 0x" + "f" * 4000 + "\n: 1\n" + AGENT[8:], "an integer too large"),
    ("a 13th month (ValueError)", AGENT + "    config: {when: 2024-13-01}\n", "cannot read '2024-13-01' as timestamp"),
    ("year 0 (ValueError)", AGENT + "    config: {when: 0000-01-01}\n", "as timestamp"),
    ("!!float abc (ValueError)", AGENT + "    stop_timeout_s: !!float abc\n", "cannot read 'abc' as float"),
    ("!!bool abc (KeyError)", AGENT + "    lazy: !!bool abc\n", "cannot read 'abc' as bool"),
    ("!!timestamp abc (AttributeError)", AGENT + "    config: {t: !!timestamp abc}\n", "as timestamp"),
    ("!!int abc (ValueError)", "name: !!int abc\n" + AGENT[8:], "cannot read 'abc' as int"),
    ("ready: keys of two types (TypeError sorting them)",
     PROGRAM + "    ready: {http: 'http://127.0.0.1:1/', 1: 2, b: 3}\n", "field 'ready': unknown field 1"),
    ("a log: regex nested 3000 deep (RecursionError)",
     PROGRAM + "    ready: {log: '" + "(" * 3000 + ")" * 3000 + "'}\n", "ready probe: cannot be read (RecursionError)"),
    ("extends: a lone surrogate (UnicodeEncodeError)", 'extends: "\\ud800"\n' + AGENT[8:], "invalid YAML at line 1"),
    ("a chain of 1200 agents listed last first (RecursionError)", "name: p\nagents:\n" + "".join(
        f"  - {{name: A{i}, run: 'agents.testing:Echo'" + (f", depends_on: [A{i - 1}]" if i else "") + "}\n"
        for i in reversed(range(1200))), "a chain of 1200 agents each depending on the next, over the limit of 100"),
    # error lines that were several lines, or unbounded
    ("a newline in extends", 'extends: "a\\nb.yaml"\n' + AGENT[8:],
     "field 'extends': a\\nb.yaml: no such profile file"),
    ("a newline in a backoff key", AGENT + '    backoff: {"a\\nb": 1}\n', "field 'backoff.a\\nb': unknown field"),
    ("a control character in a backoff key", AGENT + '    backoff: {"\\x12)": 1}\n', "field 'backoff.\\x12)'"),
    ("a newline in a limits key", 'limits: {"a\\nb": 1}\n' + AGENT[8:], "field 'limits.a\\nb': unknown field"),
    ("a newline in an env name", AGENT + '    env: {"A\\n": "${ZZ_NOT_SET}"}\n',
     "field 'env': 'A\\n' is not a variable"),
    ("a newline in a regex error", PROGRAM + '    ready: {log: "[z-\\n]"}\n', "bad character range z-\\n"),
    ("a 100,000-character key echoed whole", "? " + "k" * 100_000 + "\n: 1\n" + AGENT[8:], "unknown field 'kkkk"),
    ("a 3,000-character profile name echoed whole", "extends: " + "x" * 3000 + "\n" + AGENT[8:], "not found in"),
    # accepted, and the daemon could not run them
    ("an agent named 'W\\n' ($ matches before a final newline)", 'name: p\nagents:\n  - name: "W\\n"\n'
     "    run: agents.testing:Echo\n", "agent 'W\\n': field 'name': expected a name"),
    ("probe timeout_ms of 400 digits: the daemon crashed at start (OverflowError)",
     PROGRAM + "    ready: {tcp: '127.0.0.1:1', timeout_ms: 1" + "0" * 400 + "}\n", "timeout_ms: expected an integer"),
    ("a tcp probe host with a NUL: the daemon crashed (TypeError)", PROGRAM + '    ready: {tcp: "a\\0b:80"}\n',
     "expected a host name or address"),
    ("an http probe host with a NUL: the daemon crashed", PROGRAM + '    ready: {http: "http://a\\0b/"}\n',
     "http: a URL cannot hold a NUL"),
    ("a host IDNA cannot encode: the daemon crashed (TypeError)",
     PROGRAM + "    health: {http: 'http://" + "é" * 70 + "/'}\n", "is not a host name (IDNA)"),
    ("a log probe of !!binary: the daemon crashed at the first line (TypeError)",
     PROGRAM + "    ready: {log: !!binary aGVsbG8=}\n", "log: expected a regular expression"),
    ("an exec probe with a NUL: the daemon crashed (ValueError)", PROGRAM + '    ready: {exec: ["tr\\0ue"]}\n',
     "exec: expected a program to run first, and no NUL"),
    ("an env value with a NUL: a program's spawn crashed the daemon, a Python agent crash-looped",
     AGENT + '    env: {A: "a\\0b"}\n', "A: a value cannot hold a NUL character"),
    ("a profile name with a NUL: every agent crash-looped (setproctitle)", 'name: "a\\0b"\n' + AGENT[8:],
     "field 'name': expected a string of 1 to 100 printable characters"),
    ("a group id of 10**30: every spawn failed in the child", PROGRAM + "    group: 1" + "0" * 30 + "\n",
     "field 'group': expected a group name or a number from 0 to 4294967294"),
    ("rlimit_core of 10**34: every spawn failed in the child", PROGRAM + "    rlimit_core: 1" + "0" * 34 + "\n",
     "field 'rlimit_core': expected an integer from 0 to 9223372036854775807, or unlimited"),
    ("backoff.multiplier 2e6: the daemon crashed after ~50 failures in a row (OverflowError)",
     PROGRAM + "    backoff: {multiplier: 2000000}\n",
     "field 'backoff.multiplier': expected a number >= 1 and <= 1000"),
]


@pytest.mark.parametrize("text, says", [pytest.param(text, says, id=what) for what, text, says in FOUND])
def test_what_the_property_tests_found(tmp_path, text, says):
    path = tmp_path / "found.yaml"
    path.write_text(text)
    t0 = time.monotonic()
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    assert time.monotonic() - t0 < LOAD_LIMIT_S
    check_errors(info.value.errors)
    assert any(says in e for e in info.value.errors), info.value.errors


def test_a_lone_surrogate_is_refused_even_by_the_pure_python_loader(tmp_path):
    """libyaml refuses a \\ud800 escape; PyYAML's own loader (the one used before, and without libyaml) made
    one, which crashed --check (printing the description), the daemon's log (the profile's name) and every
    agent given it in env."""
    code = ("import sys, yaml\ndel yaml.CSafeLoader\n"
            "from sunsetd.profile import load_profile, ProfileError, _Loader\n"
            "assert _Loader.__mro__[1] is yaml.SafeLoader\n"
            "try:\n    load_profile(sys.argv[1])\nexcept ProfileError as exc:\n    print(exc.errors)\n")
    for text in ('description: "a\\ud800"\n' + AGENT[8:], AGENT + '    env: {A: "\\udfff"}\n'):
        path = tmp_path / "s.yaml"
        path.write_text(text)
        result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=REPO,
                                timeout=30)
        assert result.returncode == 0, result.stderr[-2000:]
        errors = eval(result.stdout)  # noqa: S307 - the repr of a list of str we printed
        check_errors(errors)
        assert "lone surrogate" in errors[0], errors


def test_a_file_near_the_size_limit_is_read_quickly(tmp_path):
    """PyYAML's pure-Python loader took 0.5 to 10 s for 1 MiB (and a reload reads on the daemon's loop: every
    agent of tests/profiles/mini.yaml gave the silent daemon up during one); 20,000 small values took 7 s."""
    for text in (AGENT + "# " + "x" * (MAX_PROFILE_BYTES - len(AGENT) - 4) + "\n",
                 AGENT + "    config: {l: [" + ", ".join(["1"] * 19_980) + "]}\n",
                 "name: p\nagents:\n"
                 + "".join(f"  - {{name: A{i}, run: 'agents.testing:Echo'}}\n" for i in range(3990)),
                 "defaults: {env: {" + "".join(f"V{i}: x, " for i in range(4000)) + "}}\nagents:\n"
                 + "".join(f"  - {{name: A{i}, run: 'agents.testing:Echo'}}\n" for i in range(2000))):
        path = tmp_path / "big.yaml"
        path.write_text(text)
        assert len(text.encode()) <= MAX_PROFILE_BYTES
        t0 = time.monotonic()
        try:
            load_profile(str(path))
        except ProfileError as exc:  # the list is over config's own 10,000 values: refused, but at once
            check_errors(exc.errors)
        assert time.monotonic() - t0 < 1.0
    path.write_text(AGENT + "    config: {l: [" + ", ".join(["1"] * 20_001) + "]}\n")
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    assert "more than 20000 values" in info.value.errors[0]


@pytest.mark.parametrize("target", ["fifo", "/dev/zero"])
def test_an_env_file_that_never_ends_is_refused(tmp_path, target):
    """`env_file: /dev/zero` read until memory ran out, a FIFO blocked --check (and a reload) for ever."""
    os.mkfifo(tmp_path / "fifo")
    path = tmp_path / "p.yaml"
    path.write_text(AGENT + f"    env_file: {target}\n")
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
            "from sunsetd.profile import load_profile, ProfileError\n"
            "try:\n    load_profile(sys.argv[1])\nexcept ProfileError as exc:\n    print(exc.errors[0])\n")
    try:
        result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=REPO,
                                timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"load_profile did not return with env_file: {target}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "field 'env_file'" in result.stdout and "not a regular file" in result.stdout, result.stdout
