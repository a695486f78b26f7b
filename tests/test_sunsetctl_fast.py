"""sunsetctl's one-shot path (sunsetd.cli._OneShot, sunsetd.zmtp, sunsetd.packlite) against the full
path it stands in for: the same parse, the same bytes out, the same exit codes and error lines.

Without a daemon (fast): the msgpack and JSON subsets against the libraries over generated values;
the one-shot parse against argparse; the runtime directory against rundir.resolve; the ZMTP client
against a real pyzmq ROUTER in this process (frames, long frames, multi-part, PING, a ZAP refusal);
hostile servers that must give one line and never a hang; and both paths of the real console script
against a canned ROUTER that gives them the same replies. With a daemon (slow): status, --json and a
remote error from a real one, the refusals (not running, not yours, refused by its ZAP handler).
"""
from __future__ import annotations

import grp
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import REPO, TEST_PROFILES
from sunsetd import cli, client, packlite, protocol, rundir, zmtp

SUNSETCTL = str(Path(sys.executable).parent / "sunsetctl")
FULL = {"SUNSETCTL_ONESHOT": "0"}
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- msgpack ---------------------------------------------------------------------------------------------

def _ints() -> st.SearchStrategy:
    edges = [0, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 2**32 - 1, 2**32, 2**64 - 1, -1, -32, -33, -128, -129,
             -2**15, -2**15 - 1, -2**31, -2**31 - 1, -2**63]
    return st.one_of(st.sampled_from(edges), st.integers(-2**63, 2**64 - 1))


SCALARS = st.one_of(st.none(), st.booleans(), _ints(), st.floats(allow_nan=True), st.text(max_size=40),
                    st.text(min_size=250, max_size=300), st.binary(max_size=300))
KEYS = st.one_of(st.text(max_size=20), _ints(), st.binary(max_size=8), st.none(), st.booleans())
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=20), st.tuples(inner, inner), st.dictionaries(KEYS, inner, max_size=20)), max_leaves=60)


def same(a: object, b: object) -> bool:
    """Equal, NaN included (msgpack's bytes say type and value exactly)."""
    return msgpack.packb(a, use_bin_type=True) == msgpack.packb(b, use_bin_type=True)


@SETTINGS
@given(VALUES)
def test_pack_is_msgpacks_to_the_byte(value):
    assert packlite.pack(value) == msgpack.packb(value, use_bin_type=True)


@SETTINGS
@given(VALUES)
def test_unpack_is_protocols(value):
    data = msgpack.packb(value, use_bin_type=True)
    got, expected = packlite.unpack(data, "reply frame"), protocol.unpack(data, "reply frame")
    assert same(got, expected) and type(got) is type(expected)


def _outcome(fn, *args):
    try:
        return "ok", fn(*args)
    except Exception as exc:  # noqa: BLE001 - the type and words are what is compared
        return type(exc), str(exc)


@SETTINGS
@given(st.one_of(st.binary(max_size=64), VALUES.map(lambda v: msgpack.packb(v, use_bin_type=True))),
       st.integers(0, 63), st.integers(0, 255), st.booleans())
@example(b"\xc1", 0, 0, False)
@example(b"\x91\xc1", 0, 0, False)
@example(b"\x81\xc4\x01a\x01", 0, 0, False)  # a bytes key
@example(b"\x81\x91\x01\x02", 0, 0, False)  # a list key
@example(b"\xa2\xff\xfe", 0, 0, False)  # not UTF-8
@example(b"\xc0\xc0", 0, 0, False)  # extra data
@example(b"\xdd\xff\xff\xff\xff", 0, 0, False)
def test_unpack_of_anything_is_protocols_value_or_its_error(data, at, byte, mutate):
    if mutate and data:
        data = data[:at % len(data)] + bytes((byte,)) + data[at % len(data) + 1:]
    mine, theirs = _outcome(packlite.unpack, data, "reply frame"), _outcome(protocol.unpack, data, "reply frame")
    assert mine[0] == theirs[0]
    assert same(mine[1], theirs[1]) if mine[0] == "ok" else mine[1] == theirs[1]


def test_unpack_leaves_ext_types_and_float32_and_the_size_limit_to_the_library():
    for value in (msgpack.ExtType(5, b"xyz"), msgpack.Timestamp(1, 2), [1, msgpack.ExtType(127, b"")]):
        data = msgpack.packb(value, use_bin_type=True, datetime=False)
        assert packlite.unpack(data, "reply frame") == protocol.unpack(data, "reply frame")
    data = msgpack.packb([1.5, 0.1], use_single_float=True)
    assert packlite.unpack(data, "x") == msgpack.unpackb(data) and data[1] == 0xCA
    big = msgpack.packb(b"x" * protocol.MAX_FRAME_BYTES)
    with pytest.raises(protocol.ProtocolError, match="over the 1048576-byte limit"):
        packlite.unpack(big, "reply frame")


def test_pack_leaves_what_it_does_not_know_to_msgpack():
    class Sub(dict):
        pass

    for value in (Sub(a=1), bytearray(b"ab"), msgpack.ExtType(1, b"")):
        assert packlite.pack(value) == msgpack.packb(value, use_bin_type=True)
    for value in (2**64, -2**63 - 1, "\udcff"):
        assert _outcome(packlite.pack, value)[0] == _outcome(msgpack.packb, value)[0] != "ok"


# ---- JSON ------------------------------------------------------------------------------------------------

@SETTINGS
@given(VALUES, st.sampled_from([None, 2, 0, 4]), st.sampled_from([str, None]))
def test_dumps_is_jsons(value, indent, default):
    assert _outcome(packlite.dumps, value, indent, default) == _outcome(
        lambda v, i, d: json.dumps(v, indent=i, default=d), value, indent, default)


# ---- the command line ------------------------------------------------------------------------------------

TOKENS = ["status", "call", "start", "stop", "restart", "signal", "logs", "reload", "shutdown", "events",
          "--json", "--retry", "--dry-run", "--timeout", "--timeout=3", "--timeout=0", "--timeout=nan", "-n",
          "--lines", "--lines=2", "--incarnation", "-f", "--follow", "--profile", "--runtime-dir",
          "--runtime-dir=/tmp/x",
          "--help", "-h", "--version", "--", "-", "-5", "--js", "--time", "A", "B*", "all", "", "5", "0", "-1", "1e3",
          " 7", "inf", "HUP", '{"k": 1}', "a b", "--runtime-dir=", "x=y"]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=8))
@example(["status", "--json", "a", "b"])
@example(["status", "a", "--json", "b"])
@example(["call", "A", "op", "--retry", "1"])
@example(["logs", "a", "-n", "5", "b"])
@example(["--timeout", "5", "status", "--timeout", "3"])
def test_the_one_shot_parse_is_argparses_where_it_parses_at_all(argv):
    fast = cli.oneshot_args(argv)
    if fast is None:
        return
    parser = cli.build_parser()
    parser.exit = parser.error = lambda *a, **k: pytest.fail(f"argparse refuses {argv}, the one-shot parse took it")
    assert vars(fast) == vars(parser.parse_args(argv)), argv


@pytest.mark.parametrize("argv", [
    ["status"], ["status", "--json"], ["--runtime-dir", "/tmp/x", "status", "A", "B"], ["--timeout", "2", "status"],
    ["--runtime-dir=/tmp/x", "--timeout=2.5", "status", "--json", "A*"], ["status", "A", "--json"],
    ["call", "A", "op"], ["call", "A", "op", '{"x": [1]}', "--retry", "--timeout", "3"], ["call", "--retry", "A", "op"],
    ["start", "A"], ["stop", "A", "B"], ["restart", "all"], ["signal", "HUP", "A"], ["shutdown"],
    ["logs"], ["logs", "A", "-n", "5", "--json"], ["logs", "--incarnation", "2", "A"], ["reload"],
    ["reload", "--dry-run", "--json"],
])
def test_the_usual_forms_take_the_one_shot_path(argv):
    fast = cli.oneshot_args(argv)
    assert fast is not None and vars(fast) == vars(cli.build_parser().parse_args(argv))


@pytest.mark.parametrize("argv", [
    [], ["--help"], ["status", "--help"], ["--version"], ["events"], ["logs", "-f"], ["reload", "--profile", "x"],
    ["status", "--timeout", "3"], ["--timeout", "0", "status"], ["--timeout", "-1", "status"], ["start"],
    ["call", "A"], ["--runtime-dir"], ["nosuch"], ["status", "--jso"], ["--runtime-dir", "-x", "status"],
])
def test_everything_else_takes_the_full_path(argv):
    assert cli.oneshot_args(argv) is None


def test_what_the_one_shot_path_mirrors_is_still_so():
    assert cli.CONTROL_TARGET == protocol.CONTROL_TARGET and cli.PROTOCOL_VERSION == protocol.VERSION
    assert (cli.OP_LOGS, cli.OP_RELOAD, cli.OP_RELOAD_WAIT) == (protocol.ControlOp.LOGS.value,
                                                                protocol.ControlOp.RELOAD.value,
                                                                protocol.ControlOp.RELOAD_WAIT.value)
    assert cli.MAX_FRAME_BYTES == packlite.MAX_FRAME_BYTES == protocol.MAX_FRAME_BYTES
    assert cli.REPLY_SLACK_S == client.REPLY_SLACK_S
    assert (cli.FRONT_SOCKET, cli.LOCK_FILE, cli.SUN_PATH_MAX) == (rundir.FRONT_SOCKET, rundir.LOCK_FILE,
                                                                   rundir.SUN_PATH_MAX)
    assert cli.SYSTEM_DIR == str(rundir.SYSTEM_DIR)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(["", ".", "..", "a", "b c", "/", "//", "~"]), max_size=6).map("".join))
@example("/")
@example("//a")
@example("///a")
@example("a/")
@example("./a")
@example("a/./b")
@example("a//b")
def test_plain_paths_are_those_pathlib_leaves_alone(path):
    leaves = bool(path) and str(pathlib.Path(path)) == path
    assert cli._plain(path) == leaves or (path.startswith("//") and not cli._plain(path))  # POSIX's '//': full path


def _resolved(explicit):
    try:
        return cli.oneshot_runtime_dir(explicit)
    except cli._FullPath:
        return None


@pytest.mark.parametrize("explicit", [None, "", "/tmp/sd-x", "rel/dir", "/tmp//sd", "/tmp/sd/"])
@pytest.mark.parametrize("environ", [{}, {"RUNTIME_DIRECTORY": "/run/a:/run/b"}, {"XDG_RUNTIME_DIR": "/run/user/7"},
                                     {"XDG_RUNTIME_DIR": "/"}, {"XDG_RUNTIME_DIR": "x//y"},
                                     {"RUNTIME_DIRECTORY": ":a"}])
def test_the_runtime_directory_is_rundirs(monkeypatch, explicit, environ):
    for name in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    mine = _resolved(explicit)
    assert mine is None or mine == str(rundir.resolve(explicit, client=True))
    if explicit in ("/tmp/sd-x", "rel/dir") or (not explicit and environ in ({}, {"XDG_RUNTIME_DIR": "/run/user/7"})):
        assert mine is not None  # the usual cases are the one-shot path's


def test_the_runtime_directory_of_another_user_is_rundirs(short_dir):
    """As a user who is not root: their own directory under XDG_RUNTIME_DIR or /tmp, or the system's,
    by whether a daemon of theirs runs (a socket, a lock naming a live pid, a dead one, or no lock)."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to become another user")
    tmp_path = short_dir
    os.chmod(tmp_path, 0o755)
    cases = []
    for n, (sock, lock) in enumerate([(False, None), (True, None), (True, "1\n"), (True, "999999999\n"),
                                      (True, "junk")]):
        d = tmp_path / f"u{n}" / "sunsetd"
        d.mkdir(parents=True)
        if sock:
            (d / "sunsetd.sock").touch()
        if lock is not None:
            (d / "sunsetd.lock").write_text(lock)
        cases.append(str(d.parent))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(65534)
            os.setuid(65534)
            out = []
            for xdg in [*cases, None]:
                os.environ.pop("RUNTIME_DIRECTORY", None)
                if xdg is None:
                    os.environ.pop("XDG_RUNTIME_DIR", None)
                else:
                    os.environ["XDG_RUNTIME_DIR"] = xdg
                out.append([_resolved(None), str(rundir.resolve(None, client=True))])
            os.write(w, json.dumps(out).encode())
        except BaseException as exc:  # noqa: BLE001 - the parent must hear of it
            os.write(w, json.dumps(repr(exc)).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = json.loads(f.read() or "null")
    os.waitpid(pid, 0)
    assert isinstance(out, list) and all(mine == theirs for mine, theirs in out), out
    assert len({theirs for _, theirs in out}) >= 3, out  # their own, XDG's, and the system's were all seen


# ---- the ZMTP client against pyzmq -----------------------------------------------------------------------

@pytest.fixture
def router(tmp_path):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    path = str(tmp_path / "r.sock")
    yield ctx, sock, path
    sock.close(0)
    ctx.term()


def _recv(sock, timeout=5.0):
    assert sock.poll(int(timeout * 1000)), "nothing came"
    return sock.recv_multipart()


def test_frames_long_frames_and_multipart_both_ways(router):
    ctx, sock, path = router
    sock.bind(f"ipc://{path}")
    with zmtp.Dealer(path) as dealer:
        deadline = time.monotonic() + 5
        for size in (0, 1, 255, 256, 300, 70_000, 1 << 20):
            body = os.urandom(size)
            dealer.send(body, deadline)
            peer, got = _recv(sock)
            assert got == body
            sock.send_multipart([peer, body])
            assert dealer.recv(deadline) == body
        assert dealer.peer[b"socket-type"] == b"ROUTER"
        sock.send_multipart([peer, b"one", b"x" * 400, b"three"])
        assert [dealer.recv(deadline) for _ in range(3)] == [b"one", b"x" * 400, b"three"]
        assert dealer.recv(time.monotonic() + 0.1) is None


def test_frames_over_the_limit_are_refused_unread(router):
    ctx, sock, path = router
    sock.bind(f"ipc://{path}")
    with zmtp.Dealer(path, max_frame=1000) as dealer:
        dealer.send(b"hi", time.monotonic() + 5)
        peer, _ = _recv(sock)
        sock.send_multipart([peer, b"y" * 1001])
        with pytest.raises(zmtp.TooLarge) as info:
            dealer.recv(time.monotonic() + 5)
        assert info.value.size == 1001


def test_pings_are_answered_and_the_connection_lives_on(router):
    ctx, sock, path = router
    sock.setsockopt(zmq.HEARTBEAT_IVL, 30)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 150)
    sock.bind(f"ipc://{path}")
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    with zmtp.Dealer(path) as dealer:
        dealer.send(b"hello", time.monotonic() + 5)
        peer, _ = _recv(sock)
        assert dealer.recv(time.monotonic() + 0.8) is None  # PINGs came and were answered meanwhile
        assert not monitor.poll(0), "libzmq dropped the connection: no PONG"
        sock.send_multipart([peer, b"still there"])
        assert dealer.recv(time.monotonic() + 5) == b"still there"
    monitor.close(0)


def test_pings_unanswered_would_have_dropped_it(router):
    """The test above means something: a peer that never reads (so never answers) is dropped."""
    ctx, sock, path = router
    sock.setsockopt(zmq.HEARTBEAT_IVL, 30)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 150)
    sock.bind(f"ipc://{path}")
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    with zmtp.Dealer(path) as dealer:
        dealer.send(b"hello", time.monotonic() + 5)
        _recv(sock)
        assert monitor.poll(3000), "not dropped"
    monitor.close(0)


def test_a_request_waits_for_a_router_that_binds_later(router):
    ctx, sock, path = router
    later = threading.Timer(0.4, lambda: sock.bind(f"ipc://{path}"))
    later.start()
    try:
        with zmtp.Dealer(path) as dealer:
            t = time.monotonic()
            dealer.send(b"early", t + 5)
            assert time.monotonic() - t >= 0.3
            assert _recv(sock)[1] == b"early"
    finally:
        later.join()


def test_a_zap_refusal_is_refused_at_once(router):
    ctx, sock, path = router
    zap = ctx.socket(zmq.REP)
    zap.bind("inproc://zeromq.zap.01")
    sock.setsockopt(zmq.ZAP_DOMAIN, b"clients")
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    sock.bind(f"ipc://{path}")
    answered = []

    def judge():
        if zap.poll(5000):
            request = zap.recv_multipart()
            answered.append(request[3])  # the address: host:uid:gid:pid, from the kernel
            zap.send_multipart([b"1.0", request[1], b"400", b"not allowed", b"", b""])

    judge_thread = threading.Thread(target=judge)
    judge_thread.start()
    try:
        t = time.monotonic()
        with zmtp.Dealer(path) as dealer, pytest.raises(zmtp.Refused) as info:
            dealer.send(b"x", t + 5)
        assert time.monotonic() - t < 2 and info.value.reason == b"400"
    finally:
        judge_thread.join()
        zap.close(0)
    assert answered and answered[0].split(b":")[-3:] == [str(os.getuid()).encode(), str(os.getgid()).encode(),
                                                          str(os.getpid()).encode()]


# ---- hostile servers ---------------------------------------------------------------------------------------

GREETING_SERVER = b"\xff" + bytes(8) + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\0") + b"\x01" + bytes(31)
READY_SERVER = zmtp.command(b"READY", zmtp.properties(Socket_Type=b"ROUTER"))


class Hostile:
    """An AF_UNIX server that does one thing to every connection."""

    def __init__(self, path: str, act):
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.act, self.stop, self.connections = act, threading.Event(), 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            with conn:
                try:
                    self.act(conn, self.stop)
                except OSError:
                    pass

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.listener.close()


def close_at_once(conn, stop):
    pass


def close_mid_greeting(conn, stop):
    conn.sendall(GREETING_SERVER[:10])


def http(conn, stop):
    conn.recv(100)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" + bytes(40))


def zmtp2(conn, stop):
    conn.sendall(b"\xff" + bytes(8) + b"\x7f\x01\x05" + bytes(52))


def curve(conn, stop):
    conn.sendall(GREETING_SERVER[:12] + b"CURVE".ljust(20, b"\0") + bytes(32))


def huge_length(conn, stop):
    conn.sendall(GREETING_SERVER + READY_SERVER)
    conn.recv(1000)
    conn.sendall(b"\x02" + (2**63 - 1).to_bytes(8, "big"))
    stop.wait(10)


def huge_command(conn, stop):
    conn.sendall(GREETING_SERVER + b"\x06" + (2**40).to_bytes(8, "big"))
    stop.wait(10)


def silent(conn, stop):
    stop.wait(10)


def wrong_type(conn, stop):
    conn.sendall(GREETING_SERVER + zmtp.command(b"READY", zmtp.properties(Socket_Type=b"PUB")))
    stop.wait(10)


def bad_flags(conn, stop):
    conn.sendall(GREETING_SERVER + b"\x80\x00")
    stop.wait(10)


def half_frame(conn, stop):
    conn.sendall(GREETING_SERVER + READY_SERVER)
    conn.recv(1000)
    conn.sendall(b"\x00\x10abc")  # 16 bytes said, 3 sent, then closed


@pytest.fixture
def short_dir():
    d = Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("act, error, at_once", [
    (close_at_once, zmtp.Timeout, False), (close_mid_greeting, zmtp.Timeout, False), (silent, zmtp.Timeout, False),
    (http, zmtp.NotZmtp, True), (zmtp2, zmtp.NotZmtp, True), (curve, zmtp.NotZmtp, True),
    (huge_command, zmtp.NotZmtp, True), (wrong_type, zmtp.NotZmtp, True), (bad_flags, zmtp.NotZmtp, True),
])
def test_a_hostile_server_in_the_handshake_is_an_error_never_a_hang(short_dir, act, error, at_once):
    server = Hostile(str(short_dir / "s.sock"), act)
    try:
        t = time.monotonic()
        with zmtp.Dealer(str(short_dir / "s.sock")) as dealer, pytest.raises(error):
            dealer.send(b"x", t + 0.6)
        took = time.monotonic() - t
        assert took < (0.4 if at_once else 1.5), took
    finally:
        server.close()
    if act in (close_at_once, close_mid_greeting):
        assert server.connections >= 3  # tried again, like libzmq, until the deadline


@pytest.mark.parametrize("act, error", [(huge_length, zmtp.TooLarge), (half_frame, None)])
def test_a_hostile_server_after_the_handshake_is_an_error_never_a_hang(short_dir, act, error):
    server = Hostile(str(short_dir / "s.sock"), act)
    try:
        t = time.monotonic()
        with zmtp.Dealer(str(short_dir / "s.sock")) as dealer:
            dealer.send(b"x", t + 0.6)
            if error is None:
                assert dealer.recv(t + 0.6) is None
            else:
                with pytest.raises(error):
                    dealer.recv(t + 0.6)
        assert time.monotonic() - t < 1.5
    finally:
        server.close()


def ctl(runtime_dir, *args, env=None, timeout=30):
    t = time.monotonic()
    result = subprocess.run([SUNSETCTL, "--runtime-dir", str(runtime_dir), *args], capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO)
    return result, time.monotonic() - t


@pytest.mark.parametrize("act, line, code", [
    (close_mid_greeting, "sunsetctl: no reply from sunsetd on {d} within 2.3s", 3),
    (silent, "sunsetctl: no reply from sunsetd on {d} within 2.3s", 3),
    (http, "sunsetctl: {d}/sunsetd.sock is not sunsetd's socket: its greeting begins "
           "b'HTTP/1.1 4', not ZMTP's signature", 3),
    (zmtp2, "sunsetctl: {d}/sunsetd.sock is not sunsetd's socket: it speaks ZMTP 1.5, not 3", 3),
    (huge_length, f"sunsetctl: reply frame is {2**63 - 1} bytes, over the 1048576-byte limit", 1),
])
def test_sunsetctl_against_a_hostile_server_says_one_line(short_dir, act, line, code):
    server = Hostile(str(short_dir / "sunsetd.sock"), act)
    try:
        result, took = ctl(short_dir, "--timeout", "0.3", "status")
    finally:
        server.close()
    assert (result.returncode, result.stderr, result.stdout) == (code, line.format(d=short_dir) + "\n", "")
    assert took < 4, took


# ---- both paths of the console script, given the same replies --------------------------------------------

class Canned:
    """A pyzmq ROUTER on $DIR/sunsetd.sock that answers every request with answer(request) -> frames."""

    def __init__(self, runtime_dir: Path, answer):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(f"ipc://{runtime_dir}/sunsetd.sock")
        self.answer, self.stop, self.requests = answer, threading.Event(), []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            if not self.sock.poll(50):
                continue
            peer, frame = self.sock.recv_multipart()
            request = msgpack.unpackb(frame)
            self.requests.append(request)
            frames = self.answer(request)
            if frames is not None:
                self.sock.send_multipart([peer, *frames])

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close(0)
        self.ctx.term()


def _agent(name, **over):
    a = {"name": name, "state": "ready", "pid": 4321, "incarnation": 1, "uptime_s": 65.25, "restarts": 0,
         "rss_bytes": 18_874_368, "heartbeat_age_ms": 98, "essential": True, "lazy": False, "program": False,
         "protocol": "python", "reason": "", "never_started": False, "last_exit": None, "probe": None,
         "status_text": "serving ünïcode ✓", "mcp": None, "circuit": "closed"}
    a.update(over)
    return a


STATUS = {"profile": "core", "pid": 77, "state": "running", "healthy": True, "uptime_s": 3725.5,
          "counts": {"ready": 2, "total": 3, "essential_ready": 2, "essential": 2},
          "agents": [_agent("ServiceRegistry"), _agent("Later", state="stopped", pid=None, never_started=True,
                                                       lazy=True, essential=False, uptime_s=None, rss_bytes=None,
                                                       heartbeat_age_ms=None, incarnation=0),
                     _agent("Crashy", state="failed", reason="exit code 3", circuit="open", restarts=5,
                            last_exit={"description": "exit code 3", "uptime_s": 0.2, "incarnation": 5,
                                       "ago_s": 2.0, "asked": False}, ratio=float("nan"), blob=b"\x00\xff")],
          "nested": {"deep": [[1, 2.5, -3], {"k": None}], "big": 2**63, "neg": -2**40}}
LOGS = {"lines": [[1, 1_700_000_000.123, "A", 1, "stdout", "hello"], [2, 1_700_000_001.5, "A", 1, "stderr", "é"]],
        "agents": ["A"], "last": {"A": 2}}


def _reply(request, body=None, error=None):
    reply = {"v": 1, "id": request["id"], "ok": error is None}
    reply.update({"body": body} if error is None else {"error": error})
    return [msgpack.packb(reply, use_bin_type=True)]


def answer(request):
    op, to = request["op"], request["to"]
    if to != "sunsetd":
        if op == "echo":
            return _reply(request, {"got": request["body"], "timeout_ms": request["timeout_ms"],
                                    "retry": request.get("retry", False)})
        if op == "garbage":
            return [b"\xc1\xc1"]
        if op == "ext":
            return [msgpack.packb({"v": 1, "id": request["id"], "ok": True, "body": msgpack.ExtType(3, b"ab")})]
        if op == "huge":
            return _reply(request, "x" * (protocol.MAX_FRAME_BYTES + 10))
        if op == "stale":  # a reply to an earlier request first, then its own in a later message
            return [msgpack.packb({"v": 1, "id": 999, "ok": True, "body": 1})] + _reply(request, "own")
        if op == "silence":
            return None
        return _reply(request, error={"code": "bad_request", "message": f"{to} has no op {op!r} (ops: echo) ✗"})
    if op == "status":
        agents = (request["body"] or {}).get("agents")
        if agents and "Ghost" in agents:
            return _reply(request, error={"code": "unknown_agent", "message": "no agent 'Ghost' in profile core"})
        return _reply(request, STATUS if not agents else {**STATUS, "agents": STATUS["agents"][:1]})
    if op == "logs":
        return _reply(request, LOGS)
    if op == "reload":
        return _reply(request, {"reload": 3, "settled": False, "settle_s": 0.1, "profile": "core"})
    if op == "reload_wait":
        return _reply(request, {"reload": 3, "profile": "core", "added": ["X"], "removed": [], "changed": {"Y": 1},
                                "unchanged": 4, "outcomes": {"X": "ready"}})
    if op in ("start", "stop", "restart", "signal", "shutdown"):
        return _reply(request, {"op": op, "body": request["body"], "timeout_ms": request["timeout_ms"]})
    return _reply(request, error={"code": "bad_request", "message": "unknown op"})


@pytest.fixture
def canned(short_dir):
    server = Canned(short_dir, answer)
    yield short_dir, server
    server.close()


BOTH_WAYS = [
    ["status"], ["status", "--json"], ["status", "ServiceRegistry"], ["status", "--json", "ServiceRegistry"],
    ["status", "Ghost"], ["--timeout", "3", "status"], ["call", "A", "echo"], ["call", "A", "echo", '{"x": [1, 2.5]}'],
    ["call", "A", "echo", '"to be"', "--retry", "--timeout", "2"], ["call", "A", "echo", "[1,"],
    ["call", "A", "echo", "123456789012345678901234567890"], ["call", "A", "nosuch"], ["call", "A", "garbage"],
    ["call", "A", "ext"], ["call", "A", "huge"], ["call", "A", "stale"], ["start", "A", "B"], ["stop", "A"],
    ["restart", "all"], ["signal", "HUP", "A"], ["signal", "10", "A"], ["shutdown"], ["logs"],
    ["logs", "-n", "3", "A", "--json"], ["reload"], ["reload", "--json"], ["call", "A", "echo", '"\\udcff"'],
]


@pytest.mark.parametrize("argv", BOTH_WAYS)
def test_both_paths_print_the_same_bytes(canned, argv):
    runtime_dir, server = canned
    fast, took_fast = ctl(runtime_dir, *argv, env={"TZ": "UTC"})
    full, took_full = ctl(runtime_dir, *argv, env={**FULL, "TZ": "UTC"})
    assert (fast.returncode, fast.stdout, fast.stderr) == (full.returncode, full.stdout, full.stderr)
    assert "Traceback" not in fast.stderr or argv[-1] == "123456789012345678901234567890"  # msgpack's own
    n = len(server.requests) // 2
    assert server.requests[:n] == server.requests[n:]  # the very same requests, ids and all


def test_the_one_shot_path_is_the_one_taken(canned):
    """The console script's one-shot path imports no pyzmq, msgpack, argparse or json."""
    runtime_dir, _ = canned
    code = ("import sys; from sunsetd.cli import main; code = main(['--runtime-dir', sys.argv[1], 'status']); "
            "print(sorted(m for m in ('zmq', 'msgpack', 'argparse', 'json', 'sunsetd.protocol', 'dataclasses', 're') "
            "if m in sys.modules), file=sys.stderr); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code, str(runtime_dir)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stderr == "[]\n", result.stderr


def ctl_both(runtime_dir, *args, timeout=30):
    """Both paths at once (each waits out the same deadline): ((fast, seconds), (full, seconds))."""
    procs = []
    for env in ({}, FULL):
        procs.append((time.monotonic(), subprocess.Popen(
            [SUNSETCTL, "--runtime-dir", str(runtime_dir), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, **env}, cwd=REPO)))
    out = []
    for t, proc in procs:
        stdout, stderr = proc.communicate(timeout=timeout)
        out.append((subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), time.monotonic() - t))
    return out


def test_no_reply_in_time_is_the_same_line_both_ways(short_dir):
    server = Canned(short_dir, lambda request: None)
    try:
        (fast, took_fast), (full, _) = ctl_both(short_dir, "--timeout", "0.2", "status")
    finally:
        server.close()
    assert (fast.returncode, fast.stdout, fast.stderr) == (full.returncode, full.stdout, full.stderr) == (
        3, "", f"sunsetctl: no reply from sunsetd on {short_dir} within 2.2s\n")
    assert 2.1 < took_fast < 4


def test_not_running_and_a_stale_socket_are_the_same_lines_both_ways(short_dir):
    for args in (["status"], ["--timeout", "0.1", "status"]):
        (fast, _), (full, _) = ctl_both(short_dir, *args)
        assert (fast.returncode, fast.stderr) == (full.returncode, full.stderr) == (
            3, f"sunsetctl: sunsetd is not running on {short_dir} (no sunsetd.sock)\n")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(short_dir / "sunsetd.sock"))
    stale.close()  # the file of a daemon killed with -9: nobody listens, and both try until the deadline
    (fast, took), (full, _) = ctl_both(short_dir, "--timeout", "0.1", "status")
    assert (fast.returncode, fast.stderr) == (full.returncode, full.stderr) == (
        3, f"sunsetctl: no reply from sunsetd on {short_dir} within 2.1s\n")
    assert 2.0 < took < 4


def test_a_closed_pipe_is_quiet_both_ways(canned):
    runtime_dir, _ = canned
    for env in ({}, FULL):
        result = subprocess.run(f"{SUNSETCTL} --runtime-dir {runtime_dir} status | head -1", shell=True,
                                capture_output=True, text=True, timeout=30, executable="/bin/bash",
                                env={**os.environ, **env})
        assert result.stdout.count("\n") == 1 and result.stderr == "", result.stderr


# ---- a real daemon -----------------------------------------------------------------------------------------

VOLATILE = re.compile(r"\b\d+(\.\d+)?(ms ago|s|M|m\d\ds|h\d\dm|d\d\dh)\b|\bpid \d+|\b\d{3,}\b")


def _masked(table: str) -> list[list[str]]:
    return [VOLATILE.sub("#", line).split() for line in table.splitlines()]


def _stable(status: dict) -> dict:
    drop = {"uptime_s", "heartbeat_age_ms", "rss_bytes", "ago_s", "pid", "status_text", "router", "memory", "memory_mb",
            "idle_s", "heartbeat_misses"}

    def walk(v):
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items() if k not in drop}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v
    return walk(status)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_against_a_real_daemon(start_daemon):
    d = start_daemon(TEST_PROFILES / "ops.yaml")
    for args in (["status"], ["status", "Base", "Later"]):
        fast, _ = ctl(d.runtime_dir, *args)
        full, _ = ctl(d.runtime_dir, *args, env=FULL)
        assert fast.returncode == full.returncode and fast.stderr == full.stderr == ""
        assert _masked(fast.stdout) == _masked(full.stdout), (fast.stdout, full.stdout)
    fast, _ = ctl(d.runtime_dir, "status", "--json")
    full, _ = ctl(d.runtime_dir, "status", "--json", env=FULL)
    assert fast.stdout == json.dumps(json.loads(fast.stdout), indent=2) + "\n"
    assert _stable(json.loads(fast.stdout)) == _stable(json.loads(full.stdout)) and fast.returncode == full.returncode
    for args in (["status", "Ghost"], ["call", "Base", "nosuch"], ["call", "Ghost", "x"], ["start", "Ghost"],
                 ["call", "Base", "echo", '{"a": [1, 2.5, null, "ü"]}']):
        fast, _ = ctl(d.runtime_dir, *args)
        full, _ = ctl(d.runtime_dir, *args, env=FULL)
        assert (fast.returncode, fast.stdout, fast.stderr) == (full.returncode, full.stdout, full.stderr), args
    assert ctl(d.runtime_dir, "status", "Ghost")[0].stderr.startswith("sunsetctl: unknown_agent: ")
    d.terminate()
    fast, _ = ctl(d.runtime_dir, "status")
    full, _ = ctl(d.runtime_dir, "status", env=FULL)
    assert (fast.returncode, fast.stderr) == (full.returncode, full.stderr) == (
        3, f"sunsetctl: sunsetd is not running on {d.runtime_dir} (no sunsetd.sock)\n")


def as_user(user: str, runtime_dir: Path, oneshot: bool = True) -> tuple[int, str, float]:
    """`sunsetctl status` in a fork that has become `user`: (exit code, stderr, seconds)."""
    import pwd

    entry = pwd.getpwnam(user)
    groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
    r, w = os.pipe()
    t = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.dup2(w, 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            sys.stdout, sys.stderr = open(1, "w"), open(2, "w")
            os.setgroups(groups)
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            argv = ["--runtime-dir", str(runtime_dir), "--timeout", "1", "status"]
            code = cli.main(argv) if oneshot else cli.full_main(argv)
        except BaseException as exc:  # noqa: BLE001
            os.write(2, f"Traceback: {exc!r}".encode())
            code = 99
        sys.stderr.flush()
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        err = f.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), err, time.monotonic() - t


def _users(group: str) -> None:
    subprocess.run(["groupadd", "-f", group], check=True)
    for user, groups in (("sdalice", [group]), ("sdbob", [])):
        if subprocess.run(["id", user], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "-M", "-N", *(["-G", ",".join(groups)] if groups else []), user], check=True)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: users and groups of its own")
def test_the_socket_group_and_refusals_one_shot(start_daemon, runtime_dir):
    """A member of --socket-group is served; anyone else is told `permission denied` in one line by
    the file modes; one whom the modes let through but the daemon's ZAP handler refuses (the socket
    made world-writable) is told the same line at once, where libzmq would wait for the deadline."""
    group = "sdops"
    _users(group)
    os.chmod(runtime_dir, 0o755)
    (runtime_dir / "d").mkdir(mode=0o700)
    d = start_daemon(TEST_PROFILES / "ops.yaml", "--socket-group", group, runtime_dir=runtime_dir / "d")
    alice = as_user("sdalice", d.runtime_dir)
    assert alice[0] == 0, alice[1]
    bob, bob_full = as_user("sdbob", d.runtime_dir), as_user("sdbob", d.runtime_dir, oneshot=False)
    denied = (f"sunsetctl: permission denied: {d.runtime_dir}/sunsetd.sock is not yours to use; members of group "
              f"{group} may (usermod -aG {group} $USER), or use sudo\n")
    assert bob[:2] == bob_full[:2] == (3, denied)
    os.chmod(d.runtime_dir, 0o755)
    os.chmod(d.runtime_dir / "sunsetd.sock", 0o666)
    refused = as_user("sdbob", d.runtime_dir)
    assert refused[:2] == (3, denied) and refused[2] < 2.0, refused
    assert "not a member of its --socket-group" in d.log() or "not allowed" in d.log() or "refused" in d.log()
    assert as_user("sdalice", d.runtime_dir)[0] == 0
    full = as_user("sdbob", d.runtime_dir, oneshot=False)  # libzmq tries again and again until the deadline
    assert full[:2] == (3, f"sunsetctl: no reply from sunsetd on {d.runtime_dir} within 3s\n") and full[2] >= 2.9


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_daemon_with_no_room_for_clients_says_so_at_once(start_daemon, runtime_dir):
    d = start_daemon(TEST_PROFILES / "ops.yaml", "--max-clients", "0", wait=False)
    deadline = time.monotonic() + 30
    while not (d.runtime_dir / "sunsetd.sock").exists():
        assert d.proc.poll() is None and time.monotonic() < deadline, d.log()
        time.sleep(0.05)
    result, took = ctl(d.runtime_dir, "status")
    assert (result.returncode, result.stdout, result.stderr) == (
        3, "", f"sunsetctl: sunsetd on {d.runtime_dir} refused the connection: it has as many clients as it allows "
               "(--max-clients; its log says more)\n")
    assert took < 2, took


def test_a_bad_value_given_again_later_is_still_refused_as_argparse_refuses_it():
    # found by the property test above: `--timeout status --timeout=3 status` was taken, the later
    # value overriding the bad one, where argparse checks each and refuses
    assert cli.oneshot_args(["--timeout", "status", "--timeout=3", "status"]) is None
    assert cli.oneshot_args(["--timeout", "3", "status"]).timeout == 3.0
