"""Profile loading: extends, defaults, overrides, and one precise error line per fault."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sunsetd.profile import ProfileError, RestartMode, load_profile
from sunsetd.runcheck import check_profile

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(path: Path) -> list[str]:
    """Every fault of the profile: those of loading it, else those of its run targets (checked in a child)."""
    try:
        profile = load_profile(str(path))
    except ProfileError as exc:
        return exc.errors
    errors = check_profile(profile)
    assert errors, f"{path} has no errors"
    return errors


BASE = """
    name: base
    limits: {memory_mb: 1000}
    defaults:
      heartbeat_ms: 200
      backoff: {initial_ms: 50, max_ms: 1000}
    agents:
      - name: A
        run: agents.testing:Echo
      - name: B
        run: agents.testing:Echo
        depends_on: [A]
        config: {setup_s: 0}
"""


def test_defaults_apply_and_agents_override(tmp_path):
    path = write(tmp_path, "base", BASE + """
      - name: C
        run: agents.testing:Echo
        heartbeat_ms: 500
        backoff: {max_ms: 9000}
        restart: on-failure
        depends_on: [A, B]
    """)
    p = load_profile(str(path))
    a, b, c = (p.agent(n) for n in "ABC")
    assert a.heartbeat_ms == 200 and c.heartbeat_ms == 500
    assert a.backoff.initial_ms == 50 and a.backoff.max_ms == 1000
    assert c.backoff.initial_ms == 50 and c.backoff.max_ms == 9000  # nested settings merge field by field
    assert c.restart is RestartMode.ON_FAILURE and a.restart is RestartMode.ALWAYS
    assert a.liveness == 3  # built-in default
    assert p.levels == (("A",), ("B",), ("C",))
    assert p.memory_mb == 1000
    assert p.counts() == {"total": 3, "essential": 3, "eager": 3, "lazy": 0}


def test_extends_inherits_overrides_and_adds(tmp_path):
    write(tmp_path, "base", BASE)
    child = write(tmp_path, "child", """
        extends: base
        defaults: {heartbeat_ms: 300}
        limits: {memory_mb: 2000}
        agents:
          - name: B
            stop_timeout_s: 9
          - name: L
            run: agents.testing:Echo
            lazy: true
            depends_on: [B]
    """)
    p = load_profile(str(child))
    assert p.name == "child" and p.memory_mb == 2000
    assert [a.name for a in p.agents] == ["A", "B", "L"]
    assert p.agent("A").heartbeat_ms == 300  # the child's defaults reach inherited agents
    assert p.agent("B").stop_timeout_s == 9.0 and p.agent("B").depends_on == ("A",)
    assert p.agent("A").backoff.initial_ms == 50  # parent default kept where the child is silent
    lazy = p.agent("L")
    assert lazy.lazy and not lazy.essential
    assert p.counts() == {"total": 3, "essential": 2, "eager": 2, "lazy": 1}


def test_an_agent_taken_from_another_profile_with_overrides(tmp_path):
    write(tmp_path, "catalog", BASE + """
      - name: Heavy
        run: agents.testing:Echo
        lazy: true
        depends_on: [A]
        memory_mb: 300
        config: {ballast_mb: 10}
    """)
    picker = write(tmp_path, "picker", """
        agents:
          - {name: A, from: catalog}
          - {name: Heavy, from: catalog, lazy: false, memory_mb: 200}
    """)
    p = load_profile(str(picker))
    heavy = p.agent("Heavy")
    assert (heavy.run, heavy.depends_on, heavy.config) == ("agents.testing:Echo", ("A",), {"ballast_mb": 10})
    assert not heavy.lazy and heavy.essential and heavy.memory_mb == 200
    bad = write(tmp_path, "bad", "agents:\n  - {name: Ghost, from: catalog}\n  - {name: A, from: nowhere}\n")
    errors = errors_of(bad)
    assert any("agent 'Ghost': field 'from': profile 'catalog' has no agent 'Ghost'" in e for e in errors)
    assert any("agent 'A': field 'from': profile 'nowhere' not found" in e for e in errors)


@pytest.mark.parametrize("snippet, expected", [
    ("  - name: X\n    run: agents.testing:Echo\n    colour: blue\n",
     "agent 'X': unknown field 'colour'"),
    ("  - name: X\n    run: agents.testing:Echo\n    heartbeat_ms: fast\n",
     "agent 'X': field 'heartbeat_ms': expected an integer from 10 to 1000000000, got 'fast'"),
    ("  - name: X\n    run: agents.testing:Echo\n    lazy: 1\n",
     "agent 'X': field 'lazy': expected true or false, got 1"),
    ("  - name: X\n    run: agents.testing:Echo\n    backoff: {initial: 5}\n",
     "agent 'X': field 'backoff.initial': unknown field"),
    ("  - name: X\n    run: agents.testing:Echo\n    restart: sometimes\n",
     "agent 'X': field 'restart': expected one of always, on-failure, never, got 'sometimes'"),
    ("  - name: A\n    run: agents.testing:Echo\n",
     "agent 'A': field 'name': duplicate name"),
    ("  - name: X\n    run: agents.nonexistent:Thing\n",
     "agent 'X': field 'run': cannot import 'agents.nonexistent': ModuleNotFoundError"),
    ("  - name: X\n    run: agents.testing:Nope\n",
     "agent 'X': field 'run': module 'agents.testing' has no 'Nope'"),
    ("  - name: X\n    run: sunsetd.protocol:Request\n",
     "agent 'X': field 'run': 'sunsetd.protocol:Request' is not a subclass of sunsetd.agent.Agent"),
    ("  - name: X\n    run: not a target\n",
     "agent 'X': field 'run': expected 'module:Class', got 'not a target'"),
    ("  - name: X\n    depends_on: [A]\n",
     "agent 'X': field 'run': missing"),
    ("  - name: X\n    run: agents.testing:Echo\n    depends_on: [Ghost]\n",
     "agent 'X': field 'depends_on': unknown agent 'Ghost'"),
    ("  - name: X\n    run: agents.testing:Echo\n    lazy: true\n    essential: true\n",
     "agent 'X': field 'essential': a lazy agent cannot be essential"),
    ("  - name: X\n    run: agents.testing:Echo\n    lazy: true\n"
     "  - name: Y\n    run: agents.testing:Echo\n    depends_on: [X]\n",
     "agent 'Y': field 'depends_on': eager agent cannot depend on lazy agent 'X'"),
])
def test_each_fault_is_one_line_naming_file_agent_and_field(tmp_path, snippet, expected):
    path = write(tmp_path, "bad", BASE)
    path.write_text(path.read_text() + snippet)
    errors = errors_of(path)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{path}: ")
    assert expected in errors[0]
    assert "\n" not in errors[0]


def test_dependency_cycle_names_the_cycle(tmp_path):
    path = write(tmp_path, "cycle", """
        agents:
          - {name: A, run: "agents.testing:Echo", depends_on: [C]}
          - {name: B, run: "agents.testing:Echo", depends_on: [A]}
          - {name: C, run: "agents.testing:Echo", depends_on: [B]}
          - {name: D, run: "agents.testing:Echo"}
    """)
    (error,) = errors_of(path)
    assert "field 'depends_on': dependency cycle A -> C -> B -> A" in error


def test_every_error_is_reported_not_only_the_first(tmp_path):
    path = write(tmp_path, "many", """
        colour: blue
        defaults: {liveness: 0}
        agents:
          - {name: A, run: "agents.testing:Echo", memory_mb: -1}
          - {name: B, run: "agents.testing:Echo", depends_on: [Z]}
    """)
    errors = errors_of(path)
    assert len(errors) == 4, errors
    assert any("unknown field 'colour'" in e for e in errors)
    assert any("defaults: field 'liveness'" in e for e in errors)
    assert any("agent 'A': field 'memory_mb'" in e for e in errors)
    assert any("unknown agent 'Z'" in e for e in errors)


def test_invalid_yaml_names_line_and_column(tmp_path):
    path = write(tmp_path, "broken", "agents:\n  - name: A\n   run: x\n")
    (error,) = errors_of(path)
    assert error.startswith(f"{path}: invalid YAML at line 3")


def test_bad_extends(tmp_path):
    path = write(tmp_path, "orphan", "extends: nowhere\nagents: []\n")
    errors = errors_of(path)
    assert any("field 'extends': profile 'nowhere' not found" in e for e in errors)
    a = write(tmp_path, "a", "extends: b\n")
    write(tmp_path, "b", "extends: a\n")
    assert any("field 'extends': cycle" in e for e in errors_of(a))


def test_errors_in_a_parent_name_the_parent_file(tmp_path):
    parent = write(tmp_path, "parent", "agents:\n  - {name: A, run: 'agents.testing:Echo', liveness: x}\n")
    child = write(tmp_path, "child", "extends: parent\nagents:\n  - {name: B, run: 'agents.testing:Echo'}\n")
    (error,) = errors_of(child)
    assert error.startswith(f"{parent}: agent 'A': field 'liveness'")


def test_unknown_profile_name():
    with pytest.raises(ProfileError) as info:
        load_profile("no-such-profile")
    assert "profile 'no-such-profile' not found in" in info.value.errors[0]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sunsetd", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60)


def test_check_prints_levels_and_counts(tmp_path):
    path = write(tmp_path, "base", BASE)
    result = run_cli("--profile", str(path), "--check")
    assert result.returncode == 0, result.stderr
    assert "level 0: A\nlevel 1: B\n" in result.stdout
    assert "agents: 2 total, 2 essential, 2 eager, 0 lazy" in result.stdout


def test_check_prints_every_error_and_exits_2(tmp_path):
    path = write(tmp_path, "bad", BASE + "      - {name: X, run: 'agents.testing:Echo', depends_on: [Q], lazy: maybe}\n")
    result = run_cli("--profile", str(path), "--check")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any("field 'lazy'" in line for line in lines) and any("unknown agent 'Q'" in line for line in lines)
    assert lines[-1].endswith("has 2 error(s); not starting")


def test_daemon_refuses_to_start_with_a_bad_profile(tmp_path):
    path = write(tmp_path, "bad", BASE + "      - {name: X, run: 'agents.nowhere:X'}\n")
    result = run_cli("--profile", str(path), "--runtime-dir", str(tmp_path / "rt"))
    assert result.returncode == 2 and "cannot import 'agents.nowhere'" in result.stderr
    assert not (tmp_path / "rt").exists()


# ---- found by attacking it (#11): what --check accepted and the daemon could not run --------------------

def attack(tmp_path, fields: str, header: str = "") -> str:
    p = tmp_path / "attack.yaml"
    p.write_text(f"name: a\n{header}agents:\n  - name: X\n    run: agents.testing:Echo\n{fields}")
    with pytest.raises(ProfileError) as info:
        load_profile(str(p))
    assert all("\n" not in e and len(e) < 400 for e in info.value.errors), info.value.errors
    return " ".join(info.value.errors)


@pytest.mark.parametrize("fields, says", [
    ("    config: {when: 2024-01-01}\n", "not plain data: date"),
    ("    config: {blob: !!binary aGVsbG8=}\n", "not plain data: bytes"),
    ("    config: &a {self: *a}\n", "nested deeper than 32"),
    ("    config: {n: .nan}\n", "nan is not a number"),
    ("    config: {1: one}\n", "a key is not a string"),
    ("    config: {big: '" + "x" * 70_000 + "'}\n", "over the 65536-byte limit"),
    ("    stop_timeout_s: .inf\n", "field 'stop_timeout_s': expected a number > 0"),
    ("    heartbeat_ms: 1234567890123456789012345678901234567890\n", "expected an integer from 10 to"),
    ("    start_timeout_s: 1e300\n", "field 'start_timeout_s'"),
])
def test_what_the_daemon_cannot_run_is_a_one_line_profile_error(tmp_path, fields, says):
    assert says in attack(tmp_path, fields)


def test_an_alias_bomb_is_refused_at_once_and_quoted_only_in_part(tmp_path):
    levels = "".join(f"    - &l{i} [*l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}]\n" for i in range(1, 9))
    bomb = f"x-bomb:\n    - &l0 [lol, lol]\n{levels}"
    t0 = time.monotonic()
    says = attack(tmp_path, "    config: {a: *l8}\n", header=bomb)  # 4^8 x 2 leaves behind 33 aliases
    assert time.monotonic() - t0 < 2.0 and ("more than 10000 values" in says or "unknown field" in says)
    t0 = time.monotonic()
    says = attack(tmp_path, "    heartbeat_ms: *l8\n", header=bomb)  # a wrongly typed field quotes a prefix
    assert time.monotonic() - t0 < 2.0 and "heartbeat_ms" in says
    many = "x-a: &a 1\nx-b: [" + ", ".join(["*a"] * 150) + "]\n"
    assert "more than 100 aliases" in attack(tmp_path, "", header=many)


def test_a_file_too_large_or_too_deep_is_one_line(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text("name: big\n# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ProfileError) as info:
        load_profile(str(p))
    assert "over the 1048576-byte limit" in info.value.errors[0]
    p.write_text("name: deep\nx: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(ProfileError) as info:
        load_profile(str(p))
    assert "nested too deeply" in info.value.errors[0] or "invalid YAML" in info.value.errors[0]


def test_a_reloads_child_hands_over_the_profile_and_nothing_else(tmp_path):
    # the child of a reload reads the profile; the daemon unpacks what it wrote admitting only profile classes
    import base64
    import io
    import json
    import os
    import pickle

    from sunsetd import runcheck

    out = subprocess.run(runcheck.command(sys.executable, profile="core"), capture_output=True, text=True,
                         timeout=60)
    profile, errors = runcheck.reload_answer(out.stdout.splitlines(), "core", "exit 0")
    assert errors == [] and profile == load_profile("core")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nagents:\n  - {name: A, run: 'agents.testing:Nope'}\n  - {name: B, run: 'x:Y', liveness: 0}\n")
    out = subprocess.run(runcheck.command(sys.executable, profile=str(bad)), capture_output=True, text=True, timeout=60)
    profile, errors = runcheck.reload_answer(out.stdout.splitlines(), str(bad), "exit 0")
    assert profile is None and len(errors) == 1 and "field 'liveness'" in errors[0]
    bad.write_text("name: bad\nagents:\n  - {name: A, run: 'agents.testing:Nope'}\n")
    out = subprocess.run(runcheck.command(sys.executable, profile=str(bad)), capture_output=True, text=True, timeout=60)
    profile, errors = runcheck.reload_answer(out.stdout.splitlines(), str(bad), "exit 0")
    assert profile is not None and len(errors) == 1 and "has no 'Nope'" in errors[0]

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "owned"),))

    for forged in (pickle.dumps(Evil()), pickle.dumps({"not": "a profile"}), b"\x80junk"):
        line = json.dumps({"profile": base64.b64encode(forged).decode()})
        profile, errors = runcheck.reload_answer([line], "p", "exit 0")
        assert profile is None and len(errors) == 1 and "not a profile" in errors[0], errors
    assert not (tmp_path / "owned").exists()
    # found under systemd (Debian's 3.11.2): enum members were pickled as getattr(cls, name), which is
    # admitted for profile enums alone; a getattr of anything else could reach any object's attributes
    class ByName:
        def __init__(self, cls, name):
            self.cls, self.name = cls, name

        def __reduce__(self):
            return (getattr, (self.cls, self.name))

    by_name = pickle.dumps(ByName(RestartMode, "ALWAYS"))
    assert runcheck._ProfileUnpickler(io.BytesIO(by_name)).load() is RestartMode.ALWAYS
    from pathlib import PosixPath
    for forged in (pickle.dumps(ByName(PosixPath, "__init__")), pickle.dumps(ByName(RestartMode, "__init__"))):
        line = json.dumps({"profile": base64.b64encode(forged).decode()})
        profile, errors = runcheck.reload_answer([line], "p", "exit 0")
        assert profile is None and "not a profile" in errors[0], errors
    assert runcheck.reload_answer(["garbage"], "p", "the check exited with 1: boom") == (
        None, ["p: cannot be read as a profile (the check exited with 1: boom)"])


def test_a_profile_holds_at_most_a_thousand_agents(tmp_path):
    path = tmp_path / "many.yaml"
    path.write_text("name: many\nagents:\n" + "".join(f"  - {{name: A{i}, run: 'agents.testing:Echo', lazy: true}}\n"
                                                       for i in range(1001)))
    with pytest.raises(ProfileError) as err:
        load_profile(str(path))
    assert err.value.errors == [f"{path}: field 'agents': 1001 agents with all it extends, over the limit of 1000"]


def test_a_reload_answer_never_raises_whatever_the_check_wrote(tmp_path):
    # found in review: a module the check imports can write to the answer's fd; a line of 5,000 "["
    # raised RecursionError out of the daemon's loop and the daemon died with every agent
    import base64
    import json
    import pickle

    import dataclasses

    from sunsetd import runcheck

    deep = "[" * 5000
    assert runcheck.parse_results([deep]) == {}
    profile, errors = runcheck.reload_answer([deep], "p", "exit 0")
    assert profile is None and errors == ["p: cannot be read as a profile (exit 0)"]
    good = load_profile("core")
    line = json.dumps({"profile": base64.b64encode(pickle.dumps(good)).decode()})
    assert runcheck.reload_answer([line, deep], "core", "exit 0")[1][0].startswith("/")  # core's targets unchecked
    forged = dataclasses.replace(good, agents="not a tuple of agents")  # our classes, holding anything
    line = json.dumps({"profile": base64.b64encode(pickle.dumps(forged)).decode()})
    assert runcheck.reload_answer([line], "p", "exit 0") == (None, ["p: the check's answer is not a profile"])
