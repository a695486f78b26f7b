"""A small MCP server on stdio for the tests: it does what a test needs a server to do, on purpose.

Not a mock of sunsetd's side: a real process speaking JSON-RPC over its stdin and stdout, with no
dependencies, so that what sunsetd sends and how it copes with a server's misbehaviour can be checked
exactly. Every message it receives is appended to $RECORD_FILE (one JSON line each), when set.

Options (argv): --banner (prints a line that is not JSON first), --refuse-init, --protocol VERSION.
Tools: echo {text}, sleep {seconds}, notify {} (a log message and a progress notification), ask {method}
(asks the client that method and answers with what it got), huge {} (an integer msgpack cannot hold),
concurrency {} (the most calls it has run at once), garbage {} (a line of garbage, then an answer).
"""
import json
import os
import sys
import threading
import time

write_lock = threading.Lock()
record_lock = threading.Lock()
waiting: dict = {}  # our own requests to the client: id -> [event, answer]
running = [0, 0]  # calls now, most at once
RECORD = os.environ.get("RECORD_FILE")


def send(message: dict) -> None:
    with write_lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def record(message) -> None:
    if RECORD:
        with record_lock, open(RECORD, "a") as f:
            f.write(json.dumps(message) + "\n")


def result(mid, value) -> None:
    send({"jsonrpc": "2.0", "id": mid, "result": value})


def text(value) -> dict:
    return {"content": [{"type": "text", "text": str(value)}], "isError": False}


def call(mid, params: dict) -> None:
    name, args = params.get("name"), params.get("arguments") or {}
    with write_lock:
        running[0] += 1
        running[1] = max(running)
    try:
        if name == "echo":
            result(mid, text(args.get("text", "")))
        elif name == "sleep":
            time.sleep(float(args.get("seconds", 1)))
            result(mid, text("slept"))
        elif name == "notify":
            send({"jsonrpc": "2.0", "method": "notifications/message",
                  "params": {"level": "warning", "logger": "script", "data": "a note for the logs"}})
            send({"jsonrpc": "2.0", "method": "notifications/progress",
                  "params": {"progressToken": "t1", "progress": 1, "total": 2, "message": "half"}})
            result(mid, text("notified"))
        elif name == "ask":
            asked = f"ask-{mid}"
            done = threading.Event()
            waiting[asked] = [done, None]
            send({"jsonrpc": "2.0", "id": asked, "method": args["method"], "params": {}})
            done.wait(5)
            result(mid, {"content": [], "answer": waiting.pop(asked)[1]})
        elif name == "huge":
            result(mid, {"n": 2 ** 70})
        elif name == "concurrency":
            result(mid, text(running[1]))
        elif name == "garbage":
            with write_lock:
                sys.stdout.write("this is not json\n")
                sys.stdout.flush()
            result(mid, text("after garbage"))
        else:
            send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32602, "message": f"Unknown tool: {name}"}})
    finally:
        with write_lock:
            running[0] -= 1


def main() -> None:
    protocol = sys.argv[sys.argv.index("--protocol") + 1] if "--protocol" in sys.argv else None
    if "--banner" in sys.argv:
        print("script server starting (a banner on stdout, as some servers print)", flush=True)
    for line in sys.stdin:
        message = json.loads(line)
        record(message)
        method, mid = message.get("method"), message.get("id")
        if method is None:  # an answer to one of our requests
            entry = waiting.get(mid)
            if entry is not None:
                entry[1] = message
                entry[0].set()
        elif method == "initialize":
            if "--refuse-init" in sys.argv:
                send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32603, "message": "not today"}})
                continue
            result(mid, {"protocolVersion": protocol or message["params"]["protocolVersion"],
                         "capabilities": {"tools": {}, "logging": {}},
                         "serverInfo": {"name": "script", "version": "1.0"}, "instructions": "for tests"})
        elif method == "ping" and mid is not None:
            result(mid, {})
        elif method == "tools/call":
            threading.Thread(target=call, args=(mid, message.get("params") or {}), daemon=True).start()
        elif method == "tools/list":
            result(mid, {"tools": [{"name": n, "inputSchema": {"type": "object"}} for n in
                                   ("echo", "sleep", "notify", "ask", "huge", "concurrency", "garbage")]})
        elif mid is not None:
            send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": "Method not found"}})


if __name__ == "__main__":
    main()
