"""Prometheus exposition and /health, scraped over real HTTP from a running daemon."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from conftest import TEST_PROFILES, wait_until
from sunsetd.client import RemoteError

pytestmark = pytest.mark.slow


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def value(text: str, sample: str) -> float:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    assert match, f"{sample} not in the exposition"
    return float(match.group(1))


def test_metrics_and_health(start_daemon):
    d = start_daemon(TEST_PROFILES / "lazy.yaml")
    base = d.status()["metrics"].rsplit("/", 1)[0]
    for _ in range(3):
        d.call("Base", "echo", 1)
    with pytest.raises(RemoteError):
        d.call("Base", "fail", 1)
    d.call("LazyTop", "echo", 1, timeout=20)
    wait_until(lambda: 'sunsetd_agent_up{agent="LazyTop"} 1.0' in get(f"{base}/metrics")[1], 5,
               what="the snapshot to show LazyTop up")
    code, text = get(f"{base}/metrics")
    assert code == 200
    assert value(text, 'sunsetd_requests_total{agent="Base",code="ok"}') == 3
    assert value(text, 'sunsetd_requests_total{agent="Base",code="agent_error"}') == 1
    assert value(text, 'sunsetd_request_duration_seconds_count{agent="Base"}') == 4
    assert value(text, 'sunsetd_agent_state{agent="Giant",state="stopped"}') == 1
    assert value(text, 'sunsetd_agent_circuit{agent="Base",circuit="closed"}') == 1
    assert value(text, 'sunsetd_agent_restarts_total{agent="Base"}') == 0
    assert value(text, 'sunsetd_agent_rss_bytes{agent="Base"}') > 1 << 20
    assert value(text, 'sunsetd_lazy_starts_total{agent="LazyTop"}') == 1
    assert value(text, 'sunsetd_lazy_start_duration_seconds_count{agent="LazyTop"}') == 1
    assert value(text, "sunsetd_memory_budget_bytes") == 330 * 1048576
    assert value(text, "sunsetd_essential_ready") == 1
    for name in ("sunsetd_agent_heartbeat_misses_total", "sunsetd_agent_queue_depth", "sunsetd_bad_frames_total",
                 "sunsetd_late_replies_total"):
        assert name in text
    code, body = get(f"{base}/health")
    assert code == 200 and json.loads(body)["healthy"] is True
    assert get(f"{base}/nope")[0] == 404


def test_unknown_agent_names_do_not_become_labels(start_daemon):
    d = start_daemon(TEST_PROFILES / "mini.yaml")
    base = d.status()["metrics"].rsplit("/", 1)[0]
    for i in range(50):
        with pytest.raises(RemoteError):
            d.call(f"bogus{i}", "echo")
    text = get(f"{base}/metrics")[1]
    assert "bogus" not in text
    assert value(text, 'sunsetd_requests_total{agent="unknown",code="unknown_agent"}') == 50


def test_health_is_503_when_an_essential_agent_is_failed(start_daemon):
    d = start_daemon(TEST_PROFILES / "crashy.yaml")
    base = d.status()["metrics"].rsplit("/", 1)[0]
    d.wait_agent("Crashy", lambda a: a["state"] == "failed", what="failed")
    code, body = wait_until(lambda: (lambda r: r if '"degraded"' in r[1] else None)(get(f"{base}/health")), 5,
                            what="health to say degraded")
    health = json.loads(body)
    assert code == 503 and health["healthy"] is False and health["not_ready"] == ["Crashy"]
    text = get(f"{base}/metrics")[1]
    assert value(text, 'sunsetd_agent_circuit{agent="Crashy",circuit="open"}') == 1
    assert value(text, 'sunsetd_agent_restarts_total{agent="Crashy"}') == 3


def test_metrics_off_and_bad_address(start_daemon):
    d = start_daemon(TEST_PROFILES / "mini.yaml", "--metrics-addr", "off")
    assert "metrics" not in d.status()
    result = subprocess.run([sys.executable, "-m", "sunsetd", "--metrics-addr", "nowhere"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--metrics-addr must be HOST:PORT or off" in result.stderr


def test_health_and_the_alert_agree_when_an_operator_stops_an_essential_agent(start_daemon):
    """Found when tried as a new user would: /health answered 200 "healthy" while an essential agent was
    stopped, though the README promises 503 naming it and the alert rule fired at the same moment."""
    d = start_daemon(TEST_PROFILES / "mini.yaml")
    base = d.status()["metrics"].rsplit("/", 1)[0]
    wait_until(lambda: get(f"{base}/health")[0] == 200, 5, what="healthy")
    d.call("sunsetd", "stop", {"agent": "Top"})
    code, body = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(get(f"{base}/health")), 5,
                            what="health to say 503")
    health = json.loads(body)
    assert health["healthy"] is False and health["not_ready"] == ["Top"] and health["state"] == "running"
    text = get(f"{base}/metrics")[1]
    # what SunsetdEssentialAgentDown evaluates: essential == 1 and up == 0
    assert value(text, 'sunsetd_agent_essential{agent="Top"}') == 1
    assert value(text, 'sunsetd_agent_up{agent="Top"}') == 0
    assert value(text, "sunsetd_essential_ready") == 0
    d.call("sunsetd", "start", {"agent": "Top"})
    wait_until(lambda: get(f"{base}/health")[0] == 200, 5, what="healthy again")
