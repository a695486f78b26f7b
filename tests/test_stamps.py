"""Liveness stamps in shared memory (sunsetd.stamps): a page per agent, one for the daemon."""
from __future__ import annotations

import mmap
import os
import signal
import time

import pytest

from conftest import TEST_PROFILES, wait_until
from sunsetd.stamps import IDLE_STAMP_S, StampPage


def test_a_stamp_is_read_through_another_mapping_and_agents_get_the_daemons_read_only():
    page = StampPage.create("daemon", shared=True)
    try:
        assert page.read() is None  # never stamped
        page.stamp(1_500_000_000)
        ro_fd = page.read_only_fd()
        theirs = StampPage.attach(ro_fd, writable=False)  # as an agent maps it; the descriptor is closed
        with pytest.raises(OSError):
            os.fstat(ro_fd)
        assert theirs.read() == 1.5
        page.stamp()
        assert abs(theirs.read() - time.monotonic()) < 1.0  # CLOCK_MONOTONIC: the same in every process
        with pytest.raises(TypeError):
            theirs.map[0:8] = b"\0" * 8  # a read-only mapping: one agent cannot stop the daemon's stamp
        again = page.read_only_fd()
        with pytest.raises(PermissionError):
            mmap.mmap(again, 8, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        os.close(again)
        theirs.close()
    finally:
        page.close()


@pytest.mark.slow
def test_agents_leave_a_daemon_that_stops_stamping_and_come_back_with_it(start_daemon):
    # an agent no longer hears heartbeat frames: it reads the daemon's stamp, which a frozen daemon
    # stops writing. An idle agent reads it when it wakes to stamp its own, every IDLE_STAMP_S: one that
    # finds the daemon silent for its liveness (100 ms x 3 in mini, at least DAEMON_SILENT_MIN_S) exits,
    # and the daemon restarts it when it runs again
    d = start_daemon(TEST_PROFILES / "mini.yaml")
    before = {a["name"]: a["pid"] for a in d.status()["agents"]}
    os.kill(d.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(IDLE_STAMP_S + 1.5)
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    wait_until(lambda: all(a["state"] == "ready" and a["pid"] != before[a["name"]] for a in d.status()["agents"]),
               20, what="every agent replaced")
    assert d.log().count("sunsetd silent for") >= 3


def test_no_page_can_be_resized_and_the_daemons_takes_no_writes_but_its_own():
    # found by attacking it: an agent reopened its page, or the daemon's, for writing through
    # /proc/PID/fd and truncated it; the daemon's next read was SIGBUS, and every agent died with it
    own = StampPage.create("A#1")
    daemon = StampPage.create("daemon", shared=True)
    try:
        for page in (own, daemon):
            rw = os.open(f"/proc/self/fd/{page.fd}", os.O_RDWR)
            try:
                with pytest.raises(PermissionError):
                    os.ftruncate(rw, 0)
                with pytest.raises(PermissionError):
                    os.ftruncate(rw, 4096)
            finally:
                os.close(rw)
        rw = os.open(f"/proc/self/fd/{daemon.fd}", os.O_RDWR)
        try:
            with pytest.raises(PermissionError):
                os.pwrite(rw, b"\0" * 8, 0)  # a frozen stamp would make every sibling leave
            with pytest.raises(PermissionError):
                mmap.mmap(rw, 8, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(rw)
        daemon.stamp(7_000_000_000)  # our own mapping still writes
        assert daemon.read() == 7.0
        own.stamp(8_000_000_000)
        assert own.read() == 8.0
    finally:
        own.close()
        daemon.close()


@pytest.mark.slow
@pytest.mark.parametrize("spawner", ["fork", "exec"])
def test_an_idle_agent_frozen_by_sigstop_is_found_by_the_kernels_word_not_at_its_next_stamp(start_daemon, spawner):
    # #12: an idle agent stamps every IDLE_STAMP_S; a SIGSTOP is reported to the daemon (its parent) by
    # SIGCHLD, and the agent is judged by its liveness (100 ms x 3) from then on, not IDLE_STAMP_S later
    d = start_daemon(TEST_PROFILES / "mini.yaml", "--spawner", spawner)
    time.sleep(1.0)  # every agent idle, its last stamp saying so
    old = d.call("Base", "pid")
    t0 = time.monotonic()
    os.kill(old, signal.SIGSTOP)
    wait_until(lambda: d.agent("Base")["pid"] not in (None, old) and d.agent("Base")["state"] == "ready",
               IDLE_STAMP_S, what="the frozen agent replaced")
    assert time.monotonic() - t0 < IDLE_STAMP_S - 1.0
    assert 'reason="hung: no heartbeat for' in d.log() and "stopped by a signal" in d.log()
