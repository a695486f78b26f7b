"""sunsetd beside its peers: supervisord and circus, and the floors of any Python supervisor, in one run.

Systems (--systems; every one by default):
  sunsetd-fork      `sunsetd --spawner fork` (the default): agents forked from its pre-imported zygote
  sunsetd-exec      `sunsetd --spawner exec`: each agent a fresh `python -m sunsetd.agent`
  supervisord       supervisord 4.3.0 with its defaults (autorestart=unexpected, startsecs=1,
                    startretries=3; only its socket, log and pid paths are set)
  supervisord-fast  the same with startsecs=0 and autorestart=true on every program
  circus            circusd 0.19.0 with its defaults (check_delay 5 s: the arbiter looks at its
                    processes every 5 s; only its endpoints and log are set)
  circus-fast       the same with check_delay = 0.1
  floor-fork        bench/peers/floor.py fork: a Python parent that has imported zmq and msgpack forks
                    each child (no exec) and forks it again as soon as wait() reports its death
  floor-exec        bench/peers/floor.py exec: the same parent, each child fork+exec of a fresh
                    interpreter running bench/peers/child.py

Workloads (--workloads): 16 and 77 children, each of which answers a ping.
  sunsetd: Echo agents (agents.testing:Echo), bench/profiles/flat16.yaml and flat77.yaml: one
      dependency level, the default timings and restart policy. A ping is a `pid` request through
      the daemon's front socket (sunsetd.client.Client), answered by the agent with its pid.
  every other system: bench/peers/child.py NAME DIR, one process per child: a Python program that
      imports zmq and msgpack (as an agent must before it can answer), makes a zmq context and binds
      a REP socket on ipc://DIR/NAME.sock, and answers any request with msgpack {pid, name}; it
      blocks in recv() while idle. A ping is a fresh REQ socket from this process to that endpoint.
  So sunsetd's figures include its router hop (client -> daemon -> agent) and the others' do not.

Sections (--only; all by default), each printed as a table with a ratio to sunsetd-fork:
  cold     launch of the supervisor -> every child answering a ping (pings queued from the launch:
           the peers' REQ sockets reconnect every 5 ms; sunsetd's are sent when its front socket
           first answers `status`, polled every 5 ms). Median over runs, rounds interleaved (each
           round runs every system once, the order rotating). For sunsetd also the agents' restarts
           during the start (the `restarts` field of the status op, summed) and the runs with none.
  then one instance per workload and system (the order rotating between workloads) for:
  status   the supervisor's status of every child: raw, one request over a fresh connection from
           this already-imported process (sunsetd: the `status` control request that `sunsetctl
           status` sends, over sunsetd.client.Client; supervisord: XML-RPC
           supervisor.getAllProcessInfo, an HTTP/1.0 POST over its unix socket; circus: the `status`
           command, JSON over a DEALER to its zmq endpoint); and the whole command (`sunsetctl
           status`, `supervisorctl status`, `circusctl status`: fork+exec to exit, wall clock).
           Medians of --status-runs (after one warm-up).
  pss      the sum of Pss in /proc/PID/smaps_rollup of the supervisor, its helpers (sunsetd's zygote
           and spares, circusd-stats) and every child, one system at a time (a page shared with
           another system's processes would be split with them).
  restart  SIGKILL of a child -> a ping answered by a new pid; p50 and p95 over --kills kills. The
           children are killed in turn (child k mod N), --gap s after the last answer, but never one
           child more often than once in --cycle s (11 s: longer than sunsetd's default stable_s
           10 and supervisord's startsecs 1, so every kill meets a stable child in every system's
           defaults). Circus looks at its processes on a timer (check_delay): before each kill it
           also waits a random part of that period (seeded), else every kill would come at the same
           phase of the timer, just after the restart before. The pid to kill is the one the child
           answers; the new one too.
  idle     all systems' instances of a workload (--idle-workloads, 77 by default) running side by
           side, --settle s after the last one is up, one shared window of --idle s: the CPU time
           (user+system, every thread: /proc/PID/task/*/schedstat) of each supervisor, its helpers
           and every child (children of children too), as a share of one core. Each tree is listed
           at the start and at the end; a process in both counts its difference, one only at the end
           all of its time. (Side by side: idle trees use a few % of a core between them; one at a
           time, --one-at-a-time, the section takes eight times as long.)
  crash    a profile or config of one child that exits at once after it starts (sunsetd:
           agents.testing:CrashAtStart, default policy; the others: child.py --crash, which appends
           its pid to a file), all systems side by side (or --one-at-a-time), one window of --crash s
           from the moment every supervisor answers its own API: starts seen, CPU of each whole tree
           (utime+stime+cutime+cstime of /proc/PID/stat of every live process of the tree, so
           children that were reaped are counted), and the final state: did it stop (circuit open,
           FATAL, watcher stopped). The floors have no policy and would loop forever: not run.
  router   bench/router.py --json (its own daemon and raw pyzmq servers): sunsetd's p50 and
           throughput against the raw two-hop proxy.

Before each cold-start round, each instance, the idle and crash windows and the router, it waits (at
most --quiet-max s) for a quiet machine: the 1-minute load average below --quiet-load, or, since that
average lags a burst of our own (77 interpreters starting) by minutes, the CPU at least 85 % idle over
2 s; it says what it waited for. Every table shows the load averages at the start and end of each
measurement. A final table says MET / NOT MET for issue #12's targets. A system that fails is reported
and the run goes on with the others (exit status 1).

Every process it starts runs in a session of its own under this process, which is a child subreaper:
whatever a supervisor leaves behind is reparented here, and at the end (or on Ctrl-C, SIGTERM, an
exception) every descendant is killed and reaped. Configs, sockets and logs are in temporary
directories that are removed.

    .venv/bin/python bench/peers.py                       # the full run, about 16 minutes on 2 cores
    .venv/bin/python bench/peers.py --quick               # a few minutes: few repetitions, short windows
    .venv/bin/python bench/peers.py --only restart,idle --systems sunsetd-fork,supervisord --json out.json
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import xmlrpc.client
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgpack  # noqa: E402
import psutil  # noqa: E402
import zmq  # noqa: E402

import _common as c  # noqa: E402

PEERS_DIR = c.BENCH / "peers"
CHILD = PEERS_DIR / "child.py"
FLOOR = PEERS_DIR / "floor.py"
BIN = Path(sys.executable).parent
SYSTEMS = ("sunsetd-fork", "sunsetd-exec", "supervisord", "supervisord-fast", "circus", "circus-fast",
           "floor-fork", "floor-exec")
SECTIONS = ("cold", "status", "pss", "idle", "restart", "crash", "router")
INSTANCE_SECTIONS = ("status", "pss", "restart")
BASE = "sunsetd-fork"
CTX = zmq.Context.instance()
PR_SET_CHILD_SUBREAPER = 36
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- load average ---------------------------------------------------------------------------------------
def load() -> float:
    return os.getloadavg()[0]


def cpu_busy(seconds: float) -> float:
    """Cores busy (not idle, not iowait) over the next `seconds`, from /proc/stat."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]
    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return (1 - (i1 - i0) / max(1, t1 - t0)) * (os.cpu_count() or 1)


def quiet(what: str, args: argparse.Namespace) -> dict:
    """Wait (at most --quiet-max s) until the machine is quiet: the 1-minute load average below
    --quiet-load, or, since that average lags a burst of our own by minutes, the CPU at least 85 % idle
    over the last 2 s (that is what another process at work would show)."""
    t0 = time.monotonic()
    start = load()
    why = None
    while True:
        if load() < args.quiet_load:
            why = f"load {load():.2f} < {args.quiet_load:g}"
            break
        busy = cpu_busy(2.0)
        if busy < 0.15 * (os.cpu_count() or 1):
            why = f"load {load():.2f} but the CPU {100 - busy / (os.cpu_count() or 1) * 100:.0f} % idle over 2 s"
            break
        if time.monotonic() - t0 >= args.quiet_max:
            why = f"gave up after {args.quiet_max:g}s: {busy:.2f} cores busy"
            break
    waited = time.monotonic() - t0
    if waited >= 0.5:
        print(f"  [{what}: waited {waited:.0f}s for quiet (load {start:.2f} at first): {why}]", flush=True)
    return {"waited_s": round(waited, 1), "load": round(load(), 2), "why": why}


class Loads:
    """The 1-minute load average at the start and end of a measurement."""

    def __enter__(self) -> "Loads":
        self.start = load()
        return self

    def __exit__(self, *exc: object) -> None:
        self.end = load()

    def text(self) -> str:
        return f"{self.start:.2f}-{getattr(self, 'end', math.nan):.2f}"


def loads_text(pairs: list[tuple[float, float]]) -> str:
    if not pairs:
        return "-"
    return f"{min(a for a, _ in pairs):.2f}-{max(b for _, b in pairs):.2f}"


# ---- processes ------------------------------------------------------------------------------------------
def become_subreaper() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        print("warning: could not become a child subreaper; orphans of a supervisor may be missed", file=sys.stderr)


def reap() -> None:
    """Reap every child that has exited (orphans reparented to us included)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_descendants(wait: float = 3.0) -> list[int]:
    """SIGKILL every process below this one (several passes: a dying supervisor may fork), reap them;
    returns the pids that had to be killed."""
    killed: list[int] = []
    deadline = time.monotonic() + wait
    while True:
        procs = [p for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE] \
            if psutil.pid_exists(os.getpid()) else []
        if not procs:
            break
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
                killed.append(p.pid)
        time.sleep(0.05)
        reap()
        if time.monotonic() > deadline:
            break
    reap()
    return killed


def tree(root: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(root)
        return [p, *p.children(recursive=True)]
    except psutil.Error:
        return []


def task_cpu_ns(pid: int) -> int:
    """CPU time of every live thread of a process, ns (schedstat: exact, not in clock ticks)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def stat_cpu_s(pid: int) -> float:
    """utime+stime+cutime+cstime of a process (its reaped children included), seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_cpu_ns(root: int) -> dict[int, tuple[float, int]]:
    """{pid: (create time, CPU ns)} for the whole tree."""
    out = {}
    for p in tree(root):
        with contextlib.suppress(psutil.Error):
            out[p.pid] = (p.create_time(), task_cpu_ns(p.pid))
    return out


def cpu_between(a: dict[int, tuple[float, int]], b: dict[int, tuple[float, int]]) -> tuple[float, int, int]:
    """(CPU seconds used between snapshots a and b, processes that were only in a, only in b)."""
    used = 0
    for pid, (created, ns) in b.items():
        before = a.get(pid)
        used += ns - before[1] if before is not None and before[0] == created else ns
    gone = sum(1 for pid, (created, _) in a.items() if pid not in b or b[pid][0] != created)
    new = sum(1 for pid, (created, _) in b.items() if pid not in a or a[pid][0] != created)
    return used / 1e9, gone, new


def run_time(argv: list[str], ok_codes: tuple[int, ...] = (0,)) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=c.REPO)
    took = time.perf_counter() - t0
    if r.returncode not in ok_codes:
        raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.decode(errors='replace')[-500:]}")
    return took


# ---- pinging the peers' children ------------------------------------------------------------------------
def req_socket(endpoint: str, reconnect_ms: int) -> zmq.Socket:
    s = CTX.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RECONNECT_IVL, reconnect_ms)
    s.connect(endpoint)
    return s


def ping_endpoint(endpoint: str, timeout: float = 5.0) -> int:
    s = req_socket(endpoint, 5)
    try:
        s.send(b"ping")
        if not s.poll(int(timeout * 1000)):
            raise RuntimeError(f"no answer from {endpoint} within {timeout}s")
        return msgpack.unpackb(s.recv())["pid"]
    finally:
        s.close(linger=0)


def wait_endpoints(endpoints: list[str], timeout: float, reconnect_ms: int = 5) -> float:
    """Ping every endpoint at once (queued until each child binds); perf_counter when the last answered."""
    socks = [req_socket(ep, reconnect_ms) for ep in endpoints]
    poller = zmq.Poller()
    for s in socks:
        s.send(b"ping")
        poller.register(s, zmq.POLLIN)
    pending = set(socks)
    last = time.perf_counter()
    deadline = time.monotonic() + timeout
    try:
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{len(pending)} of {len(endpoints)} children not answering after {timeout:g}s")
            for s, _ in poller.poll(int(left * 1000) + 1):
                s.recv()
                last = time.perf_counter()
                pending.discard(s)
                poller.unregister(s)
    finally:
        for s in socks:
            s.close(linger=0)
    return last


def probe_endpoint(endpoint: str, old: int, give_up: float) -> tuple[float, int, int]:
    """Ping until a pid other than `old` answers: (perf_counter at the answer, new pid, attempts). A fresh
    REQ socket per attempt, reconnecting every 1 ms until the new child binds; an attempt that gets no
    answer in 200 ms (it reached the dying one) is abandoned for a new one."""
    deadline = time.perf_counter() + give_up
    attempts = 0
    while time.perf_counter() < deadline:
        attempts += 1
        s = req_socket(endpoint, 1)
        try:
            s.send(b"ping")
            if s.poll(200):
                pid = msgpack.unpackb(s.recv())["pid"]
                if pid != old:
                    return time.perf_counter(), pid, attempts
        finally:
            s.close(linger=0)
    raise RuntimeError(f"no new pid answered on {endpoint} within {give_up:g}s")


# ---- the systems ----------------------------------------------------------------------------------------
class System:
    """One supervisor with N children (or one crashing child) in a temporary directory of its own."""

    key = ""
    has_status = True
    phase_s = 0.0  # the period of a supervisor that looks at its children on a timer (circus' check_delay)

    def __init__(self, n: int, crash: bool = False):
        self.n = n
        self.crash = crash
        self.dir = Path(tempfile.mkdtemp(prefix="pe-", dir="/tmp"))  # short: ipc paths fit in sun_path
        self.names = ["crash"] if crash else [f"c{i:02d}" for i in range(n)]
        self.proc: subprocess.Popen | None = None
        self.t_launch = 0.0  # perf_counter just before the exec
        self._log = None

    # to be provided
    def argv(self) -> list[str]:
        raise NotImplementedError

    def write_config(self) -> None:
        pass

    def status_raw(self) -> None:
        raise NotImplementedError

    def cli_status(self) -> list[str]:
        raise NotImplementedError

    def api_up(self) -> bool:
        """Does the supervisor answer its own API yet?"""
        raise NotImplementedError

    def crash_state(self) -> str:
        raise NotImplementedError

    def is_child(self, p: psutil.Process) -> bool:
        """Is this process of the tree one of the children (else the supervisor or a helper of it)?"""
        return any(a.endswith("child.py") for a in p.cmdline()[:3])

    def split(self, procs: list[psutil.Process]) -> dict[str, list[int]]:
        """The tree's pids as {"supervisor": [root], "helpers": [...], "children": [...]}."""
        out: dict[str, list[int]] = {"supervisor": [], "helpers": [], "children": []}
        for p in procs:
            try:
                kind = "supervisor" if p.pid == self.root else "children" if self.is_child(p) else "helpers"
            except psutil.Error:
                continue
            out[kind].append(p.pid)
        return out

    def crash_starts(self) -> int:
        try:
            return len((self.dir / "crash.starts").read_text().split())
        except OSError:
            return 0

    # common
    @property
    def root(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def endpoint(self, i: int) -> str:
        return f"ipc://{self.dir}/{self.names[i]}.sock"

    def launch(self) -> None:
        self.write_config()
        self._log = open(self.dir / "out.log", "ab")
        self.t_launch = time.perf_counter()
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=c.REPO, start_new_session=True)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.key} exited with {self.proc.returncode}: {self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "out.log").read_text(errors="replace")[-n:]
        return ""

    def wait_up(self, timeout: float = 120.0) -> float:
        """perf_counter when every child answered its first ping."""
        return wait_endpoints([self.endpoint(i) for i in range(self.n)], timeout)

    def ping(self, i: int) -> int:
        return ping_endpoint(self.endpoint(i))

    def probe_new(self, i: int, old: int, give_up: float = 60.0) -> tuple[float, int]:
        t, pid, _ = probe_endpoint(self.endpoint(i), old, give_up)
        return t, pid

    def wait_api(self, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        while not self.api_up():
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.key}: its API does not answer after {timeout:g}s: {self.log_tail()}")
            time.sleep(0.005)
        return time.perf_counter()

    def terminate(self) -> None:
        """Ask the supervisor to stop (SIGTERM): it stops its children itself."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> float | None:
        """Stop the supervisor and whatever is left of its tree; returns SIGTERM -> exit seconds."""
        took = None
        if self.proc is not None:
            procs = tree(self.proc.pid)
            if self.proc.poll() is None:
                t0 = time.perf_counter()
                self.terminate()
                try:
                    self.proc.wait(timeout)
                    took = time.perf_counter() - t0
                except subprocess.TimeoutExpired:
                    print(f"warning: {self.key} did not stop within {timeout:g}s of SIGTERM; killing its tree",
                          file=sys.stderr)
            left = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            deadline = time.monotonic() + 3
            while left and time.monotonic() < deadline:
                time.sleep(0.02)
                reap()
                left = [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            for p in left:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            if left:
                print(f"warning: {self.key}: killed {len(left)} process(es) left after its supervisor exited",
                      file=sys.stderr)
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                if self.proc.poll() is None:
                    self.proc.kill()
                self.proc.wait(5)
            reap()
        if self._log is not None:
            self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return took


class Sunsetd(System):
    def __init__(self, n: int, crash: bool = False, spawner: str = "fork"):
        super().__init__(n, crash)
        self.key = f"sunsetd-{spawner}"
        self.spawner = spawner
        self.profile = (c.BENCH_PROFILES / f"flat{n}.yaml") if not crash else self.dir / "crash.yaml"
        if not crash:
            self.names = [f"flat.a{i:02d}" for i in range(n)]
        self._client: c.Client | None = None

    def write_config(self) -> None:
        if self.crash:
            self.profile.write_text("name: peers-crash\ndescription: one agent that exits at once in setup, "
                                    "the default restart policy\nagents:\n"
                                    "  - {name: crash, run: 'agents.testing:CrashAtStart'}\n")
        elif not self.profile.exists():
            raise RuntimeError(f"no profile {self.profile} for {self.n} agents")

    def argv(self) -> list[str]:
        extra = [] if os.geteuid() == 0 else ["--dumpable"]  # PSS of undumpable agents needs root
        return [*c.sunsetd_command(), "--profile", str(self.profile), "--runtime-dir", str(self.dir / "rt"),
                "--log-level", "INFO", "--spawner", self.spawner, "--metrics-addr", "off", *extra]

    def launch(self) -> None:
        (self.dir / "rt").mkdir(mode=0o700)
        super().launch()

    @property
    def client(self) -> c.Client:
        if self._client is None:
            self._client = c.Client(self.dir / "rt")
        return self._client

    def try_status(self, timeout: float = 0.5) -> dict | None:
        if not (self.dir / "rt" / "sunsetd.sock").exists():
            return None
        cl = self.client
        rid = cl.send("sunsetd", "status", timeout=timeout)
        deadline = time.monotonic() + timeout + 0.5
        while (left := deadline - time.monotonic()) > 0:
            reply = cl.recv(left)
            if reply is None:
                return None
            if reply.get("id") == rid:
                return reply.get("body") if reply.get("ok") else None
        return None

    def status(self) -> dict:
        return self.client.call("sunsetd", "status", timeout=5.0)

    def is_child(self, p: psutil.Process) -> bool:
        return p.name().startswith("sunsetd-agent") or (p.cmdline() or [""])[0].startswith("sunsetd-agent")

    def api_up(self) -> bool:
        return self.try_status() is not None

    def wait_up(self, timeout: float = 120.0) -> float:
        deadline = time.monotonic() + timeout
        while self.try_status() is None:
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.key}: no status answer after {timeout:g}s: {self.log_tail()}")
            time.sleep(0.005)
        cl = self.client
        pending: dict[int, str] = {}
        for name in self.names:
            pending[cl.send(name, "pid", timeout=timeout)] = name
        last = time.perf_counter()
        while pending:
            reply = cl.recv(max(0.1, deadline - time.monotonic()))
            if reply is None:
                raise RuntimeError(f"{self.key}: {len(pending)} agents did not answer: {self.log_tail()}")
            name = pending.pop(reply.get("id"), None)
            if name is None:
                continue
            if not reply.get("ok"):
                raise RuntimeError(f"{self.key}: {name} answered {reply.get('error')}")
            last = time.perf_counter()
        return last

    def ping(self, i: int) -> int:
        return self.client.call(self.names[i], "pid", timeout=5.0)

    def probe_new(self, i: int, old: int, give_up: float = 60.0) -> tuple[float, int]:
        import restart  # bench/restart.py: the same probe as its own measurement

        t, pid, _ = restart.probe_until_new_pid(self.client, self.names[i], old, 0.1, give_up)
        return t, pid

    def status_raw(self) -> None:
        with c.Client(self.dir / "rt") as cl:
            cl.call("sunsetd", "status", timeout=5.0)

    def cli_status(self) -> list[str]:
        return [str(BIN / "sunsetctl"), "--runtime-dir", str(self.dir / "rt"), "status"]

    def restarts(self) -> int:
        return sum(a.get("restarts", 0) for a in self.status()["agents"])

    def crash_starts(self) -> int:
        try:
            text = (self.dir / "out.log").read_text(errors="replace")
        except OSError:
            return 0
        return sum(1 for r in c.log_records(text) if r["agent"] == "crash" and r.get("event") == "spawn"
                   and "failed" not in r["rest"])

    def crash_state(self) -> str:
        a = next(a for a in self.status()["agents"] if a["name"] == "crash")
        stopped = a["circuit"] != "closed" or a["state"] in ("failed", "stopped")
        return (f"{'stopped' if stopped else 'still restarting'}: state {a['state']}, circuit {a['circuit']}, "
                f"restarts {a['restarts']}")

    def stop(self, timeout: float = 10.0) -> float | None:
        if self._client is not None:
            self._client.close()
            self._client = None
        return super().stop(timeout)


class Supervisord(System):
    def __init__(self, n: int, crash: bool = False, fast: bool = False):
        super().__init__(n, crash)
        self.key = "supervisord-fast" if fast else "supervisord"
        self.fast = fast
        self.conf = self.dir / "supervisord.conf"
        self.sock = self.dir / "s.sock"

    def write_config(self) -> None:
        (self.dir / "logs").mkdir()
        lines = [f"[unix_http_server]\nfile={self.sock}\n",
                 f"[supervisord]\nnodaemon=true\nlogfile={self.dir}/supervisord.log\npidfile={self.dir}/supervisord.pid\n"
                 f"childlogdir={self.dir}/logs\n",
                 "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n",
                 f"[supervisorctl]\nserverurl=unix://{self.sock}\n"]
        for name in self.names:
            args = f"--crash {name} {self.dir}" if self.crash else f"{name} {self.dir}"
            prog = f"[program:{name}]\ncommand={sys.executable} {CHILD} {args}\n"
            if self.fast:
                prog += "startsecs=0\nautorestart=true\n"
            lines.append(prog)
        self.conf.write_text("\n".join(lines))

    def argv(self) -> list[str]:
        return [str(BIN / "supervisord"), "-n", "-c", str(self.conf)]

    def rpc(self, method: str, *params: Any, timeout: float = 5.0) -> Any:
        """One XML-RPC call over a fresh connection to the unix socket (HTTP/1.0: it closes after)."""
        body = xmlrpc.client.dumps(params, method).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.sock))
            s.sendall(b"POST /RPC2 HTTP/1.0\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(body), body))
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"supervisord answered {head[:200]!r}")
        return xmlrpc.client.loads(payload)[0][0]

    def api_up(self) -> bool:
        try:
            self.rpc("supervisor.getState", timeout=1.0)
            return True
        except (OSError, RuntimeError, xmlrpc.client.Error):
            return False

    def status_raw(self) -> None:
        info = self.rpc("supervisor.getAllProcessInfo")
        if len(info) != self.n:
            raise RuntimeError(f"supervisord lists {len(info)} processes, not {self.n}")

    def cli_status(self) -> list[str]:
        return [str(BIN / "supervisorctl"), "-c", str(self.conf), "status"]

    def crash_state(self) -> str:
        info = self.rpc("supervisor.getProcessInfo", "crash")
        state = info["statename"]
        return f"{'stopped' if state in ('FATAL', 'STOPPED') else 'still restarting'}: state {state}"


class Circus(System):
    def __init__(self, n: int, crash: bool = False, fast: bool = False):
        super().__init__(n, crash)
        self.key = "circus-fast" if fast else "circus"
        self.fast = fast
        self.phase_s = 0.1 if fast else 5.0  # check_delay: its default in a circus.ini is 5 s
        self.conf = self.dir / "circus.ini"
        self.ctl = f"ipc://{self.dir}/ctl.sock"

    def write_config(self) -> None:
        lines = [f"[circus]\nendpoint = {self.ctl}\npubsub_endpoint = ipc://{self.dir}/pub.sock\n"
                 f"stats_endpoint = ipc://{self.dir}/stats.sock\nlogoutput = {self.dir}/circus.log\n"
                 + ("check_delay = 0.1\n" if self.fast else "")]
        for name in self.names:
            args = f"--crash {name} {self.dir}" if self.crash else f"{name} {self.dir}"
            lines.append(f"[watcher:{name}]\ncmd = {sys.executable}\nargs = {CHILD} {args}\n")
        self.conf.write_text("\n".join(lines))

    def argv(self) -> list[str]:
        return [str(BIN / "circusd"), str(self.conf)]

    def command(self, command: str, timeout: float = 5.0, **props: Any) -> dict:
        """One command over a fresh DEALER, as circusctl sends it: JSON {id, command, properties}."""
        s = CTX.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IDENTITY, uuid.uuid4().hex.encode())
        try:
            s.connect(self.ctl)
            cid = uuid.uuid4().hex
            s.send(json.dumps({"id": cid, "command": command, "properties": props}).encode())
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                if not s.poll(int(left * 1000) + 1):
                    break
                reply = json.loads(s.recv())
                if reply.get("id") == cid:
                    return reply
            raise TimeoutError(f"circus did not answer {command} within {timeout:g}s")
        finally:
            s.close(linger=0)

    def api_up(self) -> bool:
        try:
            return self.command("status", timeout=0.5).get("status") == "ok"
        except TimeoutError:
            return False

    def status_raw(self) -> None:
        reply = self.command("status")
        missing = set(self.names) - set(reply.get("statuses", {}))  # besides ours: circusd-stats, by default
        if missing:
            raise RuntimeError(f"circus status lacks {sorted(missing)}: {reply}")

    def cli_status(self) -> list[str]:
        return [str(BIN / "circusctl"), "--endpoint", self.ctl, "status"]

    def crash_state(self) -> str:
        state = self.command("status", name="crash").get("status")
        return f"{'stopped' if state == 'stopped' else 'still restarting'}: watcher {state}"


class Floor(System):
    has_status = False

    def __init__(self, n: int, crash: bool = False, mode: str = "fork"):
        super().__init__(n, crash)
        self.key = f"floor-{mode}"
        self.mode = mode

    def argv(self) -> list[str]:
        return [sys.executable, str(FLOOR), self.mode, str(self.dir), *self.names]

    def is_child(self, p: psutil.Process) -> bool:
        return p.ppid() == self.root  # fork mode: the children are floor.py too, not exec'd


def make(key: str, n: int, crash: bool = False) -> System:
    return {"sunsetd-fork": lambda: Sunsetd(n, crash, "fork"), "sunsetd-exec": lambda: Sunsetd(n, crash, "exec"),
            "supervisord": lambda: Supervisord(n, crash), "supervisord-fast": lambda: Supervisord(n, crash, True),
            "circus": lambda: Circus(n, crash), "circus-fast": lambda: Circus(n, crash, True),
            "floor-fork": lambda: Floor(n, crash, "fork"), "floor-exec": lambda: Floor(n, crash, "exec")}[key]()


def rotated(items: list[str], k: int) -> list[str]:
    k %= max(1, len(items))
    return items[k:] + items[:k]


# ---- the measurements -----------------------------------------------------------------------------------
def cold_start(key: str, n: int) -> dict:
    s = make(key, n)
    try:
        s.launch()
        t_all = s.wait_up()
        out: dict[str, Any] = {"s": t_all - s.t_launch}
        if isinstance(s, Sunsetd):
            st = s.status()
            out["restarts"] = sum(a.get("restarts", 0) for a in st["agents"])
            out["state"] = st.get("state")
    finally:
        out_stop = s.stop()
    out["stop_s"] = out_stop
    return out


def measure_status(s: System, runs: int) -> dict:
    raw, cli = [], []
    s.status_raw()  # warm-up
    for _ in range(runs):
        t0 = time.perf_counter()
        s.status_raw()
        raw.append(time.perf_counter() - t0)
    argv = s.cli_status()
    run_time(argv, (0, 3))  # warm-up: page cache; sunsetctl and supervisorctl exit 3 while a child is not up
    for _ in range(runs):
        cli.append(run_time(argv, (0, 3)))
    return {"raw": c.summary(raw), "cli": c.summary(cli)}


def measure_pss(s: System) -> dict:
    procs = tree(s.root)
    parts = s.split(procs)
    mb = {k: sum(pss_kb(pid) for pid in pids) / 1024 for k, pids in parts.items()}
    return {"total_mb": sum(mb.values()), "supervisor_mb": mb["supervisor"], "helpers_mb": mb["helpers"],
            "children_mb": mb["children"], "processes": len(procs), "helpers": len(parts["helpers"]),
            "children": len(parts["children"])}


def idle_begin(s: System) -> tuple[dict, float]:
    return tree_cpu_ns(s.root), time.perf_counter()


def idle_end(s: System, mark: tuple[dict, float], window: float) -> dict:
    """CPU of the tree since its begin mark, by part (supervisor, helpers, children); a process counts in
    the part it has at the end. The share is over this system's own interval between its two snapshots."""
    a, t0 = mark
    procs = tree(s.root)
    b = tree_cpu_ns(s.root)
    wall = time.perf_counter() - t0
    used, gone, new = cpu_between(a, b)
    parts = s.split(procs)
    share = {k: cpu_between({p: v for p, v in a.items() if p in pids}, {p: v for p, v in b.items() if p in pids})[0] / wall
             for k, pids in parts.items()}
    return {"share": used / wall, "supervisor_share": share["supervisor"], "helpers_share": share["helpers"],
            "children_share": share["children"], "children": len(parts["children"]), "helpers": len(parts["helpers"]),
            "processes": len(b), "gone": gone, "new": new, "wall_s": wall}


def shared_window(systems: list[System], seconds: float, begin: Callable[[System], Any],
                  end: Callable[[System, Any, float], dict]) -> dict[str, dict]:
    """One window for every system at once: begin() each, sleep, end() each with the window's length."""
    t0 = time.perf_counter()
    marks = [begin(s) for s in systems]
    time.sleep(max(0.0, seconds - (time.perf_counter() - t0)))
    wall = time.perf_counter() - t0
    return {s.key: end(s, m, wall) for s, m in zip(systems, marks)}


def measure_restart(s: System, kills: int, gap: float, cycle: float, seed: int = 12) -> dict:
    """Kills in turn; before each, the gap and, for a supervisor on a timer, a random part of its period
    (else every kill would come at the same phase of its timer, just after the restart before)."""
    import random

    rng = random.Random(seed)
    per_child_gap = max(gap, cycle / s.n)
    times = []
    last_answer = time.perf_counter()
    pids = {}
    for k in range(kills):
        i = k % s.n
        pid = pids.get(i) or s.ping(i)
        wait = per_child_gap + rng.uniform(0, s.phase_s) - (time.perf_counter() - last_answer)
        if wait > 0:
            time.sleep(wait)
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        t1, new = s.probe_new(i, pid)
        last_answer = time.perf_counter()
        times.append(t1 - t0)
        pids[i] = new
    out = {"summary": c.summary(times), "gap_s": per_child_gap, "phase_s": s.phase_s, "times": times}
    if isinstance(s, Sunsetd):
        st = s.status()
        out["restarts"] = sum(a.get("restarts", 0) for a in st["agents"])
        out["circuits_open"] = sum(1 for a in st["agents"] if a["circuit"] != "closed")
    return out


def crash_begin(s: System) -> tuple[int, float, float]:
    return s.crash_starts(), sum(stat_cpu_s(p.pid) for p in tree(s.root)), time.perf_counter()


def crash_end(s: System, mark: tuple[int, float, float], wall: float) -> dict:
    starts0, cpu0, t0 = mark
    cpu1 = sum(stat_cpu_s(p.pid) for p in tree(s.root))
    wall = time.perf_counter() - t0
    starts1 = s.crash_starts()
    state = s.crash_state()
    return {"starts": starts1 - starts0, "starts_before": starts0, "cpu_s": cpu1 - cpu0, "share": (cpu1 - cpu0) / wall,
            "wall_s": wall, "state": state, "stopped": state.startswith("stopped")}


def run_router(args: argparse.Namespace) -> dict:
    with tempfile.NamedTemporaryFile(prefix="peers-router-", suffix=".json", delete=False) as f:
        path = f.name
    try:
        argv = [sys.executable, str(c.BENCH / "router.py"), "--json", path, *args.router_args.split()]
        print(f"  $ {' '.join(os.path.relpath(a) if a.startswith(str(c.REPO)) else a for a in argv)}", flush=True)
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           cwd=c.REPO)
        if r.returncode != 0:
            raise RuntimeError(f"bench/router.py exited {r.returncode}:\n{r.stdout[-3000:]}")
        with open(path) as f:
            return json.load(f)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


# ---- the report -----------------------------------------------------------------------------------------
def ordered(d: dict) -> list[tuple[str, Any]]:
    """A {system: figures} dict in the order of SYSTEMS, whatever order they ran in."""
    return sorted(d.items(), key=lambda kv: SYSTEMS.index(kv[0]) if kv[0] in SYSTEMS else len(SYSTEMS))


def ratio(x: float, base: float | None) -> str:
    if base is None or not base or math.isnan(base) or x is None or math.isnan(x):
        return "-"
    return f"x{x / base:.2f}"


def fmt_ms(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 1000:.1f}"


class Report:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.data: dict[str, Any] = {"argv": sys.argv, "machine": c.machine_info(), "source": c.source_version(),
                                     "options": {k: v for k, v in vars(args).items()}, "sections": {}}
        self.failures: list[str] = []

    def fail(self, what: str, exc: BaseException) -> None:
        text = f"{what}: {type(exc).__name__}: {str(exc)[-1500:]}"
        self.failures.append(text)
        print(f"  FAILED {text}", flush=True)

    def section(self, name: str) -> dict:
        return self.data["sections"].setdefault(name, {})


def print_cold(rep: Report) -> None:
    sec = rep.data["sections"].get("cold")
    if not sec:
        return
    for n, by_sys in sec.items():
        base = c.median([r["s"] for r in by_sys.get(BASE, {}).get("runs", [])]) if BASE in by_sys else None
        rows = []
        for key, d in ordered(by_sys):
            xs = [r["s"] for r in d["runs"]]
            med = c.median(xs)
            restarts = "-"
            if key.startswith("sunsetd"):
                rs = [r.get("restarts", 0) for r in d["runs"]]
                restarts = f"{sum(1 for x in rs if x == 0)} of {len(rs)} runs with 0 (max {max(rs) if rs else '-'})"
            rows.append([key, len(xs), fmt_ms(med), fmt_ms(min(xs) if xs else math.nan),
                         fmt_ms(max(xs) if xs else math.nan), ratio(med, base), restarts, loads_text(d["loads"])])
        print(f"\n## cold start, {n} children: launch -> every child answering a ping\n")
        print(c.table(["system", "runs", "median ms", "min ms", "max ms", "/ sunsetd-fork", "sunsetd restarts in the start",
                       "load"], rows))
        print(f"\nload average, section start -> end: {sec_load(by_sys)}")


def sec_load(by_sys: dict) -> str:
    pairs = [p for d in by_sys.values() for p in d.get("loads", [])]
    return f"{pairs[0][0]:.2f} -> {pairs[-1][1]:.2f}" if pairs else "-"


def print_instances(rep: Report) -> None:
    sec = rep.data["sections"].get("instances", {})
    if not sec and not rep.data["sections"].get("idle"):
        return
    sec = dict(sec)
    for n in rep.data["sections"].get("idle", {}):
        sec.setdefault(n, {})
    for name, title in (("status", "status of every child: one raw request (fresh connection), and the whole CLI"),
                        ("pss", "PSS of the supervisor, its helpers and every child"),
                        ("idle", "idle CPU of the whole tree, share of one core"),
                        ("restart", "SIGKILL of a child -> a new pid answers a ping")):
        for n, by_sys in sec.items():
            have = {k: d[name] for k, d in by_sys.items() if name in d}
            if name == "idle":
                have = rep.data["sections"].get("idle", {}).get(n, {})
            if not have:
                continue
            rows = []
            if name == "status":
                base = have.get(BASE)
                for key, d in ordered(have):
                    rows.append([key, d["raw"]["n"], fmt_ms(d["raw"]["p50"]), ratio(d["raw"]["p50"], base and base["raw"]["p50"]),
                                 fmt_ms(d["cli"]["p50"]), fmt_ms(d["cli"]["p95"]), ratio(d["cli"]["p50"], base and base["cli"]["p50"]),
                                 d["cli_command"], d["load"]])
                headers = ["system", "n", "raw p50 ms", "/ sunsetd-fork", "CLI p50 ms", "CLI p95 ms", "/ sunsetd-fork",
                           "command", "load"]
            elif name == "pss":
                base = have.get(BASE)
                for key, d in ordered(have):
                    rows.append([key, f"1 + {d['helpers']} + {d['children']}", f"{d['total_mb']:.1f}",
                                 f"{d['supervisor_mb']:.1f}", f"{d['helpers_mb']:.1f}", f"{d['children_mb']:.1f}",
                                 f"{d['children_mb'] / max(1, d['children']):.2f}",
                                 ratio(d["total_mb"], base and base["total_mb"]), d["load"]])
                headers = ["system", "processes (sup + helpers + children)", "total MB", "supervisor MB", "helpers MB",
                           "children MB", "per child MB", "total / sunsetd-fork", "load"]
            elif name == "idle":
                base = have.get(BASE)
                for key, d in ordered(have):
                    rows.append([key, f"1 + {d['helpers']} + {d['children']}", f"{d['share'] * 100:.2f} %",
                                 f"{d['supervisor_share'] * 100:.2f} %", f"{d['helpers_share'] * 100:.2f} %",
                                 f"{d['children_share'] * 100:.2f} %",
                                 f"{d['children_share'] / max(1, d['children']) * 1e6:.0f}",
                                 ratio(d["share"], base and base["share"]), f"{d['gone']}/{d['new']}", d["load"]])
                headers = ["system", "processes", "whole tree", "supervisor", "helpers", "children", "µs/s per child",
                           "tree / sunsetd-fork", "gone/new", "load"]
            else:
                base = have.get(BASE)
                for key, d in ordered(have):
                    s = d["summary"]
                    extra = ""
                    if "restarts" in d:
                        extra = f"restarts {d['restarts']}, circuits open {d['circuits_open']}"
                    rows.append([key, s["n"], fmt_ms(s["p50"]), fmt_ms(s["p95"]), fmt_ms(s["min"]), fmt_ms(s["max"]),
                                 ratio(s["p50"], base and base["summary"]["p50"]),
                                 f"{d['gap_s']:.2f}" + (f" + U(0, {d['phase_s']:g})" if d.get("phase_s") else ""),
                                 extra, d["load"]])
                headers = ["system", "kills", "p50 ms", "p95 ms", "min ms", "max ms", "p50 / sunsetd-fork", "wait before a kill, s",
                           "sunsetd after", "load"]
            print(f"\n## {title}, {n} children\n")
            print(c.table(headers, rows))
            loads = [d["load"] for d in have.values()]
            print(f"\nload average, section start -> end: {loads[0].split('-')[0]} -> {loads[-1].split('-')[-1]}")


def print_crash(rep: Report) -> None:
    sec = rep.data["sections"].get("crash")
    if not sec:
        return
    base = sec.get(BASE)
    rows = []
    for key, d in ordered(sec):
        rows.append([key, f"{d['starts']} (+{d['starts_before']} before)", f"{d['cpu_s']:.2f}", f"{d['share'] * 100:.1f} %",
                     ratio(d["cpu_s"], base and base["cpu_s"]), d["state"], d["load"]])
    print(f"\n## crash loop: one child that exits at once after it starts, {rep.args.crash:g} s\n")
    print(c.table(["system", "starts in the window", "CPU s", "share of one core", "CPU / sunsetd-fork",
                   "at the end", "load"], rows))


def print_router(rep: Report) -> None:
    d = rep.data["sections"].get("router")
    if not d:
        return
    rows = []
    for path in ("sunsetd", "raw-2hop", "raw-1hop", "daemon-only"):
        p = d["paths"][path]
        rows.append([path, f"{p['p50_us']:.0f}", f"{p['p99_us']:.0f}", f"{p['throughput']:.0f}",
                     ratio(p["p50_us"], d["paths"]["raw-2hop"]["p50_us"]), ratio(p["throughput"], d["paths"]["raw-2hop"]["throughput"])])
    print(f"\n## router (bench/router.py {rep.args.router_args})\n")
    print(c.table(["path", "p50 µs", "p99 µs", "throughput req/s", "p50 / raw-2hop", "throughput / raw-2hop"], rows))
    print(f"\nload average, section start -> end: {d['load']}")


def targets(rep: Report) -> list[list[str]]:
    sec = rep.data["sections"]
    rows: list[list[str]] = []

    def line(what: str, ok: bool | None, figure: str) -> None:
        rows.append([what, "-" if ok is None else ("MET" if ok else "NOT MET"), figure])

    inst = sec.get("instances", {})
    idle = sec.get("idle", {}).get(77, {}).get(BASE)
    line("idle <= 1 % of one core, 77 idle agents, whole tree", None if idle is None else idle["share"] <= 0.01,
         "not measured" if idle is None else f"{idle['share'] * 100:.2f} %")
    for n in (16, 77):
        r = inst.get(n, {}).get(BASE, {}).get("restart")
        if r is None:
            continue
        s = r["summary"]
        line(f"restart p50 <= 10 ms and p95 <= 15 ms, sunsetd fork, {n} agents", s["p50"] <= 0.010 and s["p95"] <= 0.015,
             f"p50 {fmt_ms(s['p50'])} ms, p95 {fmt_ms(s['p95'])} ms ({s['n']} kills)")
    if not any(inst.get(n, {}).get(BASE, {}).get("restart") for n in (16, 77)):
        line("restart p50 <= 10 ms and p95 <= 15 ms, sunsetd fork", None, "not measured")
    cold = sec.get("cold", {}).get(77, {}).get(BASE)
    if cold:
        rs = [r.get("restarts", 0) for r in cold["runs"]]
        zero = sum(1 for x in rs if x == 0)
        line("cold start of 77 in one level: 0 restarts in 10 of 10 runs",
             (zero == len(rs)) if len(rs) >= 10 or zero < len(rs) else None,
             f"0 restarts in {zero} of {len(rs)} runs" + ("" if len(rs) >= 10 else " (fewer than 10 runs: not judged)"))
        med = c.median([r["s"] for r in cold["runs"]])
        line("cold start of 77 in one level: median <= 1.0 s", med <= 1.0, f"{fmt_ms(med)} ms (launch -> all answering)")
    else:
        line("cold start of 77 in one level: 0 restarts in 10 of 10, median <= 1.0 s", None, "not measured")
    st = [(n, inst.get(n, {}).get(BASE, {}).get("status")) for n in (16, 77)]
    st = [(n, x) for n, x in st if x]
    for n, x in st:
        line(f"`sunsetctl status` whole command <= 40 ms ({n} agents)", x["cli"]["p50"] <= 0.040,
             f"{fmt_ms(x['cli']['p50'])} ms median")
    if not st:
        line("`sunsetctl status` whole command <= 40 ms", None, "not measured")
    pss_sd = inst.get(77, {}).get(BASE, {}).get("pss")
    pss_sv = inst.get(77, {}).get("supervisord", {}).get("pss")
    if pss_sd and pss_sv:
        line("PSS of 77 children + sunsetd <= 0.7x supervisord's", pss_sd["total_mb"] <= 0.7 * pss_sv["total_mb"],
             f"{pss_sd['total_mb']:.0f} MB vs {pss_sv['total_mb']:.0f} MB: x{pss_sd['total_mb'] / pss_sv['total_mb']:.2f}")
    else:
        line("PSS of 77 children + sunsetd <= 0.7x supervisord's", None, "not measured (needs sunsetd-fork and supervisord)")
    router = sec.get("router")
    if router:
        p, raw = router["paths"]["sunsetd"], router["paths"]["raw-2hop"]
        line("router throughput >= 0.8x raw two-hop proxy", p["throughput"] >= 0.8 * raw["throughput"],
             f"{p['throughput']:.0f} vs {raw['throughput']:.0f} req/s: x{p['throughput'] / raw['throughput']:.2f}")
        line("router p50 <= 1.2x raw two-hop proxy", p["p50_us"] <= 1.2 * raw["p50_us"],
             f"{p['p50_us']:.0f} vs {raw['p50_us']:.0f} µs: x{p['p50_us'] / raw['p50_us']:.2f}")
    else:
        line("router >= 0.8x raw two-hop throughput, <= 1.2x its p50", None, "not measured")
    return rows


def print_all(rep: Report) -> None:
    print_cold(rep)
    print_instances(rep)
    print_crash(rep)
    print_router(rep)
    rows = targets(rep)
    rep.data["targets"] = [{"target": a, "verdict": b, "figure": f} for a, b, f in rows]
    print("\n## targets (issue #12)\n")
    print(c.table(["target", "verdict", "measured"], rows))


# ---- main -----------------------------------------------------------------------------------------------
def check_peers_installed(systems: list[str]) -> str | None:
    need = {"supervisord": "supervisord", "supervisord-fast": "supervisord", "circus": "circusd", "circus-fast": "circusd"}
    missing = sorted({need[s] for s in systems if s in need and not (BIN / need[s]).exists()})
    if missing:
        return (f"{', '.join(missing)} not found next to {sys.executable}: install the bench extra "
                f"(.venv/bin/pip install -e '.[bench]' --config-settings editable_mode=compat), or leave them out with --systems")
    return None


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few repetitions and short windows (development: a few minutes)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"sections, comma-separated (default all: {','.join(SECTIONS)})")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated (default all: {','.join(SYSTEMS)})")
    ap.add_argument("--workloads", default="16,77", help="numbers of children, comma-separated (16 and/or 77)")
    ap.add_argument("--json", metavar="PATH", help="also write every figure to PATH as JSON")
    ap.add_argument("--kills", type=int, help="SIGKILLs per system and workload (default 20; quick 5)")
    ap.add_argument("--gap", type=float, default=0.3, help="seconds from an answer to the next kill, at least (0.3)")
    ap.add_argument("--cycle", type=float, default=11.0,
                    help="seconds between two kills of the same child, at least (11: past sunsetd's stable_s 10)")
    ap.add_argument("--cold-runs", type=int, help="cold starts of sunsetd-fork per workload (default 10; quick 3)")
    ap.add_argument("--cold-runs-others", type=int, help="cold starts of every other system (default 3; quick 1)")
    ap.add_argument("--idle", type=float, help="idle window, seconds (default 30; quick 5)")
    ap.add_argument("--settle", type=float, help="quiet before the idle window, seconds (default 8; quick 2)")
    ap.add_argument("--idle-workloads", help="workloads whose idle CPU is measured (default 77: 30 s a system)")
    ap.add_argument("--status-runs", type=int, help="status requests and commands per system (default 20; quick 5)")
    ap.add_argument("--one-at-a-time", action="store_true",
                    help="idle and crash loop: one system at a time (default: every system side by side in one window)")
    ap.add_argument("--crash", type=float, help="crash-loop window, seconds (default 30; quick 8)")
    ap.add_argument("--router-args", help="arguments to bench/router.py (default --reps 3; quick a short run)")
    ap.add_argument("--quiet-load", type=float, default=1.0, help="wait for a 1-minute load average below this (1.0)")
    ap.add_argument("--quiet-max", type=float, help="seconds to wait for it at most (default 15; quick 3)")
    args = ap.parse_args()
    q = args.quick
    defaults = {"kills": (20, 5), "cold_runs": (10, 3), "cold_runs_others": (3, 1), "idle": (30.0, 5.0),
                "settle": (8.0, 2.0), "status_runs": (20, 5), "crash": (30.0, 8.0), "quiet_max": (15.0, 3.0),
                "router_args": ("--reps 3", "--reps 1 --samples 500 --warmup 100 --duration 1"),
                "idle_workloads": ("77", "77")}
    for k, (full, quick) in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, quick if q else full)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    args.system_list = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.workload_list = [int(x) for x in args.workloads.split(",") if x.strip()]
    args.idle_list = [int(x) for x in args.idle_workloads.split(",") if x.strip()]
    for s in args.sections:
        if s not in SECTIONS:
            ap.error(f"unknown section {s} (sections: {', '.join(SECTIONS)})")
    for s in args.system_list:
        if s not in SYSTEMS:
            ap.error(f"unknown system {s} (systems: {', '.join(SYSTEMS)})")
    for n in args.workload_list:
        if n not in (16, 77):
            ap.error("workloads are 16 and 77 (bench/profiles/flat16.yaml, flat77.yaml)")
    if args.kills < 1 or args.cold_runs < 1 or args.status_runs < 1:
        ap.error("--kills, --cold-runs and --status-runs must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    c.print_header("sunsetd beside supervisord, circus and the floors: restart, cold start, idle CPU, PSS, status, "
                   "crash loop")
    problem = check_peers_installed(args.system_list)
    if problem:
        print(problem)
        return 2
    import circus
    import supervisor.options

    print(f"peers:   supervisor {supervisor.options.VERSION}, circus {circus.__version__} "
          f"(tornado {__import__('tornado').version}); children: {os.path.relpath(CHILD)}")
    print(f"systems: {', '.join(args.system_list)}; workloads: {', '.join(map(str, args.workload_list))} children; "
          f"sections: {', '.join(args.sections)}")
    print(f"repetitions: {args.kills} kills, cold starts {args.cold_runs} (sunsetd-fork) / {args.cold_runs_others} "
          f"(others), idle {args.idle:g}s after {args.settle:g}s (workloads {args.idle_workloads}), {args.status_runs} "
          f"status runs, crash loop {args.crash:g}s; quiet: load < {args.quiet_load:g}, wait <= {args.quiet_max:g}s\n",
          flush=True)
    become_subreaper()
    rep = Report(args)
    code = 0
    t_run = time.monotonic()
    try:
        run_sections(rep, args)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", flush=True)
        code = 130
    except Exception as exc:  # the report of what was measured, and the cleanup, all the same
        import traceback

        traceback.print_exc()
        print(f"\nfailed: {exc}", flush=True)
        code = 1
    finally:
        left = kill_descendants()
        if left:
            print(f"warning: killed {len(left)} process(es) left behind: {left}", file=sys.stderr)
    print_all(rep)
    rep.data["failures"] = rep.failures
    if rep.failures:
        print("\nfailed measurements:\n" + "\n".join(f"  {f}" for f in rep.failures))
        code = code or 1
    rep.data["elapsed_s"] = round(time.monotonic() - t_run, 1)
    print(f"\nelapsed: {rep.data['elapsed_s']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep.data, f, indent=1, default=str)
        print(f"figures written to {args.json}")
    return code


def run_sections(rep: Report, args: argparse.Namespace) -> None:
    systems = args.system_list
    if "cold" in args.sections:
        print("# cold start", flush=True)
        for n in args.workload_list:
            sec = rep.section("cold").setdefault(n, {})
            rounds = max(args.cold_runs if BASE in systems else 0, args.cold_runs_others)
            for r in range(rounds):
                quiet(f"cold start {n}, round {r + 1}", args)
                for key in rotated(systems, r):
                    if r >= (args.cold_runs if key == BASE else args.cold_runs_others):
                        continue
                    try:
                        with Loads() as ld:
                            res = cold_start(key, n)
                    except Exception as exc:  # noqa: BLE001 (one system failing must not end the run)
                        rep.fail(f"cold start {n}, {key}", exc)
                        continue
                    d = sec.setdefault(key, {"runs": [], "loads": []})
                    d["runs"].append(res)
                    d["loads"].append((ld.start, ld.end))
                    extra = f", {res['restarts']} restarts, {res['state']}" if "restarts" in res else ""
                    print(f"  cold {n} round {r + 1} {key}: {fmt_ms(res['s'])} ms{extra}", flush=True)
                    time.sleep(0.5)
    wanted = [s for s in INSTANCE_SECTIONS if s in args.sections]
    if wanted:
        print(f"# one instance per workload and system: {', '.join(wanted)}", flush=True)
        for w, n in enumerate(args.workload_list):
            sec = rep.section("instances").setdefault(n, {})
            for key in rotated(systems, w):
                quiet(f"{key} with {n} children", args)
                s = make(key, n)
                d = sec.setdefault(key, {})
                try:
                    s.launch()
                    s.wait_up()
                    if "status" in wanted and s.has_status:
                        with Loads() as ld:
                            res = measure_status(s, args.status_runs)
                        res["cli_command"] = Path(s.cli_status()[0]).name + " status"
                        res["load"] = ld.text()
                        d["status"] = res
                        print(f"  {key} {n}: status raw {fmt_ms(res['raw']['p50'])} ms, "
                              f"CLI {fmt_ms(res['cli']['p50'])} ms", flush=True)
                    if "pss" in wanted:
                        with Loads() as ld:
                            res = measure_pss(s)
                        res["load"] = ld.text()
                        d["pss"] = res
                        print(f"  {key} {n}: PSS {res['total_mb']:.1f} MB in {res['processes']} processes", flush=True)
                    if "restart" in wanted:
                        with Loads() as ld:
                            res = measure_restart(s, args.kills, args.gap, args.cycle)
                        res["load"] = ld.text()
                        d["restart"] = res
                        sm = res["summary"]
                        print(f"  {key} {n}: restart p50 {fmt_ms(sm['p50'])} ms, p95 {fmt_ms(sm['p95'])} ms", flush=True)
                except Exception as exc:  # noqa: BLE001
                    rep.fail(f"{key} with {n} children", exc)
                finally:
                    s.stop()
    groups = [[k] for k in systems] if args.one_at_a_time else [systems]
    if "idle" in args.sections:
        for n in args.idle_list:
            print(f"# idle, {n} children: " + ("one system at a time" if args.one_at_a_time else
                                               "every system side by side, one shared window"), flush=True)
            sec = rep.section("idle").setdefault(n, {})
            for group in groups:
                quiet(f"idle {n}: {', '.join(group)}", args)
                running: list[System] = []
                try:
                    for key in group:
                        running.append(make(key, n))
                        running[-1].launch()
                        running[-1].wait_up()
                    time.sleep(args.settle)
                    with Loads() as ld:
                        res = shared_window(running, args.idle, idle_begin, idle_end)
                    for key, d in res.items():
                        d["load"] = ld.text()
                        sec[key] = d
                        print(f"  {key} {n}: idle {d['share'] * 100:.2f} % of one core", flush=True)
                except Exception as exc:  # noqa: BLE001
                    rep.fail(f"idle {n}: {', '.join(group)}", exc)
                finally:
                    for sy in reversed(running):
                        sy.stop()
    if "crash" in args.sections:
        crashers = [k for k in systems if not k.startswith("floor")]
        cgroups = [[k] for k in crashers] if args.one_at_a_time else [crashers]
        print("# crash loop: " + ("one system at a time" if args.one_at_a_time else
                                  "every system side by side, one shared window"), flush=True)
        sec = rep.section("crash")
        for group in cgroups:
            if not group:
                continue
            quiet(f"crash loop: {', '.join(group)}", args)
            running = []
            try:
                for key in group:
                    running.append(make(key, 1, crash=True))
                    running[-1].launch()
                for sy in running:
                    sy.wait_api()
                with Loads() as ld:
                    res = shared_window(running, args.crash, crash_begin, crash_end)
                for key, d in res.items():
                    d["load"] = ld.text()
                    sec[key] = d
                    print(f"  {key}: {d['starts']} starts, CPU {d['cpu_s']:.2f} s; {d['state']}", flush=True)
            except Exception as exc:  # noqa: BLE001
                rep.fail(f"crash loop: {', '.join(group)}", exc)
            finally:
                for sy in reversed(running):
                    sy.stop()
    if "router" in args.sections:
        print("# router", flush=True)
        quiet("router", args)
        try:
            with Loads() as ld:
                res = run_router(args)
        except Exception as exc:  # noqa: BLE001
            rep.fail("router", exc)
            return
        res["load"] = f"{ld.start:.2f} -> {ld.end:.2f}"
        rep.data["sections"]["router"] = res
        print(f"  sunsetd p50 {res['paths']['sunsetd']['p50_us']:.0f} µs, raw-2hop {res['paths']['raw-2hop']['p50_us']:.0f} µs",
              flush=True)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    c.run_main(main)
