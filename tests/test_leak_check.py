"""The leak check itself: it must see any process a test leaves behind, not only sunsetd's."""
from __future__ import annotations

import subprocess

import psutil

from conftest import _descendant_pids, assert_none_left, new_processes, wait_until


def test_the_leak_check_sees_a_detached_sleep_whatever_its_command_line():
    before = _descendant_pids()
    # what a careless agent leaves behind: a grandchild in a session of its own, its parent gone
    subprocess.run(["sh", "-c", "setsid sleep 60 </dev/null >/dev/null 2>&1 & exit 0"], check=True)
    def orphan_sleeping() -> list:
        found = new_processes(before)
        return found if [p.cmdline() for p in found] == [["sleep", "60"]] else []  # past setsid's exec

    leftovers = wait_until(orphan_sleeping, 5.0, what="the orphan to be seen")
    assert leftovers[0].ppid() == psutil.Process().pid  # reparented to pytest, not to init
    try:
        assert_none_left(before, 0.2, "this test")
    except AssertionError as exc:
        assert "sleep" in str(exc)
    else:
        raise AssertionError("the leak check did not fail")
    wait_until(lambda: not new_processes(before), 2.0, what="the orphan killed and reaped")
