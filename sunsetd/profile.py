"""Profiles (DESIGN §2): find, load, merge (`extends`, defaults, overrides) and validate a profile.

Owns the meaning of every profile field and every profile error. A profile that loads is complete and
consistent: each agent's settings are resolved, its dependencies exist, are acyclic and are ordered into
start levels. Errors are collected, not raised one at a time, so `--check` can print all of them; each
is one line naming the file, the agent and the field. Whether a `run` target imports is checked in a
child (sunsetd.runcheck): loading a profile never runs user code.
"""
from __future__ import annotations

import enum
import json
import math
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from sunsetd import probes, procsettings, protocol
from sunsetd.probes import Probe
from sunsetd.procsettings import ProcessSettings


class RestartMode(str, enum.Enum):
    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


@dataclass(frozen=True)
class Backoff:
    initial_ms: int = 100
    max_ms: int = 30_000
    multiplier: float = 2.0
    jitter: str = "full"  # full | none


@dataclass(frozen=True)
class Intensity:
    max_restarts: int = 5
    within_s: float = 60.0
    cooldown_s: float = 60.0


@dataclass(frozen=True)
class AgentSpec:
    name: str
    run: str = ""  # module:Class of a Python agent, or
    command: tuple[str, ...] = ()  # the argv of a program (never run through a shell)
    protocol: str = ""  # "mcp": a program that is an MCP server on its stdin and stdout, behind the router
    roots: tuple[str, ...] = ()  # what an MCP server is told when it asks for its client's roots
    stop_signal: int = 15  # what asks it to stop (SIGTERM); SIGKILL after stop_timeout_s
    ready: Probe | None = None  # a program's readiness probe (None: ready once it runs)
    health: Probe | None = None  # a ready program's liveness probe
    lazy: bool = False
    essential: bool = True
    idle_timeout_s: float = 300.0
    depends_on: tuple[str, ...] = ()
    memory_mb: int = 64
    max_rss_mb: int | None = None
    config: dict = field(default_factory=dict, hash=False)
    restart: RestartMode = RestartMode.ALWAYS
    heartbeat_ms: int = 250
    liveness: int = 3
    start_timeout_s: float = 10.0
    stop_timeout_s: float = 5.0
    stable_s: float = 10.0
    concurrency: int = 1
    max_inflight: int = 64
    max_queue: int = 256
    backoff: Backoff = Backoff()
    intensity: Intensity = Intensity()
    process: ProcessSettings = ProcessSettings()  # env, cwd, user, umask, nice, limits of its process


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    description: str
    memory_mb: int | None
    agents: tuple[AgentSpec, ...]
    levels: tuple[tuple[str, ...], ...]  # start order: each level depends only on earlier ones
    origins: dict[tuple[str, str], Path] = field(default_factory=dict, compare=False, repr=False)

    def origin_of(self, agent: str, key: str) -> Path:
        """The file that set this field of this agent (for error messages)."""
        return self.origins.get((agent, key), self.origins.get((agent, "name"), self.path))

    def agent(self, name: str) -> AgentSpec:
        return self.by_name[name]

    @property
    def by_name(self) -> dict[str, AgentSpec]:
        return {a.name: a for a in self.agents}

    def counts(self) -> dict[str, int]:
        return {
            "total": len(self.agents),
            "essential": sum(a.essential for a in self.agents),
            "eager": sum(not a.lazy for a in self.agents),
            "lazy": sum(a.lazy for a in self.agents),
        }


MAX_ERROR_CHARS = 500  # of one error line


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` as one printable line of at most `limit` characters: what is not printable (a newline, a
    control character, a lone surrogate) is escaped, and a long line ends in '...'."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class ProfileError(Exception):
    """The profile cannot be used; `errors` holds one line per fault (one printable line each, bounded:
    whatever a profile puts in a name or a value, an error never spans lines or echoes it whole)."""

    def __init__(self, errors: list[str]):
        errors = [one_line(e) for e in errors]
        super().__init__("\n".join(errors))
        self.errors = errors


def show(value: Any) -> str:
    """A profile's value quoted in an error: a bounded prefix (protocol.show), even of a value whose repr
    fails (an integer of more than 4300 digits)."""
    try:
        return protocol.show(value)
    except Exception:  # noqa: BLE001
        return f"<{type(value).__name__}>"


def _bare(key: Any) -> str:
    """A key inside a quoted field name (`'backoff.initial'`): bounded, and escaped like repr()."""
    return show(key)[1:-1] if isinstance(key, str) else show(key)


# ---- field schema -------------------------------------------------------------------------------------
# Each checker returns the converted value or raises ValueError with what was expected.


# Every number in a profile is bounded: a 40-digit heartbeat_ms crash-looped its agent, and an
# infinite stop_timeout_s crashed the daemon at its SIGTERM.
MAX_INT = 1_000_000_000
MAX_SECONDS = 30 * 24 * 3600.0
# policy.backoff_delay computes multiplier ** n for n up to 64: past about 65,000 that overflows a float,
# which raised in the daemon's loop after some fifty consecutive failures of the agent.
MAX_MULTIPLIER = 1000.0


def _int(lo: int = 0, hi: int = MAX_INT) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"expected an integer from {lo} to {hi}")
        return v

    return check


def _num(lo: float = 0.0, strict: bool = False, hi: float = MAX_SECONDS) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        # an int is compared exactly; math.isfinite of a huge int (a sexagesimal 1:1:1:...) overflows
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)) \
                or not lo <= v <= hi \
                or (strict and v == lo):
            raise ValueError(f"expected a number {'>' if strict else '>='} {lo:g} and <= {hi:g}")
        return float(v)

    return check


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("expected true or false")
    return v


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else check(v)


def _choice(enum_type: type[enum.Enum]) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        try:
            return enum_type(v)
        except ValueError:
            raise ValueError(f"expected one of {', '.join(e.value for e in enum_type)}") from None

    return check


def _jitter(v: Any) -> str:
    if v not in ("full", "none"):
        raise ValueError("expected full or none")
    return v


def _dependencies(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(d, str) and d for d in v):
        raise ValueError("expected a list of agent names")
    return tuple(v)


MAX_CONFIG_VALUES = 10_000  # scalars and containers in one agent's config
MAX_CONFIG_DEPTH = 32
MAX_CONFIG_BYTES = 64 * 1024  # as the agent receives it (its launch carries it)


def _config(v: Any) -> dict:
    """What the agent will receive: plain data (maps with string keys, lists, strings, numbers, booleans,
    null), bounded in depth, count and size. YAML's dates, !!binary, sets and self-references are not
    plain data; a walk that stops at a count is what keeps an alias bomb from hanging the check."""
    if not isinstance(v, dict):
        raise ValueError("expected a mapping")
    seen = 0
    stack: list[tuple[Any, int]] = [(v, 0)]
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_CONFIG_VALUES:
            raise ValueError(f"more than {MAX_CONFIG_VALUES} values (repeated YAML aliases?)")
        if depth > MAX_CONFIG_DEPTH:
            raise ValueError(f"nested deeper than {MAX_CONFIG_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ValueError(f"a key is not a string: {show(key)}")
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value} is not a number an agent can be given")
        elif value is not None and not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"not plain data: {type(value).__name__} {show(value)}")
    size = len(json.dumps(v, separators=(",", ":")))
    if size > MAX_CONFIG_BYTES:
        raise ValueError(f"{size} bytes as JSON, over the {MAX_CONFIG_BYTES}-byte limit")
    return v


# fullmatch, never match with $: "$" also matches before a final newline, and "A\n" was an agent's name
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,99}")
_RUN_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_RUN_CHARS = 200


def _name(v: Any) -> str:
    if not isinstance(v, str) or not _NAME_RE.fullmatch(v) or v == "sunsetd":
        raise ValueError("expected a name of letters, digits, '_', '.', '-' starting with a letter (not 'sunsetd')")
    return v


def _path(v: Any) -> str:
    if not isinstance(v, str) or not v or "\0" in v:
        raise ValueError("expected a path")
    return v


def _relative_to(origin: Path, key: str, value: Any, where: str, errors: list[str]) -> Any:
    """A path field is relative to the file that gives it; env_file is read now (so --check sees it)."""
    if key == "roots":
        return tuple(r if "://" in r or os.path.isabs(r) else str(origin.parent / r) for r in value)
    if key not in ("env_file", "cwd"):
        return value
    path = Path(value) if os.path.isabs(value) else origin.parent / value
    if key == "cwd":
        return str(path)
    try:
        return _read_env_file(path)
    except ValueError as exc:
        errors.append(f"{where}: field 'env_file': {exc}")
        return None


MAX_ID = 2**32 - 2  # uid_t and gid_t: (uid_t) -1 means "no change"


def _env(v: Any) -> dict[str, str]:
    """`env:` (procsettings.parse_env), whose names are whole names and whose values can be put in an
    environment (a NUL made the daemon's spawn of a program raise, and every Python agent crash at start)."""
    if isinstance(v, dict):
        for name in v:
            if not isinstance(name, str) or not _ENV_NAME_RE.fullmatch(name):
                raise ValueError(f"{show(name)} is not a variable name")
    return _environment(procsettings.parse_env(v, os.environ), "")


def _environment(env: dict[str, str], where: str) -> "_Env":
    """Variables that can be put in an environment: a value with a NUL cannot."""
    for name, value in env.items():
        if "\0" in value:
            raise ValueError(f"{where}{name}: a value cannot hold a NUL character")
    return _Env(env)


def _id_name(what: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        name = procsettings.parse_name(v, what)
        if name.isdigit() and int(name) > MAX_ID:  # setresuid() of 10**30 raised in the child, every spawn
            raise ValueError(f"expected a {what} name or a number from 0 to {MAX_ID}")
        return name

    return check


MAX_RLIMIT = 2**63 - 1  # setrlimit() takes a signed 64-bit value: 10**34 raised OverflowError in the child


def _rlimit(key: str) -> Callable[[Any], int]:
    top = MAX_RLIMIT >> 20 if key == "rlimit_as_mb" else MAX_RLIMIT

    def check(v: Any) -> int:
        if not isinstance(v, bool) and isinstance(v, int) and v > top:
            raise ValueError(f"expected an integer from {0 if key == 'rlimit_core' else 1} to {top}, or unlimited")
        return procsettings.parse_rlimit(key, v)

    return check


def _read_env_file(path: Path) -> dict[str, str]:
    """`env_file:`, which must be a regular file of at most MAX_PROFILE_BYTES (reading /dev/zero or a FIFO
    never ended), whose values can be put in an environment."""
    import stat

    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: not a regular file")
    if st.st_size > MAX_PROFILE_BYTES:
        raise ValueError(f"{path}: over the {MAX_PROFILE_BYTES}-byte limit")
    return _environment(procsettings.read_env_file(path, os.environ), f"{path}: ")


class _Env(dict):
    """A checked `env:` mapping that makes its items once: the env of `defaults` is every agent's, and
    merging 4,000 variables into each of 2,000 agents took seconds."""

    _items: tuple | None = None

    def items_tuple(self) -> tuple[tuple[str, str], ...]:
        if self._items is None:
            self._items = tuple(self.items())
        return self._items


def _process_settings(values: dict[str, Any], defaults: dict[str, Any], own: dict[str, Any]) -> ProcessSettings:
    parts = [p for p in (defaults.get("env"), values.get("env_file"), own.get("env")) if p]
    if len(parts) == 1 and isinstance(parts[0], _Env):
        env_items = parts[0].items_tuple()  # shared, not copied per agent
    else:
        env_items = tuple({k: v for part in parts for k, v in part.items()}.items())
    return ProcessSettings(
        env=env_items, cwd=values.get("cwd"), user=values.get("user"), group=values.get("group"),
        umask=values.get("umask"), nice=values.get("nice"),
        rlimits=tuple((procsettings.RLIMITS[k], values[k]) for k in procsettings.RLIMITS if k in values))


def _command(v: Any) -> tuple[str, ...]:
    """An argv list, or a string split as a shell would split it (it is never run through one)."""
    if isinstance(v, str):
        try:
            v = shlex.split(v)
        except ValueError as exc:
            raise ValueError(f"cannot split it into words: {exc}") from None
    if not isinstance(v, list) or not v or not all(isinstance(a, (str, int, float)) and not isinstance(a, bool)
                                                   for a in v):
        raise ValueError("expected a non-empty list of arguments, or a command line")
    argv = tuple(str(a) for a in v)
    if not argv[0] or "\0" in "".join(argv):
        raise ValueError("expected a program to run first")
    return argv


def _signal(v: Any) -> int:
    import signal

    try:
        if isinstance(v, int) and not isinstance(v, bool):
            return int(signal.Signals(v))
        if isinstance(v, str):
            name = v.upper()
            return int(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
    except (KeyError, ValueError):
        pass
    raise ValueError("expected a signal name such as SIGTERM or SIGINT")


def _executable_problem(argv: tuple[str, ...], process: ProcessSettings) -> str | None:
    """Whether the program can be run: found where it will be looked for, and executable."""
    program = argv[0]
    path = procsettings.find_program(program, process)
    if path is None:
        return f"{program!r}: no such file" if "/" in program else \
            f"{program!r} not found on PATH (nor in {procsettings.OWN_BIN})"
    return None if os.access(path, os.X_OK) else f"{program!r}: not executable"


def _host_problem(host: Any) -> str | None:
    """Why a probe cannot connect to `host` at all (not whether the name resolves: that is news at run
    time): socket.connect() raised TypeError (not OSError) in the daemon's loop for these."""
    if not isinstance(host, str) or not host or "\0" in host:
        return "expected a host name or address"
    if not host.isascii():
        try:
            host.encode("idna")
        except UnicodeError:
            return f"{show(host)} is not a host name (IDNA)"
    return None


def _probe(v: Any, health: bool) -> Probe:
    """`ready:` / `health:` (probes.parse), as the daemon can run it: every number bounded, a `log:` pattern
    that is text, hosts a socket can be given, an argv an exec can take."""
    if isinstance(v, dict) and not all(isinstance(k, str) for k in v):
        raise ValueError(f"unknown field {show(next(k for k in v if not isinstance(k, str)))}")
    if not health and isinstance(v, dict) and "log" in v and not isinstance(v["log"], str):
        raise ValueError("log: expected a regular expression")
    try:
        probe = probes.parse(v, health=health)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - re.compile's RecursionError or OverflowError, for one
        raise ValueError(f"{'health' if health else 'ready'} probe: cannot be read ({type(exc).__name__})") from None
    for key in ("interval_ms", "timeout_ms", "failures"):
        if getattr(probe, key) > MAX_INT:  # timeout_ms / 1000 overflowed a float in the daemon's loop
            raise ValueError(f"{key}: expected an integer from 1 to {MAX_INT}")
    problem = None
    if probe.kind == "tcp":
        problem = _host_problem(probe.target[0])
    elif probe.kind == "http":
        from urllib.parse import urlsplit

        problem = "http: a URL cannot hold a NUL character" if "\0" in probe.target else \
            _host_problem(urlsplit(probe.target).hostname)
    elif probe.kind == "exec" and (not probe.target[0] or "\0" in "".join(probe.target)):
        problem = "exec: expected a program to run first, and no NUL character"
    if problem is not None:
        raise ValueError(problem)
    return probe


def _protocol(v: Any) -> str:
    if v != "mcp":
        raise ValueError("expected mcp (a program that is an MCP server on its stdin and stdout)")
    return v


def _roots(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(r, str) and r and "\0" not in r for r in v):
        raise ValueError("expected a list of directories or URIs")
    return tuple(v)


def _run(v: Any) -> str:
    if not isinstance(v, str) or not _RUN_RE.fullmatch(v):
        raise ValueError("expected 'module:Class'")
    if len(v) > MAX_RUN_CHARS:
        raise ValueError(f"expected 'module:Class' of at most {MAX_RUN_CHARS} characters")
    return v


_BACKOFF_FIELDS: dict[str, Callable[[Any], Any]] = {
    "initial_ms": _int(0),
    "max_ms": _int(0),
    "multiplier": _num(1.0, hi=MAX_MULTIPLIER),
    "jitter": _jitter,
}
_INTENSITY_FIELDS: dict[str, Callable[[Any], Any]] = {
    "max_restarts": _int(0),
    "within_s": _num(0.0, strict=True),
    "cooldown_s": _num(0.0),
}
_NESTED = {"backoff": (_BACKOFF_FIELDS, Backoff), "intensity": (_INTENSITY_FIELDS, Intensity)}

# Settings that `defaults` may set for every agent, and each agent may override.
_SETTINGS: dict[str, Callable[[Any], Any]] = {
    "lazy": _bool,
    "essential": _bool,
    "idle_timeout_s": _num(0.0, strict=True),
    "memory_mb": _int(0),
    "max_rss_mb": _optional(_int(1)),
    "restart": _choice(RestartMode),
    "heartbeat_ms": _int(10),
    "liveness": _int(1),
    "start_timeout_s": _num(0.0, strict=True),
    "stop_timeout_s": _num(0.0, strict=True),
    "stable_s": _num(0.0),
    "concurrency": _int(1),
    "max_inflight": _int(1),
    "max_queue": _int(0),
    "stop_signal": _signal,
    # the process's own settings (procsettings.py); env merges over the defaults' env, the rest override
    "env": _env,
    "env_file": _path,
    "cwd": _path,
    "user": _id_name("user"),
    "group": _id_name("group"),
    "umask": procsettings.parse_umask,
    "nice": procsettings.parse_nice,
    **{key: _rlimit(key) for key in procsettings.RLIMITS},
}
_PROCESS_FIELDS = ("env", "env_file", "cwd", "user", "group", "umask", "nice", *procsettings.RLIMITS)
_AGENT_ONLY: dict[str, Callable[[Any], Any]] = {
    "name": _name,
    "run": _run,
    "command": _command,
    "protocol": _protocol,
    "roots": _roots,
    "ready": lambda v: _probe(v, health=False),
    "health": lambda v: _probe(v, health=True),
    "depends_on": _dependencies,
    "config": _config,
}
MAX_PROFILE_NAME = 100
MAX_AGENTS = 1000  # in a profile with all it extends: each is a process, and a reload hands them all over
_AGENT_FIELDS = {**_SETTINGS, **_AGENT_ONLY}
_TOP_LEVEL = {"name", "extends", "description", "limits", "defaults", "agents"}
_LIMITS: dict[str, Callable[[Any], Any]] = {"memory_mb": _optional(_int(1))}


# ---- finding profiles ---------------------------------------------------------------------------------

# The profiles sunsetd ships: package data in a built wheel (setup.py's build_py copies the repository's
# profiles/ there), the repository's profiles/ in a checkout and in an editable install of it.
_PACKAGED_PROFILES = Path(__file__).resolve().parent / "profiles"
_SOURCE_PROFILES = Path(__file__).resolve().parent.parent / "profiles"


def shipped_profiles() -> Path:
    """The directory of the profiles that come with this installation of sunsetd."""
    return _PACKAGED_PROFILES if _PACKAGED_PROFILES.is_dir() else _SOURCE_PROFILES


def search_path() -> list[Path]:
    """Directories searched for a profile given by name, in order."""
    dirs = [Path(p) for p in os.environ.get("SUNSETD_PROFILE_PATH", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "profiles", Path("/etc/sunsetd/profiles"), shipped_profiles()]
    return dirs


def is_profile_path(name_or_path: str) -> bool:
    """A path to a profile file, not a name to look up in the search path."""
    return Path(name_or_path).suffix in (".yaml", ".yml") or os.sep in name_or_path


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, or one it cannot encode
        return False


def find_profile(name_or_path: str, near: Path | None = None) -> Path:
    """A profile by path, or by name in `near` (the extending file's directory) and the search path."""
    try:
        encoded = os.fsencode(name_or_path)
    except (UnicodeError, TypeError):  # a lone surrogate the file system cannot encode
        encoded = b"\0"
    if "\0" in name_or_path or b"\0" in encoded or len(encoded) > 4096:
        raise ProfileError([f"{name_or_path[:80]!r}...: not a profile name or path"])
    candidate = Path(name_or_path)
    if is_profile_path(name_or_path):
        if _is_file(candidate):
            return candidate
        raise ProfileError([f"{name_or_path}: no such profile file"])
    dirs = ([near] if near else []) + search_path()
    for d in dirs:
        for suffix in (".yaml", ".yml"):
            p = d / f"{name_or_path}{suffix}"
            if _is_file(p):
                return p
    raise ProfileError(
        [f"profile {show(name_or_path)} not found in {', '.join(str(d) for d in dict.fromkeys(dirs))}"]
    )


# ---- loading ------------------------------------------------------------------------------------------


@dataclass
class _RawAgent:
    fields: dict[str, Any]
    origin: dict[str, Path]  # field -> file that set it, for error messages


@dataclass
class _Merged:
    name: str = ""
    description: str = ""
    limits: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)
    defaults_origin: dict = field(default_factory=dict)
    agents: dict[str, _RawAgent] = field(default_factory=dict)


MAX_PROFILE_BYTES = 1 << 20
MAX_ALIASES = 100  # *references to anchors: a few are handy; many are an alias bomb
# Reading YAML costs a few microseconds of Python per value, and a reload reads on the daemon's loop:
# 1 MiB of small values took 7 s, long enough for every agent to give the silent daemon up. Values are
# counted (and nesting measured) from the parser's events before anything is built.
MAX_YAML_VALUES = 20_000
MAX_YAML_DEPTH = 64
_MAX_INT_BITS = 14_000  # an integer this long still prints (Python refuses str() past 4300 digits)

# libyaml's parser when PyYAML has it (several times faster); the constructor is Python either way
_YAMLBase: type = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader


class _Loader(_YAMLBase):  # type: ignore[misc, valid-type]
    """YAML's safe loader whose every value is something a profile can hold: text that is Unicode (no lone
    surrogate from a \\ud800 escape), integers that can be printed, and any value YAML cannot construct
    (a 13th month, `!!float abc`) a YAML error at its position instead of whatever Python raised."""

    def construct_scalar(self, node: Any) -> Any:
        value = super().construct_scalar(node)
        if isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a lone surrogate (\\ud800-\\udfff) is not a character", node.start_mark) from None
        return value

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            value = super().construct_object(node, deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as exc:  # noqa: BLE001 - ValueError, KeyError, AttributeError... of PyYAML's constructors
            shown = show(node.value) if isinstance(node, yaml.ScalarNode) else "this value"
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {shown} as {node.tag.rpartition(':')[2] or node.tag} "
                            f"({type(exc).__name__})", node.start_mark) from None
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > _MAX_INT_BITS:
            raise yaml.constructor.ConstructorError(None, None, "an integer too large to be a number of a profile",
                                                    node.start_mark)
        return value


_NODE_EVENTS = (yaml.ScalarEvent, yaml.AliasEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)


def _measure(text: str) -> None:
    """Refuse a document with too many values, aliases or levels, from its events (cheap: nothing is
    built yet, and it stops at the first excess), so that building it is bounded in time and depth."""
    loader = _Loader(text)
    try:
        values = aliases = depth = 0
        while loader.check_event():
            event = loader.get_event()
            if not isinstance(event, _NODE_EVENTS):
                if isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                    depth -= 1
                continue
            values += 1
            problem = None
            if values > MAX_YAML_VALUES:
                problem = f"more than {MAX_YAML_VALUES} values"
            elif isinstance(event, yaml.AliasEvent):
                aliases += 1
                if aliases > MAX_ALIASES:
                    problem = f"more than {MAX_ALIASES} aliases (*name)"
            elif not isinstance(event, yaml.ScalarEvent):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    problem = f"nested deeper than {MAX_YAML_DEPTH} levels"
            if problem is not None:
                raise yaml.composer.ComposerError(None, None, problem, event.start_mark)
    finally:
        loader.dispose()


def _read_text(path: Path) -> bytes:
    """At most MAX_PROFILE_BYTES + 1 bytes of a regular file (a FIFO or /dev/zero is not a profile, and a
    /proc file's size says 0)."""
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file")
        chunks, size = [], 0
        while size <= MAX_PROFILE_BYTES:
            chunk = os.read(fd, MAX_PROFILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_yaml(path: Path, errors: list[str]) -> dict | None:
    try:
        data = _read_text(path)
    except OSError as exc:
        errors.append(f"{path}: cannot read: {exc.strerror or exc}")
        return None
    if len(data) > MAX_PROFILE_BYTES:
        try:
            size = f"{path.stat().st_size} bytes"
        except OSError:
            size = "more bytes"
        errors.append(f"{path}: {size}, over the {MAX_PROFILE_BYTES}-byte limit of a profile")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        errors.append(f"{path}: not UTF-8 text (byte {exc.start})")
        return None
    try:
        _measure(text)
        loader = _Loader(text)
        try:
            doc = loader.get_single_data()
        finally:
            loader.dispose()
    except RecursionError:
        errors.append(f"{path}: nested too deeply to read")
        return None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        errors.append(f"{path}: invalid YAML{where}: {problem}")
        return None
    except Exception as exc:  # noqa: BLE001 - never a traceback for a file, whatever the YAML library raised
        errors.append(f"{path}: invalid YAML: {type(exc).__name__}")
        return None
    if not isinstance(doc, dict):
        errors.append(f"{path}: expected a mapping at the top level, got {type(doc).__name__}")
        return None
    return doc


def _merge_file(path: Path, errors: list[str], chain: tuple[Path, ...] = (),
                cache: dict[Path, _Merged] | None = None) -> _Merged:
    """`cache` keeps profiles that agents are taken `from`, so each is merged (and its errors reported) once."""
    cache = {} if cache is None else cache
    real = path.resolve()
    if real in chain:
        errors.append(f"{path}: field 'extends': cycle {' -> '.join(p.name for p in chain + (real,))}")
        return _Merged()
    doc = _read_yaml(path, errors)
    if doc is None:
        return _Merged()
    for key in doc:
        if key not in _TOP_LEVEL:
            errors.append(f"{path}: unknown field {show(key)} (expected one of {', '.join(sorted(_TOP_LEVEL))})")

    merged = _Merged()
    parent = doc.get("extends")
    if parent is not None:
        if not isinstance(parent, str):
            errors.append(f"{path}: field 'extends': expected a profile name")
        else:
            try:
                merged = _merge_file(find_profile(parent, near=path.parent), errors, chain + (real,), cache)
            except ProfileError as exc:
                errors.extend(f"{path}: field 'extends': {e}" for e in exc.errors)

    merged.name = doc.get("name", path.stem)
    if not isinstance(merged.name, str) or not 0 < len(merged.name) <= MAX_PROFILE_NAME \
            or not merged.name.isprintable():
        # it is in every agent's process title and in the daemon's log lines: a NUL crashed every agent
        # at start, a lone surrogate the log and --check
        errors.append(f"{path}: field 'name': expected a string of 1 to {MAX_PROFILE_NAME} printable characters"
                      + ("" if "name" in doc else " (the default is the file's name: give one)"))
    description = doc.get("description", merged.description)
    merged.description = description if isinstance(description, str) else ""

    limits = doc.get("limits", {}) or {}
    if not isinstance(limits, dict):
        errors.append(f"{path}: field 'limits': expected a mapping")
        limits = {}
    for key, value in limits.items():
        if key not in _LIMITS:
            errors.append(f"{path}: field 'limits.{_bare(key)}': unknown field")
            continue
        try:
            merged.limits[key] = _LIMITS[key](value)
        except ValueError as exc:
            errors.append(f"{path}: field 'limits.memory_mb': {exc}, got {show(value)}")

    defaults = doc.get("defaults", {}) or {}
    if not isinstance(defaults, dict):
        errors.append(f"{path}: field 'defaults': expected a mapping")
        defaults = {}
    for key, value in defaults.items():
        if key in _NESTED and isinstance(value, dict) and isinstance(merged.defaults.get(key), dict):
            value = {**merged.defaults[key], **value}
        merged.defaults[key] = value
        merged.defaults_origin[key] = path

    agents = doc.get("agents", []) or []
    if not isinstance(agents, list):
        errors.append(f"{path}: field 'agents': expected a list")
        agents = []
    seen_here: set[str] = set()
    for i, entry in enumerate(agents):
        if not isinstance(entry, dict):
            errors.append(f"{path}: agents[{i}]: expected a mapping, got {type(entry).__name__}")
            continue
        name = entry.get("name")
        if not isinstance(name, str):
            errors.append(f"{path}: agents[{i}]: field 'name': expected a string")
            continue
        if name in seen_here:
            errors.append(f"{path}: agent {show(name)}: field 'name': duplicate name")
            continue
        seen_here.add(name)
        raw = merged.agents.get(name)
        if raw is None:
            raw = merged.agents[name] = _RawAgent({}, {})
        entry = dict(entry)
        source = entry.pop("from", None)
        if source is not None:  # the agent as another profile defines it, then this entry's overrides
            defined = _definition_from(source, name, path, errors, chain + (real,), cache)
            if defined is not None:
                raw.fields.update(defined.fields)
                raw.origin.update(defined.origin)
        for key, value in entry.items():
            if key in _NESTED and isinstance(value, dict) and isinstance(raw.fields.get(key), dict):
                value = {**raw.fields[key], **value}
            raw.fields[key] = value
            raw.origin[key] = path
        raw.origin.setdefault("name", path)
    return merged


def _definition_from(source: Any, name: str, path: Path, errors: list[str], chain: tuple[Path, ...],
                     cache: dict[Path, _Merged]) -> _RawAgent | None:
    """The raw entry of agent `name` in profile `source` (an agent entry's `from:`), so that a definition
    lives in one profile (full) and smaller profiles pick agents from it by name."""
    where = f"{path}: agent {show(name)}: field 'from'"
    if not isinstance(source, str):
        errors.append(f"{where}: expected a profile name")
        return None
    try:
        other = find_profile(source, near=path.parent)
    except ProfileError as exc:
        errors.extend(f"{where}: {e}" for e in exc.errors)
        return None
    key = other.resolve()
    if key not in cache:
        cache[key] = _merge_file(other, errors, chain, cache)
    defined = cache[key].agents.get(name)
    if defined is None:
        errors.append(f"{where}: profile {show(source)} has no agent {show(name)}")
    return defined


def _convert(where: str, key: str, value: Any, schema: dict, errors: list[str]) -> Any:
    """Checked value of one field; nested settings become dicts of checked values. None on error."""
    if key in _NESTED:
        sub_schema = _NESTED[key][0]
        if not isinstance(value, dict):
            errors.append(f"{where}: field {show(key)}: expected a mapping, got {show(value)}")
            return None
        out = {}
        for sub, v in value.items():
            if sub not in sub_schema:
                errors.append(f"{where}: field '{key}.{_bare(sub)}': unknown field "
                              f"(expected one of {', '.join(sub_schema)})")
                continue
            try:
                out[sub] = sub_schema[sub](v)
            except ValueError as exc:
                errors.append(f"{where}: field '{key}.{sub}': {exc}, got {show(v)}")
        return out
    if key not in schema:
        errors.append(f"{where}: unknown field {show(key)}")
        return None
    try:
        return schema[key](value)
    except ValueError as exc:
        errors.append(f"{where}: field {show(key)}: {exc}, got {show(value)}")
        return None


def _checked_defaults(merged: _Merged, errors: list[str]) -> dict[str, Any]:
    out = {}
    for key, value in merged.defaults.items():
        where = f"{merged.defaults_origin[key]}: defaults"
        checked = _convert(where, key, value, _SETTINGS, errors)
        if checked is not None:
            checked = _relative_to(merged.defaults_origin[key], key, checked, where, errors)
        if checked is not None:
            out[key] = checked
    return out


def _resolve_agent(name: str, raw: _RawAgent, defaults: dict[str, Any], errors: list[str],
                   programs: dict | None = None) -> AgentSpec | None:
    """`programs` caches where commands were looked for (thousands of agents may run the same one)."""
    n_errors = len(errors)
    own: dict[str, Any] = {}
    for key, value in raw.fields.items():
        where = f"{raw.origin[key]}: agent {name!r}"
        checked = _convert(where, key, value, _AGENT_FIELDS, errors)
        if checked is not None:
            checked = _relative_to(raw.origin[key], key, checked, where, errors)
        if checked is not None:
            own[key] = checked
    if ("run" in raw.fields) == ("command" in raw.fields):
        errors.append(f"{raw.origin['name']}: agent {name!r}: " + (
            "give run (a Python agent) or command (a program), not both" if "run" in raw.fields else
            "field 'run': missing (or command, for a program)"))
    values = {**defaults, **own}
    for key, (_, cls) in _NESTED.items():
        values[key] = cls(**{**defaults.get(key, {}), **own.get(key, {})})
    if "essential" not in own and values.get("lazy"):
        values["essential"] = False  # a lazy agent is optional unless a profile says otherwise (and errs)
    if values.get("lazy") and values.get("essential"):
        where = raw.origin.get("essential", raw.origin["name"])
        errors.append(f"{where}: agent {name!r}: field 'essential': a lazy agent cannot be essential")
    if len(errors) > n_errors:
        return None
    values["process"] = _process_settings(values, defaults, own)
    for key in ("user", "group"):
        if getattr(values["process"], key) is not None and values.get("run"):
            where = raw.origin.get(key, raw.origin["name"])
            errors.append(f"{where}: agent {name!r}: field {key!r}: a Python agent runs as sunsetd's own user "
                          f"(only sunsetd's uid may speak on the agents socket); {key} is for programs")
    mcp = values.get("protocol") == "mcp"
    if values.get("command") and own.get("lazy") and not mcp:
        errors.append(f"{raw.origin['lazy']}: agent {name!r}: field 'lazy': a program takes no requests, so none "
                      f"would ever start it (start it with sunsetctl, or make it a dependency; an MCP server, "
                      f"protocol: mcp, takes them)")
    for key in ("protocol", "roots"):
        if key in own and values.get("run"):
            errors.append(f"{raw.origin[key]}: agent {name!r}: field {key!r}: for a program (command:); a Python "
                          f"agent speaks sunsetd's own protocol")
    if "roots" in own and values.get("command") and not mcp:
        errors.append(f"{raw.origin['roots']}: agent {name!r}: field 'roots': only an MCP server (protocol: mcp) "
                      f"asks for roots")
    for key in ("ready", "health"):
        if values.get(key) is not None and values.get("run"):
            errors.append(f"{raw.origin[key]}: agent {name!r}: field {key!r}: probes are for programs (a Python "
                          f"agent says READY itself, and heartbeats)")
        elif values.get(key) is not None and mcp:
            errors.append(f"{raw.origin[key]}: agent {name!r}: field {key!r}: an MCP server is ready when its "
                          f"initialize handshake is done, and its liveness is MCP ping (heartbeat_ms, liveness)")
    if values.get("command"):
        process = values["process"]
        key = (values["command"][0], dict(process.env).get("PATH"), process.cwd)
        if programs is None or key not in programs:
            problem = _executable_problem(values["command"], process)
            if programs is not None:
                programs[key] = problem
        problem = programs[key] if programs is not None else problem
        if problem is not None:
            errors.append(f"{raw.origin.get('command', raw.origin['name'])}: agent {name!r}: field 'command': {problem}")
    if len(errors) > n_errors:
        return None
    for key in _PROCESS_FIELDS:
        values.pop(key, None)
    return AgentSpec(**values)


MAX_LEVELS = 100  # the supervisor wants an agent's dependencies recursively: a chain of 1000 raised there


def _levels(specs: dict[str, AgentSpec], origin: dict[str, Path], errors: list[str]) -> tuple[tuple[str, ...], ...]:
    """Start levels; a cycle is reported once, at one of its agents. Iterative (a chain of a few thousand
    agents, listed last first, raised RecursionError), and each agent is visited once."""
    level: dict[str, int] = {}
    reported: set[frozenset] = set()
    for root in specs:
        if root in level:
            continue
        path: list[str] = []  # the agents being visited, each with the iterator over its dependencies
        on_path: set[str] = set()
        stack: list[tuple[str, Any, int]] = [(root, iter(specs[root].depends_on), 0)]
        path.append(root)
        on_path.add(root)
        while stack:
            name, deps, depth = stack[-1]
            for dep in deps:
                if dep not in specs:
                    continue  # reported with the unknown agents
                if dep in level:
                    depth = max(depth, level[dep] + 1)
                elif dep in on_path:
                    cycle = path[path.index(dep):] + [dep]
                    key = frozenset(cycle)
                    if key not in reported:
                        reported.add(key)
                        errors.append(f"{origin[dep]}: agent {dep!r}: field 'depends_on': dependency cycle "
                                      f"{' -> '.join(cycle)}")
                else:
                    stack[-1] = (name, deps, depth)
                    stack.append((dep, iter(specs[dep].depends_on), 0))
                    path.append(dep)
                    on_path.add(dep)
                    break
            else:
                stack.pop()
                path.pop()
                on_path.discard(name)
                level[name] = depth
                if stack:
                    parent, parent_deps, parent_depth = stack[-1]
                    stack[-1] = (parent, parent_deps, max(parent_depth, depth + 1))
    deepest = max(level.values(), default=0)
    if deepest >= MAX_LEVELS and not reported:
        name = next(n for n, lvl in level.items() if lvl == deepest)
        errors.append(f"{origin[name]}: agent {name!r}: field 'depends_on': a chain of {deepest + 1} agents "
                      f"each depending on the next, over the limit of {MAX_LEVELS} levels")
    by_level: dict[int, list[str]] = {}
    for name in specs:  # keep profile order inside a level
        by_level.setdefault(level[name], []).append(name)
    return tuple(tuple(by_level[i]) for i in sorted(by_level))


def load_profile(name_or_path: str) -> Profile:
    """Load and validate a profile; raise ProfileError with every fault found."""
    path = find_profile(name_or_path)
    errors: list[str] = []
    merged = _merge_file(path, errors)
    defaults = _checked_defaults(merged, errors)
    specs: dict[str, AgentSpec] = {}
    origins: dict[str, Path] = {}
    programs: dict = {}
    for name, raw in merged.agents.items():
        origins[name] = raw.origin.get("depends_on", raw.origin["name"])
        try:
            _name(name)
        except ValueError as exc:
            errors.append(f"{raw.origin['name']}: agent {show(name)}: field 'name': {exc}")
            continue
        spec = _resolve_agent(name, raw, defaults, errors, programs)
        if spec is not None:
            specs[name] = spec
            refused = procsettings.refusal(spec.process)  # this daemon's rights, this machine's users
            if refused is not None:
                errors.append(f"{raw.origin['name']}: agent {name!r}: {refused}")
    for name, raw in merged.agents.items():  # also for agents with other errors: report everything at once
        deps = raw.fields.get("depends_on", [])
        for dep in deps if isinstance(deps, list) else []:
            if not isinstance(dep, str):
                continue  # reported by the field check
            if dep not in merged.agents:
                errors.append(f"{origins[name]}: agent {name!r}: field 'depends_on': unknown agent {show(dep)}")
            elif name in specs and dep in specs and specs[dep].lazy and not specs[name].lazy:
                errors.append(f"{origins[name]}: agent {name!r}: field 'depends_on': eager agent "
                              f"cannot depend on lazy agent {dep!r}")
    if len(merged.agents) > MAX_AGENTS:
        errors.append(f"{path}: field 'agents': {len(merged.agents)} agents with all it extends, over the "
                      f"limit of {MAX_AGENTS}")
    levels = _levels(specs, origins, errors)
    if not merged.agents and not errors:
        errors.append(f"{path}: field 'agents': the profile has no agents")
    if errors:
        raise ProfileError(errors)
    return Profile(
        name=merged.name,
        path=path,
        description=merged.description,
        memory_mb=merged.limits.get("memory_mb"),
        agents=tuple(specs.values()),
        levels=levels,
        origins={(name, key): origin for name, raw in merged.agents.items() for key, origin in raw.origin.items()},
    )


def describe(profile: Profile) -> str:
    """The `--check` report: start order by dependency level, then the counts."""
    lines = [f"profile {profile.name} ({profile.path})"]
    if profile.description:
        lines.append(f"  {profile.description}")
    specs = profile.by_name
    for i, level in enumerate(profile.levels):
        names = ", ".join(n + (" (lazy)" if specs[n].lazy else "") + (
            " (MCP server)" if specs[n].protocol == "mcp" else " (program)" if specs[n].command else "")
                          for n in level)
        lines.append(f"level {i}: {names}")
    c = profile.counts()
    lines.append(f"agents: {c['total']} total, {c['essential']} essential, {c['eager']} eager, {c['lazy']} lazy")
    if profile.memory_mb:
        lines.append(f"memory budget: {profile.memory_mb} MB")
    return "\n".join(lines)
