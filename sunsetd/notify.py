"""sd_notify for programs: each one that says `ready: {notify: true}` gets its own NOTIFY_SOCKET.

A program written for systemd's Type=notify reports READY=1, STATUS=..., WATCHDOG=1 (and changes its
watchdog with WATCHDOG_USEC=) on the datagram socket named by $NOTIFY_SOCKET; under sunsetd it does the
same, unchanged (`systemd-notify`, sd_notify(3), python-sdnotify all work). The socket is in the
abstract namespace, so a program that runs as another `user` reaches it too; what keeps strangers out
is the sender's credentials, which the kernel attaches to every datagram (SO_PASSCRED): only a process
of the program's own session (the program and what it runs, such as `systemd-notify` from its shell
script) and of its uid is believed. A datagram from anyone else is dropped and counted. BARRIER=1
(systemd-notify waits for it) is honoured by closing the descriptor it carries, as systemd does.

`parse` and `believed` are pure; `NotifySocket` is the thin I/O around them, owned by the spawner.
"""
from __future__ import annotations

import array
import errno
import os
import secrets
import socket
import struct
from dataclasses import dataclass

MAX_DATAGRAM = 4096  # systemd's limit is larger; a notification is a few short lines
MAX_FDS = 8
_CREDS = struct.Struct("iII")  # struct ucred: pid, uid, gid
_ANCILLARY = socket.CMSG_SPACE(_CREDS.size) + socket.CMSG_SPACE(MAX_FDS * 4)
BATCH = 32  # datagrams read per turn of the event loop


@dataclass(frozen=True, slots=True)
class Datagram:
    fields: dict[str, str]
    pid: int
    uid: int
    fds: tuple[int, ...] = ()  # sent along (BARRIER=1's pipe): the receiver closes them once it has judged it

    def close_fds(self) -> None:
        for fd in self.fds:
            os.close(fd)


def parse(data: bytes) -> dict[str, str]:
    """`KEY=value` lines; a line that is not one is ignored, as systemd ignores it."""
    fields: dict[str, str] = {}
    for line in data.decode(errors="replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key] = value
    return fields


def session_of(pid: int) -> int | None:
    """The session id of a live process (field 6 of /proc/PID/stat), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2:].split()[3])
    except (OSError, ValueError, IndexError):
        return None


def believed(sender_pid: int, sender_uid: int, program_pid: int | None, program_uid: int) -> bool:
    """A notification is the program's when its sender runs as the program's uid and in its session (the
    program leads its own): a process of the same uid elsewhere is no more the program than any other."""
    if program_pid is None or sender_uid != program_uid:
        return False
    return sender_pid == program_pid or session_of(sender_pid) == program_pid


class NotifySocket:
    """One program's NOTIFY_SOCKET: bound before the program is exec'd, closed after its exit."""

    def __init__(self) -> None:
        # An abstract name anyone may take first: an unguessable one, so nobody can squat it and make the
        # program unstartable (a collision is tried again; it would take a stranger's luck)
        for attempt in range(4):
            name = f"sunsetd/{os.getpid()}/notify/{secrets.token_hex(8)}"
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
                self.sock.bind("\0" + name)
                break
            except OSError as exc:
                self.sock.close()
                if exc.errno != errno.EADDRINUSE or attempt == 3:
                    raise
        self.address = "@" + name  # as $NOTIFY_SOCKET names an abstract socket
        self.dropped = 0  # datagrams without credentials, or from a stranger
        self.program_uid = os.getuid()  # the uid its program runs as (the spawner sets it for a `user`)

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self, most: int = BATCH) -> list[Datagram]:
        """What waits on the socket, never blocking. The caller closes each datagram's descriptors after
        judging its sender: closing a barrier's releases `systemd-notify`, which then exits, and the
        sender's session can no longer be read."""
        out: list[Datagram] = []
        for _ in range(most):  # then back to the loop, which calls again while more wait: a flood cannot stall it
            try:
                data, ancillary, _, _ = self.sock.recvmsg(MAX_DATAGRAM, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError:
                return out
            creds, fds = None, array.array("i")
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= _CREDS.size:
                    creds = _CREDS.unpack(payload[:_CREDS.size])
                elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
            datagram = Datagram(parse(data), creds[0] if creds else 0, creds[1] if creds else -1, tuple(fds))
            if creds is None:
                datagram.close_fds()
                self.dropped += 1
                continue
            out.append(datagram)
        return out

    def close(self) -> None:
        self.sock.close()
