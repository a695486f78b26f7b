"""The trust boundary (#11, DESIGN §9): each attack as it was found, on a real daemon, by a separate process.

An impostor is a local process of the daemon's own uid with pyzmq and nothing else; it may know
everything `status` says (incarnations, pids). Each test reproduces one finding of the attack on the
landed daemon and shows it fixed.
"""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from conftest import REPO, TEST_PROFILES, DaemonProcess, wait_until
from sunsetd import auth, protocol
from sunsetd.client import Client, RemoteError
from sunsetd.loop import EventLoop
from sunsetd.protocol import Kind
from sunsetd.timers import Timers

pytestmark = pytest.mark.slow

MINI = TEST_PROFILES / "mini.yaml"

# An impostor on the agents socket: claims ROUTING_ID, says HELLO and READY with a made-up secret, and
# answers every request it is given with a forged ok. It prints how many requests reached it.
IMPOSTOR = textwrap.dedent("""
    import sys, time, msgpack, zmq
    endpoint, routing_id, seconds = sys.argv[1], sys.argv[2].encode(), float(sys.argv[3])
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.IDENTITY, routing_id)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    pack = lambda v: msgpack.packb(v, use_bin_type=True)
    def send(frames):  # never blocks: a DEALER with no admitted connection would wait for ever
        try:
            s.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            pass
    name, _, inc = routing_id.decode().partition("#")
    hello = [b"HELLO", pack({"name": name, "pid": 1, "incarnation": int(inc), "secret": b"x" * 32})]
    got, end, beat = 0, time.monotonic() + seconds, 0.0
    while time.monotonic() < end:
        if time.monotonic() > beat:  # HELLO, READY and heartbeats again and again: whenever it gets in
            send(hello); send([b"READY", pack({})]); send([b"HEARTBEAT"]); beat = time.monotonic() + 0.05
        if s.poll(20):
            frames = s.recv_multipart()
            if frames[0] == b"REQUEST":
                got += 1
                rid = msgpack.unpackb(frames[1])["id"]
                send([b"REPLY", pack({"id": rid, "ok": True, "body": "forged"})])
    print(got, flush=True)
""")


def impostor(d: DaemonProcess, routing_id: str, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", IMPOSTOR, f"ipc://{d.runtime_dir}/agents.sock", routing_id,
                             str(seconds)], stdout=subprocess.PIPE, text=True)


def echo_all(d: DaemonProcess, name: str, n: int, timeout: float = 2.0) -> dict[str, int]:
    """Send n echoes; count what came back: right answers, forged ones, and errors by code."""
    seen: dict[str, int] = {}
    for i in range(n):
        try:
            body = d.call(name, "echo", {"i": i}, timeout=timeout)
            key = "right" if body == {"i": i} else f"wrong:{body!r}"
        except RemoteError as exc:
            key = exc.code
        seen[key] = seen.get(key, 0) + 1
    return seen


def test_an_impostor_holding_the_next_incarnations_id_gets_nothing_and_the_real_one_becomes_ready(start_daemon):
    # found: connect with `name#(incarnation+1)`, ask for a restart (any client may): 213 forged ok
    # replies in one run; the real incarnations were refused as duplicates and the circuit opened
    d = start_daemon(MINI)
    base = d.agent("Base")
    fake = impostor(d, f"Base#{base['incarnation'] + 1}", 6.0)
    time.sleep(0.5)  # connected (or refused) before the restart
    d.call("sunsetd", "restart", {"agents": ["Base"]})
    after = d.wait_agent("Base", lambda a: a["state"] == "ready" and a["incarnation"] == base["incarnation"] + 1,
                         timeout=10, what="the real next incarnation ready")
    seen = echo_all(d, "Base", 100)
    out, _ = fake.communicate(timeout=15)
    assert seen == {"right": 100}, seen
    assert int(out) == 0, "requests were delivered to the impostor"
    assert d.agent("Base")["incarnation"] == after["incarnation"]  # no restart since: the real one is not hung
    assert "not a process sunsetd started" in d.log()


def test_an_impostor_with_the_current_id_while_the_real_one_is_frozen_gets_nothing(start_daemon):
    # found: with the real incarnation SIGSTOPped the impostor answered 942 of 989 requests, and status
    # showed the frozen agent ready with fresh heartbeats
    d = start_daemon(MINI)
    base = d.agent("Base")
    os.kill(base["pid"], signal.SIGSTOP)
    try:
        fake = impostor(d, f"Base#{base['incarnation']}", 4.0)
        seen = echo_all(d, "Base", 20, timeout=0.5)
        out, _ = fake.communicate(timeout=15)
    finally:
        try:
            os.kill(base["pid"], signal.SIGCONT)
        except ProcessLookupError:
            pass  # found hung and killed already, as it should be
    assert not any(k.startswith("wrong") for k in seen), seen  # right ones come from its replacement
    assert int(out) == 0
    # the frozen one was found hung (no forged heartbeat kept it alive) and replaced
    d.wait_agent("Base", lambda a: a["state"] == "ready" and a["incarnation"] > base["incarnation"], timeout=15,
                 what="the frozen incarnation replaced")
    assert echo_all(d, "Base", 10) == {"right": 10}


def test_a_child_of_ours_speaking_under_another_id_is_not_heard(start_daemon):
    # a process sunsetd started is admitted as its own incarnation only: what its connection sends
    # under any other routing id is dropped and counted
    d = start_daemon(MINI)
    before = {a["name"]: a["incarnation"] for a in d.status()["agents"]}
    assert d.call("Top", "impersonate", "Ghost#1") == 4
    wait_until(lambda: d.status()["router"].get("impostor_frames", 0) >= 4, 10, what="impostor frames counted")
    assert {a["name"]: a["incarnation"] for a in d.status()["agents"]} == before
    assert "from a connection admitted as" in d.log()


def test_a_child_of_ours_cannot_squat_the_routing_id_of_a_future_incarnation(start_daemon):
    # found in review: libzmq keeps the first holder of a routing id, so a child of ours (admitted as
    # itself) that connected first under `Base#(n+1)` got that incarnation refused as a duplicate, and
    # it exited "sunsetd silent" again and again. Routing ids now carry a tag nobody can guess.
    d = start_daemon(MINI)
    base = d.agent("Base")
    for ahead in (1, 2, 3):
        assert d.call("Top", "squat", f"Base#{base['incarnation'] + ahead}") is True
    time.sleep(0.3)  # its connections are up before the restart
    d.call("sunsetd", "restart", {"agents": ["Base"]})
    d.wait_agent("Base", lambda a: a["state"] == "ready" and a["incarnation"] == base["incarnation"] + 1,
                 timeout=10, what="the next incarnation ready")
    assert echo_all(d, "Base", 20) == {"right": 20}
    time.sleep(1.5)  # past its liveness: it hears the daemon's heartbeats
    assert d.agent("Base")["incarnation"] == base["incarnation"] + 1


def test_the_64_id_attack_on_the_front_socket_no_longer_aborts_the_daemon(start_daemon):
    # found: libzmq numbers anonymous peers from an unseeded rand() (first 0x6b8b4567) and asserts when an
    # auto id is held by a peer that chose it: 64 DEALERs with those ids plus any client: SIGABRT
    d = start_daemon(MINI)
    attacker = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import ctypes, time, zmq
        libc = ctypes.CDLL(None)
        libc.srand(1)
        ids = []
        for _ in range(4):  # the first sockets' numbering, as an unseeded libc gives it
            low, high = libc.rand() & 0xffffffff, libc.rand() & 0xffffffff
            start = ((high << 31) | low) & 0xffffffff
            ids += [b"\\0" + ((start + k) & 0xffffffff).to_bytes(4, "big") for k in range(16)]
        ctx = zmq.Context()
        socks = []
        for i in ids:
            s = ctx.socket(zmq.DEALER); s.setsockopt(zmq.IDENTITY, i); s.setsockopt(zmq.LINGER, 0)
            s.connect("ipc://{d.runtime_dir}/sunsetd.sock"); socks.append(s)
        print("connected", flush=True)
        time.sleep(8)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert attacker.stdout.readline().strip() == "connected"
        time.sleep(0.5)
        for _ in range(40):  # ordinary clients, each a new anonymous peer
            with Client(d.runtime_dir) as c:
                assert c.call("sunsetd", "status", timeout=5)["state"] == "running"
        assert d.proc.poll() is None
    finally:
        attacker.kill()
        attacker.wait()


class LowFdDaemon(DaemonProcess):
    """A daemon started with the soft fd limit of a terminal (1024), as `make run` from a shell has it."""

    def start(self) -> "LowFdDaemon":
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sunsetd", "--profile", self.profile, "--runtime-dir", str(self.runtime_dir),
             "--metrics-addr", "127.0.0.1:0", *self.args], stdout=self.log_file, stderr=subprocess.STDOUT,
            env=self.env, cwd=self.cwd, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard)))
        return self


FLOOD = textwrap.dedent("""
    import resource, sys, time, zmq
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    endpoint, n, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    ctx = zmq.Context(io_threads=2)
    ctx.set(zmq.MAX_SOCKETS, n + 100)
    socks = []
    for _ in range(n):
        s = ctx.socket(zmq.DEALER); s.setsockopt(zmq.LINGER, 0); s.connect(endpoint); socks.append(s)
    print("connected", flush=True)
    time.sleep(hold)
    for s in socks:
        s.close()
    ctx.term()
""")


def test_idle_connections_past_the_limit_are_refused_and_never_abort_the_daemon(runtime_dirs):
    # found: about 950 idle connections at the usual RLIMIT_NOFILE of 1024 aborted the daemon ("Too many
    # open files", ipc_listener), and every agent with it
    d = LowFdDaemon(runtime_dirs.new(), MINI, ("--max-clients", "300")).start()
    try:
        d.wait_ready()
        limits = Path(f"/proc/{d.proc.pid}/limits").read_text()
        soft, hard = next(line.split()[3:5] for line in limits.splitlines() if line.startswith("Max open files"))
        assert soft == hard, "the daemon keeps the soft fd limit it was given"
        assert d.call("Base", "process")["nofile"][0] == 1024  # children get back what sunsetd was given
        existing = Client(d.runtime_dir)
        assert existing.call("sunsetd", "status")["state"] == "running"  # connected before the flood
        flood = subprocess.Popen([sys.executable, "-c", FLOOD, f"ipc://{d.runtime_dir}/sunsetd.sock", "2000", "6"],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert flood.stdout.readline().strip() == "connected"
            time.sleep(2.0)
            assert d.proc.poll() is None, d.log()[-3000:]
            assert existing.call("sunsetd", "status", timeout=5)["state"] == "running"  # still served
            assert "connections open (limit 300)" in d.log()
        finally:
            flood.wait(timeout=30)
        # once the flood is gone, new clients are admitted again
        wait_until(lambda: _status_from_new_client(d), 15, what="a new client served after the flood")
        existing.close()
    finally:
        assert d.terminate() == 0


def _status_from_new_client(d: DaemonProcess) -> bool:
    try:
        with Client(d.runtime_dir) as c:
            return c.call("sunsetd", "status", timeout=1)["state"] == "running"
    except RemoteError:
        return False


def test_a_reply_owed_to_a_client_that_left_is_not_delivered_to_a_newcomer_with_its_id(start_daemon):
    # found: replies owed to a client that disconnected went to whoever claimed its routing id next
    d = start_daemon(MINI)
    ctx = zmq.Context()
    try:
        victim = ctx.socket(zmq.DEALER)
        victim.setsockopt(zmq.IDENTITY, b"victim")
        victim.setsockopt(zmq.LINGER, 0)
        victim.connect(f"ipc://{d.runtime_dir}/sunsetd.sock")
        victim.send(protocol.pack({"v": 1, "id": "secret-answer", "to": "Base", "op": "sleep", "body": 1.0,
                                   "timeout_ms": 5000}))
        time.sleep(0.3)  # forwarded to Base, which sleeps on it
        victim.close()
        time.sleep(0.3)  # its disconnection seen
        newcomer = ctx.socket(zmq.DEALER)
        newcomer.setsockopt(zmq.IDENTITY, b"victim")
        newcomer.setsockopt(zmq.LINGER, 0)
        newcomer.connect(f"ipc://{d.runtime_dir}/sunsetd.sock")
        newcomer.send(protocol.pack({"v": 1, "id": "mine", "to": "sunsetd", "op": "status", "timeout_ms": 5000}))
        got = []
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            if newcomer.poll(100):
                got.append(msgpack.unpackb(newcomer.recv())["id"])
        newcomer.close()
        assert got == ["mine"], got
        assert d.status()["router"].get("replies_to_gone_clients", 0) >= 1
    finally:
        ctx.destroy(linger=0)


def test_an_oversized_frame_is_answered_and_counted(start_daemon):
    # found: frames over the limit were dropped uncounted
    d = start_daemon(MINI)
    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(f"ipc://{d.runtime_dir}/sunsetd.sock")
        s.send(b"\x81" + b"\xa1x" + b"\xc6" + (3 << 20).to_bytes(4, "big") + b"\0" * (3 << 20))  # a 3 MiB map
        assert s.poll(5000)
        reply = msgpack.unpackb(s.recv())
        assert reply["error"]["code"] == "bad_request" and "limit" in reply["error"]["message"]
        assert d.status()["router"]["oversized_frames"] == 1
    finally:
        ctx.destroy(linger=0)


# A client as another uid: forked from a root process that has pyzmq imported, so nothing needs the
# venv to be readable by that user. Prints the state, or "refused" when no reply comes.
AS_USER = textwrap.dedent("""
    import os, sys, zmq, msgpack
    endpoint, uid, gid, groups = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    os.setgroups([int(g) for g in groups.split(",") if g])
    os.setgid(gid); os.setuid(uid)
    s = zmq.Context().socket(zmq.DEALER); s.setsockopt(zmq.LINGER, 0); s.connect(endpoint)
    s.send(msgpack.packb({"v": 1, "id": 1, "to": "sunsetd", "op": "status", "timeout_ms": 2000}))
    print(msgpack.unpackb(s.recv())["body"]["state"] if s.poll(3000) else "refused", flush=True)
""")


def _as_user(d: DaemonProcess, uid: int, gid: int, groups: str = "") -> str:
    return subprocess.run([sys.executable, "-c", AS_USER, f"ipc://{d.runtime_dir}/sunsetd.sock", str(uid),
                           str(gid), groups], capture_output=True, text=True, timeout=20).stdout.strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")
def test_clients_are_judged_by_their_credentials_not_only_by_file_modes(start_daemon):
    d = start_daemon(MINI, "--socket-group", "users")
    nobody, users = 65534, 100
    assert _as_user(d, nobody, nobody, str(users)) == "running"  # a member of the operator group
    # the file modes opened by mistake: a stranger reaches the socket, and the handler still says no
    os.chmod(d.runtime_dir, 0o755)
    os.chmod(d.runtime_dir / "sunsetd.sock", 0o666)
    assert _as_user(d, nobody, nobody) == "refused"
    assert "not sunsetd's uid, root, or a member of its --socket-group" in d.log()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")
def test_without_a_socket_group_only_the_daemons_uid_and_root_are_clients(start_daemon):
    d = start_daemon(MINI)
    os.chmod(d.runtime_dir, 0o755)
    os.chmod(d.runtime_dir / "sunsetd.sock", 0o666)
    assert _as_user(d, 65534, 65534, "100") == "refused"
    assert d.status()["state"] == "running"


@pytest.mark.parametrize("spawner", ["fork", "exec"])
def test_agents_are_not_dumpable_unless_asked(start_daemon, spawner):
    # (the daemon's and the zygote's own /proc files are root's under systemd: tests/systemd/e2e.sh)
    d = start_daemon(MINI, "--spawner", spawner)
    assert d.call("Base", "process")["dumpable"] is False
    d2 = start_daemon(MINI, "--spawner", spawner, "--dumpable")
    assert d2.call("Base", "process")["dumpable"] is True


# ---- the authenticator on real sockets, without a daemon


def test_a_stolen_secret_is_worth_nothing_from_a_process_sunsetd_did_not_start(tmp_path):
    ctx = zmq.Context()
    timers = Timers()
    loop = EventLoop(timers)
    guard = auth.Authenticator(ctx, timers)
    agents = ctx.socket(zmq.ROUTER)
    guard.guard(agents, auth.AGENTS)
    agents.bind(f"ipc://{tmp_path}/agents.sock")
    loop.watch(guard.sock, guard.on_readable)
    try:
        tag, secret = guard.issue("Base", 1)
        rid = protocol.routing_id("Base", 1, tag)
        thief = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import time, msgpack, zmq
            s = zmq.Context().socket(zmq.DEALER); s.setsockopt(zmq.IDENTITY, {rid!r}); s.setsockopt(zmq.LINGER, 0)
            s.connect("ipc://{tmp_path}/agents.sock")
            s.send_multipart([b"HELLO", msgpack.packb({{"secret": bytes.fromhex("{secret.hex()}")}})])
            time.sleep(3)
        """)])
        guard.admit(thief.pid + 1_000_000, rid)  # the real child is some other process
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            loop.run_once(0.05)
            assert not agents.poll(0), "a frame from a process sunsetd did not start was admitted"
        assert guard.counters["refused_not_an_agent"] >= 1
        thief.wait(timeout=10)
    finally:
        agents.close(0)
        guard.close()
        ctx.term()


def test_hello_proves_only_the_incarnation_the_secret_was_issued_for():
    ctx = zmq.Context()
    guard = auth.Authenticator(ctx, Timers())
    try:
        tag_a, a = guard.issue("A", 1)
        tag_b, b = guard.issue("B", 1)
        a_id, b_id = protocol.routing_id("A", 1, tag_a), protocol.routing_id("B", 1, tag_b)
        assert a != b and len(a) == auth.SECRET_BYTES and tag_a != tag_b and len(tag_a) == 2 * auth.TAG_BYTES
        assert guard.route("A", 1) == a_id and guard.route("B", 1) == b_id and guard.route("A", 2) is None
        assert not guard.hello(a_id, b) and not guard.hello(a_id, None) and not guard.hello(a_id, "x")
        assert not guard.hello(b"A#1", a) and not guard.hello(b_id, a) and a_id not in guard.proven
        assert guard.hello(a_id, a) and a_id in guard.proven
        guard.forget(None, a_id)
        assert not guard.hello(a_id, a) and a_id not in guard.proven and guard.route("A", 1) is None
    finally:
        guard.close()
        ctx.term()


def test_peer_credentials_come_from_libzmqs_ipc_address():
    assert auth.peer_credentials(b"localhost:0:0:28361") == (0, 0, 28361)
    assert auth.peer_credentials(b"127.0.0.1") is None and auth.peer_credentials(b"a:b:c:d") is None
