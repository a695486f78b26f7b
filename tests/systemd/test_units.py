"""The unit files and the GPU drop-in, checked by the host's own systemd-analyze (no container, no root):
`verify` with the drop-in applied, the settings the operator relies on, and the exposure score.
tests/systemd/e2e.sh runs them under a real systemd."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = ("sunsetd.service", "sunsetd@.service")
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def settings(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture
def unit_dir(tmp_path) -> Path:
    """The units as installed, but with the venv this test runs in instead of /opt/sunsetd/venv (verify
    checks that the commands exist), and the GPU drop-in in both units' drop-in directories."""
    venv = Path(sys.prefix)
    for unit in UNITS:
        text = (REPO / "systemd" / unit).read_text().replace("/opt/sunsetd/venv/", f"{venv}/")
        (tmp_path / unit).write_text(text)
        (tmp_path / f"{unit}.d").mkdir()
        shutil.copy(REPO / "systemd" / "gpu.conf", tmp_path / f"{unit}.d" / "gpu.conf")
    return tmp_path


def analyze(unit_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:", "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, env=env, timeout=60)


@needs_analyze
def test_systemd_analyze_verify_accepts_the_units_with_the_gpu_drop_in(unit_dir):
    result = analyze(unit_dir, "verify", "sunsetd.service", "sunsetd@vision.service")
    assert result.returncode == 0 and result.stderr == "", result.stderr  # unknown keys are only warnings


@needs_analyze
def test_the_gpu_drop_in_costs_little_exposure(unit_dir):
    without = subprocess.run([ANALYZE, "security", "--offline=yes", str(REPO / "systemd" / "sunsetd.service")],
                             capture_output=True, text=True, timeout=60)
    with_gpu = analyze(unit_dir, "security", "--offline=yes", "sunsetd.service")
    scores = [float(re.search(r"exposure level for \S+: (\d+\.\d+)", r.stdout).group(1)) for r in (without, with_gpu)]
    assert scores[0] <= 1.5 and scores[1] <= 2.0, scores
    assert "char-nvidia*:rw" in with_gpu.stdout  # the drop-in was applied


@pytest.mark.parametrize("unit", UNITS)
def test_units_fit_an_operated_host(unit):
    s = settings(REPO / "systemd" / unit)
    assert s["RestartPreventExitStatus"] == ["2"]  # a profile error does not restart-loop
    assert s["ExecReload"] == ["/opt/sunsetd/venv/bin/sunsetctl reload"]  # blocks, fails on a refused profile
    assert s["RuntimeDirectoryMode"] == ["0750"] and s["Group"] == ["sunsetd"]
    assert "SUNSETD_SOCKET_GROUP=sunsetd" in " ".join(s["Environment"])
    assert s["PrivateDevices"] == ["yes"] and s["DevicePolicy"] == ["closed"]  # GPUs only with the drop-in
    assert "file:/usr/share/doc/sunsetd/SYSTEMD.md" in s["Documentation"][0]
    start = int(s["TimeoutStartSec"][0].rstrip("s"))
    assert start >= 60  # a reload (sunsetctl waits settle_s + 5 s) is bounded by TimeoutStartSec too


def test_the_gpu_drop_in():
    s = settings(REPO / "systemd" / "gpu.conf")
    assert s["PrivateDevices"] == ["no"] and s["DevicePolicy"] == ["closed"]
    assert {"char-nvidia* rw", "char-drm rw"} <= set(s["DeviceAllow"])
    assert s["CacheDirectory"] == ["sunsetd/models"]
    env = dict(v.split("=", 1) for v in s["Environment"])
    assert env["HF_HOME"].startswith("/var/cache/sunsetd/models/") and "OLLAMA_MODELS" in env
    assert "SupplementaryGroups" not in s  # a group missing on the host would fail the start (216/GROUP)
