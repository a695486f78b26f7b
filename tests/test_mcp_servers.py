"""MCP servers behind the router (#10 items 4 and 5), with real servers under a real daemon: mcp-server-time
from PyPI (the test extra), @modelcontextprotocol/server-memory from npm (`make test` installs it into
.node/), and tests/mcp_script_server.py, a server that misbehaves on purpose."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, wait_until
from sunsetd.client import Client, RemoteError

pytestmark = pytest.mark.slow

TIME_SERVER = Path(sys.executable).parent / "mcp-server-time"
MEMORY_SERVER = REPO / ".node" / "node_modules" / "@modelcontextprotocol" / "server-memory" / "dist" / "index.js"
SCRIPT_SERVER = Path(__file__).parent / "mcp_script_server.py"
NOW = {"name": "get_current_time", "arguments": {"timezone": "UTC"}}


def need_node() -> str:
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed: the npm MCP server cannot be run")
    if not MEMORY_SERVER.is_file():
        pytest.skip("@modelcontextprotocol/server-memory is not in .node/: `make test` installs it")
    return node


def write_profile(tmp_path: Path, agents: str, defaults: str = "heartbeat_ms: 100, stop_timeout_s: 3") -> Path:
    p = tmp_path / "mcp.yaml"
    p.write_text(f"name: mcp\ndefaults: {{{defaults}}}\nagents:\n" + agents)
    return p


def script(tmp_path: Path, name: str, *flags: str, extra: str = "") -> str:
    record = tmp_path / f"{name}.jsonl"
    argv = json.dumps([sys.executable, str(SCRIPT_SERVER), *flags])
    return (f"  - {{name: {name}, command: {argv}, protocol: mcp, env: {{RECORD_FILE: '{record}'}}"
            + (f", {extra}" if extra else "") + "}\n")


def received(tmp_path: Path, name: str) -> list[dict]:
    path = tmp_path / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def text_of(result: dict) -> str:
    return result["content"][0]["text"]


def call_in_thread(runtime_dir: Path, *args, **kwargs) -> tuple[threading.Thread, dict]:
    """A call that waits in another thread (its own client: sockets are not shared between threads)."""
    out: dict = {}

    def run() -> None:
        with Client(runtime_dir) as c:
            try:
                out["ok"] = c.call(*args, **kwargs)
            except RemoteError as exc:
                out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    return t, out


def test_servers_from_pypi_and_npm_answer_through_sunsetd_the_shell_and_python_agents(start_daemon, tmp_path):
    node = need_node()
    profile = write_profile(tmp_path, f"""
  - {{name: time, command: [{TIME_SERVER}], protocol: mcp, lazy: true}}
  - {{name: memory, command: [{node}, {MEMORY_SERVER}], protocol: mcp, lazy: true,
      env: {{MEMORY_FILE_PATH: '{tmp_path / "memory.jsonl"}'}}}}
  - {{name: Caller, run: 'agents.testing:Echo'}}
""")
    d = start_daemon(profile)
    assert d.agent("time")["state"] == "stopped"  # lazy: its first call starts it
    tools = d.call("time", "tools/list", timeout=30)
    assert {"get_current_time", "convert_time"} <= {t["name"] for t in tools["tools"]}
    now = d.call("time", "tools/call", NOW)
    assert not now["isError"] and json.loads(text_of(now))["timezone"] == "UTC"
    # the npm server, from a Python agent: self.call, as to any agent
    entity = {"name": "sunsetd", "entityType": "supervisor", "observations": ["routes MCP"]}
    d.call("Caller", "relay", {"to": "memory", "op": "tools/call", "timeout": 30, "body": {
        "name": "create_entities", "arguments": {"entities": [entity]}}}, timeout=35)
    graph = d.call("memory", "tools/call", {"name": "read_graph", "arguments": {}})
    assert [e["name"] for e in graph["structuredContent"]["entities"]] == ["sunsetd"]
    # and from the shell, exactly as a user types it
    sunsetctl = [str(Path(sys.executable).parent / "sunsetctl"), "--runtime-dir", str(d.runtime_dir)]
    out = subprocess.run(sunsetctl + ["call", "time", "tools/call", json.dumps(NOW)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and "UTC" in out.stdout, out.stderr
    # who they are: in status and in info
    status = {a["name"]: a for a in d.status()["agents"]}
    assert status["time"]["mcp"]["server"] == "mcp-time" and "tools" in status["time"]["mcp"]["capabilities"]
    assert status["memory"]["mcp"]["server"] == "memory-server" and status["memory"]["protocol"] == "mcp"
    table = subprocess.run(sunsetctl + ["status"], capture_output=True, text=True, timeout=30).stdout
    assert "MCP mcp-time" in table and "lazy,mcp" in table
    info = d.call("memory", "info")
    assert info["mcp"]["server"] == "memory-server" and "tools/call" in info["ops"] and info["pid"] > 0
    assert d.call("time", "ping") == "pong"
    # the server's own errors carry its JSON-RPC code; what is not MCP is refused before it is sent
    with pytest.raises(RemoteError) as err:
        d.call("time", "tools/call", {"name": "no_such_tool", "arguments": {}})
    assert err.value.code == "agent_error" and "JSON-RPC error -32602" in err.value.message
    with pytest.raises(RemoteError) as err:
        d.call("time", "run_shell", {})
    assert err.value.code == "bad_request" and "not an MCP method" in err.value.message
    with pytest.raises(RemoteError) as err:
        d.call("time", "tools/call", b"raw bytes")
    assert err.value.code == "bad_request" and "a map" in err.value.message


@pytest.mark.parametrize("server", ["time", "memory"])
def test_a_server_killed_mid_call_answers_it_agent_crashed_and_the_next_incarnation_serves(
        start_daemon, tmp_path, server):
    if server == "time":
        command, call = f"[{TIME_SERVER}]", ("tools/call", NOW)
    else:
        command, call = f"[{need_node()}, {MEMORY_SERVER}]", ("tools/call", {"name": "read_graph", "arguments": {}})
    profile = write_profile(tmp_path, f"""
  - {{name: {server}, command: {command}, protocol: mcp, env: {{MEMORY_FILE_PATH: '{tmp_path / "m.jsonl"}'}}}}
""", defaults="heartbeat_ms: 2000, liveness: 5, stop_timeout_s: 3")  # a frozen server is not hung in this test
    d = start_daemon(profile)
    first = d.agent(server)
    for retry, expect in ((False, "error"), (True, "ok")):
        pid = d.agent(server)["pid"]
        os.kill(pid, signal.SIGSTOP)  # it cannot answer: the call is in flight when it dies
        t, out = call_in_thread(d.runtime_dir, server, *call, timeout=30, retry=retry)
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        t.join(35)
        assert expect in out, out
        if not retry:
            assert out["error"].code == "agent_crashed" and "killed by SIGKILL" in out["error"].message
        d.wait_agent(server, lambda a: a["state"] == "ready" and a["pid"] != pid, timeout=30)
        assert d.call(server, *call, timeout=30)  # the next incarnation answers
    assert d.agent(server)["incarnation"] == first["incarnation"] + 2


def test_a_deadline_cancels_the_call_in_the_server_and_its_late_answer_is_dropped(start_daemon, tmp_path):
    d = start_daemon(write_profile(tmp_path, script(tmp_path, "slow")))
    with pytest.raises(RemoteError) as err:
        d.call("slow", "tools/call", {"name": "sleep", "arguments": {"seconds": 1.0}}, timeout=0.3)
    assert err.value.code == "timeout" and "in flight" in err.value.message
    wait_until(lambda: any(m.get("method") == "notifications/cancelled" for m in received(tmp_path, "slow")), 5.0,
               what="notifications/cancelled at the server")
    messages = received(tmp_path, "slow")
    (sleep,) = [m for m in messages if m.get("method") == "tools/call"]
    (cancel,) = [m for m in messages if m.get("method") == "notifications/cancelled"]
    assert cancel["params"]["requestId"] == sleep["id"] and "deadline" in cancel["params"]["reason"]
    # the server answers anyway once it wakes: that answer goes nowhere, and is counted
    metrics = d.status()["metrics"]
    wait_until(lambda: "sunsetd_late_replies_total 1.0" in urllib.request.urlopen(metrics).read().decode(), 5.0,
               what="the late answer counted")
    assert d.call("slow", "tools/call", {"name": "echo", "arguments": {"text": "still here"}})["content"][0][
        "text"] == "still here"


def test_max_inflight_bounds_concurrent_calls_and_an_idle_lazy_server_is_stopped(start_daemon, tmp_path):
    d = start_daemon(write_profile(tmp_path, script(
        tmp_path, "pool", extra="lazy: true, max_inflight: 2, idle_timeout_s: 1")))
    threads = [call_in_thread(d.runtime_dir, "pool", "tools/call",
                              {"name": "sleep", "arguments": {"seconds": 0.3}}, timeout=30) for _ in range(6)]
    for t, out in threads:
        t.join(35)
        assert out.get("ok", {}).get("content"), out
    assert text_of(d.call("pool", "tools/call", {"name": "concurrency", "arguments": {}})) == "2"
    first = d.agent("pool")["incarnation"]
    d.wait_agent("pool", lambda a: a["state"] == "stopped", timeout=10)  # idle for its idle_timeout_s
    assert "idle" in d.agent("pool")["reason"]
    assert d.call("pool", "ping", timeout=30) == "pong"  # and started again by the next call
    assert d.agent("pool")["incarnation"] == first + 1


def test_a_misbehaving_server_is_counted_logged_and_refused_but_never_stops_the_daemon(start_daemon, tmp_path):
    roots_dir = tmp_path / "work"
    roots_dir.mkdir()
    d = start_daemon(write_profile(
        tmp_path, script(tmp_path, "odd", "--banner", extra=f"roots: ['{roots_dir}']")
        + script(tmp_path, "refuser", "--refuse-init", extra="essential: false, intensity: "
                 "{max_restarts: 2, within_s: 60, cooldown_s: 600}")
        + script(tmp_path, "future", "--protocol", "2099-01-01", extra="essential: false")))
    d.wait_agent("odd", lambda a: a["state"] == "ready", timeout=30)
    # what it asks of its client: sampling refused, its roots given
    sampling = d.call("odd", "tools/call", {"name": "ask", "arguments": {"method": "sampling/createMessage"}})
    assert "sunsetd does not offer sampling/createMessage" in sampling["answer"]["error"]["message"]
    roots = d.call("odd", "tools/call", {"name": "ask", "arguments": {"method": "roots/list"}})
    assert roots["answer"]["result"]["roots"] == [{"uri": f"file://{roots_dir}", "name": str(roots_dir)}]
    # its notifications go to its logs; garbage on its stdout is counted and logged
    d.call("odd", "tools/call", {"name": "notify", "arguments": {}})
    assert text_of(d.call("odd", "tools/call", {"name": "garbage", "arguments": {}})) == "after garbage"
    wait_until(lambda: "script: a note for the logs" in d.log(), 5.0, what="the server's log message")
    log = d.log()
    assert "agent=odd event=mcp" in log and "not MCP on stdout (not JSON" in log
    assert d.agent("odd")["mcp"]["garbage_lines"] == 2  # its banner and the garbage tool's line
    # an answer msgpack cannot carry is an error reply, not a lost one
    with pytest.raises(RemoteError) as err:
        d.call("odd", "tools/call", {"name": "huge", "arguments": {}})
    assert err.value.code == "agent_error" and "cannot be encoded" in err.value.message
    # a refused handshake, an unknown protocol: not ready, restarted, and the circuit opens
    d.wait_agent("refuser", lambda a: a["state"] == "failed", timeout=30)
    assert "not today" in d.agent("refuser")["reason"]
    wait_until(lambda: "which sunsetd does not" in d.log(), 10.0, what="the unknown protocol refused")
    assert d.call("odd", "ping") == "pong" and d.status()["state"] in ("running", "degraded")


def test_a_stop_or_a_reload_lets_what_an_mcp_server_holds_finish_and_stops_each_process_its_own_way(
        start_daemon, tmp_path):
    # found in review: a planned stop closed an MCP server's stdin at once, so what it held was answered
    # agent_crashed; and a reload that made a Python agent an MCP server (or back) stopped the old
    # process the new definition's way: the Python agent was sent no STOP and no heartbeat, and exited
    # "sunsetd silent" with its call in flight
    python_agent = "  - {name: s1, run: 'agents.testing:Echo'}\n"
    profile = write_profile(tmp_path, python_agent, defaults="heartbeat_ms: 100, stop_timeout_s: 5")
    d = start_daemon(profile)
    t, out = call_in_thread(d.runtime_dir, "s1", "sleep", 1.5, timeout=10)
    time.sleep(0.3)
    profile.write_text(profile.read_text().replace(python_agent, script(tmp_path, "s1")))
    d.call("sunsetd", "reload", timeout=30)
    t.join(15)
    assert out.get("ok") == 1.5, out  # the Python agent finished it, as a Python-to-Python reload would
    assert "sunsetd silent" not in d.log()
    d.wait_agent("s1", lambda a: a["state"] == "ready" and a["protocol"] == "mcp", timeout=30)
    # the MCP server drains too: two calls in flight when it is told to restart both get their answers
    calls = [call_in_thread(d.runtime_dir, "s1", "tools/call", {"name": "sleep", "arguments": {"seconds": 1.0}},
                            timeout=10) for _ in range(2)]
    time.sleep(0.3)
    d.call("sunsetd", "restart", {"agent": "s1"}, timeout=30)
    for t, out in calls:
        t.join(15)
        assert out.get("ok", {}).get("content", [{}])[0].get("text") == "slept", out
    # and back to a Python agent: the server is stopped as MCP asks (stdin closed: it exits 0 by itself)
    profile.write_text(profile.read_text().replace(script(tmp_path, "s1"), python_agent))
    d.call("sunsetd", "reload", timeout=30)
    d.wait_agent("s1", lambda a: a["state"] == "ready" and a["protocol"] is None, timeout=30)
    assert d.call("s1", "echo", "python again") == "python again"
    exits = [line for line in d.log().splitlines() if "agent=s1 event=exit" in line]
    assert len(exits) == 3 and all('msg="exit code 0"' in line for line in exits[1:]), exits
