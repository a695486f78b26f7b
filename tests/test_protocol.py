"""Wire protocol v1: request validation and agent frames, each fault named."""
from __future__ import annotations

import msgpack
import pytest

from sunsetd import protocol
from sunsetd.protocol import ErrorCode, Kind, ProtocolError


def good(**overrides):
    msg = {"v": 1, "id": 5, "to": "A", "op": "echo", "body": {"x": 1}}
    msg.update(overrides)
    return msg


def test_parse_request_defaults():
    r = protocol.parse_request(good())
    assert (r.id, r.to, r.op, r.body, r.timeout_ms, r.retry) == (5, "A", "echo", {"x": 1}, 30_000, False)
    assert protocol.parse_request(good(id="abc", timeout_ms=1500, retry=True)).retry is True


@pytest.mark.parametrize("msg, field", [
    ([], "must be a map"), (good(v=3), "'v'"), (good(id=None), "'id'"), (good(id=True), "'id'"),
    (good(id=[1]), "'id'"), (good(to=""), "'to'"), (good(to=3), "'to'"), (good(op=None), "'op'"),
    (good(timeout_ms=0), "'timeout_ms'"), (good(timeout_ms=True), "'timeout_ms'"),
    (good(timeout_ms=10**12), "'timeout_ms'"), (good(retry="yes"), "'retry'"), (good(colour=1), "'colour'"),
    # found by attacking it (#11): `v: true` counted as version 1, and so did 1.0; a float timeout passed
    (good(v=True), "'v' must be the integer 1, got True"), (good(v=1.0), "'v'"), (good(timeout_ms=1.5), "'timeout_ms'"),
])
def test_parse_request_names_the_field_at_fault(msg, field):
    with pytest.raises(ProtocolError) as info:
        protocol.parse_request(msg)
    assert field in str(info.value)


def test_an_error_quotes_a_bounded_prefix_of_the_bad_value_whatever_its_size_or_depth():
    # found by attacking it (#11): a deeply nested `v` raised RecursionError (no reply, a traceback per
    # frame), and error replies echoed the whole bad value (a 4x amplification)
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    for bad in (deep, "x" * 500_000, list(range(100_000)), {str(i): i for i in range(10_000)}):
        for msg in (good(v=bad), good(timeout_ms=bad), {**good(), "x" * 100_000: 1}):
            with pytest.raises(ProtocolError) as info:
                protocol.parse_request(msg)
            assert len(str(info.value)) < 200


def test_request_id_of_invalid_requests():
    assert protocol.request_id_of({"id": 3, "v": 9}) == 3
    assert protocol.request_id_of({"id": True}) is None
    assert protocol.request_id_of("junk") is None


def test_unpack_limits_and_garbage():
    with pytest.raises(ProtocolError, match="over the 1048576-byte limit"):
        protocol.unpack(b"\x00" * (protocol.MAX_FRAME_BYTES + 1), "request frame")
    with pytest.raises(ProtocolError, match="request frame is not valid msgpack"):
        protocol.unpack(b"\xc1", "request frame")
    assert protocol.unpack(msgpack.packb({1: "int keys ok"}), "x") == {1: "int keys ok"}


def test_agent_frames():
    assert protocol.parse_agent_frames([b"READY"]) == (Kind.READY, None)
    assert protocol.parse_agent_frames([b"HELLO", msgpack.packb({"pid": 1})]) == (Kind.HELLO, {"pid": 1})
    for frames, text in (([], "0 frames"), ([b"NOPE"], "unknown"), ([b"REPLY", b"\xc1"], "not valid msgpack"),
                         ([b"a", b"b", b"c"], "3 frames")):
        with pytest.raises(ProtocolError, match=text):
            protocol.parse_agent_frames(frames)


def test_agent_replies():
    assert protocol.parse_agent_reply({"id": 1, "ok": True, "body": 2}) == (1, True, 2)
    assert protocol.parse_agent_reply({"id": 1, "ok": False, "error": {"code": "bad_request", "message": "m"}}) == (
        1, False, (ErrorCode.BAD_REQUEST, "m"))
    # an agent cannot pretend to be the daemon: codes only the daemon gives become agent_error (its
    # `timeout` goes to the request book, which believes it only past the deadline)
    assert protocol.parse_agent_reply({"id": 1, "ok": False, "error": {"code": "agent_crashed", "message": "m"}})[2][0] \
        is ErrorCode.AGENT_ERROR
    assert protocol.parse_agent_reply({"id": 1, "ok": False, "error": {"code": "timeout", "message": "m"}})[2][0] \
        is ErrorCode.TIMEOUT
    for body in ({"ok": True}, {"id": "1", "ok": True}, {"id": 1, "ok": False}, {"id": 1}):
        with pytest.raises(ProtocolError):
            protocol.parse_agent_reply(body)
