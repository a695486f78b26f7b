"""Cold-start benchmark: from launching `sunsetd --profile P` until every essential agent is ready.

Each run uses a fresh runtime directory and measures, from the moment just before the exec:
  first answer   the first `status` reply (daemon imported, profile loaded and checked, sockets bound);
  running/status a `status` reply saying state == running, asked as soon as the `ready` line is seen
                 in the log (the log file is read every 2 ms; status is polled only until the first
                 answer, every --poll-ms, so polling does not load the machine during the start);
  running/log    the wall-clock stamp of the daemon's log line `ready all N essential agents ready`
                 (1 ms resolution, no polling bias);
  startup_ms     the daemon's own figure in that line: from the supervisor's creation (after the
                 interpreter start, imports and profile load) to the last essential agent's READY;
  stop           SIGTERM to the daemon's exit, every agent stopped; from the log, split into the
                 reverse-order stop of the agents and what the daemon does after the last one exited.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
from sunsetd.profile import ProfileError, load_profile  # noqa: E402

def log_times(text: str, wall0: float) -> list[tuple[float, str, str, str]]:
    """(ms since launch, agent, event, message and fields) of every log line."""
    return [((r["t"] - wall0) * 1000, r["agent"], r["event"], r["rest"]) for r in c.log_records(text)]


def ready_line(text: str) -> dict | None:
    """The daemon's `ready` record: all essential agents ready, with startup_ms."""
    if "agent=sunsetd event=ready " not in text:  # cheap, while the log is still growing
        return None
    return next((r for r in c.log_records(text) if r["agent"] == "sunsetd" and r["event"] == "ready"), None)


def critical_path(events: list[tuple[float, str, str, str]], profile) -> list[tuple[str, float, float]]:
    """The chain of starts that gated readiness, from the log: the last essential agent to become ready,
    then the dependency whose READY let it start, and so on. [(agent, spawned at ms, ready at ms)]."""
    spawned: dict[str, float] = {}
    ready: dict[str, float] = {}
    for t, agent, event, rest in events:
        if event == "spawn" and agent not in spawned:
            spawned[agent] = t
        elif event == "state" and rest.startswith("starting -> ready") and agent not in ready:
            ready[agent] = t
    essential = [a.name for a in profile.agents if a.essential and a.name in ready]
    if not essential:
        return []
    name = max(essential, key=lambda n: ready[n])
    chain = []
    while name is not None and name in spawned:
        chain.append((name, spawned[name], ready[name]))
        deps = [d for d in profile.agent(name).depends_on if d in ready]
        name = max(deps, key=lambda d: ready[d]) if deps else None
    return chain[::-1]


def slow_stop_lines(events: list[tuple[float, str, str, str]], gap_ms: float = 200.0) -> list[str]:
    """Log lines after the shutdown began that came more than gap_ms after the line before them."""
    out, prev, stopping = [], None, False
    for t, agent, event, rest in events:
        stopping = stopping or (agent == "sunsetd" and event == "shutdown")
        if stopping and prev is not None and t - prev > gap_ms:
            out.append(f"+{t - prev:.0f} ms before: {agent} {event} {rest[:120]}")
        if stopping:
            prev = t
    return out


def one_run(profile_name: str, profile, poll_s: float, timeout: float, spawner: str) -> dict:
    """One cold start. To disturb the start as little as possible on a small machine, `status` is polled
    only until the daemon first answers; then the log file is watched (cheap reads) for the `ready`
    line, and one more `status` confirms the state is running."""
    d = c.Daemon(profile_name, log_level="INFO", spawner=spawner)
    result: dict = {}
    try:
        wall0 = time.time()
        d.start()
        t0 = d.launched_at
        while True:  # phase 1: until the first status answer
            d.check_alive()
            status = d.try_status(timeout=1.0)
            if status is not None:
                result["first_answer"] = time.monotonic() - t0
                break
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"no status answer after {timeout}s; log:\n{d.log()[-3000:]}")
            time.sleep(poll_s)
        text = ""
        with open(d.log_path, errors="replace") as log:
            while not (m := ready_line(text)):  # phase 2: until the `ready` line is in the log
                d.check_alive()
                if status.get("state") == "running":
                    m = None
                    break
                chunk = log.read()
                if chunk:
                    text += chunk
                    continue
                if "degraded" in text or time.monotonic() - t0 > timeout:
                    status = d.status()
                    if status.get("state") != "running":
                        raise RuntimeError(f"not running after {time.monotonic() - t0:.1f}s: {status.get('counts')}; "
                                           f"log:\n{text[-3000:]}")
                time.sleep(0.002)
        status = d.status()
        result["running_status"] = time.monotonic() - t0
        if status.get("state") != "running":
            raise RuntimeError(f"log says ready but status says {status.get('state')}: {status.get('counts')}")
        result["counts"] = status["counts"]
        result["restarts"] = sum(a.get("restarts", 0) for a in status["agents"])  # during the start: a storm
        m = m or ready_line(d.log())
        if m:
            result["running_log"] = m["t"] - wall0
            result["startup_ms"] = int(m["startup_ms"]) / 1000
    finally:
        d.keep_dir = True
        result["stop"] = d.stop()
        events = log_times(d.log(), wall0)
        shutil.rmtree(d.runtime_dir, ignore_errors=True)
    result["chain"] = critical_path(events, profile)
    t_shutdown = next((t for t, agent, ev, _ in events if agent == "sunsetd" and ev == "shutdown"), None)
    t_exit = next((t for t, agent, ev, _ in events if agent == "sunsetd" and ev == "exit"), None)
    agent_exits = [t for t, agent, ev, _ in events if agent != "sunsetd" and ev == "exit"]
    if None not in (t_shutdown, t_exit) and agent_exits:
        result["stop_agents"] = (max(agent_exits) - t_shutdown) / 1000
        result["stop_after_agents"] = (t_exit - max(agent_exits)) / 1000
    if result["stop"] is None or result["stop"] > 1.0:
        result["slow_stop"] = slow_stop_lines(events)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="core", help="profile name or path (default core)")
    ap.add_argument("--runs", type=int, default=5, help="cold starts to measure (default 5)")
    ap.add_argument("--spawner", choices=["fork", "exec"], default="fork",
                    help="how the daemon starts agents: fork from its zygote (default) or exec a fresh interpreter")
    ap.add_argument("--poll-ms", type=float, default=5.0, help="status poll interval (default 5 ms)")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between runs (default 1)")
    ap.add_argument("--timeout", type=float, default=60.0, help="give up on a run after this many seconds")
    ap.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    args = ap.parse_args()
    c.print_header(f"sunsetd cold start: launch until every essential agent is ready (profile {args.profile})")
    check = subprocess.run([*c.sunsetd_command(), "--profile", args.profile, "--check"], capture_output=True,
                           text=True, cwd=c.REPO)
    if check.returncode != 0:
        print(f"`sunsetd --profile {args.profile} --check` exited {check.returncode}:\n{check.stderr}{check.stdout}")
        return 2
    try:
        profile = load_profile(args.profile)
    except ProfileError as exc:
        print(exc)
        return 2
    counts = profile.counts()
    print(f"profile {profile.name} ({profile.path}): {counts['total']} agents, {counts['essential']} essential, "
          f"{counts['eager']} eager, {counts['lazy']} lazy; {len(profile.levels)} start levels "
          f"(widest {max(len(level) for level in profile.levels)})")
    print(f"launch: {' '.join(c.sunsetd_command())} --profile {args.profile} --runtime-dir /tmp/sd-XXXXXXXX "
          f"--log-level INFO; {args.runs} runs, {args.pause:g}s apart, status polled every {args.poll_ms:g} ms "
          f"until it answers, then the log watched\n", flush=True)
    runs = []
    for i in range(args.runs):
        if i:
            time.sleep(args.pause)
        r = one_run(args.profile, profile, args.poll_ms / 1000, args.timeout, args.spawner)
        runs.append(r)
        print(f"run {i + 1}/{args.runs}: first answer {c.ms(r['first_answer'])} ms, running (status) "
              f"{c.ms(r['running_status'])} ms, running (log) {c.ms(r.get('running_log', float('nan')), 0)} ms, "
              f"daemon startup_ms {c.ms(r.get('startup_ms', float('nan')), 0)}, "
              f"stop {c.ms(r['stop'] if r['stop'] is not None else float('nan'), 0)} ms; "
              f"{r['counts']['essential_ready']}/{r['counts']['essential']} essential ready; "
              f"{r['restarts']} restarts", flush=True)
        chain = r["chain"]
        if chain:
            starts = sum(ready - spawned for _, spawned, ready in chain)
            print(f"  critical path ({len(chain)} starts in sequence, spawn -> READY ms each): "
                  + " -> ".join(f"{n} {ready - spawned:.0f}" for n, spawned, ready in chain)
                  + f"; sum {starts:.0f} ms; first spawn at +{chain[0][1]:.0f} ms, gaps between a READY and "
                  f"the next spawn {sum(b[1] - a[2] for a, b in zip(chain, chain[1:])):.0f} ms in all")
            r["chain_starts"] = starts / 1000
            r["first_spawn"] = chain[0][1] / 1000
        for line in r.get("slow_stop", []):
            print(f"  slow stop: {line}")

    def col(key: str) -> list[float]:
        return [r[key] for r in runs if r.get(key) is not None]

    print(f"\n## Cold start of profile {profile.name} ({counts['total']} agents, {counts['essential']} essential), "
          f"{len(runs)} runs\n")
    rows = []
    for key, label in (("first_answer", "launch -> first status answer"),
                       ("running_status", "launch -> status says running"),
                       ("running_log", "launch -> `ready` log line"),
                       ("startup_ms", "daemon's own startup_ms (supervisor start -> ready)"),
                       ("first_spawn", "launch -> first agent spawned (log)"),
                       ("chain_starts", "sum of agent starts on the critical path (log)"),
                       ("stop", "SIGTERM -> daemon exited, all agents stopped"),
                       ("stop_agents", "  shutdown -> last agent exit seen (log)"),
                       ("stop_after_agents", "  last agent exit -> daemon's `exit` line (log)")):
        s = c.summary(col(key))
        rows.append([label, s["n"], c.ms(s["p50"]), c.ms(s["p95"]), c.ms(s["min"]), c.ms(s["max"])])
    print(c.table(["what", "n", "median ms", "p95 ms", "min ms", "max ms"], rows))
    if args.json:
        keys = ("first_answer", "running_status", "running_log", "startup_ms", "first_spawn", "chain_starts", "stop",
                "stop_agents", "stop_after_agents")
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv, "machine": c.machine_info(), "source": c.source_version(),
                       "options": vars(args), "summary": {k: c.summary(col(k)) for k in keys},
                       "runs": [{k: r.get(k) for k in (*keys, "restarts", "counts")} for r in runs]}, f, indent=1)
    return 0


if __name__ == "__main__":
    c.run_main(main)
