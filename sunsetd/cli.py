"""The two command lines: `sunsetd` (run a profile) and `sunsetctl` (control a running sunsetd).

Both parse their arguments here and import only what the command needs: `sunsetctl` never imports
the daemon, and `sunsetd` starts checking its profile's run targets in a child before it imports its
own heavier dependencies, so the two overlap.

`sunsetctl` has two paths to the same commands. A one-shot command in one of its usual forms (status,
call, start, stop, restart, signal, shutdown, logs without -f, reload without --profile) goes the
one-shot path: an exact parse of those forms, and `_OneShot`, which speaks ZMTP itself
(sunsetd.zmtp) and msgpack and JSON through sunsetd.packlite. It imports neither pyzmq, argparse,
msgpack, json nor the protocol module: the whole command takes a few milliseconds more than a bare
interpreter's start (#12: 16 ms for `status` where `python -c pass` takes 12). Everything else
(--help, --version, an error in the command line, an option it does not know, a runtime directory it
cannot be sure of, `logs -f`, `events`) goes the full path: argparse and sunsetd.client, as before.
Both print the same bytes and exit with the same codes; tests/test_sunsetctl_fast.py holds them to
it. SUNSETCTL_ONESHOT=0 sends every command the full way.
"""
from __future__ import annotations

import os
import sys
import time

from sunsetd import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any, Iterator

    from sunsetd.client import Client

EXIT_OK = 0
EXIT_ERROR_REPLY = 1  # the daemon or the agent answered with an error
EXIT_USAGE = 2  # bad command line (argparse's own code)
EXIT_UNREACHABLE = 3  # no daemon answers on the runtime directory
EXIT_NOT_RUNNING = 3  # status: degraded, or not every essential (or selected) agent ready (systemctl is-active)

EPILOG = """exit status:
  0  success; for status: running, every essential agent (every selected one) ready
  1  the request was answered with an error (its code and message are printed on stderr)
  2  usage error
  3  sunsetd is not running on the runtime directory, or did not answer in time;
     for status also: degraded, or not every essential (selected) agent ready
"""
BODY_HINT = """a body is JSON: a string needs quotes inside the shell's, e.g. '"to be or not"'; """ \
            """a map: '{"k": 1}'"""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1048576:.1f}M"


def agent_reason(a: dict) -> str:
    """Why the agent is where it is: the reason of its last transition, or, once ready again after an
    exit, that exit."""
    if a.get("never_started") and a["state"] == "stopped":
        return "lazy: starts on its first request" if a.get("lazy") else a.get("reason") or "not started"
    probe = a.get("probe")
    if a["state"] in ("ready", "starting") and probe and not probe["ok"]:
        return f"{probe['kind']} probe: {probe['what']} ({_duration(probe['ago_s'])} ago)"
    exit_ = a.get("last_exit")
    if a["state"] == "ready" and exit_ and not exit_.get("asked"):
        return (f"last exit: {exit_['description']} after {_duration(exit_['uptime_s'])} "
                f"(#{exit_['incarnation']}, {_duration(exit_['ago_s'])} ago)")
    if a["state"] != "ready":
        return a.get("reason") or ""
    # ready and nothing amiss: what the program says of itself, or what vouches for it
    server = a.get("mcp")
    if a.get("status_text"):
        return f"status: {a['status_text']}"
    if server:
        return f"MCP {server['server']} {server['version']}"
    if probe:
        return f"{probe['kind']} probe ok ({_duration(probe['ago_s'])} ago)"
    return ""


def agent_state(a: dict) -> str:
    if a["state"] == "stopped" and a.get("never_started"):
        return "not started"
    return a["state"] + (" (half-open)" if a.get("circuit") == "half-open" else "")


def format_status(status: dict) -> str:
    rows = [("NAME", "STATE", "PID", "INC", "UPTIME", "RESTARTS", "RSS", "HEARTBEAT", "FLAGS", "REASON")]
    for a in status["agents"]:
        age = a.get("heartbeat_age_ms")
        flags = ",".join(f for f, on in (("essential", a.get("essential")), ("lazy", a.get("lazy")),
                                         ("mcp" if a.get("protocol") == "mcp" else "program", a.get("program"))) if on) or "-"
        rows.append((a["name"], agent_state(a), str(a["pid"] or "-"), str(a.get("incarnation") or "-"),
                     _duration(a.get("uptime_s")), str(a["restarts"]), _mib(a.get("rss_bytes")),
                     "-" if age is None else f"{age}ms ago", flags, agent_reason(a)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    c = status.get("counts", {})
    head = (f"sunsetd pid {status['pid']}  profile {status['profile']}  state {status.get('state', '?')}  "
            f"ready {c.get('ready', '?')}/{c.get('total', '?')}  essential {c.get('essential_ready', '?')}/"
            f"{c.get('essential', '?')}  uptime {_duration(status.get('uptime_s'))}")
    lines = [head] + ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def status_code(status: dict, selected: bool) -> int:
    """Like `systemctl is-active`: 0 when running, 3 when not (degraded, an essential agent not ready;
    with agents named, any of them not ready)."""
    if selected:
        return EXIT_OK if status["agents"] and all(a["state"] == "ready" for a in status["agents"]) \
            else EXIT_NOT_RUNNING
    return EXIT_OK if status.get("state") == "running" and status.get("healthy") else EXIT_NOT_RUNNING


def _positive(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text}")
    return value


def _count(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value < 1 << 31:
        raise argparse.ArgumentTypeError(f"must be 0 or more (and below 2^31), got {text}")
    return value


AGENTS_HELP = "agent names, shell globs ('vision.*', quoted) or all"


def build_parser() -> argparse.ArgumentParser:
    """sunsetctl's command line."""
    import argparse

    parser = argparse.ArgumentParser(prog="sunsetctl", description="Control a running sunsetd.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"sunsetctl {__version__}")
    parser.add_argument("--runtime-dir", help="the daemon's runtime directory (default: as sunsetd resolves it)")
    parser.add_argument("--timeout", type=_positive, default=None, help="seconds to wait for the answer")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = sub.add_parser("status", help="agents, their states and why")
    status.add_argument("agents", nargs="*", metavar="AGENT", help=AGENTS_HELP + " (default: every agent)")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    call = sub.add_parser("call", help="send a request to an agent and print the reply body as JSON")
    call.add_argument("agent")
    call.add_argument("op")
    call.add_argument("body", nargs="?", default=None, help="request body as JSON (default: null); " + BODY_HINT)
    call.add_argument("--timeout", type=_positive, default=None, dest="call_timeout")
    call.add_argument("--retry", action="store_true", help="resend once to the next incarnation if the agent dies")
    for name, text in (("start", "start agents (and what they depend on) and wait until they are ready"),
                       ("stop", "stop agents, dependents first, and wait until they have stopped"),
                       ("restart", "restart agents (several: all stop, dependents first, then all start) "
                                   "and wait until the new incarnations are ready")):
        sub.add_parser(name, help=text).add_argument("agents", nargs="+", metavar="AGENT", help=AGENTS_HELP)
    sig = sub.add_parser("signal", help="send a signal to agents' processes (their process groups)")
    sig.add_argument("signal", help="HUP, SIGUSR1, 10, ...")
    sig.add_argument("agents", nargs="+", metavar="AGENT", help=AGENTS_HELP)
    log = sub.add_parser("logs", help="agents' last log lines (output, and what sunsetd said about them)")
    log.add_argument("agents", nargs="*", metavar="AGENT", help=AGENTS_HELP + " (default: every agent)")
    log.add_argument("-n", "--lines", type=_count, default=None, help="the last N lines (default: 50; 0 with -f)")
    log.add_argument("-f", "--follow", action="store_true", help="then print new lines as they come, until Ctrl-C")
    log.add_argument("--incarnation", type=_count, default=None, help="only this incarnation's lines")
    log.add_argument("--json", action="store_true", help="one JSON object per line")
    events = sub.add_parser("events", help="stream transitions, exits, restarts and reloads as they happen")
    events.add_argument("agents", nargs="*", metavar="AGENT", help="only these agents' events (globs allowed)")
    events.add_argument("--json", action="store_true", help="one JSON object per event")
    rel = sub.add_parser("reload", help="re-read the profile (or another) and apply the difference")
    rel.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    rel.add_argument("--profile", help="switch the running daemon to this profile (name or path)")
    rel.add_argument("--json", action="store_true", help="print the outcome (or the plan) as JSON")
    sub.add_parser("shutdown", help="stop every agent in reverse dependency order and exit the daemon")
    return parser


RELOAD_WAIT_SLACK_S = 5.0  # beyond the settle time the daemon gives for a reload


def reload(client: Client, timeout: float | None, profile: str | None = None, dry_run: bool = False) -> Any:
    """Reload, then wait for the outcome as long as the daemon says the changed agents may take."""
    body = {k: v for k, v in (("profile", profile), ("dry_run", dry_run or None)) if v is not None}
    applied = client.call(CONTROL_TARGET, OP_RELOAD, body or None, timeout=timeout or 60.0)
    if applied.get("settled", True):
        return applied
    wait = timeout or applied["settle_s"] + RELOAD_WAIT_SLACK_S
    return client.call(CONTROL_TARGET, OP_RELOAD_WAIT, {"reload": applied["reload"]}, timeout=wait)


def format_reload(result: dict) -> str:
    if result.get("dry_run"):
        lines = [f"dry run: profile {result['profile']} (nothing applied)"]
        lines += [f"  add     {n}" for n in result["added"]]
        lines += [f"  remove  {n}" for n in result["removed"]]
        lines += [f"  change  {n}: {', '.join(fields)}" for n, fields in result["changed"].items()]
        lines.append(f"  leave   {len(result['unchanged'])} agent(s) alone")
        return "\n".join(lines)
    lines = [f"reload {result['reload']}: profile {result['profile']}: {len(result['added'])} added, "
             f"{len(result['removed'])} removed, {len(result['changed'])} changed, {result['unchanged']} unchanged"]
    lines += [f"  {name}: {outcome}" for name, outcome in result.get("outcomes", {}).items()]
    return "\n".join(lines)


def _log_line(line: list, as_json: bool) -> str:
    seq, when, agent, incarnation, stream, text = line
    if as_json:
        return _dumps({"seq": seq, "time": when, "agent": agent, "incarnation": incarnation, "stream": stream,
                       "text": text}, default=None)
    return f"{_timestamp(when)} {agent}#{incarnation} {stream}: {text}"


def _timestamp(when: float) -> str:
    t = time.localtime(when)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(when * 1000) % 1000:03d}" + time.strftime("%z", t)


def _print(text: str) -> None:
    print(text, flush=True)


def logs(client: Client, args: argparse.Namespace) -> int:
    """Print the last lines; with -f, subscribe first, then go on with the live ones (a line the
    subscription missed while it was being set up is fetched again by its number)."""
    sub = None
    if args.follow:
        from sunsetd import protocol

        sub = client.subscribe(protocol.LOG_TOPIC)
    try:
        n = args.lines if args.lines is not None else (10 if args.follow else 50)
        body: dict[str, Any] = {"n": n}
        if args.agents:
            body["agents"] = args.agents
        if args.incarnation is not None:
            body["incarnation"] = args.incarnation
        snapshot = client.call(CONTROL_TARGET, OP_LOGS, body, timeout=args.timeout or 10.0)
        for line in snapshot["lines"]:
            _print(_log_line(line, args.json))
        if sub is None:
            return EXIT_OK
        shown = set(snapshot["agents"]) if args.agents else None
        last = dict(snapshot["last"])
        for line in follow(client, sub):
            agent, seq = line[2], line[0]
            if (shown is not None and agent not in shown) or seq <= last.get(agent, 0):
                continue
            if args.incarnation is not None and line[3] != args.incarnation:
                last[agent] = seq
                continue
            if seq > last.get(agent, 0) + 1:  # missed while the subscription was being set up
                gap = client.call(CONTROL_TARGET, OP_LOGS,
                                  {**body, "agents": [agent], "n": None, "after": {agent: last.get(agent, 0)}},
                                  timeout=args.timeout or 10.0)
                for missed in gap["lines"]:
                    if missed[0] < seq:
                        _print(_log_line(missed, args.json))
            _print(_log_line(line, args.json))
            last[agent] = seq
    finally:
        if sub is not None:
            sub.close(linger=0)


PULSE_S = 5.0


def follow(client: Client, sub: Any) -> Iterator[Any]:
    """Every message of a subscription, until Ctrl-C. With nothing to yield, it asks the daemon every
    PULSE_S whether it is still there (the socket file of a killed daemon stays, and a subscription
    never notices): gone, DaemonUnreachable ends the follow."""
    from sunsetd.protocol import RemoteError

    asked = time.monotonic()
    while True:
        message = client.next_event(sub, 1.0)
        if message is not None:
            yield message
        elif time.monotonic() - asked >= PULSE_S:
            try:
                client.call(CONTROL_TARGET, OP_LOGS, {"n": 0}, timeout=5.0)
            except RemoteError:
                pass  # any answer (shutting_down, while its agents stop) means it is there
            asked = time.monotonic()


def events(client: Client, args: argparse.Namespace) -> int:
    import fnmatch

    from sunsetd import protocol
    from sunsetd.logfmt import event_text

    sub = client.subscribe(protocol.EVENT_TOPIC)
    try:
        client.check()
        for event in follow(client, sub):
            if args.agents and not any(p == "all" or fnmatch.fnmatchcase(event["agent"], p) for p in args.agents):
                continue
            _print(_dumps(event, default=None) if args.json else f"{_timestamp(event['time'])} {event_text(event)}")
    finally:
        sub.close(linger=0)


def run(args: argparse.Namespace, client: Client | _OneShot) -> int:
    """A command of sunsetctl's, through either client (the full path's or the one-shot)."""
    if args.command == "call":
        if args.body is None:
            body = None
        else:
            import json

            try:
                body = json.loads(args.body)
            except json.JSONDecodeError as exc:
                print(f"sunsetctl: body is not JSON ({exc.msg} at column {exc.colno}); {BODY_HINT}", file=sys.stderr)
                return EXIT_USAGE
        timeout = args.call_timeout or args.timeout or 10.0
        _print(_dumps(client.call(args.agent, args.op, body, timeout=timeout, retry=args.retry)))
        return EXIT_OK
    if args.command == "status":
        status = client.call(CONTROL_TARGET, "status", {"agents": args.agents} if args.agents else None,
                             timeout=args.timeout or 10.0)
        _print(_dumps(status, indent=2) if args.json else format_status(status))
        return status_code(status, bool(args.agents))
    if args.command == "reload":
        profile = args.profile
        if profile is not None:
            from sunsetd.profile import is_profile_path  # only then: it imports the YAML parser

            if is_profile_path(profile):
                profile = os.path.abspath(profile)  # the daemon's working directory is not ours
        result = reload(client, args.timeout, profile, args.dry_run)
        _print(_dumps(result, default=None) if args.json else format_reload(result))
        return EXIT_ERROR_REPLY if result.get("rolled_back") else EXIT_OK
    if args.command == "logs":
        return logs(client, args)
    if args.command == "events":
        return events(client, args)
    timeout = args.timeout or {"start": 120.0, "restart": 120.0, "stop": 120.0}.get(args.command, 10.0)
    if args.command == "signal":
        sig: Any = args.signal
        if sig.isascii() and sig.isdigit() and len(sig) < 6:
            sig = int(sig)
        body = {"signal": sig, "agents": args.agents}
    elif args.command in ("start", "stop", "restart"):
        body = {"agents": args.agents}
    else:
        body = None
    _print(_dumps(client.call(CONTROL_TARGET, args.command, body, timeout=timeout)))
    return EXIT_OK


def _dumps(obj: Any, indent: int | None = None, default: Any = str) -> str:
    """json.dumps(obj, indent=indent, default=default), without importing json for what msgpack decodes to."""
    from sunsetd import packlite

    return packlite.dumps(obj, indent, default)


def main(argv: list[str] | None = None) -> int:
    """`sunsetctl`: the one-shot path when the command is one of its forms, else the full one."""
    if os.environ.get("SUNSETCTL_ONESHOT") != "0":
        args = oneshot_args(sys.argv[1:] if argv is None else argv)
        if args is not None:
            code = _oneshot_main(args)
            if code is not None:
                return code
    return full_main(argv)


def full_main(argv: list[str] | None = None) -> int:
    """`sunsetctl` through argparse and pyzmq (sunsetd.client): every command, every form."""
    from sunsetd.client import Client, DaemonUnreachable
    from sunsetd.protocol import ProtocolError, RemoteError
    from sunsetd.rundir import RuntimeDirError

    args = build_parser().parse_args(argv)
    try:
        with Client(args.runtime_dir) as client:
            return run(args, client)
    except RemoteError as exc:
        print(f"sunsetctl: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_ERROR_REPLY
    except DaemonUnreachable as exc:
        print(f"sunsetctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except RuntimeDirError as exc:
        print(f"sunsetctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UnicodeEncodeError:
        print("sunsetctl: an argument is not valid text (UTF-8)", file=sys.stderr)
        return EXIT_USAGE
    except ProtocolError as exc:  # a frame from the daemon we cannot read
        print(f"sunsetctl: {exc}", file=sys.stderr)
        return EXIT_ERROR_REPLY
    except KeyboardInterrupt:  # the way out of `logs -f` and `events`
        return EXIT_OK
    except BrokenPipeError:  # `sunsetctl status | head -1`: the reader has what it wanted
        return _quiet_stdout()


def _quiet_stdout() -> int:
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit's flush is quiet too
    return EXIT_OK


# ---- sunsetctl's one-shot path ---------------------------------------------------------------------------
# What it mirrors of sunsetd.protocol, sunsetd.rundir and sunsetd.client (tests/test_sunsetctl_fast.py
# checks that each is still the same there).
CONTROL_TARGET = "sunsetd"
OP_LOGS, OP_RELOAD, OP_RELOAD_WAIT = "logs", "reload", "reload_wait"
PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 1 << 20
REPLY_SLACK_S = 2.0
FRONT_SOCKET, LOCK_FILE, SYSTEM_DIR, SUN_PATH_MAX = "sunsetd.sock", "sunsetd.lock", "/run/sunsetd", 107


class _FullPath(Exception):
    """The one-shot path cannot be sure to do what the full path would: let it (before any request)."""


class _Unreachable(Exception):
    """As DaemonUnreachable."""


class _Remote(Exception):
    """As RemoteError."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class _Unreadable(Exception):
    """As ProtocolError: a frame from the daemon that cannot be read."""


class _Args:
    """What build_parser().parse_args() would give for the same command line."""

    def __init__(self, **fields: Any):
        self.__dict__.update(fields)

    def __eq__(self, other: object) -> bool:
        return vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"_Args({vars(self)})"


# each command the one-shot path takes: (least and most positionals, their names, flags, options with a value)
_FORMS: dict[str, tuple[int, int, tuple[str, ...], dict[str, str], dict[str, str]]] = {
    "status": (0, -1, ("agents",), {"--json": "json"}, {}),
    "call": (2, 3, ("agent", "op", "body"), {"--retry": "retry"}, {"--timeout": "call_timeout"}),
    "start": (1, -1, ("agents",), {}, {}),
    "stop": (1, -1, ("agents",), {}, {}),
    "restart": (1, -1, ("agents",), {}, {}),
    "signal": (2, -1, ("signal", "agents"), {}, {}),
    "logs": (0, -1, ("agents",), {"--json": "json"},
             {"-n": "lines", "--lines": "lines", "--incarnation": "incarnation"}),
    "reload": (0, 0, (), {"--dry-run": "dry_run", "--json": "json"}, {}),
    "shutdown": (0, 0, (), {}, {}),
}
_DEFAULTS = {"logs": {"follow": False}, "reload": {"profile": None}, "call": {"body": None}}


def oneshot_args(argv: list[str]) -> _Args | None:
    """The parsed command line when it is one of the one-shot forms, else None (the full path decides).

    A form is: the global options (--runtime-dir, --timeout; `--x V` or `--x=V`), the command, then
    its positionals in one run, with its own options before or after them. A value that starts with
    '-', an option it does not know (--help, an abbreviation), a positional after an option that
    follows positionals: None, and argparse says what it says."""
    fields: dict[str, Any] = {"runtime_dir": None, "timeout": None}
    i = _options(argv, 0, {"--runtime-dir": "runtime_dir", "--timeout": "timeout"}, {}, fields)
    if i is None or i >= len(argv) or argv[i] not in _FORMS:
        return None
    command = argv[i]
    least, most, names, flags, valued = _FORMS[command]
    fields["command"] = command
    for flag in flags.values():
        fields[flag] = False
    for dest in valued.values():
        fields[dest] = None
    fields.update(_DEFAULTS.get(command, {}))
    i = _options(argv, i + 1, valued, flags, fields)
    if i is None:
        return None
    start = i
    while i < len(argv) and not argv[i].startswith("-"):
        i += 1
    positionals = argv[start:i]
    if _options(argv, i, valued, flags, fields) != len(argv):
        return None  # a positional after the options that follow the positionals, or something unknown
    if len(positionals) < least or (most >= 0 and len(positionals) > most):
        return None
    for n, name in enumerate(names):
        if name == "agents":
            fields[name] = positionals[n:]
        elif n < len(positionals):
            fields[name] = positionals[n]
    for dest in ("timeout", "call_timeout", "lines", "incarnation"):
        value = fields.get(dest)
        if value is not None:
            value = (_positive_or_none if dest.endswith("timeout") else _count_or_none)(value)
            if value is None:
                return None  # argparse's message
            fields[dest] = value
    return _Args(**fields)


def _options(argv: list[str], i: int, valued: dict[str, str], flags: dict[str, str], fields: dict) -> int | None:
    """Read options from argv[i] on, up to the first positional: its index, or None at one not known."""
    while i < len(argv):
        token = argv[i]
        if not token.startswith("-"):
            return i
        if token in flags:
            fields[flags[token]] = True
            i += 1
            continue
        name, eq, value = token.partition("=")
        if name in valued and name.startswith("--") and eq:
            dest = valued[name]
            i += 1
        elif token in valued and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            dest, value = valued[token], argv[i + 1]
            i += 2
        else:
            return None
        # each value as argparse checks it, when it is read: a bad one given again later is still refused
        check = _NUMERIC.get(dest)
        if check is not None and check(value) is None:
            return None
        fields[dest] = value
    return i


def _positive_or_none(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value > 0 and value != float("inf") else None


def _count_or_none(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 <= value < 1 << 31 else None


_NUMERIC = {"timeout": _positive_or_none, "call_timeout": _positive_or_none, "lines": _count_or_none,
            "incarnation": _count_or_none}


def _oneshot_main(args: _Args) -> int | None:
    """The command, the way full_main() would end it; None when the full path must take it."""
    try:
        with _OneShot(args.runtime_dir) as client:
            return run(args, client)
    except _FullPath:
        return None
    except _Remote as exc:
        print(f"sunsetctl: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_ERROR_REPLY
    except _Unreachable as exc:
        print(f"sunsetctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except UnicodeEncodeError:
        print("sunsetctl: an argument is not valid text (UTF-8)", file=sys.stderr)
        return EXIT_USAGE
    except _Unreadable as exc:
        print(f"sunsetctl: {exc}", file=sys.stderr)
        return EXIT_ERROR_REPLY
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        return _quiet_stdout()


def _plain(path: str) -> bool:
    """str(Path(path)) == path: nothing for pathlib to tidy (the path is printed in messages)."""
    if not path or "\0" in path or path.startswith("//"):
        return False
    if path in ("/", "."):
        return True
    if path.endswith("/"):
        return False
    parts = path.split("/")
    return all(part and part != "." for part in (parts[1:] if path.startswith("/") else parts))


def _join(directory: str, name: str) -> str:
    return ("" if directory == "/" else directory) + "/" + name


def oneshot_runtime_dir(explicit: str | None) -> str:
    """rundir.resolve(explicit, client=True), as the string str() of it would be; _FullPath where it
    cannot be sure (a path pathlib would tidy, a lock or socket it may not look at)."""
    if explicit:
        return _sure(explicit)
    if os.environ.get("RUNTIME_DIRECTORY"):
        return _sure(os.environ["RUNTIME_DIRECTORY"].split(":")[0])
    if os.environ.get("XDG_RUNTIME_DIR"):
        own = _join(_sure(os.environ["XDG_RUNTIME_DIR"]), "sunsetd")
    elif os.geteuid() == 0:
        return SYSTEM_DIR
    else:
        own = f"/tmp/sunsetd-{os.getuid()}"
    if not _daemon_in(own) and _exists(_join(SYSTEM_DIR, FRONT_SOCKET)):
        return SYSTEM_DIR
    return own


def _sure(path: str) -> str:
    if not _plain(path):
        raise _FullPath
    return path


def _daemon_in(runtime_dir: str) -> bool:
    try:
        os.stat(_join(runtime_dir, FRONT_SOCKET))
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        if exc.errno in (9, 40):  # EBADF, ELOOP: Path.exists() says False; anything else it raises
            return False
        raise _FullPath from None
    try:
        with open(_join(runtime_dir, LOCK_FILE)) as f:
            pid = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return True
    return os.path.exists(f"/proc/{pid}")


def _exists(path: str) -> bool:
    try:
        os.stat(path)
        return True
    except PermissionError:
        return True
    except OSError:
        return False


class _OneShot:
    """sunsetd.client.Client's check() and call(), over sunsetd.zmtp: the same requests, the same
    replies, the same words for what goes wrong (and a refusal said at once, where libzmq would try
    again until the deadline)."""

    def __init__(self, runtime_dir: str | None):
        self.runtime_dir = oneshot_runtime_dir(runtime_dir)
        self.socket_path = _join(self.runtime_dir, FRONT_SOCKET)
        if len(os.fsencode(self.socket_path)) > SUN_PATH_MAX:
            raise _FullPath  # rundir's message
        self.dealer: Any = None
        self.last_id = 0

    def close(self) -> None:
        if self.dealer is not None:
            self.dealer.close()

    def __enter__(self) -> "_OneShot":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self) -> None:
        try:
            os.stat(self.socket_path)
        except PermissionError:
            raise _Unreachable(self._denied()) from None
        except OSError:
            raise _Unreachable(f"sunsetd is not running on {self.runtime_dir} (no {FRONT_SOCKET})") from None
        if not os.access(self.socket_path, os.R_OK | os.W_OK):
            raise _Unreachable(self._denied())

    def _denied(self) -> str:
        try:
            import grp

            group = grp.getgrgid(os.stat(self.runtime_dir).st_gid).gr_name
        except (OSError, KeyError):
            group = None
        how = f"; members of group {group} may (usermod -aG {group} $USER)" if group else ""
        return f"permission denied: {self.socket_path} is not yours to use{how}, or use sudo"

    def _refused(self) -> str:
        """The daemon's ZAP handler said no. To its own uid and root only when it has as many clients as
        it allows; to anyone else, because they are not in its --socket-group."""
        try:
            owner = os.stat(self.socket_path).st_uid
        except OSError:
            owner = None
        if os.geteuid() in (0, owner):
            return (f"sunsetd on {self.runtime_dir} refused the connection: it has as many clients as it allows "
                    "(--max-clients; its log says more)")
        return self._denied()

    def call(self, to: str, op: str, body: Any = None, timeout: float = 5.0, retry: bool = False) -> Any:
        from sunsetd import packlite, zmtp

        self.check()
        self.last_id += 1
        rid = self.last_id
        request = {"v": PROTOCOL_VERSION, "id": rid, "to": to, "op": op, "body": body,
                   "timeout_ms": max(1, int(timeout * 1000))}
        if retry:
            request["retry"] = True
        try:
            frame = packlite.pack(request)
        except Exception:
            if self.dealer is None:
                raise _FullPath from None  # msgpack's error (an int too large), as the full path raises it
            raise
        if len(frame) > MAX_FRAME_BYTES:
            if self.dealer is None:
                raise _FullPath  # its ValueError, as it says it
            raise ValueError(f"request of {len(frame)} bytes is over the {MAX_FRAME_BYTES}-byte frame limit")
        wait = timeout + REPLY_SLACK_S
        if self.dealer is None:
            self.dealer = zmtp.Dealer(self.socket_path, MAX_FRAME_BYTES)
        try:
            self.dealer.send(frame, time.monotonic() + wait)
            while True:
                data = self.dealer.recv(time.monotonic() + wait)
                if data is None:
                    raise zmtp.Timeout()
                try:
                    reply = packlite.unpack(data, "reply frame")
                except ValueError as exc:  # protocol.ProtocolError
                    raise _Unreadable(str(exc)) from None
                if reply.get("id") == rid:
                    break
        except zmtp.Timeout:
            raise _Unreachable(f"no reply from sunsetd on {self.runtime_dir} within {wait:g}s") from None
        except zmtp.Refused:
            raise _Unreachable(self._refused()) from None
        except zmtp.NotZmtp as exc:
            raise _Unreachable(f"{self.socket_path} is not sunsetd's socket: {exc}") from None
        except zmtp.TooLarge as exc:
            raise _Unreadable(f"reply frame is {exc.size} bytes, over the {MAX_FRAME_BYTES}-byte limit") from None
        except PermissionError:
            raise _Unreachable(self._denied()) from None
        except OSError as exc:
            raise _Unreachable(f"cannot connect to {self.socket_path}: {exc.strerror or exc}") from None
        if reply.get("ok"):
            return reply.get("body")
        error = reply.get("error") or {}
        raise _Remote(str(error.get("code")), str(error.get("message")))


# ---- sunsetd -------------------------------------------------------------------------------------------

EXIT_RUNTIME = 1  # sunsetd: the runtime directory is unusable, or another daemon runs on it
EXIT_PROFILE = 2  # sunsetd: the profile has errors


def build_daemon_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="sunsetd", description="Supervise a profile of agents and route requests to them over ZeroMQ.",
        epilog="Exit status: 0 clean stop (or --check passed), 1 runtime directory unusable or already in use, "
               "2 profile errors.")
    parser.add_argument("--version", action="version", version=f"sunsetd {__version__}")
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
    parser.add_argument("--log-dir", default=os.environ.get("SUNSETD_LOG_DIR") or None,
                        help="also write each agent's log to DIR/AGENT.log, rotated by size (for hosts without journald)")
    parser.add_argument("--log-max-bytes", type=_size, default=10 * 1024 * 1024,
                        help="rotate an agent's log file at this size (bytes, or with K/M/G; default 10M)")
    parser.add_argument("--log-backups", type=_count, default=3, help="rotated files kept per agent (default 3)")
    parser.add_argument("--max-clients", type=_count, default=None,
                        help="front and events connections open at once; more are refused with a log line "
                             "(default 4096, fewer when the fd limit leaves less room)")
    parser.add_argument("--dumpable", action="store_true",
                        help="leave daemon, zygote and agents dumpable (by default no other process of this uid may "
                             "read their memory; a benchmark reading agents' PSS without root needs this)")
    parser.add_argument("--socket-group", default=os.environ.get("SUNSETD_SOCKET_GROUP") or None,
                        help="let this group use sunsetctl: the runtime directory becomes 0750 and the front and "
                             "events sockets 0660, of this group (the agents socket stays the daemon's own)")
    return parser


def _size(text: str) -> int:
    import argparse

    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    number, unit = (text[:-1], units[text[-1].upper()]) if text and text[-1].upper() in units else (text, 1)
    try:
        value = int(float(number) * unit)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (bytes, or a number with K, M or G)") from None
    if value < 4096:
        raise argparse.ArgumentTypeError(f"at least 4K, got {text}")
    return value


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
    from sunsetd.forkserver import DUMPABLE_ENV, ForkServer, ForkServerError, keep_private

    if args.dumpable:
        os.environ[DUMPABLE_ENV] = "1"  # the zygote and agents read it too
    keep_private()

    runtime_dir = rundir.resolve(args.runtime_dir)
    try:
        rundir.check_path_length(runtime_dir)
        access = rundir.Access(None if args.socket_group is None else rundir.group_id(args.socket_group))
    except rundir.RuntimeDirError as exc:
        print(f"sunsetd: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    zygote = None
    if args.spawner == "fork":  # its imports too overlap ours; it forks nothing until asked
        try:
            zygote = ForkServer(runtime_dir).start()
        except ForkServerError:
            zygote = None  # the spawner tries again, and falls back to exec
    try:
        from sunsetd import logs
        from sunsetd.daemon import Daemon, LogDir
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
    from pathlib import Path

    log_dir = None if args.log_dir is None else LogDir(Path(args.log_dir), args.log_max_bytes, args.log_backups)
    return Daemon(profile, runtime_dir, args.profile, metrics_addr, args.spawner, zygote, access, log_dir,
                  max_clients=args.max_clients).run()


if __name__ == "__main__":
    sys.exit(main())
