"""sd_notify (DESIGN §6): READY, STATUS, WATCHDOG, RELOADING and STOPPING to systemd, in pure Python.

Every call is a no-op when the daemon does not run under a Type=notify unit ($NOTIFY_SOCKET unset).
The watchdog interval comes from $WATCHDOG_USEC (for us only if $WATCHDOG_PID is unset or ours); the
daemon pings from a timer of its own event loop, so a stuck loop stops the pings and systemd acts.
"""
from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, environ: dict | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.sock: socket.socket | None = None
        self.address = "\0" + address[1:] if address.startswith("@") else address  # '@': abstract namespace
        if address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = int(env.get("WATCHDOG_USEC", "0") or 0)
        watchdog_pid = env.get("WATCHDOG_PID")
        if watchdog_pid and watchdog_pid.isdigit() and int(watchdog_pid) != os.getpid():
            usec = 0
        # ping three times per interval: one late loop iteration must not cost us the unit
        self.watchdog_every_s: float | None = usec / 3e6 if usec and self.sock else None
        self.last_status = ""

    def send(self, *assignments: str) -> bool:
        if self.sock is None:
            return False
        try:
            self.sock.sendto("\n".join(assignments).encode(), self.address)
            return True
        except OSError:
            return False  # systemd gone or the socket full: never a reason to stop supervising

    def ready(self, status: str) -> None:
        self.last_status = status
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        if status != self.last_status:
            self.last_status = status
            self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
                  "STATUS=reloading profile")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping agents")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
