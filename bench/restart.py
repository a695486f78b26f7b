"""Restart benchmark: SIGKILL of an agent until its replacement ANSWERS a request.

For each kill: read the agent's pid from its own answer, SIGKILL it, then probe at once with `pid`
requests (short timeout, re-sent on any error or timeout) until one is answered by a NEW pid. The time
from kill() to that answer is the figure. The daemon's log (INFO) splits it into phases, at its 1 ms
resolution: kill -> exit seen by the daemon (pidfd readable), -> replacement spawned, -> replacement
READY, -> answer received by the client.

The restart policy matters: with default settings (stable_s 10), a second failure within 10 s of the
last restart waits a jittered exponential backoff. The benchmark profile (bench/profiles/echo.yaml) sets
stable_s 0 and intensity max_restarts 1000/60 s, so every kill is restarted at once and the circuit never
opens; the settings in force are read from the loaded profile and printed.

It also measures the floor of an exec-based restart: a fresh `python -c "import zmq, msgpack"`.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
from sunsetd.profile import load_profile  # noqa: E402


def parse_log(text: str, agent: str) -> list[tuple[float, str, dict]]:
    """(wall-clock seconds, event and message, fields) of each of the agent's log lines."""
    return [(r["t"], f"{r['event']} {r['rest']}", r) for r in c.log_records(text) if r["agent"] == agent]


def probe_until_new_pid(client, agent: str, old_pid: int, probe_timeout: float, give_up: float
                        ) -> tuple[float, int, dict[str, int]]:
    """Send `pid` requests until one is answered by a pid other than old_pid: (perf_counter at the answer,
    new pid, counts of error replies by code)."""
    errors: dict[str, int] = {}
    deadline = time.perf_counter() + give_up
    while time.perf_counter() < deadline:
        rid = client.send(agent, "pid", timeout=probe_timeout)
        while True:
            reply = client.recv(probe_timeout + 1.0)
            if reply is None:
                errors["no_reply"] = errors.get("no_reply", 0) + 1
                break
            if reply.get("id") != rid:
                continue  # an answer to an earlier probe, too late to count
            if reply.get("ok"):
                if reply["body"] != old_pid:
                    return time.perf_counter(), reply["body"], errors
                errors["old_pid"] = errors.get("old_pid", 0) + 1
            else:
                code = (reply.get("error") or {}).get("code", "?")
                errors[code] = errors.get(code, 0) + 1
            break
    raise RuntimeError(f"no answer from a new {agent} within {give_up}s (errors {errors})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=40, help="SIGKILLs to measure (default 40)")
    ap.add_argument("--gap", type=float, default=0.3,
                    help="seconds between an answer from the new agent and the next kill (default 0.3)")
    ap.add_argument("--probe-timeout", type=float, default=0.1,
                    help="timeout of each probing `pid` request, seconds (default 0.1)")
    ap.add_argument("--floor-runs", type=int, default=20, help="runs of each interpreter-start floor (default 20)")
    ap.add_argument("--profile", default=str(c.BENCH_PROFILES / "echo.yaml"))
    ap.add_argument("--agent", default="bench.echo")
    ap.add_argument("--spawner", choices=["fork", "exec"], default="fork",
                    help="how the daemon starts agents: fork from its zygote (default) or exec a fresh interpreter")
    ap.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    args = ap.parse_args()
    c.print_header("sunsetd restart: SIGKILL of an agent until its replacement answers a request")

    spec = load_profile(args.profile).agent(args.agent)
    policy = (f"restart={spec.restart.value} stable_s={spec.stable_s:g} "
              f"backoff={{initial_ms: {spec.backoff.initial_ms}, max_ms: {spec.backoff.max_ms}, "
              f"multiplier: {spec.backoff.multiplier:g}, jitter: {spec.backoff.jitter}}} "
              f"intensity={{max_restarts: {spec.intensity.max_restarts}, within_s: {spec.intensity.within_s:g}}} "
              f"heartbeat_ms={spec.heartbeat_ms}")
    print(f"agent {args.agent} ({spec.run}) from {os.path.relpath(args.profile)}")
    print(f"policy in force: {policy}")
    if spec.stable_s > args.gap:
        print(f"NOTE: stable_s {spec.stable_s:g} > gap {args.gap:g}s: kills after the first hit jittered backoff")
    print(f"{args.kills} kills, {args.gap:g}s after each answer; probes: `pid` with timeout "
          f"{args.probe_timeout * 1000:g} ms, re-sent until a new pid answers")
    print(f"floors: fork+exec+exit of a fresh interpreter ({sys.executable}), one run of each in each of the "
          f"first {args.floor_runs} waits between kills, after one warm-up\n", flush=True)

    floors = {
        'python -c "pass"': [sys.executable, "-c", "pass"],
        'python -c "import zmq, msgpack"': [sys.executable, "-c", "import zmq, msgpack"],
        'python -c "import sunsetd.agent, agents.testing, zmq"':
            [sys.executable, "-c", "import sunsetd.agent, agents.testing, zmq"],
    }
    floor_times: dict[str, list[float]] = {name: [] for name in floors}
    for argv in floors.values():
        c.time_command(argv, 0)  # warm-up: page cache, and the first start of each is not counted

    def idle(seconds: float) -> None:
        """Wait between kills; the first --floor-runs waits also time one run of each floor command, so the
        floors are measured under the same load as the restarts."""
        t0 = time.perf_counter()
        if len(next(iter(floor_times.values()))) < args.floor_runs:
            for name, argv in floors.items():
                floor_times[name] += c.time_command(argv, 1, warmup=False)
        time.sleep(max(0.0, seconds - (time.perf_counter() - t0)))

    totals: list[float] = []
    kills: list[tuple[float, float, int, int]] = []  # (kill wall time, answer wall time, old pid, new pid)
    probe_errors: dict[str, int] = {}
    with c.Daemon(args.profile, log_level="INFO", spawner=args.spawner) as daemon:
        daemon.wait_ready(timeout=30)
        client = daemon.client
        pid = client.call(args.agent, "pid", timeout=5)
        for i in range(args.kills):
            idle(args.gap)
            wall0 = time.time()
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            t1, new_pid, errors = probe_until_new_pid(client, args.agent, pid, args.probe_timeout, give_up=30)
            wall1 = wall0 + (t1 - t0)
            totals.append(t1 - t0)
            kills.append((wall0, wall1, pid, new_pid))
            for k, v in errors.items():
                probe_errors[k] = probe_errors.get(k, 0) + v
            if (i + 1) % 10 == 0 or i == 0:
                print(f"kill {i + 1}/{args.kills}: {(t1 - t0) * 1000:.1f} ms (pid {pid} -> {new_pid})", flush=True)
            pid = new_pid
        log = daemon.log()
        status = daemon.status()
    agent_status = next(a for a in status["agents"] if a["name"] == args.agent)

    # phases from the daemon's log (1 ms resolution, wall clock)
    events = parse_log(log, args.agent)
    phases: dict[str, list[float]] = {"kill -> exit seen": [], "exit seen -> spawned": [],
                                      "spawned -> ready": [], "ready -> answered": []}
    for wall0, wall1, old, new in kills:
        k, a = wall0, wall1
        exit_t = next((t for t, ev, f in events if ev.startswith("exit ") and f.get("pid") == str(old)), None)
        spawn_t = next((t for t, ev, f in events if ev.startswith("spawn") and f.get("pid") == str(new)), None)
        ready_t = next((t for t, ev, f in events if "-> ready" in ev and f.get("pid") == str(new)), None)
        if None in (exit_t, spawn_t, ready_t):
            continue
        phases["kill -> exit seen"].append(exit_t - k)
        phases["exit seen -> spawned"].append(spawn_t - exit_t)
        phases["spawned -> ready"].append(ready_t - spawn_t)
        phases["ready -> answered"].append(a - ready_t)

    while len(next(iter(floor_times.values()))) < args.floor_runs:  # fewer kills than floor runs
        idle(0)
    floor_stats = {name: c.summary(xs) for name, xs in floor_times.items()}

    s = c.summary(totals)
    print(f"\n## SIGKILL -> replacement answers ({len(totals)} kills; policy: stable_s={spec.stable_s:g}, "
          f"max_restarts={spec.intensity.max_restarts}/{spec.intensity.within_s:g}s)\n")
    rows = [["kill -> new pid answers (client clock)", len(totals), c.ms(s["p50"]), c.ms(s["p95"]),
             c.ms(s["min"]), c.ms(s["max"])]]
    for name, xs in phases.items():
        ps = c.summary(xs)
        rows.append([f"  {name} (daemon log, 1 ms res.)", len(xs), c.ms(ps["p50"]), c.ms(ps["p95"]),
                     c.ms(ps["min"]), c.ms(ps["max"])])
    for name, fs in floor_stats.items():
        rows.append([f"floor: {name}", fs["n"], c.ms(fs["p50"]), c.ms(fs["p95"]), c.ms(fs["min"]), c.ms(fs["max"])])
    print(c.table(["what", "n", "median ms", "p95 ms", "min ms", "max ms"], rows))
    print(f"\nprobe replies that were not the answer: {probe_errors or 'none'}")
    print(f"agent after the run: state {agent_status['state']}, incarnation {agent_status['incarnation']}, "
          f"restarts {agent_status['restarts']}, circuit {agent_status['circuit']}")
    ok = agent_status["restarts"] == args.kills and agent_status["circuit"] == "closed"
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv, "machine": c.machine_info(), "source": c.source_version(),
                       "options": vars(args), "kills": s, "kill_s": totals,
                       "phases": {name: c.summary(xs) for name, xs in phases.items()}, "floors": floor_stats,
                       "probe_errors": probe_errors, "agent": {k: agent_status.get(k) for k in
                                                               ("state", "incarnation", "restarts", "circuit")},
                       "ok": ok}, f, indent=1)
    if not ok:
        print("UNEXPECTED: restarts != kills or circuit not closed")
    return 0 if ok else 1


if __name__ == "__main__":
    c.run_main(main)
