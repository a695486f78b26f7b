"""Liveness stamps in shared memory (sunsetd.stamps): a page per agent, one for the daemon."""
from __future__ import annotations

import mmap
import os
import signal
import time

import pytest

from conftest import TEST_PROFILES, wait_until
from sunsetd.stamps import StampPage


def test_a_stamp_is_read_through_another_mapping_and_agents_get_the_daemons_read_only():
    page = StampPage.create("daemon")
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
    # stops writing; after liveness (100 ms x 3 in mini) it exits, and the daemon restarts it when it runs again
    d = start_daemon(TEST_PROFILES / "mini.yaml")
    before = {a["name"]: a["pid"] for a in d.status()["agents"]}
    os.kill(d.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(1.5)
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    wait_until(lambda: all(a["state"] == "ready" and a["pid"] != before[a["name"]] for a in d.status()["agents"]),
               20, what="every agent replaced")
    assert d.log().count("sunsetd silent for") >= 3
