"""monitoring/alerts.yaml: promtool checks the rules and runs their unit tests; every alert is covered by
a test, and every metric the rules use is one a running daemon really exports."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.request

import pytest
import yaml

from conftest import REPO, TEST_PROFILES

MONITORING = REPO / "monitoring"


def promtool() -> str:
    path = shutil.which("promtool")
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("promtool not installed (Debian package 'prometheus'), and cannot install it without root/apt")
    result = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if result.returncode != 0 or not shutil.which("promtool"):
        pytest.skip(f"could not install promtool: {result.stderr.strip().splitlines()[-1:]}")
    return shutil.which("promtool")


@pytest.mark.timeout(700)
def test_promtool_check_and_unit_tests():
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", "alerts.yaml"], cwd=MONITORING, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([tool, "test", "rules", "alerts_test.yaml"], cwd=MONITORING, capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_alert_has_a_firing_unit_test():
    tests = yaml.safe_load((MONITORING / "alerts_test.yaml").read_text())["tests"]
    firing = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case.get("exp_alerts")}
    assert {rule["alert"] for rule in alert_rules()} == firing


@pytest.mark.slow
def test_rules_use_only_metrics_the_daemon_exports(start_daemon):
    d = start_daemon(TEST_PROFILES / "lazy.yaml")
    d.call("LazyTop", "echo", 1, timeout=20)  # a lazy start and requests, so every family has samples
    with urllib.request.urlopen(d.status()["metrics"], timeout=5) as response:
        exported = set(re.findall(r"^(sunsetd_\w+?)(?:\{| )", response.read().decode(), re.M))
    used = {name for rule in alert_rules() for name in re.findall(r"\bsunsetd_\w+", rule["expr"])}
    assert used and used <= exported, used - exported
