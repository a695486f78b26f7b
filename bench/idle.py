"""Idle benchmark: what a daemon and its idle agents cost when nothing happens, and how soon a frozen
agent is still found.

1. Idle CPU: a real daemon with a profile of idle agents (default bench/profiles/flat77.yaml, 77 Echo
   agents). After a settle, the CPU time of every thread of the daemon and of every process below it is
   read from /proc/PID/task/*/schedstat at the start and the end of a window, and so are the wake-ups
   (the number of times each thread was put on a CPU). The table splits it by role: the daemon, the
   zygote, the agents.
2. Frozen agents: SIGSTOP of an idle agent (its last stamp said it was idle, so it would stamp again
   only IDLE_STAMP_S later), and SIGSTOP of an agent in the middle of a request (`sleep`): the time from
   the kill to the daemon's `ready -> stopping` line for that incarnation (the daemon's log, 1 ms), over
   `--freezes` of each. The default liveness is heartbeat 250 ms x 3: the target is the liveness plus
   little, within 1 s at p99.

    python bench/idle.py                       # 77 idle agents, 30 s window, 20 freezes of each kind
    python bench/idle.py --profile profiles/core.yaml --seconds 20
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402


def _threads(root: int) -> dict[tuple[int, int], tuple[str, int, int]]:
    """(pid, tid) -> (role, CPU ns, times scheduled) for every thread of root and its descendants."""
    out: dict[tuple[int, int], tuple[str, int, int]] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        role = "daemon" if pid == root else ("zygote" if "zygote" in comm else "agents")
        for tid in tids:
            try:
                ns, _wait, slices = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[:3]
                todo += [int(k) for k in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
            except (OSError, ValueError):
                continue
            out[(pid, int(tid))] = (role, int(ns), int(slices))
    return out


def idle_cpu(d: c.Daemon, settle_s: float, window_s: float) -> dict[str, dict[str, float]]:
    time.sleep(settle_s)
    before, t0 = _threads(d.proc.pid), time.monotonic()
    time.sleep(window_s)
    after, elapsed = _threads(d.proc.pid), time.monotonic() - t0
    roles: dict[str, dict[str, float]] = defaultdict(lambda: {"cpu_ns": 0, "wakes": 0, "procs": set()})
    for key, (role, ns, slices) in after.items():
        if key in before:  # a thread that came or went in the window is not idle work
            r = roles[role]
            r["cpu_ns"] += ns - before[key][1]
            r["wakes"] += slices - before[key][2]
            r["procs"].add(key[0])
    out = {}
    for role, r in roles.items():
        out[role] = {"share_pct": r["cpu_ns"] / elapsed / 1e7, "wakes_per_s": r["wakes"] / elapsed,
                     "procs": len(r["procs"]), "us_per_wake": r["cpu_ns"] / max(r["wakes"], 1) / 1e3}
    out["total"] = {"share_pct": sum(r["share_pct"] for r in out.values()),
                    "wakes_per_s": sum(r["wakes_per_s"] for r in out.values()),
                    "procs": sum(r["procs"] for r in out.values()), "us_per_wake": float("nan")}
    return out


def _verdict_at(d: c.Daemon, name: str, pid: int, after_wall: float, timeout: float) -> float | None:
    """Wall-clock time of the daemon's `ready -> stopping` line for `name` after `after_wall`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for r in c.log_records(d.log()):
            if (r["agent"] == name and r["event"] == "state" and r.get("msg") == "ready -> stopping"
                    and r["t"] >= after_wall - 0.002):
                return r["t"]
        time.sleep(0.05)
    return None


def freezes(d: c.Daemon, agents: list[str], count: int, working: bool) -> tuple[list[float], int]:
    """ms from SIGSTOP to the hung verdict, for `count` agents; and how many were never found."""
    client = d.client
    found, missed = [], 0
    for name in agents[:count]:
        pid = client.call(name, "pid")
        if working:
            client.send(name, "sleep", 30, timeout=60)  # in its handler when it is frozen
            time.sleep(0.2)
        else:
            time.sleep(0.6)  # its last stamp, after the pid request, says idle
        wall = time.time()
        os.kill(pid, signal.SIGSTOP)
        at = _verdict_at(d, name, pid, wall, timeout=15.0)
        if at is None:
            missed += 1
            os.kill(pid, signal.SIGKILL)
        else:
            found.append((at - wall) * 1000)
    return found, missed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=str(c.BENCH_PROFILES / "flat77.yaml"))
    ap.add_argument("--spawner", choices=("fork", "exec"), default="fork")
    ap.add_argument("--settle", type=float, default=8.0, help="seconds after all are ready (default 8)")
    ap.add_argument("--seconds", type=float, default=30.0, help="the idle window (default 30)")
    ap.add_argument("--freezes", type=int, default=20, help="SIGSTOPs of each kind (default 20; 0: none)")
    args = ap.parse_args()
    c.print_header("idle: CPU of idle agents, and frozen agents found")
    with c.Daemon(args.profile, spawner=args.spawner) as d:
        status = d.wait_ready()
        names = [a["name"] for a in status["agents"]]
        cpu = idle_cpu(d, args.settle, args.seconds)
        print(f"\nidle CPU over {args.seconds:.0f} s after a {args.settle:.0f} s settle, {len(names)} agents, "
              f"{args.spawner} spawner (share of one core):")
        print(c.table(["", "processes", "CPU %", "wake-ups/s", "µs/wake-up"],
                      [[role, r["procs"], f"{r['share_pct']:.3f}", f"{r['wakes_per_s']:.1f}",
                        "" if role == "total" else f"{r['us_per_wake']:.0f}"]
                       for role, r in sorted(cpu.items(), key=lambda kv: kv[0] == "total")]))
        if args.freezes:
            half = len(names) // 2
            for label, working, pool in (("idle", False, names[:half]), ("in a request", True, names[half:])):
                found, missed = freezes(d, pool, args.freezes, working)
                s = c.summary(found)
                print(f"\nSIGSTOP of an agent {label} -> hung verdict, ms over {len(found)} "
                      f"(never found: {missed}): median {s['p50']:.0f}, p95 {s['p95']:.0f}, p99 {s['p99']:.0f}, "
                      f"max {s['max']:.0f}")
    return 0


if __name__ == "__main__":
    c.run_main(main)
