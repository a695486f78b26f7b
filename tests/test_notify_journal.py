"""sd_notify and the journald sink against real datagram sockets standing in for systemd and journald.

The real-systemd end-to-end run is tests/systemd/; this checks the messages themselves, everywhere.
"""
from __future__ import annotations

import os
import signal
import socket
import struct
import threading
import time

import pytest

from conftest import TEST_PROFILES, wait_until

pytestmark = pytest.mark.slow


class Datagrams:
    """A datagram socket read continuously by a thread, as systemd and journald read theirs (a reader
    that falls behind makes the sender drop records, by design)."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.received: list[bytes] = []
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while self.running:
            try:
                self.received.append(self.sock.recv(1 << 20))
            except (socket.timeout, OSError):
                continue

    def drain(self) -> list[bytes]:
        return list(self.received)

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.sock.close()


def journal_fields(datagram: bytes) -> dict[str, str]:
    fields, i = {}, 0
    while i < len(datagram):
        nl = datagram.index(b"\n", i)
        line = datagram[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            i = nl + 1
        else:  # binary form: NAME\n<u64 length><data>\n
            key = line
            (length,) = struct.unpack("<Q", datagram[nl + 1:nl + 9])
            value = datagram[nl + 9:nl + 9 + length]
            i = nl + 9 + length + 1
        fields[key.decode()] = value.decode()
    return fields


@pytest.fixture
def systemd_sockets(runtime_dirs):
    d = runtime_dirs.new()
    notify, journal = Datagrams(str(d / "notify")), Datagrams(str(d / "journal"))
    env = {"NOTIFY_SOCKET": str(d / "notify"), "WATCHDOG_USEC": "600000",
           "SUNSETD_JOURNAL_SOCKET": str(d / "journal")}
    yield notify, journal, env
    notify.close()
    journal.close()


def test_notify_ready_status_watchdog_reloading_stopping(start_daemon, systemd_sockets):
    notify, _, env = systemd_sockets
    d = start_daemon(TEST_PROFILES / "mini.yaml", env=env)
    ready = wait_until(lambda: [m for m in notify.drain() if m.startswith(b"READY=1")], 5, what="READY=1")
    assert b"STATUS=running: 3/3 agents ready, essential 3/3, 0 failed; profile mini" in ready[0]
    assert f"MAINPID={d.proc.pid}".encode() in ready[0]
    n = len(notify.drain())
    time.sleep(1.0)
    pings = [m for m in notify.drain()[n:] if m == b"WATCHDOG=1"]
    assert 3 <= len(pings) <= 8  # every 0.2 s (a third of WATCHDOG_USEC)
    before = len(notify.drain())
    d.proc.send_signal(signal.SIGHUP)

    def reloaded() -> bool:
        kinds = [m.split(b"=")[0] for m in notify.drain()[before:]]
        return b"RELOADING" in kinds and b"READY" in kinds[kinds.index(b"RELOADING"):]

    wait_until(reloaded, 5, what="RELOADING=1, then READY=1 after the reload")
    os.kill(d.agent("Top")["pid"], signal.SIGKILL)
    wait_until(lambda: any(b"STATUS=running: 2/3" in m for m in notify.drain()), 5, what="STATUS kept current")
    d.terminate()
    assert any(m.startswith(b"STOPPING=1") for m in notify.drain())


def test_journal_records_carry_fields_and_priority(start_daemon, systemd_sockets):
    _, journal, env = systemd_sockets
    d = start_daemon(TEST_PROFILES / "mini.yaml", "--log-to", "journal", env=env)
    pid = d.agent("Middle")["pid"]
    os.kill(pid, signal.SIGKILL)
    d.wait_agent("Middle", lambda a: a["state"] == "ready" and a["pid"] != pid, what="replacement")
    d.call("Middle", "say", "multi\nline")

    def records():
        return [journal_fields(m) for m in journal.drain()]
    wait_until(lambda: any(r.get("EVENT") == "stdout" for r in records()), 5, what="agent output in the journal")
    recs = records()
    assert {"AGENT", "EVENT", "PROFILE", "PRIORITY", "MESSAGE", "SYSLOG_IDENTIFIER"} <= set(recs[0])
    ready = [r for r in recs if r.get("AGENT") == "Middle" and r.get("EVENT") == "state" and "-> ready" in r["MESSAGE"]]
    assert ready and ready[0]["PRIORITY"] == "6" and ready[0]["PROFILE"] == "mini" and ready[0]["INCARNATION"] == "1"
    death = [r for r in recs if r.get("AGENT") == "Middle" and r.get("EVENT") == "exit"]
    assert death and death[0]["PRIORITY"] == "4" and death[0]["PID"] == str(pid)
    said = [r for r in recs if r.get("EVENT") == "stdout" and r.get("AGENT") == "Middle"]
    assert said[0]["MESSAGE"].endswith("said multi") and said[0]["INCARNATION"] == "2"
    assert not d.log().strip()  # nothing on stderr when the journal takes the records
