"""Fuzzing both sockets of a real daemon (#11): 110,000 hostile messages stop nothing.

The front socket is fuzzed by a separate client process; the agents socket by `agents.fuzzing:Fuzzer`,
an agent sunsetd started that sends garbage down its own admitted and proven connection (nobody else
gets past the gate to the parser). Meanwhile a checker's requests to another agent must all be answered
right, and afterwards the daemon, its router and that agent must be as they were.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import REPO, TEST_PROFILES, wait_until
from sunsetd.client import Client, RemoteError

pytestmark = pytest.mark.slow

FRONT_MESSAGES = 60_000
AGENT_MESSAGES = 50_000

FRONT_FUZZER = textwrap.dedent("""
    import json, random, sys, time, zmq
    sys.path.insert(0, sys.argv[3])
    from agents.fuzzing import front_frames
    endpoint, seed = sys.argv[1], int(sys.argv[2])
    ctx = zmq.Context()
    rng = random.Random(seed)
    def dealer():
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        return s
    socks = [dealer() for _ in range(4)]
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    sent = unsent = replies = reconnects = 0
    def drain(ms):
        global replies
        for s, _ in poller.poll(ms):
            while True:
                try:
                    s.recv_multipart(zmq.NOBLOCK)
                    replies += 1
                except zmq.Again:
                    break
    for frames in front_frames(seed, int(sys.argv[4]), "Target"):
        i = rng.randrange(len(socks))
        if rng.random() < 0.002:  # connections come and go too, with replies owed to them
            poller.unregister(socks[i]); socks[i].close(); socks[i] = dealer(); poller.register(socks[i], zmq.POLLIN)
            reconnects += 1
        try:
            socks[i].send_multipart(frames, zmq.NOBLOCK)
            sent += 1
        except zmq.Again:
            unsent += 1
        if sent % 100 == 0:
            drain(0)
    end = time.monotonic() + 3
    while time.monotonic() < end:
        drain(100)
    print(json.dumps({"sent": sent, "unsent": unsent, "replies": replies, "reconnects": reconnects}))
""")


def test_fuzzed_frames_on_both_sockets_stop_nothing(start_daemon):
    d = start_daemon(TEST_PROFILES / "fuzz.yaml")
    target = d.agent("Target")
    front = subprocess.Popen([sys.executable, "-c", FRONT_FUZZER, f"ipc://{d.runtime_dir}/sunsetd.sock", "11",
                              str(REPO), str(FRONT_MESSAGES)], stdout=subprocess.PIPE, text=True)
    checked: dict[str, int] = {}
    stop = threading.Event()

    def check() -> None:  # a well-behaved client all along: every answer right, none missing
        with Client(d.runtime_dir) as client:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    key = "right" if client.call("Target", "echo", {"i": i}, timeout=10) == {"i": i} else "wrong"
                except RemoteError as exc:
                    key = exc.code
                checked[key] = checked.get(key, 0) + 1
                time.sleep(0.005)

    checker = threading.Thread(target=check)
    checker.start()
    posted = _fuzz_agents_socket(d, AGENT_MESSAGES)
    out, _ = front.communicate(timeout=300)
    stop.set()
    checker.join(timeout=30)
    front_result = json.loads(out)

    assert d.proc.poll() is None, "the daemon died"
    assert front_result["sent"] + front_result["unsent"] == FRONT_MESSAGES and front_result["sent"] > 50_000
    assert front_result["replies"] > 1000  # many carried a usable id: each got its one reply
    assert posted >= AGENT_MESSAGES
    assert checked.get("right", 0) > 50 and set(checked) == {"right"}, checked
    status = d.status()
    router = status["router"]
    assert not {k: v for k, v in router.items() if k.startswith("internal_errors")}, router
    assert router.get("bad_frames_front", 0) > 10_000 and router.get("bad_frames_agents", 0) > 10_000, router
    # it reached each defence: frames too big, HELLOs without the secret, replies owed to closed connections
    assert router.get("oversized_frames", 0) > 0 and router.get("unproven_hellos", 0) > 0, router
    assert router.get("replies_to_gone_clients", 0) > 0, router
    assert d.agent("Target")["pid"] == target["pid"], [  # never restarted: the fuzz did not reach it
        line for line in d.log().splitlines() if "agent=Target" in line and "level=debug" not in line][-12:]
    assert d.call("Target", "echo", "after") == "after"
    d.wait_agent("Fuzzer", lambda a: a["state"] == "ready", timeout=30, what="the fuzzer ready (again)")


def _fuzz_agents_socket(d, n: int) -> int:
    """Have the Fuzzer send n messages; if it is restarted meanwhile (its own garbage may get it called
    hung), its next incarnation sends the rest. Returns how many were sent."""
    posted, deadline, seed = 0, time.monotonic() + 240, 7
    while posted < n:
        assert time.monotonic() < deadline, f"only {posted} of {n} fuzzed messages were sent"
        incarnation = d.wait_agent("Fuzzer", lambda a: a["state"] == "ready", timeout=30,
                                   what="the fuzzer ready")["incarnation"]
        try:
            d.call("Fuzzer", "fuzz", {"seed": seed, "n": n - posted}, timeout=10)
        except RemoteError:
            pass  # a forged reply of its own may have answered it: its progress tells
        seed += 1
        seen = 0
        while time.monotonic() < deadline:
            if d.agent("Fuzzer")["incarnation"] != incarnation:
                break  # restarted: what it had sent counts, the next one sends the rest
            try:
                progress = d.call("Fuzzer", "progress", None, timeout=5)
            except RemoteError:
                progress = None
            if isinstance(progress, dict) and isinstance(progress.get("posted"), int):
                seen = max(seen, progress["posted"])
                if progress.get("done") is True:
                    break
            time.sleep(0.3)
        posted += seen
    return posted
