"""sunsetd under a real systemd (tests/systemd/e2e.sh): install (commands and completions by bare name),
start, status, process titles, journal fields, SIGKILL and SIGSTOP of the main process, reload (a refused
one fails), a profile error that is not restarted, operators in the socket group, the GPU drop-in, stop,
uninstall. Runs when root and systemd-nspawn is (or can be) installed; skipped with the reason otherwise."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SCRIPT = Path(__file__).with_name("e2e.sh")


def _nspawn_available() -> str | None:
    """None if we can run the test, else why not."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn boots a container)"
    if not Path("/usr/lib/systemd/systemd").exists():
        return "needs systemd installed under /usr (the container boots the host's /usr)"
    if shutil.which("systemd-nspawn"):
        return None
    if not shutil.which("apt-get"):
        return "systemd-nspawn missing and no apt-get to install systemd-container"
    result = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "systemd-container"],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if result.returncode != 0 or not shutil.which("systemd-nspawn"):
        return f"could not install systemd-container: {result.stderr.strip().splitlines()[-1:]}"
    return None


def test_under_real_systemd():
    reason = _nspawn_available()
    if reason:
        pytest.skip(reason)
    result = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=840)
    print(result.stdout[-20000:])
    print(result.stderr[-5000:])
    if result.returncode == 2:
        pytest.skip(f"e2e prerequisites missing: {result.stdout.strip().splitlines()[-1:]}")
    assert result.returncode == 0, "\n".join(line for line in result.stdout.splitlines() if "FAIL" in line)
    assert "PASS: stopped" in result.stdout
