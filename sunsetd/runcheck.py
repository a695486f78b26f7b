"""Checking `run` targets in a child (DESIGN §7): the daemon never imports user agent code.

A profile's `run: module:Class` must name an importable subclass of `sunsetd.agent.Agent`. Importing
it runs user code, which may print, hang, crash, or leave modules behind that a later check would find
already imported (so that a class added since was reported missing). So each check runs in a fresh
child, `python -m sunsetd.runcheck TARGET...`, which prints one JSON line per target on its stdout:
`{"run": TARGET, "error": null | "why"}`; anything the imported code prints goes to its stderr.

`Check` runs the child for `sunsetd --check` and the daemon's start (it starts at once and is waited
for when its answer is needed); the daemon's reload runs the same child through its spawner, without
blocking its loop, and reads the same lines (`parse_results`, `profile_errors`).

A reload's child also reads the profile (`python -m sunsetd.runcheck --profile ARG`): a profile may take
a second to read (a chain of files near their limits), which on the daemon's loop would silence every
heartbeat. Before it imports anything of the user's, the child writes either the profile's errors or
the checked profile itself (pickled: a few ms to unpack for a thousand agents), which the daemon
unpacks admitting only sunsetd's own profile classes (`reload_answer`).
"""
from __future__ import annotations

import base64
import binascii
import enum
import io
import json
import os
import pickle
import subprocess
import sys
import traceback
from pathlib import PosixPath
from typing import Any, Iterable

from sunsetd.profile import AgentSpec, Profile, ProfileError, load_profile

CHECK_TIMEOUT_S = 60.0
MAX_ERROR = 400  # characters of an import error kept in the one-line message
MAX_HANDOVER = 6 * 1024 * 1024  # characters of the line that carries a checked profile (under the reader's 8 MiB)
_PROFILE_MODULES = ("sunsetd.profile", "sunsetd.procsettings", "sunsetd.probes")


def command(python: str, targets: Iterable[str] = (), profile: str | None = None) -> list[str]:
    """The check of these targets, or (with `profile`) the reading of that profile and its targets."""
    if profile is not None:
        return [python, "-m", "sunsetd.runcheck", "--profile", profile]
    return [python, "-m", "sunsetd.runcheck", *sorted(set(targets))]


def _enum_member(cls: Any, name: str) -> enum.Enum:
    """What some Pythons pickle an enum member as, `getattr(cls, name)`, for profile enums only: a
    getattr on anything else could reach any attribute of any object."""
    if not (isinstance(cls, type) and issubclass(cls, enum.Enum) and cls.__module__ in _PROFILE_MODULES):
        raise pickle.UnpicklingError(f"getattr of {cls!r} is not part of a profile")
    try:
        return cls[name]
    except KeyError:
        raise pickle.UnpicklingError(f"{cls.__name__} has no member {name!r}") from None


class _ProfileUnpickler(pickle.Unpickler):
    """Only the classes a Profile is made of: a line that names anything else is not one of ours."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("pathlib", "PosixPath"):
            return PosixPath
        if (module, name) == ("builtins", "getattr"):
            return _enum_member
        if module in _PROFILE_MODULES:
            found = getattr(sys.modules[module], name, None)
            if isinstance(found, type):
                return found
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a profile")


def reload_answer(lines: Iterable[str], profile_arg: str, failure: str) -> tuple[Profile | None, list[str]]:
    """(the profile, its errors) from a `--profile` child's stdout lines: errors empty when it may be
    applied; the profile None when it could not be read (errors say why). Never raises: the lines come
    from a child that imports user code."""
    try:
        return _reload_answer(list(lines), profile_arg, failure)
    except Exception as exc:  # noqa: BLE001 - whatever it is, the reload is refused, the daemon goes on
        return None, [f"{profile_arg[:200]}: the check's answer is not a profile ({type(exc).__name__})"]


def _well_formed(profile: Any) -> bool:
    """The shape the daemon relies on, cheaply: a pickle of our own classes could still hold anything."""
    return isinstance(profile, Profile) and isinstance(profile.agents, tuple) \
        and all(isinstance(a, AgentSpec) and isinstance(a.name, str) for a in profile.agents) \
        and isinstance(profile.levels, tuple) and all(isinstance(level, tuple) for level in profile.levels) \
        and isinstance(profile.origins, dict)


def _reload_answer(lines: list[str], profile_arg: str, failure: str) -> tuple[Profile | None, list[str]]:
    entries = _entries(lines)  # the profile's line is megabytes: decoded once
    for entry in entries:
        if isinstance(entry.get("profile_errors"), list):
            return None, [str(e) for e in entry["profile_errors"]] or [f"{profile_arg[:200]}: refused"]
        if isinstance(entry.get("profile"), str):
            try:
                profile = _ProfileUnpickler(io.BytesIO(base64.b64decode(entry["profile"], validate=True))).load()
            except (binascii.Error, pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as exc:
                return None, [f"{profile_arg[:200]}: the check's answer is not a profile ({exc})"]
            if not _well_formed(profile):
                return None, [f"{profile_arg[:200]}: the check's answer is not a profile"]
            return profile, profile_errors(profile, _results(entries), failure)
    return None, [f"{profile_arg[:200]}: cannot be read as a profile ({failure})"]


def _entries(lines: Iterable[str]) -> list[dict]:
    """The child's stdout lines that are JSON objects (others are ignored), each decoded once."""
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):  # what a module the check imports wrote to our answer's fd
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def parse_results(lines: Iterable[str]) -> dict[str, str | None]:
    """target -> None (fine) or why not, from the child's stdout lines (others are ignored)."""
    return _results(_entries(lines))


def _results(entries: list[dict]) -> dict[str, str | None]:
    results: dict[str, str | None] = {}
    for entry in entries:
        if isinstance(entry.get("run"), str):
            error = entry.get("error")
            results[entry["run"]] = error if isinstance(error, str) or error is None else str(error)
    return results


def profile_errors(profile: Profile, results: dict[str, str | None], failure: str | None = None) -> list[str]:
    """One line per agent whose target is wrong, naming the file, the agent and the field."""
    errors = []
    for spec in profile.agents:
        if not spec.run:
            continue  # a program: its command is checked by the profile loader
        where = f"{profile.origin_of(spec.name, 'run')}: agent {spec.name!r}: field 'run'"
        if spec.run not in results:
            errors.append(f"{where}: {spec.run!r} was not checked ({failure or 'the check did not answer'})")
        elif results[spec.run] is not None:
            errors.append(f"{where}: {results[spec.run]}")
    return errors


class Check:
    """A check running in a child from the moment it is made; `errors()` waits for its answer."""

    def __init__(self, profile: Profile, python: str = sys.executable, timeout: float = CHECK_TIMEOUT_S):
        from sunsetd.forkserver import die_with_parent

        self.profile = profile
        self.timeout = timeout
        self.failure: str | None = None
        self.proc: subprocess.Popen | None = None
        if not profile.agents:
            return
        parent = os.getpid()
        try:
            self.proc = subprocess.Popen(command(python, (a.run for a in profile.agents if a.run)), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                         preexec_fn=lambda: die_with_parent(parent))
        except OSError as exc:
            self.failure = f"cannot run {python}: {exc.strerror or exc}"

    def errors(self) -> list[str]:
        if self.proc is None:
            return profile_errors(self.profile, {}, self.failure) if self.failure else []
        try:
            out, err = self.proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.cancel()
            return profile_errors(self.profile, {}, f"importing the agents' modules took more than {self.timeout:g}s")
        return profile_errors(self.profile, parse_results(out.splitlines()),
                              f"the check exited with {self.proc.returncode}: {_last_line(err)}")

    def cancel(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def check_profile(profile: Profile, python: str = sys.executable, timeout: float = CHECK_TIMEOUT_S) -> list[str]:
    """Errors of the profile's run targets, checked in a child; blocking."""
    return Check(profile, python, timeout).errors()


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:MAX_ERROR] if lines else "no output"


# ---- the child ---------------------------------------------------------------------------------------------


def _check(target: str) -> str | None:
    import importlib

    from sunsetd.agent import Agent  # the SDK's base class is the contract a `run` target must meet

    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:  # any import-time failure of user code (even SystemExit) is a profile error
        return f"cannot import {module_name!r}: {type(exc).__name__}: {str(exc)[:MAX_ERROR]}"
    cls = getattr(module, class_name, None)
    if cls is None:
        return f"module {module_name!r} has no {class_name!r}"
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        return f"{target!r} is not a subclass of sunsetd.agent.Agent"
    return None


def _read_profile(arg: str, results: io.TextIOBase) -> list[str] | None:
    """Read the profile and write it, or its errors, as the first line; the targets to check after."""
    try:
        profile = load_profile(arg)
    except ProfileError as exc:
        answer = {"profile_errors": exc.errors}
    except Exception as exc:  # noqa: BLE001 - whatever it is, the reload gets its answer
        answer = {"profile_errors": [f"{arg[:200]}: cannot be read as a profile ({type(exc).__name__}: "
                                     f"{str(exc)[:200]})"]}
    else:
        blob = base64.b64encode(pickle.dumps(profile, protocol=pickle.HIGHEST_PROTOCOL)).decode()
        if len(blob) <= MAX_HANDOVER:
            answer = {"profile": blob}
        else:
            answer = {"profile_errors": [f"{profile.path}: {len(blob)} characters to hand to the daemon, over "
                                         f"the {MAX_HANDOVER} a reload takes: fewer agents or a smaller config"]}
    results.write(json.dumps(answer) + "\n")
    results.flush()
    return None if "profile_errors" in answer else sorted({a.run for a in profile.agents if a.run})


def main(args: list[str]) -> int:
    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what imported modules print is not our answer (`run: this:X` prints the Zen of Python)
    sys.stdout = sys.stderr
    targets = args
    if args[:1] == ["--profile"] and len(args) == 2:
        targets = _read_profile(args[1], results) or []  # before any user code is imported
    for target in targets:
        try:
            error = _check(target)
        except BaseException:  # never a traceback instead of an answer
            error = f"check failed: {traceback.format_exc(limit=1).strip().splitlines()[-1][:MAX_ERROR]}"
        results.write(json.dumps({"run": target, "error": error}) + "\n")
        results.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
