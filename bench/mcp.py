#!/usr/bin/env python3
"""An MCP server behind sunsetd against the same server on its own stdio (mcp-server-time, from the test
and tools extras): a tools/call's latency and throughput, a lazy server's first call against the server's
own cold start, and SIGKILL until the next incarnation answers.

Direct: the server as its own child of this script, spoken to over its stdin and stdout by a minimal
JSON-RPC client (a line out, a line back), after its handshake. Through sunsetd: the same server as an
agent, called through the front socket with sunsetd's Client. Both run in this one process, rounds
interleaved, medians over rounds; the ratio is sunsetd's over direct.
- latency: sequential calls (one outstanding), p50 and p95 of each round's calls;
- throughput: `--window` calls kept outstanding for `--seconds`;
- cold start: direct, spawn to the answer of `initialize`; through sunsetd, a `tools/call` sent to the
  stopped lazy agent until its answer (spawn, handshake, then the call);
- kill: SIGKILL of the server's pid until a tools/call is answered by the next incarnation (calls sent
  back to back with `retry: true`, so the one in flight at the kill is served by the next incarnation).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

SERVER = str(Path(sys.executable).parent / "mcp-server-time")
CALL = {"name": "get_current_time", "arguments": {"timezone": "UTC"}}


class Direct:
    """The server on its own stdio: what a program that embeds an MCP client would do."""

    def __init__(self) -> None:
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, bufsize=0)
        self.ids = 0
        self.send({"jsonrpc": "2.0", "id": "init", "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}})
        self.read()
        self.cold_start_s = time.perf_counter() - t0
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def send(self, message: dict) -> None:
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")

    def read(self) -> dict:
        return json.loads(self.proc.stdout.readline())

    def call(self) -> dict:
        self.ids += 1
        self.send({"jsonrpc": "2.0", "id": self.ids, "method": "tools/call", "params": CALL})
        return self.read()

    def throughput(self, window: int, seconds: float) -> float:
        done, outstanding, t0 = 0, 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            while outstanding < window:
                self.ids += 1
                self.send({"jsonrpc": "2.0", "id": self.ids, "method": "tools/call", "params": CALL})
                outstanding += 1
            self.read()
            outstanding -= 1
            done += 1
        for _ in range(outstanding):
            self.read()
        return done / (time.perf_counter() - t0)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def latencies(call, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def through_sunsetd(client: c.Client, window: int, seconds: float) -> float:
    done, outstanding, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        while outstanding < window:
            client.send("time", "tools/call", CALL, timeout=10.0)
            outstanding += 1
        reply = client.recv(10.0)
        if reply is None or not reply.get("ok"):
            raise RuntimeError(f"tools/call through sunsetd failed: {reply}")
        outstanding -= 1
        done += 1
    for _ in range(outstanding):
        client.recv(10.0)
    return done / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=300, help="sequential calls per round (default 300)")
    ap.add_argument("--window", type=int, default=16, help="calls outstanding for throughput (default 16)")
    ap.add_argument("--seconds", type=float, default=3.0, help="throughput time per round (default 3)")
    args = ap.parse_args()
    if not os.access(SERVER, os.X_OK):
        print(f"bench/mcp.py: {SERVER} not found: pip install 'sunsetd[tools]' (make test installs it)",
              file=sys.stderr)
        return 2
    c.print_header(f"MCP server (mcp-server-time) behind sunsetd against its own stdio, {args.rounds} rounds")
    workdir = c.new_runtime_dir()
    profile = workdir / "mcp.yaml"
    profile.write_text(f"name: bench-mcp\nagents:\n  - {{name: time, command: [{SERVER}], protocol: mcp, "
                       f"lazy: true, max_inflight: {args.window}}}\n")
    rows: dict[str, list[float]] = {k: [] for k in (
        "direct p50", "sunsetd p50", "direct p95", "sunsetd p95", "direct tput", "sunsetd tput",
        "direct cold", "sunsetd cold", "kill")}
    with c.Daemon(profile, log_level="WARNING") as d:
        d.wait_ready(60)
        client = d.client
        for r in range(args.rounds):
            # a lazy server's first call (stopped first), then the server's own cold start
            if d.status()["agents"][0]["state"] != "stopped":
                client.call("sunsetd", "stop", {"agent": "time"}, timeout=30)
            t0 = time.perf_counter()
            client.call("time", "tools/call", CALL, timeout=60)
            rows["sunsetd cold"].append(time.perf_counter() - t0)
            direct = Direct()
            rows["direct cold"].append(direct.cold_start_s)
            for _ in range(20):  # both warm
                direct.call()
                client.call("time", "tools/call", CALL)
            # latency, interleaved halves
            lat_d = latencies(direct.call, args.calls // 2) + []
            lat_s = latencies(lambda: client.call("time", "tools/call", CALL), args.calls // 2)
            lat_d += latencies(direct.call, args.calls - args.calls // 2)
            lat_s += latencies(lambda: client.call("time", "tools/call", CALL), args.calls - args.calls // 2)
            rows["direct p50"].append(c.median(lat_d))
            rows["sunsetd p50"].append(c.median(lat_s))
            rows["direct p95"].append(c.percentile(lat_d, 95))
            rows["sunsetd p95"].append(c.percentile(lat_s, 95))
            rows["direct tput"].append(direct.throughput(args.window, args.seconds))
            rows["sunsetd tput"].append(through_sunsetd(client, args.window, args.seconds))
            direct.close()
            # SIGKILL until the next incarnation answers a call
            pid = d.status()["agents"][0]["pid"]
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            while True:
                try:
                    client.call("time", "tools/call", CALL, timeout=30, retry=True)
                    break
                except c.RemoteError:
                    continue
            rows["kill"].append(time.perf_counter() - t0)
            assert d.status()["agents"][0]["pid"] != pid
            print(f"round {r + 1}: p50 {rows['direct p50'][-1] * 1e3:.2f} / {rows['sunsetd p50'][-1] * 1e3:.2f} ms, "
                  f"{rows['direct tput'][-1]:.0f} / {rows['sunsetd tput'][-1]:.0f} calls/s, cold "
                  f"{rows['direct cold'][-1] * 1e3:.0f} / {rows['sunsetd cold'][-1] * 1e3:.0f} ms, kill "
                  f"{rows['kill'][-1] * 1e3:.0f} ms", flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    m = {k: c.median(v) for k, v in rows.items()}
    print()
    print(c.table(["median of rounds", "direct stdio", "through sunsetd", "sunsetd / direct"], [
        ["tools/call p50, one outstanding", c.ms(m["direct p50"]), c.ms(m["sunsetd p50"]),
         f"{m['sunsetd p50'] / m['direct p50']:.2f}x"],
        ["tools/call p95, one outstanding", c.ms(m["direct p95"]), c.ms(m["sunsetd p95"]),
         f"{m['sunsetd p95'] / m['direct p95']:.2f}x"],
        [f"throughput, {args.window} outstanding (calls/s)", f"{m['direct tput']:.0f}", f"{m['sunsetd tput']:.0f}",
         f"{m['sunsetd tput'] / m['direct tput']:.2f}x"],
        ["cold start to first answer (ms): own handshake / lazy first call", c.ms(m["direct cold"]),
         c.ms(m["sunsetd cold"]), f"{m['sunsetd cold'] / m['direct cold']:.2f}x"],
        ["SIGKILL until the next incarnation answers (ms)", "-", c.ms(m["kill"]), "-"],
    ]))
    print("(ms columns in milliseconds; direct cold start is spawn to its initialize answer, sunsetd's is a "
          "tools/call to the stopped lazy agent until its answer)")
    return 0


if __name__ == "__main__":
    c.run_main(main)
