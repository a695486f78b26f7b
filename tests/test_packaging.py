"""What a built wheel carries and does outside the checkout, an editable install, and the shell completions.

Real builds (`pip wheel` of a copy of this checkout, with pip's build isolation), a real venv the wheel is
installed into (its dependencies from the package index), real bash completing.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from sunsetd import _completion

REPO = Path(__file__).resolve().parent.parent
PROFILES = sorted(p.name for p in (REPO / "profiles").glob("*.yaml"))
COMPLETIONS = ["_sunsetctl", "_sunsetd", "sunsetctl.bash", "sunsetd.bash"]
IGNORE = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                ".hypothesis", "*.pyc", "run")


def run(cmd, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", 300)
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert result.returncode == 0, f"{cmd} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def clean_env(**extra) -> dict[str, str]:
    """The environment of an operator's shell: nothing that points sunsetd at this checkout."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SUNSETD_", "PYTHON", "VIRTUAL_ENV", "PIP_REQUIRE", "RUNTIME_DIRECTORY"))}
    return {**env, **extra}


def pip_into(venv: Path, *args) -> subprocess.CompletedProcess:
    """This test venv's pip, installing into another venv (made --without-pip, which is quicker)."""
    return run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q",
                "--disable-pip-version-check", *args], env=clean_env())


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the checkout: a build writes build/ and *.egg-info into its source tree."""
    src = tmp_path_factory.mktemp("src") / "sunsetd"
    shutil.copytree(REPO, src, ignore=IGNORE, symlinks=True)
    return src


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check", "-w", out, source],
        env=clean_env())
    (whl,) = out.glob("sunsetd-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    v = tmp_path_factory.mktemp("venv") / "v"
    run([sys.executable, "-m", "venv", "--without-pip", v])
    pip_into(v, wheel)
    return v


def site_packages(venv: Path) -> Path:
    return Path(run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())


@pytest.mark.slow
def test_the_wheel_carries_every_profile_and_the_completions(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"sunsetd/profiles/{p}" for p in PROFILES} <= names, sorted(n for n in names if "profiles" in n)
    assert {f"sunsetd/completions/{c}" for c in COMPLETIONS} <= names
    assert "sunsetd/_completion.py" in names and "agents/__init__.py" in names
    record = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/RECORD"))).decode()
    assert "sunsetd/profiles/core.yaml," in record and "sunsetd/completions/sunsetctl.bash," in record


@pytest.mark.slow
def test_an_installed_wheel_finds_its_profiles_outside_the_checkout(venv, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run([venv / "bin" / "sunsetd", "--profile", "core", "--check"], cwd=elsewhere, env=clean_env(), timeout=60)
    assert "agents: 16 total, 16 essential" in result.stdout
    where = result.stdout.splitlines()[0]  # "profile core (PATH)"
    if not Path("/etc/sunsetd/profiles/core.yaml").exists():  # that one comes first on the search path
        assert str(site_packages(venv) / "sunsetd" / "profiles" / "core.yaml") in where, where
    assert str(REPO) not in result.stdout
    result = run([venv / "bin" / "sunsetctl", "--help"], cwd=elsewhere, env=clean_env())
    assert "status" in result.stdout
    for name in ("vision", "full"):
        run([venv / "bin" / "sunsetd", "--profile", name, "--check"], cwd=elsewhere, env=clean_env(), timeout=60)


@pytest.mark.slow
def test_the_installed_completions_are_valid_bash(venv):
    installed = site_packages(venv) / "sunsetd" / "completions"
    for name in COMPLETIONS:
        assert (installed / name).is_file()
    for name in ("sunsetctl.bash", "sunsetd.bash"):
        run(["bash", "-n", installed / name])
    assert "status" in complete(installed / "sunsetctl.bash", ["sunsetctl", "st"])


@pytest.mark.slow
def test_an_editable_install_uses_the_checkout_profiles(venv, source, wheel):
    """Last in this module: it replaces the wheel in the venv by an editable install of the copy."""
    pip_into(venv, "--no-deps", "-e", source)
    where = run([venv / "bin" / "python", "-c", "from sunsetd import profile; print(profile.shipped_profiles())"],
                cwd="/", env=clean_env())
    assert Path(where.stdout.strip()) == source / "profiles"
    assert not (source / "sunsetd" / "profiles").exists()
    result = run([venv / "bin" / "sunsetd", "--profile", "core", "--check"], cwd="/", env=clean_env(), timeout=60)
    assert "agents: 16 total" in result.stdout


# ---- completions, generated here from the parsers as they are now -----------------------------------------


def complete(script: Path, words: list[str], cwd: Path | str = REPO, env: dict | None = None) -> list[str]:
    """What bash offers for the last of `words` (the cursor at its end), with `script` sourced."""
    prog = words[0]
    driver = (f'source "$1"; spec=$(complete -p {prog}); fn=${{spec#*-F }}; fn=${{fn%% *}}; shift; '
              'COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}; COMPREPLY=(); '
              '"$fn" "$1" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"; printf "%s\\n" "${COMPREPLY[@]}"')
    result = run(["bash", "--norc", "--noprofile", "-c", driver, "complete", script, *words], cwd=cwd,
                 env=env or clean_env())
    return [w for w in result.stdout.splitlines() if w]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("completions")
    run([sys.executable, "-m", "sunsetd._completion", out, "--profiles", REPO / "profiles"], cwd=REPO)
    assert sorted(p.name for p in out.iterdir()) == COMPLETIONS
    return out


def test_generated_bash_scripts_parse(generated):
    for name in ("sunsetctl.bash", "sunsetd.bash"):
        run(["bash", "-n", generated / name])


def zsh() -> str | None:
    """zsh, installed for the test when it is missing and we may (root, apt-get): make test installs what
    its tests need."""
    if not shutil.which("zsh") and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "zsh"], capture_output=True,
                       timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("zsh")


def test_generated_zsh_scripts_parse_and_define_their_functions(generated):
    shell = zsh()
    if shell is None:
        pytest.skip("zsh is not installed and cannot be (not root, or no apt-get)")
    for name in ("_sunsetctl", "_sunsetd"):
        run([shell, "-n", generated / name])
        out = subprocess.run([shell, "-fc", f"fpath=({generated} $fpath); autoload -Uz compinit; compinit -u; "
                                            f"autoload -Uz {name}; whence -w {name}"],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == f"{name}: function", out.stdout + out.stderr


def test_bash_completes_subcommands_options_and_values(generated):
    ctl, daemon = generated / "sunsetctl.bash", generated / "sunsetd.bash"
    assert "status" in complete(ctl, ["sunsetctl", "st"])
    assert set(complete(ctl, ["sunsetctl", ""])) >= {"status", "call", "start", "stop", "restart", "reload", "shutdown"}
    assert "status" in complete(ctl, ["sunsetctl", "--timeout", "5", "st"])  # an option's value is skipped
    assert "--json" in complete(ctl, ["sunsetctl", "status", "--"])
    assert "--retry" in complete(ctl, ["sunsetctl", "call", "--"])
    assert "--json" not in complete(ctl, ["sunsetctl", "--"])  # a subcommand's options only after it
    assert complete(ctl, ["sunsetctl", "--runtime-dir", str(REPO / "profi")]) == [str(REPO / "profiles")]
    assert set(complete(daemon, ["sunsetd", "--profile", ""])) >= {"core", "vision", "tutoring", "learning", "full"}
    assert complete(daemon, ["sunsetd", "--profile", "=", "vi"]) == ["vision"]  # --profile=vi, '=' split off
    assert complete(daemon, ["sunsetd", "--profile=vi"]) == ["--profile=vision"]  # '=' not a word break
    assert complete(daemon, ["sunsetd", "--profile", "profiles/co"], cwd=REPO) == ["profiles/core.yaml"]
    assert complete(daemon, ["sunsetd", "--spawner", ""]) == ["fork", "exec"]
    assert "--check" in complete(daemon, ["sunsetd", "--check", "--"])
    assert complete(ctl, ["sunsetctl", "reload", "--profile", "vi"]) == ["vision"]
    assert "HUP" in complete(ctl, ["sunsetctl", "signal", "HU"]) and "SIGHUP" in complete(ctl, ["sunsetctl", "signal", "SIGH"])


def test_bash_completes_profiles_on_the_search_path(generated, tmp_path):
    (tmp_path / "mine.yaml").write_text("name: mine\n")
    offered = complete(generated / "sunsetd.bash", ["sunsetd", "--profile", ""], cwd=tmp_path,
                       env=clean_env(SUNSETD_PROFILE_PATH=str(tmp_path)))
    assert "mine" in offered and "core" in offered  # the search path's, and the shipped ones (built in)
    assert len(offered) == len(set(offered))


def _toy_parser() -> argparse.ArgumentParser:
    """A command line the generator has never seen: nested subcommands, aliases, choices everywhere."""
    p = argparse.ArgumentParser(prog="toy")
    p.add_argument("-v", "--verbose", action="count")
    p.add_argument("--color", choices=["auto", "never", "always"])
    sub = p.add_subparsers(dest="cmd")
    model = sub.add_parser("model", aliases=["m"], help="models: [list] or pull")
    msub = model.add_subparsers(dest="what")
    pull = msub.add_parser("pull", help="fetch a model")
    pull.add_argument("name")
    pull.add_argument("quant", choices=["q4", "q8", "f16"])
    pull.add_argument("--cache-dir")
    pull.add_argument("--hidden", help=argparse.SUPPRESS)
    msub.add_parser("list")
    sub.add_parser("secret", help=argparse.SUPPRESS)
    sig = sub.add_parser("kill")
    sig.add_argument("signal")
    return p


def test_the_generator_walks_any_argparse_parser(tmp_path):
    scripts = _completion.scripts({"toy": ("toy_parser", _toy_parser())}, ["alpha"])
    (tmp_path / "toy.bash").write_text(scripts["toy.bash"])
    (tmp_path / "_toy").write_text(scripts["_toy"])
    run(["bash", "-n", tmp_path / "toy.bash"])
    if shutil.which("zsh"):
        run(["zsh", "-n", tmp_path / "_toy"])
    script = tmp_path / "toy.bash"
    assert set(complete(script, ["toy", ""])) == {"model", "m", "kill"}  # not the suppressed one
    assert complete(script, ["toy", "m", "p"]) == ["pull"]  # through the alias
    assert complete(script, ["toy", "-v", "model", "pull", "llama", ""]) == ["q4", "q8", "f16"]  # 2nd positional
    assert complete(script, ["toy", "model", "pull", ""]) == []  # 1st: a name, nothing to offer
    assert complete(script, ["toy", "model", "pull", "--c"]) == ["--cache-dir"]  # --hidden is hidden
    assert complete(script, ["toy", "model", "pull", "--cache-dir", str(tmp_path / "to")]) == []  # files aren't dirs
    assert complete(script, ["toy", "--color", "a"]) == ["auto", "always"]
    assert "HUP" in complete(script, ["toy", "kill", "HU"])
    assert "'*-v'" in scripts["_toy"] and "'*--verbose'" in scripts["_toy"]  # repeatable, so not exclusive
    assert "'model:models: [list] or pull'" in scripts["_toy"] and "'m:models: [list] or pull'" in scripts["_toy"]
    assert "'--color=:color:(auto never always)'" in scripts["_toy"]
    assert "_toy__model__pull() {" in scripts["_toy"] and "(q4 q8 f16)" in scripts["_toy"]
