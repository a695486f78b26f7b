"""MCP's client side (#10 item 4), without a process: what sunsetd writes to a server and what each line
a server prints means. The same session under a real daemon and real servers: test_mcp_servers.py."""
from __future__ import annotations

import json
import sys

import pytest
from hypothesis import given, settings, strategies as st

from sunsetd import mcp


def lines(data: bytes) -> list[dict]:
    assert data.endswith(b"\n") and data.count(b"\n") == 1, "one message, one line"
    return [json.loads(data)]


def initialized(session: mcp.Session, version: str = "2025-06-18", **result) -> mcp.Initialized:
    answer = {"jsonrpc": "2.0", "id": mcp.INIT_ID, "result": {
        "protocolVersion": version, "capabilities": {"tools": {}, "logging": {}},
        "serverInfo": {"name": "srv", "version": "2.1"}, **result}}
    (event,) = session.received(json.dumps(answer))
    return event


def test_the_handshake_asks_for_a_version_and_ends_with_notifications_initialized():
    s = mcp.Session("0.1.0")
    (opening,) = lines(s.opening())
    assert opening["method"] == "initialize" and opening["id"] == mcp.INIT_ID
    assert opening["params"]["protocolVersion"] == mcp.PROTOCOL_VERSION
    assert opening["params"]["clientInfo"] == {"name": "sunsetd", "version": "0.1.0"}
    assert opening["params"]["capabilities"] == {}  # no roots configured: none offered
    event = initialized(s, instructions="use it well")
    assert type(event) is mcp.Initialized
    assert lines(event.write) == [{"jsonrpc": "2.0", "method": "notifications/initialized"}]
    assert s.server.describe() == {"server": "srv", "version": "2.1", "protocol": "2025-06-18",
                                   "capabilities": ["logging", "tools"]}
    assert s.server.instructions == "use it well"


def test_an_older_protocol_the_server_speaks_is_accepted_and_an_unknown_one_is_a_failed_handshake():
    assert type(initialized(mcp.Session("x"), "2024-11-05")) is mcp.Initialized
    failed = initialized(mcp.Session("x"), "1999-01-01")
    assert type(failed) is mcp.HandshakeFailed and "'1999-01-01'" in failed.reason
    (refused,) = mcp.Session("x").received(json.dumps(
        {"jsonrpc": "2.0", "id": mcp.INIT_ID, "error": {"code": -32603, "message": "not today"}}))
    assert type(refused) is mcp.HandshakeFailed and "not today" in refused.reason


def test_a_client_request_keeps_the_books_id_and_its_body_is_the_params():
    s = mcp.Session("x")
    (call,) = lines(s.request(41, "tools/call", {"name": "get_time", "arguments": {"tz": "UTC"}}))
    assert call == {"jsonrpc": "2.0", "id": 41, "method": "tools/call",
                    "params": {"name": "get_time", "arguments": {"tz": "UTC"}}}
    assert "params" not in lines(s.request(42, "tools/list", None))[0]
    assert lines(s.request(43, "ping", None))[0]["method"] == "ping"
    # newlines inside strings stay escaped: one message is one line
    assert lines(s.request(44, "tools/call", {"name": "a\nb"}))[0]["params"]["name"] == "a\nb"


@pytest.mark.parametrize("op, body, says", [
    ("initialize", None, "'initialize' is not an MCP method"),
    ("shell", None, "'shell' is not an MCP method"),
    ("tools/call", [1, 2], "a map, not list"),
    ("tools/call", {"name": b"\x00bytes"}, "cannot be sent as JSON"),
    ("tools/call", {"n": float("nan")}, "cannot be sent as JSON"),
])
def test_what_cannot_become_an_mcp_request_says_why(op, body, says):
    with pytest.raises(mcp.BadCall) as info:
        mcp.Session("x").request(1, op, body)
    assert says in str(info.value)


def test_answers_errors_and_pongs():
    s = mcp.Session("x")
    assert s.received('{"jsonrpc":"2.0","id":7,"result":{"tools":[]}}') == [mcp.Answer(7, True, {"tools": []})]
    assert s.received('{"jsonrpc":"2.0","id":8,"error":{"code":-32602,"message":"Unknown tool: x"}}') == [
        mcp.Answer(8, False, (-32602, "Unknown tool: x"))]
    (ping,) = lines(s.ping())
    assert ping["method"] == "ping" and ping["id"].startswith(mcp.PING_ID)
    assert s.received(json.dumps({"jsonrpc": "2.0", "id": ping["id"], "result": {}})) == [mcp.Pong()]
    # an error without the fields it should have is still an error, never a crash
    assert s.received('{"jsonrpc":"2.0","id":9,"error":"boom"}')[0].ok is False
    assert s.received('{"jsonrpc":"2.0","id":10,"error":{"code":true}}') == [mcp.Answer(10, False, (0, "no message"))]


def test_a_batch_is_each_of_its_messages():
    s = mcp.Session("x")
    batch = [{"jsonrpc": "2.0", "id": 1, "result": 1}, {"jsonrpc": "2.0", "id": 2, "result": 2}]
    assert s.received(json.dumps(batch)) == [mcp.Answer(1, True, 1), mcp.Answer(2, True, 2)]


def test_a_cancellation_names_the_request():
    (note,) = lines(mcp.Session("x").cancel(41, "the request's deadline passed"))
    assert note == {"jsonrpc": "2.0", "method": "notifications/cancelled",
                    "params": {"requestId": 41, "reason": "the request's deadline passed"}}


def test_notifications_become_log_lines_at_their_level():
    s = mcp.Session("x")
    (log,) = s.received(json.dumps({"jsonrpc": "2.0", "method": "notifications/message",
                                    "params": {"level": "error", "logger": "db", "data": {"k": 1}}}))
    assert log == mcp.Notice("ERROR", 'db: {"k": 1}')
    (progress,) = s.received(json.dumps({"jsonrpc": "2.0", "method": "notifications/progress",
                                         "params": {"progressToken": "t", "progress": 3, "total": 4}}))
    assert progress.level == "DEBUG" and "progress 3/4 of t" in progress.text
    (changed,) = s.received('{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}')
    assert changed == mcp.Notice("INFO", "notifications/tools/list_changed")


def test_requests_from_the_server_are_answered_or_refused_never_left_hanging():
    s = mcp.Session("x")
    (ping,) = s.received('{"jsonrpc":"2.0","id":"s1","method":"ping"}')
    assert not ping.refused and lines(ping.write) == [{"jsonrpc": "2.0", "id": "s1", "result": {}}]
    for method in ("sampling/createMessage", "elicitation/create", "roots/list", "anything/else"):
        (asked,) = s.received(json.dumps({"jsonrpc": "2.0", "id": 5, "method": method}))
        (answer,) = lines(asked.write)
        assert asked.refused and answer["id"] == 5 and answer["error"]["code"] == mcp.METHOD_NOT_FOUND
        assert f"sunsetd does not offer {method}" in answer["error"]["message"]
    assert s.counters["refused_requests"] == 4


def test_configured_roots_are_offered_and_given():
    s = mcp.Session("x", roots=("/srv/data", "https://example.org/repo"))
    assert lines(s.opening())[0]["params"]["capabilities"] == {"roots": {"listChanged": False}}
    (asked,) = s.received('{"jsonrpc":"2.0","id":"r","method":"roots/list"}')
    assert not asked.refused and lines(asked.write)[0]["result"]["roots"] == [
        {"uri": "file:///srv/data", "name": "/srv/data"},
        {"uri": "https://example.org/repo", "name": "https://example.org/repo"}]


@pytest.mark.parametrize("line, why", [
    ("Starting my server on stdio...", "not JSON"),
    ("[]", "an empty batch"),
    ('{"id": 1, "result": 2}', "not a JSON-RPC 2.0 message"),
    ('{"jsonrpc": "2.0", "id": 1}', "neither a request"),
    ('{"jsonrpc": "2.0", "id": "stranger", "result": 1}', "an answer to no request of ours"),
    ('{"jsonrpc": "2.0", "id": true, "result": 1}', "an answer to no request of ours"),
    ("[" * 100_000, "not JSON"),  # deeper than the parser's recursion
    ("12", "not a JSON-RPC 2.0 message"),
])
def test_garbage_is_counted_and_said_never_raised(line, why):
    s = mcp.Session("x")
    (event,) = s.received(line)
    assert type(event) is mcp.Garbage and why in event.why and len(event.line) <= 200
    assert s.counters["garbage_lines"] == 1
    assert s.received("   ") == []  # a blank line is nothing


def test_known_messages_with_fields_of_the_wrong_type_are_taken_as_well_as_they_can_be():
    s = mcp.Session("x")
    assert s.received('{"jsonrpc":"2.0","method":"notifications/message","params":{"level":[1],"data":"d"}}') == [
        mcp.Notice("INFO", "d")]
    (failed,) = s.received(json.dumps({"jsonrpc": "2.0", "id": mcp.INIT_ID, "result": {"protocolVersion": [1]}}))
    assert type(failed) is mcp.HandshakeFailed


KEYS = ["jsonrpc", "id", "method", "params", "result", "error", "code", "message", "level", "logger", "data",
        "progress", "total", "progressToken", "protocolVersion", "serverInfo", "capabilities", "name", "version",
        "instructions"]
WORDS = ["2.0", mcp.INIT_ID, mcp.PING_ID + "1", "notifications/message", "notifications/progress", "ping",
         "roots/list", "notifications/tools/list_changed", "2025-06-18", "error", "debug"]
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.sampled_from(WORDS),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(KEYS), children, max_size=6),
    max_leaves=25)


FIELDS = st.dictionaries(st.sampled_from(KEYS), JSONISH, max_size=6)
MESSAGES = st.one_of(
    st.fixed_dictionaries({"jsonrpc": st.just("2.0"), "method": st.sampled_from(WORDS) | st.text(max_size=10)},
                          optional={"id": JSONISH, "params": FIELDS}),
    st.fixed_dictionaries({"jsonrpc": st.just("2.0"), "id": st.sampled_from(WORDS) | st.integers()},
                          optional={"result": FIELDS | JSONISH, "error": FIELDS | JSONISH}))


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.text(max_size=200), JSONISH.map(json.dumps),
                 FIELDS.map(lambda d: json.dumps({"jsonrpc": "2.0", **d})),
                 MESSAGES.map(json.dumps), st.lists(MESSAGES, max_size=3).map(json.dumps)))
def test_no_line_a_server_prints_makes_the_session_raise(line):
    session = mcp.Session("x", roots=("/r",))
    session.opening()
    events = session.received(line) + session.received(line)  # and again, after whatever the first did
    assert all(type(e) in (mcp.Answer, mcp.Pong, mcp.Notice, mcp.ServerRequest, mcp.Garbage, mcp.Initialized,
                           mcp.HandshakeFailed) for e in events)


# ---- found by attacking it: a server's lines and a client's bodies that are deep, long or many ------------

def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [900, 950, 990])
def test_what_parses_but_is_too_deep_to_walk_again_is_garbage_not_a_crash(depth):
    s = mcp.Session("x")
    for line in ('{"jsonrpc":"2.0","method":"x","params":{"a":%s}}' % nested(depth),
                 '{"jsonrpc":"2.0","id":{"a":%s},"result":1}' % nested(depth),
                 '{"jsonrpc":"2.0","method":"notifications/message","params":{"data":%s}}' % nested(depth)):
        events = s.received(line)
        assert all(type(e) in (mcp.Garbage, mcp.Notice) for e in events), events


def test_a_body_too_deep_for_json_is_a_bad_call():
    deep: list = []
    for _ in range(5000):  # what msgpack may hand over from a client's frame
        deep = [deep]
    body = {"a": deep}
    with pytest.raises(mcp.BadCall) as info:
        mcp.Session("x").request(1, "tools/call", body)
    assert "RecursionError" in str(info.value)


def test_a_line_cut_at_the_limit_answers_its_request_when_its_opening_says_which():
    s = mcp.Session("x")
    events = s.received('{"jsonrpc":"2.0","id":17,"result":{"content":[{"text":"aaaa', cut=True)
    assert [type(e) for e in events] == [mcp.Garbage, mcp.Answer]
    assert events[1].rid == 17 and not events[1].ok and "longer than sunsetd reads" in events[1].value[1]
    assert [type(e) for e in s.received('{"result":{"content":"aaaa', cut=True)] == [mcp.Garbage]  # no id first


def test_a_server_request_with_an_id_too_long_to_echo_is_refused_without_it():
    (asked,) = mcp.Session("x").received(json.dumps({"jsonrpc": "2.0", "id": "i" * 200_000, "method": "roots/list"}))
    assert asked.refused and len(asked.write) < 300 and lines(asked.write)[0]["id"] is None


# ---- the channel, on a fake process and the real request book ------------------------------------------------

from fakes import Clock, FakeSpawner  # noqa: E402
from sunsetd.mcpchannel import MAX_NOTICES_PER_S, McpChannel  # noqa: E402
from sunsetd.profile import AgentSpec  # noqa: E402
from sunsetd.protocol import Kind, Request  # noqa: E402
from sunsetd.requestbook import AgentView, Availability, Forward, RequestBook  # noqa: E402
from sunsetd.spawner import MAX_INPUT_BACKLOG  # noqa: E402


class Owner:
    def __init__(self) -> None:
        self.messages: list[tuple[str, int, Kind]] = []
        self.broken: list[str] = []

    def on_agent_message(self, name, incarnation, kind, body) -> None:
        self.messages.append((name, incarnation, kind))

    def on_agent_broken(self, name, incarnation, reason) -> None:
        self.broken.append(reason)


def ready_channel():
    book = RequestBook()
    delivered: list = []
    channel = McpChannel(book, delivered.extend)
    channel.owner = owner = Owner()
    handle = FakeSpawner(Clock()).spawn(AgentSpec("srv", command=("srv",), protocol="mcp"), 1, lambda e: None)
    handle.pid = 4242
    channel.attach(handle)
    channel.opened(handle)
    channel.line(handle, json.dumps({"jsonrpc": "2.0", "id": mcp.INIT_ID, "result": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}}}))
    assert [k for _, _, k in owner.messages] == [Kind.HELLO, Kind.READY]
    book.update("srv", AgentView(Availability.READY, 1))
    return book, channel, owner, handle, delivered


def test_only_an_answer_is_a_heartbeat_a_server_that_only_prints_is_not_alive():
    book, channel, owner, handle, _ = ready_channel()
    owner.messages.clear()
    channel.line(handle, '{"jsonrpc":"2.0","method":"notifications/message","params":{"data":"chatter"}}')
    channel.line(handle, "a banner")
    assert owner.messages == []
    assert channel.send("srv", 1, Kind.HEARTBEAT)
    ping = json.loads(handle.written[-1])
    channel.line(handle, json.dumps({"jsonrpc": "2.0", "id": ping["id"], "result": {}}))
    assert owner.messages == [("srv", 1, Kind.HEARTBEAT)]


def test_what_sunsetd_writes_to_a_server_that_does_not_read_is_bounded():
    book, channel, owner, handle, _ = ready_channel()
    handle.unread_input = MAX_INPUT_BACKLOG  # it stopped reading
    before = len(handle.written)
    assert not channel.send("srv", 1, Kind.HEARTBEAT)  # pings dropped: no answer comes, so it is hung
    for i in range(100):  # its own requests are answered (refused) into the same bound
        channel.line(handle, json.dumps({"jsonrpc": "2.0", "id": i, "method": "sampling/createMessage"}))
    assert len(handle.written) == before and channel.links["srv"].session.counters["writes_dropped"] == 101
    request = Request(id=1, to="srv", op="tools/list", body=None, timeout_ms=1000, retry=False)
    (forward,) = book.accept([b"c"], request, 0.0)
    assert type(forward) is Forward
    (reply, *_) = channel.forward(forward.request, 1)
    assert reply.code.value == "overloaded"


def test_a_flood_of_notifications_is_logged_up_to_a_rate_and_counted_beyond(monkeypatch):
    book, channel, owner, handle, _ = ready_channel()
    logged = []
    monkeypatch.setattr("sunsetd.mcpchannel.logs.event", lambda *a, **k: logged.append(a))
    for i in range(MAX_NOTICES_PER_S + 50):
        channel.line(handle, json.dumps({"jsonrpc": "2.0", "method": "notifications/message",
                                         "params": {"level": "info", "data": f"n{i}"}}))
    notes = [a for a in logged if a[2].startswith("n")]
    assert len(notes) == MAX_NOTICES_PER_S and channel.links["srv"].session.counters["notices_dropped"] == 50


def test_a_bug_while_reading_a_line_is_logged_and_contained(monkeypatch):
    book, channel, owner, handle, _ = ready_channel()
    monkeypatch.setattr(channel, "_on_event", lambda link, event: 1 / 0)
    channel.line(handle, '{"jsonrpc":"2.0","id":3,"result":{}}')  # raises nothing
    assert channel.links["srv"].session.counters["internal_errors"] == 1


def test_relative_roots_are_relative_to_the_profile_like_every_path_field(tmp_path):
    # found in review: they were made absolute against the daemon's working directory
    from sunsetd.profile import load_profile

    p = tmp_path / "p.yaml"
    p.write_text(f"name: p\nagents:\n  - {{name: s, command: [{sys.executable}], protocol: mcp, "
                 f"roots: [data, /abs, 'https://example.org/r']}}\n")
    assert load_profile(str(p)).agent("s").roots == (str(tmp_path / "data"), "/abs", "https://example.org/r")
