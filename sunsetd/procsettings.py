"""Per-agent process settings ([programs] item 2): environment, working directory, user and group,
umask, nice and resource limits, for Python agents and programs alike.

Three parts, one per place they run:
- `parse_*`: profile fields into values, with the one-line errors of the profile loader (pure, at load);
- `refusal`: whether this daemon can give a child these settings (its rights, the kernel's limits),
  asked by the spawner before each spawn, so that a setting the kernel would refuse is a spawn failure
  with a clear reason instead of a child that dies with a generic one;
- `apply`: in the child, after the fork and before any agent code or exec: limits and nice first (they
  may need the root the child is about to give up), then groups, group and user, then the directory.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

RLIMITS = {"rlimit_nofile": "RLIMIT_NOFILE", "rlimit_as_mb": "RLIMIT_AS", "rlimit_core": "RLIMIT_CORE"}
UNLIMITED = -1  # resource.RLIM_INFINITY
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ProcessSettings:
    env: tuple[tuple[str, str], ...] = ()  # env_file's, then env's (which win)
    cwd: str | None = None
    user: str | None = None
    group: str | None = None
    umask: int | None = None
    nice: int | None = None
    rlimits: tuple[tuple[str, int], ...] = ()  # (resource name, e.g. RLIMIT_NOFILE, value; -1 unlimited)

    @property
    def empty(self) -> bool:
        return self == ProcessSettings()

    def to_wire(self) -> dict:
        return {"env": [list(p) for p in self.env], "cwd": self.cwd, "user": self.user, "group": self.group,
                "umask": self.umask, "nice": self.nice, "rlimits": [list(r) for r in self.rlimits]}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> "ProcessSettings":
        return cls(tuple(tuple(p) for p in d.get("env", ())), d.get("cwd"), d.get("user"), d.get("group"),
                   d.get("umask"), d.get("nice"), tuple(tuple(r) for r in d.get("rlimits", ())))

    def environment(self) -> dict[str, str]:
        """What the child's environment gains: USER, LOGNAME and HOME of `user` (as systemd's User= gives
        them), then the profile's own variables."""
        extra: dict[str, str] = {}
        entry = _entry(self.user) if self.user is not None else None
        if entry is not None:
            extra.update(USER=entry.pw_name, LOGNAME=entry.pw_name, HOME=entry.pw_dir)
        extra.update(self.env)
        return extra


# ---- profile fields -----------------------------------------------------------------------------------

def parse_env(value: Any, environ: Mapping[str, str]) -> dict[str, str]:
    """`env:` — a mapping of names to strings (numbers and booleans as YAML wrote them), `${VAR}` taken
    from sunsetd's own environment."""
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of variable names to values")
    out = {}
    for name, raw in value.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not a variable name")
        if isinstance(raw, bool):
            raw = "true" if raw else "false"
        if not isinstance(raw, (str, int, float)):
            raise ValueError(f"{name}: expected a string, got {type(raw).__name__}")
        out[name] = expand(str(raw), environ, name)
    return out


def expand(text: str, environ: Mapping[str, str], name: str) -> str:
    def var(m: re.Match) -> str:
        if m.group(1) not in environ:
            raise ValueError(f"{name}: ${{{m.group(1)}}} is not set in sunsetd's environment")
        return environ[m.group(1)]

    return _VAR.sub(var, text)


def read_env_file(path: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """`env_file:` — KEY=VALUE lines (blank lines and # comments ignored, a value may be quoted)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    out = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, raw = line.removeprefix("export ").partition("=")
        name = name.strip()
        if not sep or not _ENV_NAME.match(name):
            raise ValueError(f"{path}, line {number}: expected NAME=VALUE")
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
            raw = raw[1:-1]
        out[name] = expand(raw, environ, name)
    return out


def parse_umask(value: Any) -> int:
    """`umask:` — octal, as a string ("0027") or as YAML's integer 0o27 / 27 read as octal digits."""
    text = value if isinstance(value, str) else str(value) if isinstance(value, int) and not isinstance(value, bool) \
        else None
    if text is None or not re.fullmatch(r"0?[0-7]{1,3}", text):
        raise ValueError("expected an octal umask such as \"0027\"")
    return int(text, 8)


def parse_nice(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -20 <= value <= 19:
        raise ValueError("expected an integer from -20 to 19")
    return value


def parse_rlimit(key: str, value: Any) -> int:
    if value == "unlimited":
        return UNLIMITED
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "rlimit_core" else 1):
        raise ValueError(f"expected an integer >= {0 if key == 'rlimit_core' else 1}, or unlimited")
    if key == "rlimit_as_mb":
        return value << 20
    return value


def parse_name(value: Any, what: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]{0,31}\$?", value):
        raise ValueError(f"expected a {what} name or number")
    return value


# ---- before the spawn: can this daemon do it? ----------------------------------------------------------

def refusal(s: ProcessSettings) -> str | None:
    """Why these settings cannot be given to a child of this process, or None."""
    import resource

    root = os.geteuid() == 0
    if (s.user is not None or s.group is not None) and not root:
        return "user and group need sunsetd to run as root"
    if s.user is not None and _uid(s.user) is None:
        return f"user {s.user!r}: no such user"
    if s.user is not None and s.group is None and _entry(s.user) is None:
        return f"user {s.user}: no passwd entry to take its group from; give group too"
    if s.group is not None and _gid(s.group) is None:
        return f"group {s.group!r}: no such group"
    if s.cwd is not None and not os.path.isdir(s.cwd):
        return f"cwd {s.cwd}: no such directory"
    if s.nice is not None and not root and s.nice < os.getpriority(os.PRIO_PROCESS, 0):
        return f"nice {s.nice}: below sunsetd's own ({os.getpriority(os.PRIO_PROCESS, 0)}) needs root"
    for name, value in s.rlimits:
        key = next(k for k, v in RLIMITS.items() if v == name)
        _soft, hard = resource.getrlimit(getattr(resource, name))
        wanted = resource.RLIM_INFINITY if value == UNLIMITED else value
        if not root and hard != resource.RLIM_INFINITY and (wanted == resource.RLIM_INFINITY or wanted > hard):
            return f"{key}: {_show(key, value)} is over the hard limit {_show(key, hard)} (sunsetd is not root)"
        if name == "RLIMIT_NOFILE":
            cap = _nr_open()
            if wanted == resource.RLIM_INFINITY or (cap is not None and wanted > cap):
                return f"{key}: {_show(key, value)} is over the kernel's fs.nr_open ({cap})"
    return None


# Where `pip install sunsetd[tools]` puts the console scripts of MCP servers from PyPI: the directory of
# sunsetd's own interpreter (its venv's bin), which a service's PATH does not name.
OWN_BIN = os.path.dirname(sys.executable)


def find_program(program: str, s: ProcessSettings, environ: Mapping[str, str] = os.environ) -> str | None:
    """The file a program's argv[0] runs: a path as given (relative to its cwd), a bare name on the PATH
    it will have, else in sunsetd's own bin directory. None when there is none."""
    if "/" in program:
        path = program if os.path.isabs(program) else os.path.join(s.cwd or os.getcwd(), program)
        return path if os.path.isfile(path) else None
    env = dict(s.env)
    return shutil.which(program, path=env.get("PATH", environ.get("PATH", os.defpath))) or \
        shutil.which(program, path=OWN_BIN)


def uid_of(s: ProcessSettings) -> int | None:
    """The uid its process runs as: its `user`'s, else sunsetd's own (None: a user that is gone)."""
    return os.getuid() if s.user is None else _uid(s.user)


def _show(key: str, value: int) -> str:
    import resource

    if value in (UNLIMITED, resource.RLIM_INFINITY):
        return "unlimited"
    return f"{value >> 20} MB" if key == "rlimit_as_mb" else str(value)


def _nr_open() -> int | None:
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return None


def _entry(user: str) -> Any:
    import pwd

    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        return None


def _uid(user: str) -> int | None:
    import pwd

    try:
        return int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _gid(group: str) -> int | None:
    import grp

    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        return None


# ---- in the child ---------------------------------------------------------------------------------------

_INHERITED_NOFILE: tuple[int, int] | None = None  # the fd limit sunsetd was given, before it raised its own


def raise_fd_limit() -> tuple[int, int]:
    """Raise the daemon's soft RLIMIT_NOFILE to its hard limit (each client connection is a descriptor;
    1024 is a terminal's usual soft limit). Children get back what sunsetd was given (`inherited_fd_limit`):
    a program that uses select() breaks past 1024. Returns (before, now)."""
    import resource

    global _INHERITED_NOFILE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if _INHERITED_NOFILE is None:
        _INHERITED_NOFILE = (soft, hard)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            return soft, soft
    return soft, hard


def inherited_fd_limit(pid: int = 0) -> None:
    """Give a child (this process after a fork, or `pid`) the fd limit sunsetd was given."""
    if _INHERITED_NOFILE is None:
        return
    import resource

    try:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, _INHERITED_NOFILE)
    except (OSError, ValueError):
        pass


def apply(s: ProcessSettings) -> None:
    """Give this (child) process the settings. Raises OSError saying which one the kernel refused."""
    import resource

    for name, value in s.rlimits:
        limit = resource.RLIM_INFINITY if value == UNLIMITED else value
        try:
            resource.setrlimit(getattr(resource, name), (limit, limit))
        except (OSError, ValueError) as exc:
            raise OSError(f"{name.lower()} {value}: {getattr(exc, 'strerror', None) or exc}") from None
    if s.nice is not None:
        os.setpriority(os.PRIO_PROCESS, 0, s.nice)
    if s.umask is not None:
        os.umask(s.umask)
    if s.user is not None or s.group is not None:
        entry = _entry(s.user) if s.user is not None else None
        uid = _uid(s.user) if s.user is not None else None
        gid = _gid(s.group) if s.group is not None else (entry.pw_gid if entry else None)
        if gid is None or (s.user is not None and uid is None):
            raise OSError(f"user {s.user!r} or group {s.group!r} does not exist")
        # never keep root's supplementary groups: the user's own, or the one group alone
        os.setgroups(os.getgrouplist(entry.pw_name, gid) if entry is not None else [gid])
        os.setresgid(gid, gid, gid)
        if uid is not None:
            os.setresuid(uid, uid, uid)
    if s.cwd is not None:
        os.chdir(s.cwd)
