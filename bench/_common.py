"""Shared helpers of the benchmarks: a real daemon in a fresh short runtime directory, the header every
benchmark prints (command line, date, machine), and the statistics the tables are made of.

The benchmarks are scripts (`python bench/router.py`), not a package: each puts this directory first on
sys.path and imports `_common`.
"""
from __future__ import annotations

import datetime
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import psutil
import zmq

from sunsetd.rundir import processes_using  # noqa: F401 (used by the modules importing from here)
from sunsetd.client import Client, RemoteError  # noqa: F401 (re-exported for the scripts)

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
BENCH_PROFILES = BENCH / "profiles"


# ---- statistics ----------------------------------------------------------------------------------------
def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def percentile(xs: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) by linear interpolation between closest ranks (numpy's default)."""
    if not xs:
        return math.nan
    s = sorted(xs)
    k = (len(s) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(xs: Sequence[float]) -> dict[str, float]:
    return {"n": len(xs), "min": min(xs) if xs else math.nan, "p50": median(xs), "p90": percentile(xs, 90),
            "p95": percentile(xs, 95), "p99": percentile(xs, 99), "max": max(xs) if xs else math.nan}


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (readable on a terminal too), numbers already formatted by the caller."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    line = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] +
                     [line(r) for r in cells[1:]])


# ---- header --------------------------------------------------------------------------------------------
def machine_info() -> dict[str, str]:
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        cpu = platform.processor() or "?"
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "pyzmq": f"{zmq.pyzmq_version()} (libzmq {zmq.zmq_version()})",
        "kernel": platform.release(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def source_version() -> str:
    """The commit the daemon's code comes from, and whether sunsetd/, agents/ or profiles/ differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "sunsetd", "agents", "profiles"], cwd=REPO,
                               capture_output=True, text=True, timeout=5).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}" + (f" + uncommitted changes in {len(dirty)} file(s) of sunsetd/, agents/, profiles/"
                                     if dirty else "")


def print_header(title: str) -> None:
    exe = sys.executable
    if exe.startswith(os.getcwd() + os.sep):
        exe = os.path.relpath(exe)
    print(f"# {title}")
    print(f"command: {shlex.join([exe, *sys.argv])}")
    print(f"cwd:     {os.getcwd()}")
    for k, v in machine_info().items():
        print(f"{k + ':':<8} {v}")
    print(f"source:  {source_version()}")
    print(flush=True)


# ---- processes -----------------------------------------------------------------------------------------
def new_runtime_dir() -> Path:
    """A fresh, short runtime directory: ipc:// paths must fit in sun_path (107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp"))


def sunsetd_command() -> list[str]:
    """The installed `sunsetd` console script next to this interpreter, else `python -m sunsetd`."""
    script = Path(sys.executable).parent / "sunsetd"
    return [str(script)] if script.exists() else [sys.executable, "-m", "sunsetd"]


class Daemon:
    """A real sunsetd in a subprocess, with its log at $RUNTIME/daemon.log; a context manager that always
    stops it (SIGTERM, then SIGKILL of whatever is left) and removes its runtime directory."""

    def __init__(self, profile: str | Path, log_level: str = "INFO", keep_dir: bool = False, spawner: str = "fork"):
        self.profile = str(profile)
        self.spawner = spawner
        self.log_level = log_level
        self.keep_dir = keep_dir
        self.runtime_dir = new_runtime_dir()
        self.log_path = self.runtime_dir / "daemon.log"
        self.proc: subprocess.Popen | None = None
        self.launched_at = 0.0  # time.monotonic() just before the exec
        self._client: Client | None = None

    @property
    def argv(self) -> list[str]:
        return [*sunsetd_command(), "--profile", self.profile, "--runtime-dir", str(self.runtime_dir),
                "--log-level", self.log_level, "--spawner", self.spawner, "--metrics-addr", "off"]

    def start(self) -> "Daemon":
        self._log_file = open(self.log_path, "ab")
        self.launched_at = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdout=self._log_file, stderr=subprocess.STDOUT, cwd=REPO,
                                     stdin=subprocess.DEVNULL)
        return self

    def __enter__(self) -> "Daemon":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.runtime_dir)
        return self._client

    def status(self, timeout: float = 2.0) -> dict:
        return self.client.call("sunsetd", "status", timeout=timeout)

    def try_status(self, timeout: float = 0.5) -> dict | None:
        """The status, or None while the daemon does not answer yet (no socket, no reply)."""
        if not (self.runtime_dir / "sunsetd.sock").exists():
            return None
        c = self.client
        rid = c.send("sunsetd", "status", timeout=timeout)
        deadline = time.monotonic() + timeout + 0.5
        while (left := deadline - time.monotonic()) > 0:
            reply = c.recv(left)
            if reply is None:
                return None
            if reply.get("id") == rid:
                return reply.get("body") if reply.get("ok") else None
        return None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"sunsetd exited with {self.proc.returncode}; log:\n{self.log()[-4000:]}")

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.005) -> dict:
        """Poll `status` until the daemon says running (every essential agent ready)."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            status = self.try_status()
            if status is not None and status.get("state") == "running":
                return status
            if status is not None and status.get("state") == "degraded":
                raise RuntimeError(f"sunsetd is degraded: {status}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"sunsetd not ready within {timeout}s; log:\n{self.log()[-4000:]}")
            time.sleep(interval)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> float | None:
        """SIGTERM and wait; returns the seconds the daemon took to exit (None if it had to be killed)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        took = None
        if self.proc is not None:
            if self.proc.poll() is None:
                t0 = time.monotonic()
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                    took = time.monotonic() - t0
                except subprocess.TimeoutExpired:
                    print(f"warning: sunsetd did not stop within {timeout}s of SIGTERM; killing it", file=sys.stderr)
                    self.proc.kill()
                    self.proc.wait()
            self._log_file.close()
        leftovers = wait_gone(self.runtime_dir)
        if leftovers:
            print(f"warning: killed {len(leftovers)} process(es) left behind: {leftovers}", file=sys.stderr)
        if not self.keep_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
        return took


def wait_gone(runtime_dir: Path, timeout: float = 5.0) -> list[int]:
    """Wait for every process naming `runtime_dir` to exit; SIGKILL and return the pids of any that do not."""
    deadline = time.monotonic() + timeout
    while (procs := processes_using(runtime_dir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    return [p.pid for p in procs]


def time_command(argv: list[str], runs: int, env: dict | None = None, warmup: bool = True) -> list[float]:
    """Wall-clock seconds of each of `runs` executions of argv (fork+exec to exit), after one warm-up."""
    out = []
    for i in range(runs + warmup):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env, cwd=REPO)
        if i or not warmup:
            out.append(time.perf_counter() - t0)
    return out


def ms(x: float, digits: int = 1) -> str:
    return "nan" if math.isnan(x) else f"{x * 1000:.{digits}f}"


def run_main(main: Callable[[], int]) -> None:
    """Run a benchmark's main; end with the load average, since other work on the machine skews figures."""
    try:
        code = main()
    except KeyboardInterrupt:
        code = 130
    print(f"\nloadavg at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    sys.exit(code)


def log_records(text: str) -> list[dict]:
    """The daemon's logfmt lines as dicts, each with "t": its time in seconds since the epoch (1 ms
    resolution, the wall clock), "rest": its message and fields as one string."""
    import datetime

    from sunsetd.logfmt import logfmt, parse

    out = []
    for line in text.splitlines():
        record = parse(line)
        if "time" not in record or "agent" not in record:
            continue
        try:
            record["t"] = datetime.datetime.fromisoformat(record["time"]).timestamp()
        except ValueError:
            continue
        fields = [(k, v) for k, v in record.items() if k not in ("time", "level", "agent", "event", "msg", "t")]
        record["rest"] = " ".join(x for x in (record.get("msg", ""), logfmt(fields)) if x)
        out.append(record)
    return out

