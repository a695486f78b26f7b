#!/usr/bin/env python3
"""Chaos harness: real faults injected into real processes under live load, with measured recovery and
every request accounted for.

    python chaos/run.py                                  # its own sunsetd, profile core, every scenario
    python chaos/run.py --scenario kill,freeze --rounds 5 --seed 7 --json run.json --plot run.png
    python chaos/run.py --runtime-dir /run/sunsetd       # attach to a running daemon (no daemon kills)

Any `python` will do: without sunsetd's dependencies it runs itself again under the project's .venv.

Exit status: 0 if every request got exactly one right reply and every fault recovered within its SLA;
1 if a request was lost, answered twice or answered wrongly, a fault was not recovered within its SLA,
or the daemon under test failed to start, stop or clean up; 2 for usage errors (bad arguments, an
unknown profile, --plot without matplotlib) and when sunsetd's dependencies cannot be imported.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV = REPO / ".venv"
# Set in the environment of the process this script re-execs under VENV: if that one cannot import the
# dependencies either, it says so instead of exec'ing again (and again).
REEXEC_MARK = "SUNSETD_CHAOS_REEXECED"
EXIT_USAGE = 2

sys.path.insert(0, str(HERE))


def _in_venv() -> bool:
    # sys.prefix, not sys.executable: .venv/bin/python is a symlink to the base interpreter, which
    # resolves to the same file but runs without the venv's site-packages.
    return Path(sys.prefix).resolve() == VENV.resolve()


def _in_repo(path: str) -> str:
    """`path` (relative to the repository) as the user should type it from where they are."""
    return path if Path.cwd().resolve() == REPO else str(REPO / path)


def _without_dependencies(exc: ImportError) -> None:
    """The same command again under the project's .venv if there is one to try; else one line saying
    what to run, and exit 2 (a traceback would bury the one thing to do)."""
    python = VENV / "bin" / "python"
    if not os.environ.get(REEXEC_MARK) and not _in_venv() and os.access(python, os.X_OK):
        os.environ[REEXEC_MARK] = sys.executable
        try:
            os.execv(python, [str(python), *sys.argv])
        except OSError:
            pass  # a broken .venv: say what to run, as if it were not there
    make = "make compile" if Path.cwd().resolve() == REPO else f"make -C {REPO} compile"
    print(f"chaos/run.py: needs sunsetd's dependencies ({exc}, under {sys.executable}); run `{make}` "
          f"(creates .venv) and then `{_in_repo('.venv/bin/python')} {_in_repo('chaos/run.py')}`",
          file=sys.stderr)
    sys.exit(EXIT_USAGE)


try:
    import zmq  # first: its absence is what the one-line hint names
    import psutil

    from faults import (CHAOS_AGENTS, INJECTORS, SCENARIOS, SETTLE_S, SLA_MS, Chaos, DaemonUnderTest, Fault,
                        takes_requests)
    from load import Ledger, LoadClient, Target
    from report import account, plot, scenario_rows, table, write_json

    from sunsetd.profile import ProfileError, find_profile
    from sunsetd.rundir import processes_using
except ImportError as exc:
    _without_dependencies(exc)
os.environ.pop(REEXEC_MARK, None)  # imported: the daemon and agents this run starts need not see it

NEEDS = {"crashloop": "ChaosFlaky", "memory": "ChaosHog", "flood": "ChaosEcho"}


class UsageError(Exception):
    """A bad argument: exit 2 with one line, not 1, which means the daemon failed the run."""


def per_scenario(values: list[str], default: dict[str, float], what: str) -> dict[str, float]:
    """`N` sets every scenario, `name=N` one of them."""
    out = dict(default)
    for value in values:
        name, sep, number = value.rpartition("=")
        try:
            n = float(number)
        except ValueError:
            raise UsageError(f"{what} must be N or SCENARIO=N, got {value!r}") from None
        if not sep:
            out = {k: n for k in out}
        elif name in out:
            out[name] = n
        else:
            raise UsageError(f"{what}: unknown scenario {name!r} (one of {', '.join(SCENARIOS)})")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chaos/run.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="SLA defaults (ms, injection to first correct reply; crashloop from healing): "
                                       + ", ".join(f"{k} {v:g}" for k, v in SLA_MS.items())
                                       + ".\n\n" + __doc__[__doc__.index("Exit status"):].strip())
    p.add_argument("--profile", default="core", help="profile for the harness's own daemon (default core)")
    p.add_argument("--runtime-dir", help="attach to the daemon running there instead of starting one")
    p.add_argument("--clients", type=int, default=4, help="concurrent load clients (default 4)")
    p.add_argument("--rate", type=float, default=25.0, help="requests per second per client (default 25)")
    p.add_argument("--scenario", default="all", help=f"comma-separated: {', '.join(SCENARIOS)}, or all")
    p.add_argument("--rounds", action="append", default=[], metavar="N|SCENARIO=N",
                   help="faults per scenario (default 3); repeatable, e.g. --rounds 20 --rounds kill=50")
    p.add_argument("--sla-ms", action="append", default=[], metavar="MS|SCENARIO=MS", help="recovery SLA override")
    p.add_argument("--victims", default="*", metavar="PATTERN[,PATTERN]",
                   help="the agents kill and freeze choose from (glob patterns, default all), e.g. 'tools.*'")
    p.add_argument("--seed", type=int, default=1, help="seed of the fault schedule and the load (default 1)")
    p.add_argument("--timeout-ms", type=int, default=3000, help="deadline of each load request (default 3000)")
    p.add_argument("--json", type=Path, help="write every event (faults and requests) here")
    p.add_argument("--plot", type=Path, help="write a PNG: latency timeline with each fault's phases, and "
                                             "recovery against the SLA per scenario (needs matplotlib)")
    return p


def check_arguments(args: argparse.Namespace) -> tuple[list[str], dict[str, int], dict[str, float], Path | None]:
    """(scenarios, rounds, sla_ms, base profile or None when attaching); UsageError for a bad argument."""
    scenarios = list(SCENARIOS) if args.scenario == "all" else [s.strip() for s in args.scenario.split(",")]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise UsageError(f"unknown scenario {unknown[0]!r} (one of {', '.join(SCENARIOS)}, or all)")
    rounds = per_scenario(args.rounds, {s: 3 for s in SCENARIOS}, "--rounds")
    bad = [f"{k}={v:g}" for k, v in rounds.items() if v < 0 or v != int(v)]
    if bad:
        raise UsageError(f"--rounds must be a whole number, 0 or more: {bad[0]}")
    sla_ms = per_scenario(args.sla_ms, SLA_MS, "--sla-ms")
    bad = [f"{k}={v:g}" for k, v in sla_ms.items() if not v > 0]
    if bad:
        raise UsageError(f"--sla-ms must be more than 0: {bad[0]}")
    for name, value in (("--clients", args.clients), ("--rate", args.rate), ("--timeout-ms", args.timeout_ms)):
        if not value > 0:
            raise UsageError(f"{name} must be more than 0, got {value:g}")
    if args.plot is not None:  # say so now, not after a long run
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            pip = (f"{_in_repo('.venv/bin/pip')} install -e '{_in_repo('.')}[chaos]'" if _in_venv()
                   else f"{sys.executable} -m pip install matplotlib")
            raise UsageError(f"--plot needs matplotlib, an optional extra: run `{pip}`") from None
    base = None
    if not args.runtime_dir:
        try:
            base = find_profile(args.profile).resolve()
        except ProfileError as exc:
            raise UsageError(f"--profile: {exc.errors[0]}") from None
    return scenarios, {k: int(v) for k, v in rounds.items()}, sla_ms, base


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        scenarios, rounds, sla_ms, base = check_arguments(args)
    except UsageError as exc:
        parser.error(str(exc))  # the usage line and this one, exit 2

    say = lambda text: print(text, flush=True)  # noqa: E731
    rng = random.Random(args.seed)
    workdir = None
    daemon = None
    arm_file = None
    if base is None:
        runtime_dir = Path(args.runtime_dir)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="sdc-", dir="/tmp"))
        runtime_dir = workdir / "run"
        arm_file = workdir / "flaky.armed"
        chaos_profile = workdir / "chaos.yaml"
        chaos_profile.write_text(f"name: chaos-{base.stem}\nextends: {base}\n"
                                 f"description: {base.stem} plus the harness's chaos agents\nagents:"
                                 + CHAOS_AGENTS.format(arm_file=arm_file))
        daemon = DaemonUnderTest(chaos_profile, runtime_dir, workdir / "daemon.log")
    t0 = time.monotonic()
    ledger = Ledger(t0)
    context = zmq.Context()
    exit_code = 0
    clients: list[LoadClient] = []
    try:
        if daemon is not None:
            say(f"starting sunsetd --profile {args.profile} (+ chaos agents) in {runtime_dir}")
            daemon.start()
        chaos = Chaos(runtime_dir, ledger, rng, sla_ms, daemon, arm_file, args.clients, args.rate,
                      args.timeout_ms / 1000, context, say, tuple(v for v in args.victims.split(",") if v))
        if not chaos.wait_all_ready(120):
            exit_code = 1  # and keep the workdir: the message points at the daemon's log in it
            raise SystemExit(f"chaos/run.py: sunsetd on {runtime_dir} did not get ready" +
                             (f"; its log is {daemon.log_path}" if daemon else ""))
        status = chaos.status()
        names = {a["name"] for a in status["agents"]}
        if daemon is None:
            for scenario, agent in NEEDS.items():
                if scenario in scenarios and agent not in names:
                    say(f"skipping {scenario}: the attached daemon has no {agent} (start one with chaos/run.py)")
                    scenarios.remove(scenario)
            if "daemon" in scenarios:
                say("skipping daemon: only a daemon the harness started itself can be killed and restarted")
                scenarios.remove("daemon")
        victims = chaos.victims
        if not any(fnmatch.fnmatchcase(n, v) for n in names for v in victims):
            print(f"chaos/run.py: --victims {','.join(victims)} matches no agent of profile {status['profile']}",
                  file=sys.stderr)
            exit_code = 2
            raise SystemExit(2)
        for a in status["agents"]:  # lazy MCP servers are started by a first call: then they take load too
            if a["lazy"] and a.get("protocol") == "mcp" and a["state"] == "stopped":
                chaos.control.call(a["name"], "ping", timeout=30.0)
        status = chaos.status()
        eager = [a["name"] for a in status["agents"] if (not a["lazy"] or a.get("protocol") == "mcp")
                 and takes_requests(a)]
        mcp = {a["name"] for a in status["agents"] if a.get("protocol") == "mcp"}
        targets = [Target(n, op) for n in eager if n != "ChaosEcho"
                   for op in (("ping", "info", "tools/list") if n in mcp else ("ping", "info"))]
        targets += [Target("ChaosEcho", "echo")] * (3 if "ChaosEcho" in names else 0)
        say(f"profile {status['profile']}: {len(status['agents'])} agents, load on {len(eager)}: {args.clients} "
            f"clients x {args.rate:g} req/s, seed {args.seed}")
        clients = [LoadClient(f"c{i}", "load", runtime_dir, ledger, lambda: targets, args.rate, 4,
                              args.timeout_ms / 1000, args.seed * 1000 + i, context) for i in range(args.clients)]
        for c in clients:
            c.start()
        time.sleep(1.0)
        faults: list[Fault] = []
        for scenario in scenarios:
            for n in range(1, rounds[scenario] + 1):
                if not chaos.wait_all_ready(60):
                    say(f"{scenario} #{n}: not everything is ready again; going on")
                time.sleep(SETTLE_S)
                start = ledger.now()
                fault = INJECTORS[scenario](chaos, n)
                chaos.prober.drain()  # read the probes still out now, so their times are the daemon's, not ours
                fault.window = (start, ledger.now() + SETTLE_S)
                faults.append(fault)
                say(f"{scenario:<9} #{n:<3} {', '.join(fault.targets)[:48]:<48} detect {_ms(fault.ms(fault.detected))} "
                    f"restart {_ms(fault.ms(fault.restarted))} recovery {_ms(fault.recovery_ms)}"
                    f"{' after healing' if fault.healed is not None else ''} "
                    f"{'ok' if fault.ok else 'NOT RECOVERED'}  {fault.note} "
                    + " ".join(f"[{k}: {'yes' if v else 'NO'}]" for k, v in fault.checks.items()))
        chaos.wait_all_ready(60)
        time.sleep(SETTLE_S)
        for c in clients:
            c.stop()
        for c in clients:
            c.join()
        chaos.prober.drain()
        chaos.prober.close()
        chaos.control.close()
        if daemon is not None:
            # everything below the daemon now, whatever its command line (a program's never names the
            # runtime directory): none of it may outlive the daemon's stop
            tree = psutil.Process(daemon.proc.pid).children(recursive=True)
            code = daemon.stop()
            if code != 0:
                say(f"sunsetd exited with {code} at the end (its log: {daemon.log_path})")
                exit_code = 1
            left = sorted({p.pid for p in processes_using(runtime_dir)} | {p.pid for p in tree if _alive(p)})
            if left:
                say(f"processes left behind: {left}")
                exit_code = 1
        records = ledger.snapshot()
        total = account(records, chaos.daemon_kills)
        rows = scenario_rows(faults, records, chaos.daemon_kills)
        say("")
        say(table(rows, total))
        say(f"\n{total['sent']} requests: {total['answered']} answered exactly once, {total['lost']} lost, "
            f"{total['duplicates']} answered twice, {total['wrong']} wrong, {total['died_with_daemon']} in flight in a "
            f"daemon that was SIGKILLed (answered by nobody, by construction); {ledger.unknown_replies} stray replies")
        meta = {"argv": sys.argv, "profile": status["profile"], "seed": args.seed, "clients": args.clients,
                "rate": args.rate, "scenarios": scenarios, "rounds": rounds, "sla_ms": sla_ms,
                "duration_s": round(ledger.now(), 1), "cpus": os.cpu_count()}
        if args.json:
            write_json(args.json, meta, rows, total, faults, records, chaos.daemon_kills)
            say(f"events: {args.json}")
        if args.plot:
            problem = plot(args.plot, faults, records, f"sunsetd chaos: profile {status['profile']}, "
                           f"{len(faults)} faults, seed {args.seed}")
            say(problem or f"plot: {args.plot}")
        failed = [f for f in faults if not f.ok]
        if total["lost"] or total["wrong"] or total["duplicates"] or failed:
            exit_code = 1
            say(f"FAIL: {total['lost']} lost, {total['wrong']} wrong, {total['duplicates']} duplicated, "
                f"{len(failed)} faults not recovered within SLA")
        else:
            say("PASS: nothing lost, nothing wrong, every fault recovered within its SLA")
        return exit_code
    finally:
        for client in clients:  # their sockets must be closed before the context goes
            client.stop()
        for client in clients:
            client.join()
        if daemon is not None and daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
        context.destroy(linger=0)
        # kept for inspection after a failure; a usage error (2) has nothing in it worth keeping
        if workdir is not None and exit_code in (0, 2) and not os.environ.get("CHAOS_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
        elif workdir is not None:
            say(f"kept {workdir} (daemon log) for inspection")


def _alive(p: "psutil.Process") -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _ms(value: float | None) -> str:
    return "      -" if value is None else f"{value:7.1f}ms"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # main's finally has stopped the load and the daemon
        print("chaos/run.py: interrupted", file=sys.stderr)
        sys.exit(130)
