"""The launch contract and routing ids (DESIGN §1, §7): one versioned description of what an agent is told."""
from __future__ import annotations

import json
import os

import pytest

from sunsetd.protocol import Launch, ProtocolError, parse_routing_id, routing_id
from sunsetd.spawner import launch_of
from fakes import spec


def launch(**overrides) -> Launch:
    fields = dict(name="vision.detector", incarnation=3, agents_endpoint="ipc:///run/sunsetd/agents.sock",
                  front_endpoint="ipc:///run/sunsetd/sunsetd.sock", heartbeat_ms=250, liveness=3, stop_timeout_s=5.0,
                  parent_pid=42, run="agents.vision:Detector", concurrency=2, config={"model": "x"})
    fields.update(overrides)
    return Launch(**fields)


def test_a_launch_survives_encoding_and_names_its_routing_id():
    original = launch()
    assert Launch.decode(original.encode()) == original
    assert original.routing_id == b"vision.detector#3"
    # found in review: a launch written before `tag` and `start_timeout_s` existed (an agent started
    # by an exec after an upgrade under a running daemon) was refused; both have defaults
    old = json.loads(original.encode())
    del old["tag"], old["start_timeout_s"]
    assert Launch.decode(json.dumps(old)) == original
    tagged = launch(tag="0123456789abcdef")
    assert Launch.decode(tagged.encode()) == tagged and tagged.routing_id == b"vision.detector#3~0123456789abcdef"


def test_the_process_title_names_agent_incarnation_profile_and_runtime_dir():
    assert launch(profile="vision").title == "sunsetd-agent vision.detector#3 profile=vision rundir=/run/sunsetd"
    remote = launch(agents_endpoint="tcp://10.0.0.2:7000", front_endpoint="tcp://10.0.0.2:7001")
    assert remote.title == "sunsetd-agent vision.detector#3"  # no profile known, no local directory


def test_tcp_endpoints_are_expressible():
    remote = launch(agents_endpoint="tcp://10.0.0.2:7000", front_endpoint="tcp://10.0.0.2:7001", parent_pid=0)
    assert Launch.decode(remote.encode()).agents_endpoint == "tcp://10.0.0.2:7000"


@pytest.mark.parametrize("change, field", [
    ({"version": 2}, "'version'"), ({"incarnation": 0}, "'incarnation'"), ({"incarnation": True}, "'incarnation'"),
    ({"agents_endpoint": "/run/agents.sock"}, "'agents_endpoint'"), ({"heartbeat_ms": "fast"}, "'heartbeat_ms'"),
    ({"stop_timeout_s": float("inf")}, "'stop_timeout_s'"), ({"config": []}, "'config'"), ({"colour": 1}, "'colour'"),
])
def test_a_bad_launch_is_refused_naming_the_field(change, field):
    raw = json.loads(launch().encode())
    raw.update(change)
    with pytest.raises(ProtocolError, match=field):
        Launch.decode(json.dumps(raw))


def test_garbage_is_not_a_launch():
    for text in ("", "{", "[1]"):
        with pytest.raises(ProtocolError):
            Launch.decode(text)


def test_the_spawner_makes_a_launch_from_a_profile_entry():
    made = launch_of(spec("A", heartbeat_ms=100, concurrency=4, config={"k": 1}), 7, "ipc:///x/agents.sock",
                     "ipc:///x/sunsetd.sock", parent_pid=99)
    assert (made.name, made.incarnation, made.heartbeat_ms, made.concurrency, made.config, made.parent_pid) == (
        "A", 7, 100, 4, {"k": 1}, 99)


def test_routing_ids_round_trip_and_anything_else_is_not_one():
    assert parse_routing_id(routing_id("a.b-c", 12)) == ("a.b-c", 12)
    assert parse_routing_id(b"name#with#hashes#4") == ("name#with#hashes", 4)
    assert parse_routing_id(routing_id("A", 2, "00ff")) == ("A", 2)
    for junk in (b"", b"#3", b"A#", b"A#x", b"A3", b"\x00k\x8bEg", b"A#" + b"9" * 40, b"A#2~", b"A#2~XY",
                 b"A#2~" + b"0" * 33, b"A#~00"):
        assert parse_routing_id(junk) is None


def _agent_against_a_silent_daemon(tmp_path, answer_after_s: float | None) -> tuple[int, float, str]:
    """A real agent process whose 'daemon' is a bare ROUTER that reads its HELLO and says nothing, or
    says one heartbeat after `answer_after_s` and nothing more. (exit code, seconds it lived, stderr)."""
    import subprocess
    import sys
    import time

    import zmq

    from sunsetd.protocol import LAUNCH_ENV, Kind

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"ipc://{tmp_path}/agents.sock")
    fields = dict(name="Slow", incarnation=1, agents_endpoint=f"ipc://{tmp_path}/agents.sock",
                  front_endpoint=f"ipc://{tmp_path}/front.sock", heartbeat_ms=100, liveness=3, stop_timeout_s=1.0,
                  parent_pid=0, run="agents.testing:Echo", start_timeout_s=1.0)
    env = {**os.environ, LAUNCH_ENV: Launch(**fields).encode()}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "sunsetd.agent", "Slow#1"], env=env, stderr=subprocess.PIPE,
                            text=True)
    try:
        peer, spoke = None, False
        while proc.poll() is None and time.monotonic() - t0 < 10:
            if router.poll(20):
                peer = router.recv_multipart()[0]
            if peer and answer_after_s is not None and not spoke and time.monotonic() - t0 > answer_after_s:
                router.send_multipart([peer, Kind.HEARTBEAT.value])
                spoke = True
        code = proc.wait(timeout=10)
        return code, time.monotonic() - t0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        router.close(0)
        ctx.term()


def test_an_agent_waits_for_the_daemons_first_word_as_long_as_a_start_may_take(tmp_path):
    # found in #12: 77 agents started at once all exited "sunsetd silent for 0.75s": the daemon had not
    # read their HELLOs yet. Before the daemon's first word an agent waits start_timeout_s + liveness
    code, lived, err = _agent_against_a_silent_daemon(tmp_path, answer_after_s=None)
    assert code == 3 and "sunsetd silent for 1.3" in err and 1.2 < lived < 5, (code, lived, err)


def test_once_the_daemon_has_spoken_liveness_applies(tmp_path):
    code, lived, err = _agent_against_a_silent_daemon(tmp_path, answer_after_s=0.6)  # a late first word
    assert code == 3 and "sunsetd silent for 0.3" in err and 0.8 < lived < 1.3 + 1.0, (code, lived, err)
