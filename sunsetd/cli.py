"""The two command lines: `sunsetd` (run a profile) and `sunsetctl` (control a running sunsetd).

Both parse their arguments here and import only what the command needs: `sunsetctl` never imports
the daemon, and `sunsetd` starts checking its profile's run targets in a child before it imports its
own heavier dependencies, so the two overlap.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from sunsetd.client import Client, DaemonUnreachable
from sunsetd.protocol import CONTROL_TARGET, ControlOp, RemoteError

EXIT_OK = 0
EXIT_ERROR_REPLY = 1  # the daemon or the agent answered with an error
EXIT_USAGE = 2  # bad command line (argparse's own code)
EXIT_UNREACHABLE = 3  # no daemon answers on the runtime directory

EPILOG = """exit status:
  0  success
  1  the request was answered with an error (its code and message are printed on stderr)
  2  usage error
  3  sunsetd is not running on the runtime directory, or did not answer in time
"""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1048576:.1f}M"


def format_status(status: dict) -> str:
    rows = [("NAME", "STATE", "PID", "UPTIME", "RESTARTS", "RSS", "HEARTBEAT")]
    for a in status["agents"]:
        age = a.get("heartbeat_age_ms")
        rows.append((a["name"], a["state"] + (" (circuit half-open)" if a.get("circuit") == "half-open" else ""),
                     str(a["pid"] or "-"), _duration(a.get("uptime_s")), str(a["restarts"]), _mib(a.get("rss_bytes")),
                     "-" if age is None else f"{age}ms ago"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    c = status.get("counts", {})
    head = (f"sunsetd pid {status['pid']}  profile {status['profile']}  state {status.get('state', '?')}  "
            f"ready {c.get('ready', '?')}/{c.get('total', '?')}  essential {c.get('essential_ready', '?')}/"
            f"{c.get('essential', '?')}  uptime {_duration(status.get('uptime_s'))}")
    lines = [head] + ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """sunsetctl's command line."""
    parser = argparse.ArgumentParser(prog="sunsetctl", description="Control a running sunsetd.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtime-dir", help="the daemon's runtime directory (default: as sunsetd resolves it)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for the answer")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="agents and their states")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    call = sub.add_parser("call", help="send a request to an agent and print the reply body as JSON")
    call.add_argument("agent")
    call.add_argument("op")
    call.add_argument("body", nargs="?", default=None, help="request body as JSON (default: null)")
    call.add_argument("--timeout", type=float, default=None, dest="call_timeout")
    call.add_argument("--retry", action="store_true", help="resend once to the next incarnation if the agent dies")
    for name, text in (("start", "start an agent and wait until it is ready"),
                       ("stop", "stop an agent and wait until it has stopped"),
                       ("restart", "restart an agent and wait until the new incarnation is ready")):
        sub.add_parser(name, help=text).add_argument("agent")
    sub.add_parser("reload", help="re-read the profile and apply the difference")
    sub.add_parser("shutdown", help="stop every agent in reverse dependency order and exit the daemon")
    return parser


RELOAD_WAIT_SLACK_S = 5.0  # beyond the settle time the daemon gives for a reload


def reload(client: Client, timeout: float | None) -> Any:
    """Reload, then wait for the outcome as long as the daemon says the changed agents may take."""
    applied = client.call(CONTROL_TARGET, ControlOp.RELOAD.value, timeout=timeout or 60.0)
    if applied.get("settled", True):
        return applied
    wait = timeout or applied["settle_s"] + RELOAD_WAIT_SLACK_S
    return client.call(CONTROL_TARGET, ControlOp.RELOAD_WAIT.value, {"reload": applied["reload"]}, timeout=wait)


def run(args: argparse.Namespace) -> Any:
    with Client(args.runtime_dir) as client:
        if args.command == "call":
            try:
                body = None if args.body is None else json.loads(args.body)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"sunsetctl: body is not valid JSON: {exc}") from None
            timeout = args.call_timeout or args.timeout or 10.0
            return client.call(args.agent, args.op, body, timeout=timeout, retry=args.retry)
        if args.command == "reload":
            return reload(client, args.timeout)
        timeout = args.timeout or {"start": 60.0, "restart": 60.0, "stop": 60.0, "shutdown": 10.0}.get(args.command, 10.0)
        body = {"agent": args.agent} if args.command in ("start", "stop", "restart") else None
        return client.call(CONTROL_TARGET, args.command, body, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    """`sunsetctl`."""
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except RemoteError as exc:
        print(f"sunsetctl: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_ERROR_REPLY
    except DaemonUnreachable as exc:
        print(f"sunsetctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.command == "status" and not args.json:
        print(format_status(result))
    elif args.command == "status":
        print(json.dumps(result, indent=2, default=str))
    else:
        print(json.dumps(result, default=str))
    return EXIT_OK


# ---- sunsetd -------------------------------------------------------------------------------------------

EXIT_RUNTIME = 1  # sunsetd: the runtime directory is unusable, or another daemon runs on it
EXIT_PROFILE = 2  # sunsetd: the profile has errors


def build_daemon_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sunsetd", description="Supervise a profile of agents and route requests to them over ZeroMQ.",
        epilog="Exit status: 0 clean stop (or --check passed), 1 runtime directory unusable or already in use, "
               "2 profile errors.")
    parser.add_argument("--profile", default="core", help="profile name (from profiles/) or path (default: core)")
    parser.add_argument("--check", action="store_true", help="validate the profile, print start order and counts, exit")
    parser.add_argument("--runtime-dir", help="directory for sockets and the lock (default: see DESIGN §6)")
    parser.add_argument("--log-level", default=os.environ.get("SUNSETD_LOG_LEVEL", "INFO"),
                        choices=["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"])
    parser.add_argument("--metrics-addr", default="127.0.0.1:9464",
                        help="HOST:PORT for Prometheus /metrics and /health, or off (default: 127.0.0.1:9464)")
    parser.add_argument("--spawner", choices=["fork", "exec"], default=os.environ.get("SUNSETD_SPAWNER", "fork"),
                        help="fork: agents forked from a pre-imported zygote (default, a few ms); "
                             "exec: a fresh interpreter per agent (about 100 ms)")
    parser.add_argument("--log-to", choices=["auto", "journal", "stderr"], default="auto",
                        help="auto: journald (with fields) under systemd, else stderr")
    return parser


def _profile_errors(name: str, errors: list[str]) -> int:
    for line in errors:
        print(f"sunsetd: {line}", file=sys.stderr)
    print(f"sunsetd: profile {name!r} has {len(errors)} error(s); not starting", file=sys.stderr)
    return EXIT_PROFILE


def daemon_main(argv: list[str] | None = None) -> int:
    """`sunsetd`."""
    from sunsetd import runcheck
    from sunsetd.profile import ProfileError, describe, load_profile

    parser = build_daemon_parser()
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.profile)
    except ProfileError as exc:
        return _profile_errors(args.profile, exc.errors)
    check = runcheck.Check(profile)  # a child imports the agents' modules while we import ours
    if args.check:
        errors = check.errors()
        if errors:
            return _profile_errors(args.profile, errors)
        print(describe(profile))
        return EXIT_OK
    from sunsetd import rundir
    from sunsetd.forkserver import ForkServer, ForkServerError

    runtime_dir = rundir.resolve(args.runtime_dir)
    zygote = None
    if args.spawner == "fork":  # its imports too overlap ours; it forks nothing until asked
        try:
            zygote = ForkServer(runtime_dir).start()
        except ForkServerError:
            zygote = None  # the spawner tries again, and falls back to exec
    try:
        from sunsetd import logs
        from sunsetd.daemon import Daemon
        from sunsetd.metrics import parse_address

        try:
            metrics_addr = parse_address(args.metrics_addr)
        except ValueError as exc:
            parser.error(str(exc))
        errors = check.errors()
    except BaseException:  # a usage error (SystemExit) or Ctrl-C: nothing of ours stays behind
        check.cancel()
        if zygote is not None:
            zygote.close()
        raise
    if errors:
        if zygote is not None:
            zygote.close()
        return _profile_errors(args.profile, errors)
    logs.configure(args.log_level, profile.name, journal={"auto": None, "journal": True, "stderr": False}[args.log_to])
    return Daemon(profile, runtime_dir, args.profile, metrics_addr, args.spawner, zygote).run()


if __name__ == "__main__":
    sys.exit(main())
