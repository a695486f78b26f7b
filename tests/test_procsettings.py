"""Per-agent process settings (procsettings.py): the profile fields, what this daemon may give a child,
and the child really getting them, with both spawners."""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from conftest import wait_until
from sunsetd import procsettings
from sunsetd.procsettings import ProcessSettings
from sunsetd.profile import ProfileError, load_profile


# ---- profile fields -----------------------------------------------------------------------------------

def test_env_takes_variables_from_sunsetds_environment():
    assert procsettings.parse_env({"A": "${X}/bin", "N": 3, "B": True}, {"X": "/opt"}) == \
        {"A": "/opt/bin", "N": "3", "B": "true"}
    for bad, message in (({"A": "${NOPE}"}, "${NOPE} is not set"), ({"1A": "x"}, "is not a variable name"),
                         ({"A": [1]}, "expected a string"), (["A=1"], "expected a mapping")):
        with pytest.raises(ValueError, match=message.replace("$", r"\$").replace("{", r"\{").replace("}", r"\}")):
            procsettings.parse_env(bad, {})


def test_env_file_lines(tmp_path):
    f = tmp_path / "a.env"
    f.write_text("# comment\n\nA=1\nexport B=\"two words\"\nC='${X}'\n")
    assert procsettings.read_env_file(f, {"X": "x"}) == {"A": "1", "B": "two words", "C": "x"}
    f.write_text("A=1\nnot a line\n")
    with pytest.raises(ValueError, match="line 2: expected NAME=VALUE"):
        procsettings.read_env_file(f, {})


def test_umask_nice_and_limits_are_checked():
    assert procsettings.parse_umask("0027") == 0o27 and procsettings.parse_umask(22) == 0o22
    assert procsettings.parse_rlimit("rlimit_as_mb", 2) == 2 << 20
    assert procsettings.parse_rlimit("rlimit_core", "unlimited") == procsettings.UNLIMITED
    for call in (lambda: procsettings.parse_umask("9"), lambda: procsettings.parse_umask(True),
                 lambda: procsettings.parse_nice(20), lambda: procsettings.parse_rlimit("rlimit_nofile", 0),
                 lambda: procsettings.parse_rlimit("rlimit_core", -1)):
        with pytest.raises(ValueError):
            call()


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


def test_a_profile_merges_env_over_defaults_and_env_file_is_relative_to_its_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PSX", "marked")
    (tmp_path / "vars.env").write_text("F=file\nS=file\n")
    spec = load_profile(str(write(tmp_path, """
name: p
defaults: {env: {D: d, S: defaults}, umask: "0027"}
agents:
  - {name: X, run: 'agents.testing:Echo', env: {O: "${PSX}", S: own}, env_file: vars.env, cwd: ., nice: 3,
     rlimit_nofile: 1000, rlimit_as_mb: 64, rlimit_core: 0}
"""))).agent("X")
    p = spec.process
    assert dict(p.env) == {"F": "file", "S": "own", "D": "d", "O": "marked"}
    assert (p.cwd, p.umask, p.nice) == (str(tmp_path / "."), 0o27, 3)
    assert dict(p.rlimits) == {"RLIMIT_NOFILE": 1000, "RLIMIT_AS": 64 << 20, "RLIMIT_CORE": 0}


def test_profile_errors_are_one_line_each(tmp_path):
    with pytest.raises(ProfileError) as info:
        load_profile(str(write(tmp_path, """
name: p
agents:
  - {name: X, run: 'agents.testing:Echo', env_file: missing.env, nice: 99, cwd: /no/such/dir}
  - {name: Y, run: 'agents.testing:Echo', rlimit_nofile: 99999999999, user: nobody}
""")))
    errors = info.value.errors
    assert all("\n" not in e for e in errors)
    joined = "\n".join(errors)
    assert "agent 'X': field 'env_file': cannot read" in joined and "field 'nice': expected an integer from -20" in joined
    assert "field 'user': a Python agent runs as sunsetd's own user" in joined
    # what the daemon cannot give (a directory that is not there) is said once the fields are valid
    with pytest.raises(ProfileError) as info:
        load_profile(str(write(tmp_path, "name: p\nagents:\n  - {name: X, run: 'agents.testing:Echo', "
                                         "cwd: /no/such/dir, rlimit_nofile: 99999999999}\n")))
    assert info.value.errors == [f"{tmp_path / 'p.yaml'}: agent 'X': cwd /no/such/dir: no such directory"]


# ---- what this daemon may give, and the child really getting it ------------------------------------------

def in_child(fn) -> dict:
    """fn() in a forked child; its JSON-able result, or {"error": ...}."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            out = json.dumps(fn())
        except BaseException as exc:  # noqa: BLE001
            out = json.dumps({"error": f"{type(exc).__name__}: {exc}"})
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def test_the_kernels_limits_are_refused_before_the_spawn_with_the_reason():
    nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    refused = procsettings.refusal(ProcessSettings(rlimits=(("RLIMIT_NOFILE", nr_open + 1),)))
    assert refused == f"rlimit_nofile: {nr_open + 1} is over the kernel's fs.nr_open ({nr_open})"
    assert procsettings.refusal(ProcessSettings(user="no-such-user-x")) == "user 'no-such-user-x': no such user"
    assert procsettings.refusal(ProcessSettings(user="4242")) == \
        "user 4242: no passwd entry to take its group from; give group too"

    def as_nobody():
        os.setgid(65534)
        os.setuid(65534)
        import resource

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        return [procsettings.refusal(ProcessSettings(rlimits=(("RLIMIT_NOFILE", hard + 1),))),
                procsettings.refusal(ProcessSettings(user="root")), procsettings.refusal(ProcessSettings(nice=-5))]

    if os.geteuid() != 0:
        pytest.skip("needs root, to become another user")
    over, user, nice = in_child(as_nobody)
    assert "is over the hard limit" in over and "(sunsetd is not root)" in over
    assert user == "user and group need sunsetd to run as root" and "needs root" in nice


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to give a child another user")
def test_a_child_gets_its_user_groups_limits_directory_umask_and_nice(tmp_path):
    settings = ProcessSettings(user="nobody", cwd="/tmp", umask=0o27, nice=7,
                               rlimits=(("RLIMIT_NOFILE", 512), ("RLIMIT_CORE", 0)))

    def child():
        import resource

        procsettings.apply(settings)
        umask = os.umask(0)
        return {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
                "cwd": os.getcwd(), "umask": umask, "nice": os.getpriority(os.PRIO_PROCESS, 0),
                "nofile": resource.getrlimit(resource.RLIMIT_NOFILE), "core": resource.getrlimit(resource.RLIMIT_CORE)}

    got = in_child(child)
    import pwd

    nobody = pwd.getpwnam("nobody")
    assert got == {"uid": nobody.pw_uid, "euid": nobody.pw_uid, "gid": nobody.pw_gid,
                   "groups": os.getgrouplist("nobody", nobody.pw_gid), "cwd": "/tmp", "umask": 0o27, "nice": 7,
                   "nofile": [512, 512], "core": [0, 0]}  # root's own groups are never kept
    assert 0 not in got["groups"]


# ---- through a real daemon, both spawners ---------------------------------------------------------------

PROFILE = """
name: ps
defaults: {heartbeat_ms: 100, env: {FROM_DEFAULTS: d}}
agents:
  - name: X
    run: agents.testing:Echo
    env: {OWN: "${PSX_MARK}"}
    env_file: vars.env
    cwd: %(cwd)s
    umask: "0027"
    nice: 5
    rlimit_nofile: 1234
    rlimit_as_mb: 4096
    rlimit_core: 0
"""


@pytest.mark.slow
@pytest.mark.parametrize("spawner", ["fork", "exec"])
def test_an_agent_runs_with_its_settings_and_a_refused_one_is_a_spawn_failure_with_its_reason(start_daemon,
                                                                                              spawner):
    base = Path(tempfile.mkdtemp(prefix="sd-ps-", dir="/tmp"))
    try:
        (base / "vars.env").write_text("FROM_FILE='from the file'\n")
        (base / "work").mkdir()
        profile = base / "ps.yaml"
        profile.write_text(PROFILE % {"cwd": base / "work"})
        d = start_daemon(profile, "--spawner", spawner, env={"PSX_MARK": "marked"})
        got = d.call("X", "process", ["OWN", "FROM_FILE", "FROM_DEFAULTS", "PSX_MARK"])
        assert got["env"] == {"OWN": "marked", "FROM_FILE": "from the file", "FROM_DEFAULTS": "d",
                              "PSX_MARK": "marked"}  # the daemon's environment stays, the profile's adds
        assert (got["cwd"], got["umask"], got["nice"]) == (str(base / "work"), "0027", 5)
        assert (got["nofile"], got["as"], got["core"]) == ([1234, 1234], [4096 << 20, 4096 << 20], [0, 0])
        # the directory goes away: the next start is refused before the spawn, with that reason
        (base / "work").rmdir()
        os.kill(d.agent("X")["pid"], signal.SIGKILL)
        status = wait_until(lambda: (lambda a: a if "no such directory" in (a["reason"] or "") else None)(d.agent("X")),
                            10.0, what="the refusal in status")
        assert f"spawn failed: cwd {base / 'work'}: no such directory" in status["reason"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("spawner", ["fork", "exec"])
def test_a_python_agent_with_a_cwd_still_imports_its_run_target_from_the_daemons_directory(runtime_dir, tmp_path,
                                                                                          spawner):
    """Found in review: with --spawner exec the agent's sys.path followed its cwd, and `mymod`, in the
    daemon's directory, was lost."""
    from conftest import DaemonProcess

    (tmp_path / "empty").mkdir()
    (tmp_path / "mymod.py").write_text("from agents.testing import Echo\n\nclass Mine(Echo):\n    pass\n")
    profile = tmp_path / "p.yaml"
    profile.write_text("name: p\ndefaults: {heartbeat_ms: 100}\n"
                       "agents:\n  - {name: M, run: 'mymod:Mine', cwd: empty}\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    d = DaemonProcess(runtime_dir, profile, ("--spawner", spawner))
    d.env, d.cwd = env, tmp_path
    d.start()
    try:
        d.wait_ready()
        assert d.call("M", "process")["cwd"] == str(tmp_path / "empty")
    finally:
        assert d.terminate() == 0
