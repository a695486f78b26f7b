"""Shared fixtures: short private runtime directories, a real daemon in a subprocess, and the check that
every test leaves no process of its own behind.

The leak check sees every process a test made, whatever its command line: pytest makes itself a child
subreaper, so anything orphaned below it (a daemon's agent, a detached `sleep 60` an agent started, a
double-forked grandchild) is reparented to pytest instead of init and stays one of its descendants.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest

from sunsetd.client import Client, RemoteError
from sunsetd.rundir import processes_using  # noqa: F401 (used by the modules importing from here)

REPO = Path(__file__).resolve().parent.parent
TEST_PROFILES = REPO / "tests" / "profiles"
PR_SET_CHILD_SUBREAPER = 36
SHARED: list["DaemonProcess"] = []  # daemons that outlive one test (module_daemon): their processes are theirs


def pytest_configure(config: Any) -> None:
    assert ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0, \
        "the leak check needs pytest to be a child subreaper (Linux)"


def _children_of(pid: int) -> list[int]:
    found = []
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task.name}/children") as f:
                    found += [int(c) for c in f.read().split()]
            except OSError:
                continue
    except OSError:
        pass
    return found


def _descendant_pids(root: int | None = None) -> set[int]:
    """Every descendant, from the kernel's own children lists (cheaper than scanning every process)."""
    pids: set[int] = set()
    stack = _children_of(os.getpid() if root is None else root)
    while stack:
        pid = stack.pop()
        if pid not in pids:
            pids.add(pid)
            stack += _children_of(pid)
    return pids


def _descendants() -> list[psutil.Process]:
    found = []
    for pid in _descendant_pids():
        try:
            found.append(psutil.Process(pid))
        except psutil.Error:
            pass
    return found


def _reap_orphans() -> None:
    """Reap zombies reparented to pytest; never one that a live Popen will wait for."""
    zombies = []
    for pid in _children_of(os.getpid()):
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                zombies.append(pid)
        except psutil.Error:
            pass
    if not zombies:
        return
    owned = {obj.pid for obj in gc.get_objects() if isinstance(obj, subprocess.Popen) and obj.returncode is None}
    for pid in zombies:
        if pid not in owned:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def _exempt() -> set[int]:
    """The processes of shared daemons still running."""
    pids: set[int] = set()
    for d in SHARED:
        if d.proc is not None and d.proc.poll() is None:
            pids.add(d.proc.pid)
            pids |= _descendant_pids(d.proc.pid)
    return pids


def new_processes(before: set[int]) -> list[psutil.Process]:
    """Live descendants of pytest that were not there at `before` and belong to no shared daemon."""
    _reap_orphans()
    new = _descendant_pids() - before
    if not new:
        return []
    new -= _exempt()
    found = []
    for pid in new:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            pass
    return found


def assert_none_left(before: set[int], timeout: float, what: str) -> None:
    """Wait for every new process to be gone; kill and name whatever is left."""
    deadline = time.monotonic() + timeout
    leftovers = new_processes(before)
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.05)
        leftovers = new_processes(before)
    described = []
    for proc in leftovers:
        try:
            described.append((proc.pid, proc.cmdline()))
            proc.kill()
        except psutil.Error:
            pass
    _reap_orphans()
    assert not leftovers, f"processes left behind by {what}: {described}"


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class RuntimeDirs:
    """Hands out short runtime directories (ipc paths must fit in 107 bytes) and remembers them."""

    def __init__(self) -> None:
        self.dirs: list[Path] = []

    def new(self) -> Path:
        d = Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp"))
        self.dirs.append(d)
        return d


class DaemonProcess:
    """A real `sunsetd` in a subprocess, with its log in the runtime directory."""

    def __init__(self, runtime_dir: Path, profile: str | Path, args: tuple[str, ...] = (),
                 env: dict | None = None):
        self.runtime_dir = runtime_dir
        self.profile = str(profile)
        self.log_path = runtime_dir / "daemon.log"
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self._client: Client | None = None
        self.cwd = REPO  # the daemon's working directory

    def start(self) -> "DaemonProcess":
        self.log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sunsetd", "--profile", self.profile, "--runtime-dir",
             str(self.runtime_dir), "--metrics-addr", "127.0.0.1:0", *self.args],
            stdout=self.log_file, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd)
        return self

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.runtime_dir)
        return self._client

    def call(self, to: str, op: str, body: Any = None, timeout: float = 10.0, retry: bool = False) -> Any:
        return self.client.call(to, op, body, timeout=timeout, retry=retry)

    def status(self) -> dict:
        return self.call("sunsetd", "status")

    def agent(self, name: str) -> dict:
        return next(a for a in self.status()["agents"] if a["name"] == name)

    def wait_ready(self, timeout: float = 30.0) -> dict:
        def ready() -> dict | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"sunsetd exited with {self.proc.returncode}:\n{self.log()}")
            if not (self.runtime_dir / "sunsetd.sock").exists():
                return None
            try:
                status = self.status()
            except (RemoteError, Exception):
                return None
            return status if status["state"] in ("running", "degraded") else None

        return wait_until(ready, timeout, what="all essential agents ready")

    def wait_agent(self, name: str, predicate: Callable[[dict], bool], timeout: float = 15.0,
                   what: str = "agent state") -> dict:
        def check() -> dict | None:
            a = self.agent(name)
            return a if predicate(a) else None

        return wait_until(check, timeout, what=f"{name}: {what}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def terminate(self, timeout: float = 30.0) -> int:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"sunsetd did not stop within {timeout}s after SIGTERM:\n{self.log()[-4000:]}")
        finally:
            self.log_file.close()


def error_code(fn: Callable, *args: Any, **kwargs: Any) -> str:
    """The code of the RemoteError that fn(*args, **kwargs) must raise."""
    with pytest.raises(RemoteError) as info:
        fn(*args, **kwargs)
    return info.value.code


def first_request(d: "DaemonProcess", agent: str, op: str, body: Any = None, timeout: float = 20.0) -> Any:
    """A lazy agent's first request: it was stopped, the request starts it, and it stays ready."""
    assert d.agent(agent)["state"] == "stopped"
    out = d.call(agent, op, body, timeout=timeout)
    assert d.agent(agent)["state"] == "ready"
    return out


def model_in_budget(d: "DaemonProcess", name: str) -> dict | None:
    """ModelManagerSuite's entry for a model (loaded or pinned by an agent), or None."""
    return next((m for m in d.call("ModelManagerSuite", "status")["models"] if m["name"] == name), None)


@contextlib.contextmanager
def module_daemon(profile: str | Path) -> Iterator[DaemonProcess]:
    """A daemon shared by a whole test module (one start for many tests), on its own short runtime
    directory; at the end it must stop with exit code 0 and leave no process of its own."""
    runtime_dir = Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp"))
    before = _descendant_pids()
    daemon = DaemonProcess(runtime_dir, profile).start()
    SHARED.append(daemon)
    try:
        daemon.wait_ready(timeout=60)
        yield daemon
    finally:
        code = daemon.terminate()
        SHARED.remove(daemon)
        log = daemon.log()
        shutil.rmtree(runtime_dir, ignore_errors=True)
        assert_none_left(before, 10.0, f"the daemon of {profile}")
        assert code == 0, f"sunsetd exited {code}:\n{log[-4000:]}"


@pytest.fixture
def runtime_dirs() -> RuntimeDirs:
    return RuntimeDirs()


@pytest.fixture
def runtime_dir(runtime_dirs: RuntimeDirs) -> Path:
    return runtime_dirs.new()


@pytest.fixture(autouse=True)
def no_process_left_behind(request: pytest.FixtureRequest, runtime_dirs: RuntimeDirs):
    """Every test that spawns processes must leave none behind, whatever they run: asserted after
    the test (its daemons are stopped first), over every descendant of pytest that is new."""
    before = _descendant_pids()
    yield
    try:
        assert_none_left(before, 5.0, request.node.name)
    finally:
        for d in runtime_dirs.dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def start_daemon(runtime_dirs: RuntimeDirs):
    """Factory: start_daemon(profile, *args) -> a DaemonProcess whose agents are all ready.
    Every daemon is stopped at teardown (SIGTERM, and it must exit 0)."""
    started: list[DaemonProcess] = []

    def start(profile: str | Path, *args: str, wait: bool = True, env: dict | None = None,
              runtime_dir: Path | None = None) -> DaemonProcess:
        d = DaemonProcess(runtime_dir or runtime_dirs.new(), profile, args, env).start()
        started.append(d)
        if wait:
            d.wait_ready()
        return d

    yield start
    for d in started:
        d.terminate()
