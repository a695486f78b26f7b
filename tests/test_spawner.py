"""The spawners on their own: real processes and a real event loop, no daemon (DESIGN §7).

A spawn answers at once with a handle; everything else arrives as events. Whatever runs in the child,
it gets its own session, dies with its parent, is reaped through its pidfd, and what it leaves behind
is killed.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from fakes import spec
from sunsetd import spawner
from sunsetd.loop import EventLoop
from sunsetd.spawner import ExecSpawner, Exited, ForkSpawner, Memory, Output, SpawnFailed, Started
from sunsetd.timers import Timers

PDEATHSIG = """\
import ctypes, os, sys
value = ctypes.c_int()
ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0)  # PR_GET_PDEATHSIG
print(value.value, os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid(), os.getppid())
"""


class World:
    def __init__(self, kind: type, runtime_dir: Path):
        self.timers = Timers()
        self.loop = EventLoop(self.timers)
        self.spawner = kind(runtime_dir, self.loop, self.timers)
        self.events: list = []

    def listener(self, event) -> None:
        self.events.append(event)

    def run_until(self, predicate, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; events so far: {self.events}"
            self.loop.run_once(0.05)

    def of(self, handle, kind: type) -> list:
        return [e for e in self.events if e.handle is handle and isinstance(e, kind)]

    def exited(self, handle) -> Exited | None:
        found = self.of(handle, Exited)
        return found[0] if found else None

    def helper(self, code: str):
        return self.spawner.spawn_helper("helper", [sys.executable, "-c", code], self.listener)


@pytest.fixture(params=[ExecSpawner, ForkSpawner], ids=["exec", "fork"])
def world(request):
    runtime_dir = Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp"))
    w = World(request.param, runtime_dir)
    yield w
    for handle in list(w.spawner.handles.values()):
        handle.kill()
    w.run_until(lambda: not w.spawner.handles)
    w.spawner.close()
    os.rmdir(runtime_dir)


def test_started_then_its_lines_then_its_exit(world):
    handle = world.helper("import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)")
    assert world.events == []  # nothing arrives inside spawn(): the caller is mid-step
    world.run_until(lambda: world.exited(handle))
    kinds = [type(e).__name__ for e in world.events if e.handle is handle]
    assert kinds[0] == "Started" and kinds[-1] == "Exited"
    assert [(e.stream, e.line) for e in world.of(handle, Output)] == [("stdout", "out"), ("stderr", "err")]
    assert world.exited(handle).code == 3 and world.exited(handle).description == "exit code 3"
    assert handle.pid not in world.spawner.handles and handle.reaped


def test_every_child_has_its_own_session_and_dies_with_the_daemon(world):
    handle = world.helper(PDEATHSIG)
    world.run_until(lambda: world.exited(handle))
    (line,) = [e.line for e in world.of(handle, Output)]
    assert line == f"9 True True {os.getpid()}"  # SIGKILL on parent death, set by the spawner itself


def test_terminate_kill_pause_and_resume_reach_the_whole_process_group(world):
    handle = world.helper("import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)")
    world.run_until(lambda: world.of(handle, Started))
    child = psutil.Process(handle.pid)
    # until the grandchild runs `sleep`: a SIGSTOP between its (v)fork and its exec leaves the parent
    # waiting for that exec, never stopped (seen once under CI's load)
    world.run_until(lambda: [p.cmdline() for p in child.children()] == [["sleep", "60"]])
    (grandchild,) = child.children()
    handle.pause()
    world.run_until(lambda: child.status() == psutil.STATUS_STOPPED and grandchild.status() == psutil.STATUS_STOPPED)
    handle.resume()
    world.run_until(lambda: child.status() != psutil.STATUS_STOPPED)
    handle.terminate()
    world.run_until(lambda: world.exited(handle))
    assert world.exited(handle).description == "killed by SIGTERM"
    world.run_until(lambda: not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE)


def test_a_spawn_that_cannot_happen_is_an_event_not_an_exception(world):
    handle = world.spawner.spawn_helper("missing", ["/nonexistent/program"], world.listener)
    world.run_until(lambda: world.of(handle, SpawnFailed))
    (failed,) = world.of(handle, SpawnFailed)
    assert "No such file or directory" in failed.error and handle.pid is None
    # found in review: a NUL in an argument (a client's `reload --profile "x\0y"`) raised ValueError out
    # of the spawn, and that reload, and every one after it, was never answered
    handle = world.spawner.spawn_helper("nul", [sys.executable, "-c", "pass\0"], world.listener)
    world.run_until(lambda: world.of(handle, SpawnFailed))
    assert "null byte" in world.of(handle, SpawnFailed)[0].error


def test_a_line_reader_cuts_long_lines_and_reads_a_long_one_in_linear_time():
    # found in review: each read joined the waiting part of a line with the new data and split it
    # again, so one 8 MB line cost 514 ms of the loop
    r, w = os.pipe()
    os.set_blocking(r, False)
    reader = spawner.LineReader(r, max_line=16 * 1024)
    try:
        lines = []

        def feed(data: bytes) -> None:
            os.write(w, data)
            while True:
                got, _ = reader.read()
                lines.extend(got)
                if not got:
                    break

        feed(b"a\nbb\n")
        for _ in range(4):
            feed(b"x" * 30_000)  # a line that goes on: cut at 16 KiB, the rest skipped
        feed(b"xx\nz\n" + b"y" * 20_000 + b"\nlast")
        os.close(w)
        w = -1
        while True:
            got, eof = reader.read()
            lines.extend(got)
            if eof:
                break
        cut = "x" * 16 * 1024 + spawner.LINE_CUT
        assert lines == ["a", "bb", cut, "z", "y" * 16 * 1024 + spawner.LINE_CUT, "last"]
        long = spawner.LineReader(os.open("/dev/zero", os.O_RDONLY | os.O_NONBLOCK), max_line=8 * 1024 * 1024)
        t0 = time.perf_counter()
        while not long.read()[0]:
            pass
        os.close(long.fd)
        assert time.perf_counter() - t0 < 0.15  # linear: 13-15 ms here; the quadratic one took 216-514 ms
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


@pytest.fixture
def quick_beats(monkeypatch):
    """Sample memory and sweep orphans every 50 ms instead of every second: the same code, sooner."""
    monkeypatch.setattr(spawner, "SAMPLE_INTERVAL_S", 0.05)
    monkeypatch.setattr(spawner, "SWEEP_INTERVAL_S", 0.05)


def test_memory_is_sampled_on_a_beat(quick_beats, world):
    handle = world.helper("import time; ballast = bytearray(20 << 20); ballast[::4096] = b'x' * 5120; time.sleep(60)")
    world.run_until(lambda: any(e.rss > 20 << 20 for e in world.of(handle, Memory)), timeout=5.0)
    assert handle.memory() > 20 << 20 and handle.memory(fresh=True) > 20 << 20
    handle.kill()
    world.run_until(lambda: world.exited(handle))


def test_what_a_dead_child_leaves_behind_is_killed(quick_beats, world):
    leaver = ("import subprocess, time; print(subprocess.Popen(['sleep', '60'], start_new_session=True).pid, "
              "flush=True); time.sleep(0.2)")
    handle = world.helper(leaver)
    world.run_until(lambda: world.of(handle, Output))
    orphan = psutil.Process(int(world.of(handle, Output)[0].line))
    assert orphan.ppid() == handle.pid and os.getsid(orphan.pid) != handle.pid  # out of its group
    world.run_until(lambda: world.exited(handle))
    # the group kill at its exit missed it; it came to us (a subreaper) and the sweep killed it
    world.run_until(lambda: not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE, timeout=5.0)


def test_an_agent_is_a_child_of_the_daemon_named_after_its_incarnation(world):
    handle = world.spawner.spawn(spec("Echo", heartbeat_ms=2000), 4, world.listener)
    world.run_until(lambda: world.of(handle, Started))
    proc = psutil.Process(handle.pid)
    assert proc.ppid() == os.getpid()
    # a forked agent makes its own session first thing, but the zygote may report the fork before that
    world.run_until(lambda: os.getsid(handle.pid) == handle.pid)
    if isinstance(world.spawner, ForkSpawner):
        world.run_until(lambda: proc.name() == "Echo")  # it names itself first thing after the fork
    # ps, systemctl status and systemd-cgls show the title: agent, incarnation, runtime directory
    title = f"sunsetd-agent Echo#4 rundir={world.spawner.runtime_dir}"
    world.run_until(lambda: " ".join(a for a in proc.cmdline() if a) == title, timeout=10.0)
    handle.kill()
    world.run_until(lambda: world.exited(handle))
    assert world.exited(handle).description == "killed by SIGKILL"


def test_a_signal_asked_for_before_the_process_exists_is_delivered_when_it_does(world):
    handle = world.spawner.spawn(spec("Early", heartbeat_ms=2000), 1, world.listener)
    handle.kill()  # with the fork server the pid is not known yet: the kill waits for it
    world.run_until(lambda: world.exited(handle))
    assert world.exited(handle).description == "killed by SIGKILL"


def test_a_dead_zygote_is_replaced_and_what_it_had_not_forked_starts_by_exec():
    runtime_dir = Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp"))
    w = World(ForkSpawner, runtime_dir)
    try:
        first = w.spawner.server.pid
        psutil.Process(first).kill()
        handle = w.spawner.spawn(spec("A", heartbeat_ms=2000), 1, w.listener)
        w.run_until(lambda: w.of(handle, Started))
        assert psutil.Process(handle.pid).ppid() == os.getpid()
        w.run_until(lambda: w.spawner.server is not None and w.spawner.server.pid != first)
        later = w.spawner.spawn(spec("B", heartbeat_ms=2000), 1, w.listener)
        w.run_until(lambda: w.of(later, Started))
        assert later.popen is None and handle.popen is not None  # forked by the new zygote; A was exec'd
        for h in (handle, later):
            h.kill()
        w.run_until(lambda: w.exited(handle) and w.exited(later))
    finally:
        w.spawner.close()
        os.rmdir(runtime_dir)


OUT_OF_FDS = """
import os, resource, sys, tempfile
from pathlib import Path
from sunsetd.loop import EventLoop
from sunsetd.spawner import ExecSpawner, SpawnFailed
from sunsetd.timers import Timers
timers = Timers()
spawner = ExecSpawner(Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp")), EventLoop(timers), timers)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
for fd in held[-2:]:  # room for one pipe, not two
    os.close(fd)
before = len(os.listdir("/proc/self/fd"))
events = []
spawner.spawn_helper("helper", ["true"], events.append)  # must not raise
timers.run_due()
after = len(os.listdir("/proc/self/fd"))
print(type(events[0]).__name__, before - after, events[0].error)
os.rmdir(spawner.runtime_dir)
"""


def test_out_of_file_descriptors_is_a_failed_spawn_and_leaks_nothing():
    """Found in review: EMFILE made spawn() raise through the supervisor (out of a timer callback that
    would end the daemon), and the first of the two pipes leaked."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", OUT_OF_FDS], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    kind, leaked, error = done.stdout.split(" ", 2)
    assert kind == "SpawnFailed" and leaked == "0" and "Too many open files" in error
