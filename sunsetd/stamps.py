"""Liveness stamps in shared memory (DESIGN §4 as changed by #12): heartbeats without a wire.

An idle agent used to cost 8 wake-ups a second (4 heartbeat frames out, 4 in, each also waking libzmq's
I/O threads), and the daemon one timer and two zmq calls per agent per beat: 18.5 % of a core for 77
idle agents. Now, where the agent runs on this host, each side writes CLOCK_MONOTONIC (the same clock
in every process) into a page the other can read:

- each incarnation gets its own page (a memfd), which only that process and the daemon hold. Its socket
  thread stamps it on every wake-up: every `liveness x heartbeat_ms / 2` while it works (a request,
  its setup, a stop), and every IDLE_STAMP_S while it has nothing to do, saying which in the stamp's
  lowest bit. A wake-up is the whole cost of an idle agent (about 0.1 ms of CPU on this VM), so an
  idle one wakes once in IDLE_STAMP_S instead of 2.6 times a second;
- the daemon judges a working agent silent for `liveness` intervals hung, an idle one after
  IDLE_STAMP_S more. An idle agent that is given work wakes at once and says it works; one that is
  frozen or wedged cannot, and the daemon, which knows what it forwarded, judges it from then on by the
  working limit. A stopped one (SIGSTOP) is reported by the kernel (SIGCHLD) and judged the same way;
- the daemon has one page, stamped by its loop, which every agent maps read-only: an agent whose daemon
  stops stamping for `liveness` intervals exits, as it did when heartbeat frames stopped; a dead daemon
  is noticed at once by the parent-death signal.

The daemon reads every agent's page on one timer. Heartbeat frames stay for agents with no page (MCP
servers speak MCP pings; remote agents ([hosts]) have a wire).

A stamp is 8 bytes; Python's copy of them is not guaranteed to be a single store, so a reader takes two
equal reads as the value (a writer writes a few times a second).
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
import time

STAMP_FDS_ENV = "SUNSETD_STAMP_FDS"  # "OWN,DAEMON": an agent's inherited pages, consumed at its start
DAEMON_STAMP_S = 0.25  # how often the daemon's loop stamps its page (on the liveness tick's wake-up)
IDLE_STAMP_S = 5.0  # an idle agent's stamp interval
DAEMON_SILENT_MIN_S = 3 * DAEMON_STAMP_S  # an agent gives its daemon at least this long, whatever its liveness
_FORMAT = struct.Struct("=q")
# Seals (memfd_create(2)): a page must never change size, or the daemon's next read of a page an agent
# truncated would be SIGBUS (found by attacking it: one agent killed the daemon and its siblings). And
# the daemon's page takes no new writes but through the daemon's own mapping: a memfd can be reopened
# for writing through /proc/PID/fd, so a read-only descriptor alone does not keep an agent out.
_SEAL_SIZE = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
F_SEAL_FUTURE_WRITE = getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x0010)  # Linux 5.1


class StampPage:
    """One stamp. `create` makes a page (the daemon's side); `attach` maps an inherited one."""

    def __init__(self, fd: int, writable: bool, own_fd: bool = True):
        self.fd = fd if own_fd else -1
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        # (Python's mmap keeps a duplicate of the descriptor, CLOEXEC, for as long as it is mapped)
        self.map = mmap.mmap(fd, _FORMAT.size, mmap.MAP_SHARED, prot)

    @classmethod
    def create(cls, name: str, shared: bool = False) -> "StampPage":
        """An agent's page, or (`shared`) the daemon's, which no other mapping may write."""
        fd = os.memfd_create(f"sunsetd-stamp-{name}"[:240], os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, _FORMAT.size)
            page = cls(fd, writable=True)
            seals = _SEAL_SIZE
            if shared:
                try:
                    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, F_SEAL_FUTURE_WRITE)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:  # an older kernel: size seals only
                        raise
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            return page
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def attach(cls, fd: int, writable: bool) -> "StampPage":
        """Map an inherited page and close the inherited descriptor: nothing the process starts gets it."""
        try:
            return cls(fd, writable, own_fd=False)
        finally:
            os.close(fd)

    def read_only_fd(self) -> int:
        """A new descriptor of this page that cannot be written through (for the agents: one of them
        could otherwise stop the daemon's stamp for all its siblings). The caller closes it."""
        return os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)

    def stamp(self, now_ns: int | None = None, idle: bool = False) -> None:
        """Stamp the time; `idle`: the next stamp comes IDLE_STAMP_S later (the lowest bit says so)."""
        ns = time.monotonic_ns() if now_ns is None else now_ns
        _FORMAT.pack_into(self.map, 0, (ns & ~1) | idle)

    def observe(self) -> tuple[float, bool] | None:
        """(the stamp in monotonic seconds, whether its writer said it was idle); None before the first."""
        while True:
            first = _FORMAT.unpack_from(self.map, 0)[0]
            if _FORMAT.unpack_from(self.map, 0)[0] == first:
                return (first / 1e9, bool(first & 1)) if first else None

    def read(self) -> float | None:
        """The stamp in monotonic seconds; None before the first."""
        seen = self.observe()
        return None if seen is None else seen[0]

    def close(self) -> None:
        if not self.map.closed:
            self.map.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
