"""Checking `run` targets in a child (DESIGN §7): the daemon never imports user agent code.

A profile's `run: module:Class` must name an importable subclass of `sunsetd.agent.Agent`. Importing
it runs user code, which may print, hang, crash, or leave modules behind that a later check would find
already imported (so that a class added since was reported missing). So each check runs in a fresh
child, `python -m sunsetd.runcheck TARGET...`, which prints one JSON line per target on its stdout:
`{"run": TARGET, "error": null | "why"}`; anything the imported code prints goes to its stderr.

`Check` runs the child for `sunsetd --check` and the daemon's start (it starts at once and is waited
for when its answer is needed); the daemon's reload runs the same child through its spawner, without
blocking its loop, and reads the same lines (`parse_results`, `profile_errors`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from typing import Iterable

from sunsetd.profile import Profile

CHECK_TIMEOUT_S = 60.0
MAX_ERROR = 400  # characters of an import error kept in the one-line message


def command(python: str, targets: Iterable[str]) -> list[str]:
    return [python, "-m", "sunsetd.runcheck", *sorted(set(targets))]


def parse_results(lines: Iterable[str]) -> dict[str, str | None]:
    """target -> None (fine) or why not, from the child's stdout lines (others are ignored)."""
    results: dict[str, str | None] = {}
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("run"), str):
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


def main(targets: list[str]) -> int:
    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what imported modules print is not our answer (`run: this:X` prints the Zen of Python)
    sys.stdout = sys.stderr
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
