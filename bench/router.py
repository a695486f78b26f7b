"""Router benchmark: round-trip latency and throughput through sunsetd to one Echo agent, beside raw pyzmq
echo baselines measured in the same run.

Paths (all over ipc://, all Python, the client side identical: the same DEALER, the same msgpack request
frame packed per request and the reply unpacked):
  sunsetd   client DEALER -> daemon front ROUTER -> agents ROUTER -> Echo agent (DEALER, handler thread,
            inproc PUSH/PULL back to its I/O thread) -> daemon -> client.  Two hops each way.
  raw-1hop  client DEALER -> echo server ROUTER (blocking recv_multipart/send_multipart) -> client.
            One hop each way: the fair floor for "a request to another process and back".
  raw-2hop  client DEALER -> proxy ROUTER, which forwards to a ROUTER whose peer is an echo DEALER
            worker, and back. The same topology as sunsetd (two hops each way, a process in the
            middle) without any of its work, so raw-2hop vs sunsetd is the cost of sunsetd's Python.
  daemon-only  (diagnostic) a request to an agent that is not in the profile, answered `unknown_agent`
            by the daemon itself: one hop each way, through the daemon's parse/accounting/reply path
            but not its forwarding, and without any agent; compare with raw-1hop.

Latency: one request outstanding at a time, `--samples` round trips after `--warmup`.
Throughput: a window of `--window` requests outstanding for `--duration` seconds; replies/s.
Each repetition measures every path (in a rotating order); the table gives medians over repetitions.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402
import zmq  # noqa: E402

import _common as c  # noqa: E402
from sunsetd import protocol  # noqa: E402

AGENT = "bench.echo"
PATHS = ("sunsetd", "daemon-only", "raw-1hop", "raw-2hop")
NO_AGENT = "bench.nobody"


# ---- raw servers (run as `router.py --serve KIND ENDPOINT...` in their own processes) -------------------
def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def serve(kind: str, endpoints: list[str]) -> int:
    _die_with_parent()
    ctx = zmq.Context()
    if kind == "echo":  # one hop: ROUTER echoing [peer, payload] back
        sock = ctx.socket(zmq.ROUTER)
        sock.bind(endpoints[0])
        while True:
            sock.send_multipart(sock.recv_multipart())
    if kind == "worker":  # the far end of two hops: a DEALER echoing [client, payload] back
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, b"w")
        sock.connect(endpoints[0])
        while True:
            sock.send_multipart(sock.recv_multipart())
    if kind == "proxy":  # the middle of two hops: front ROUTER <-> back ROUTER (worker id b"w")
        front, back = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
        front.bind(endpoints[0])
        back.bind(endpoints[1])
        poller = zmq.Poller()
        poller.register(front, zmq.POLLIN)
        poller.register(back, zmq.POLLIN)
        while True:
            for sock, _ in poller.poll():
                for _ in range(256):
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if sock is front:
                        back.send_multipart([b"w", *frames])
                    else:
                        front.send_multipart(frames[1:])
    raise SystemExit(f"unknown server kind {kind}")


class RawServers:
    """The raw baseline processes, in a short temporary directory of their own."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sd-raw-", dir="/tmp"))
        self.procs: list[subprocess.Popen] = []
        self.one_hop = f"ipc://{self.dir}/echo.sock"
        self.two_hop = f"ipc://{self.dir}/front.sock"
        back = f"ipc://{self.dir}/back.sock"
        self._start("echo", self.one_hop)
        self._start("proxy", self.two_hop, back)
        self._start("worker", back)

    def _start(self, kind: str, *endpoints: str) -> None:
        self.procs.append(subprocess.Popen([sys.executable, __file__, "--serve", kind, *endpoints],
                                           stdin=subprocess.DEVNULL))

    def pids(self, path: str) -> list[int]:
        return [self.procs[0].pid] if path == "raw-1hop" else [p.pid for p in self.procs[1:]]

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- the client side, identical for every path ------------------------------------------------------------
class Path_:
    def __init__(self, name: str, endpoint: str, body: bytes, expect: str, pids: list[int], to: str = AGENT):
        self.name = name
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.connect(endpoint)
        self.body = body
        self.expect = expect  # "ok" or an error code from sunsetd; "echo": the raw echoes return the request
        self.to = to
        self.procs = [psutil.Process(pid) for pid in pids]
        self.next_id = 1
        self.errors = 0

    def send(self) -> None:
        rid = self.next_id
        self.next_id += 1
        self.sock.send(protocol.pack({"v": 1, "id": rid, "to": self.to, "op": "echo", "body": self.body,
                                      "timeout_ms": 5000}))

    def recv(self, timeout_ms: int = 10_000) -> None:
        if not self.sock.poll(timeout_ms):
            raise RuntimeError(f"{self.name}: no reply within {timeout_ms} ms")
        reply = protocol.unpack(self.sock.recv(), "reply")
        if self.expect == "echo":
            good = reply.get("to") == self.to
        elif self.expect == "ok":
            good = reply.get("ok") is True
        else:
            good = reply.get("ok") is False and reply["error"].get("code") == self.expect
        if not good:
            self.errors += 1
            if self.errors <= 3:
                print(f"  {self.name}: unexpected reply {reply}", file=sys.stderr)

    def warmup(self, n: int) -> None:
        for _ in range(n):
            self.send()
            self.recv()

    def latency(self, n: int) -> list[float]:
        out = []
        clock = time.perf_counter
        for _ in range(n):
            t0 = clock()
            self.send()
            self.recv()
            out.append(clock() - t0)
        return out

    def cpu(self) -> list[float]:
        """CPU seconds (user+system) used so far by us and by this path's server processes."""
        me = psutil.Process()
        return [sum(me.cpu_times()[:2])] + [sum(p.cpu_times()[:2]) for p in self.procs]

    def throughput(self, window: int, duration: float) -> tuple[float, list[float]]:
        """(replies per second, CPU microseconds per reply for [client, server processes...])."""
        cpu0 = self.cpu()
        for _ in range(window):
            self.send()
        done = 0
        t0 = time.perf_counter()
        end = t0 + duration
        while True:
            self.recv()
            done += 1
            if time.perf_counter() >= end:
                break
            self.send()
        elapsed = time.perf_counter() - t0
        cpu1 = self.cpu()
        for _ in range(window - 1):  # the rest of the window, so the next measurement starts empty
            self.recv()
        return done / elapsed, [(b - a) / done * 1e6 for a, b in zip(cpu0, cpu1)]

    def close(self) -> None:
        self.sock.close(linger=0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="repetitions of every measurement (default 5)")
    ap.add_argument("--samples", type=int, default=2000, help="latency round trips per repetition (default 2000)")
    ap.add_argument("--warmup", type=int, default=300, help="round trips before measuring (default 300)")
    ap.add_argument("--window", type=int, default=64, help="requests outstanding in the throughput test (default 64)")
    ap.add_argument("--duration", type=float, default=2.0, help="seconds of each throughput run (default 2)")
    ap.add_argument("--body-bytes", type=int, default=16, help="size of the echoed body (default 16)")
    ap.add_argument("--profile", default=str(c.BENCH_PROFILES / "echo.yaml"), help="profile with agent bench.echo")
    ap.add_argument("--json", metavar="PATH", help="also write the medians to PATH as JSON (bench/peers.py reads it)")
    ap.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve[0], args.serve[1:])
    c.print_header("sunsetd router: round trip through the daemon vs raw pyzmq echo over ipc://")
    print(f"agent {AGENT} (agents.testing:Echo, op echo, concurrency 1) from {os.path.relpath(args.profile)}; "
          f"body {args.body_bytes} bytes; request frame is the same msgpack map on every path")
    print(f"latency: 1 outstanding, {args.samples} samples/rep after {args.warmup} warm-up; "
          f"throughput: window {args.window}, {args.duration:g}s/rep; {args.reps} reps\n", flush=True)
    body = b"x" * args.body_bytes
    daemon = c.Daemon(args.profile, log_level="INFO")
    raw = None
    paths: dict[str, Path_] = {}
    lat: dict[str, list[dict]] = {p: [] for p in PATHS}
    thr: dict[str, list[float]] = {p: [] for p in PATHS}
    cpu: dict[str, list[list[float]]] = {p: [] for p in PATHS}
    try:
        daemon.start()
        raw = RawServers()
        status = daemon.wait_ready(timeout=30)
        front = f"ipc://{daemon.runtime_dir}/sunsetd.sock"
        agent_pid = next(a["pid"] for a in status["agents"] if a["name"] == AGENT)
        paths = {
            "sunsetd": Path_("sunsetd", front, body, "ok", [daemon.proc.pid, agent_pid]),
            "daemon-only": Path_("daemon-only", front, body, "unknown_agent", [daemon.proc.pid], to=NO_AGENT),
            "raw-1hop": Path_("raw-1hop", raw.one_hop, body, "echo", raw.pids("raw-1hop")),
            "raw-2hop": Path_("raw-2hop", raw.two_hop, body, "echo", raw.pids("raw-2hop")),
        }
        for p in paths.values():
            p.warmup(args.warmup)
        for rep in range(args.reps):
            order = PATHS[rep % len(PATHS):] + PATHS[:rep % len(PATHS)]
            for name in order:
                p = paths[name]
                p.warmup(50)
                s = c.summary(p.latency(args.samples))
                lat[name].append(s)
                rate, cpu_per = p.throughput(args.window, args.duration)
                thr[name].append(rate)
                cpu[name].append(cpu_per)
                print(f"rep {rep + 1}/{args.reps} {name:<11} latency p50 {c.ms(s['p50'] * 1000, 0):>5} us "
                      f"p90 {c.ms(s['p90'] * 1000, 0):>5} us p99 {c.ms(s['p99'] * 1000, 0):>5} us   "
                      f"throughput {rate:8.0f} req/s", flush=True)
        errors = {n: p.errors for n, p in paths.items()}
    finally:
        for p in paths.values():
            p.close()
        if raw is not None:
            raw.close()
        daemon.stop()

    def med(name: str, key: str) -> float:
        return c.median([s[key] for s in lat[name]])

    print(f"\n## Medians over {args.reps} repetitions (latency in microseconds, one request outstanding)\n")
    rows = []
    for name in PATHS:
        rows.append([name, f"{med(name, 'p50') * 1e6:.0f}", f"{med(name, 'p90') * 1e6:.0f}",
                     f"{med(name, 'p99') * 1e6:.0f}", f"{c.median(thr[name]):.0f}",
                     f"{c.percentile(thr[name], 0):.0f}-{c.percentile(thr[name], 100):.0f}"])
    print(c.table(["path", "p50 us", "p90 us", "p99 us", f"throughput req/s (window {args.window})", "range"], rows))
    base = "raw-1hop"
    print(f"\nratio sunsetd / raw-1hop: latency p50 x{med('sunsetd', 'p50') / med(base, 'p50'):.2f}, "
          f"p99 x{med('sunsetd', 'p99') / med(base, 'p99'):.2f}; "
          f"throughput x{c.median(thr['sunsetd']) / c.median(thr[base]):.2f}")
    print(f"ratio sunsetd / raw-2hop: latency p50 x{med('sunsetd', 'p50') / med('raw-2hop', 'p50'):.2f}; "
          f"throughput x{c.median(thr['sunsetd']) / c.median(thr['raw-2hop']):.2f}")
    print(f"ratio daemon-only / raw-1hop: latency p50 x{med('daemon-only', 'p50') / med(base, 'p50'):.2f}; "
          f"throughput x{c.median(thr['daemon-only']) / c.median(thr[base]):.2f}")
    print("\nCPU per reply during the throughput runs (median over repetitions, microseconds of user+system):")
    labels = {"sunsetd": ["client", "daemon", "agent"], "daemon-only": ["client", "daemon"],
              "raw-1hop": ["client", "echo server"], "raw-2hop": ["client", "proxy", "worker"]}
    for name in PATHS:
        per = [c.median([r[i] for r in cpu[name]]) for i in range(len(labels[name]))]
        print(f"  {name:<11} " + ", ".join(f"{lab} {v:.0f}" for lab, v in zip(labels[name], per))
              + f"  (total {sum(per):.0f} us on {os.cpu_count()} cores)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv, "machine": c.machine_info(), "source": c.source_version(),
                       "options": {k: v for k, v in vars(args).items() if k != "serve"},
                       "paths": {name: {"p50_us": med(name, "p50") * 1e6, "p90_us": med(name, "p90") * 1e6,
                                        "p99_us": med(name, "p99") * 1e6, "throughput": c.median(thr[name]),
                                        "throughput_each": thr[name],
                                        "cpu_per_reply_us": dict(zip(labels[name], [c.median([r[i] for r in cpu[name]])
                                                                                    for i in range(len(labels[name]))]))}
                                 for name in PATHS},
                       "errors": errors}, f, indent=1)
    if any(errors.values()):
        print(f"\nerror replies: {errors}")
        return 1
    print("\nerror replies: none")
    return 0


if __name__ == "__main__":
    c.run_main(main)
