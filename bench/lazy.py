#!/usr/bin/env python3
"""Lazy agents of a profile (default full): a cold lazy agent's first-request latency, the time until
every agent is running, and the memory (RSS and PSS) of the whole profile with every agent running.

First-request latency: for each lazy agent in turn, every lazy agent is stopped first (so the one
measured and its lazy dependencies all start cold), then one `ping` is timed from send to answer; it
includes starting the lazy dependencies in order. All running: from only the eager agents, a `ping`
to every lazy agent at once, until the last answer and until status shows every agent ready.
Memory: RSS and PSS (proportional set size: shared pages divided among their sharers) of the daemon,
its fork server and every agent, from /proc/PID/smaps_rollup via psutil.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

MB = 1 << 20


def stop_lazy(d: c.Daemon, timeout: float = 60.0) -> None:
    for a in d.status()["agents"]:
        if a["lazy"] and a["state"] != "stopped":
            d.client.call("sunsetd", "stop", {"agent": a["name"]}, timeout=timeout)


def first_request_latencies(d: c.Daemon, names: list[str]) -> list[tuple[str, float, int]]:
    """(agent, seconds, lazy agents started for it) per cold first request."""
    out = []
    for name in names:
        stop_lazy(d)
        t0 = time.perf_counter()
        try:
            d.client.call(name, "ping", timeout=60.0)
        except c.RemoteError as exc:
            print(f"  {name:<32} refused: {exc}", flush=True)
            continue
        took = time.perf_counter() - t0
        started = sum(a["lazy"] and a["state"] == "ready" for a in d.status()["agents"])
        out.append((name, took, started))
        print(f"  {name:<32} {took * 1000:7.1f} ms  ({started} lazy agent(s) started)", flush=True)
    return out


def all_running(d: c.Daemon, names: list[str]) -> tuple[float, float]:
    """(s until every lazy agent answered its first ping, s until status shows every agent ready)."""
    stop_lazy(d)
    client = d.client
    t0 = time.perf_counter()
    pending = {client.send(n, "ping", timeout=120.0) for n in names}
    while pending:
        reply = client.recv(130.0)
        if reply is None:
            raise RuntimeError(f"no answer for {len(pending)} requests")
        if not reply.get("ok"):
            raise RuntimeError(f"lazy start failed: {reply}")
        pending.discard(reply["id"])
    answered = time.perf_counter() - t0
    while any(a["state"] != "ready" for a in d.status()["agents"]):
        time.sleep(0.005)
    return answered, time.perf_counter() - t0


def memory(d: c.Daemon) -> dict:
    """RSS, PSS and USS summed over the daemon, its fork server and every agent."""
    procs = [psutil.Process(d.proc.pid)]
    procs += psutil.Process(d.proc.pid).children()  # agents and the zygote are the daemon's children
    totals = {"processes": 0, "rss": 0, "pss": 0, "uss": 0}
    for p in procs:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        totals["processes"] += 1
        for key in ("rss", "pss", "uss"):
            totals[key] += getattr(info, key)
    return totals


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="full", help="profile name or path (default full)")
    ap.add_argument("--spawner", choices=["fork", "exec"], default="fork")
    ap.add_argument("--limit", type=int, default=0, help="measure only the first N lazy agents (default: all)")
    args = ap.parse_args()
    c.print_header(f"lazy agents of profile {args.profile} (spawner {args.spawner})")
    with c.Daemon(args.profile, log_level="WARNING", spawner=args.spawner) as d:
        status = d.wait_ready(120)
        lazy = [a["name"] for a in status["agents"] if a["lazy"]]
        eager = [a["name"] for a in status["agents"] if not a["lazy"]]
        print(f"{len(status['agents'])} agents: {len(eager)} eager, {len(lazy)} lazy; budget "
              f"{status['memory']['budget_mb']} MB\n")
        measured = lazy[: args.limit] if args.limit else lazy
        print(f"cold first request, {len(measured)} lazy agents (every lazy agent stopped before each):")
        lat = first_request_latencies(d, measured)
        solo = [t for _, t, n in lat if n == 1]
        print()
        def row(label: str, xs: list[float]) -> list:
            st = c.summary(xs)
            return [label, len(xs), *(c.ms(st[k]) for k in ("p50", "p95", "min", "max"))]

        print(c.table(["what", "n", "median ms", "p95 ms", "min ms", "max ms"], [
            row("first request to a cold lazy agent", [t for _, t, _ in lat]),
            row("... with no lazy dependency to start", solo),
        ]))
        stop_lazy(d)
        time.sleep(1.0)
        base = memory(d)
        answered, ready = all_running(d, lazy)
        time.sleep(2.0)  # let setup() allocations settle before reading memory
        full = memory(d)
        print(f"\nall {len(status['agents'])} running: every lazy agent answered its first ping {answered * 1000:.0f} ms "
              f"after {len(lazy)} concurrent pings; status all ready at {ready * 1000:.0f} ms")
        print()
        print(c.table(["memory", "processes", "RSS MB", "PSS MB", "USS MB"], [
            [f"eager only ({len(eager)} agents)", base["processes"], *(f"{base[k] / MB:.0f}" for k in ("rss", "pss", "uss"))],
            [f"all {len(status['agents'])} agents running", full["processes"],
             *(f"{full[k] / MB:.0f}" for k in ("rss", "pss", "uss"))],
        ]))
        print("(processes: the daemon, its fork server when --spawner fork, and every agent)")
    return 0


if __name__ == "__main__":
    c.run_main(main)
