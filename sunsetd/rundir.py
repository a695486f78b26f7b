"""The runtime directory (DESIGN §6): where it is, its sockets, and the lock that allows one daemon.

Shared by the daemon and by every client (sunsetctl, the chaos harness, agents' calls), so that they
all resolve the same directory the same way.
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

FRONT_SOCKET = "sunsetd.sock"
AGENTS_SOCKET = "agents.sock"
LOCK_FILE = "sunsetd.lock"
# sockaddr_un.sun_path is 108 bytes including the terminating NUL
SUN_PATH_MAX = 107


class RuntimeDirError(RuntimeError):
    """The runtime directory cannot be used; the message says why and what to do."""


def resolve(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get("RUNTIME_DIRECTORY"):  # set by systemd's RuntimeDirectory=
        return Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "sunsetd"
    if os.geteuid() == 0:
        return Path("/run/sunsetd")
    return Path(f"/tmp/sunsetd-{os.getuid()}")


def endpoint(runtime_dir: Path, socket_name: str) -> str:
    return f"ipc://{runtime_dir}/{socket_name}"


def check_path_length(runtime_dir: Path) -> None:
    longest = runtime_dir / FRONT_SOCKET
    if len(os.fsencode(str(longest))) > SUN_PATH_MAX:
        raise RuntimeDirError(
            f"runtime directory {runtime_dir} is too long for an ipc:// socket path "
            f"({len(str(longest))} > {SUN_PATH_MAX} bytes for {longest.name}); choose a shorter --runtime-dir"
        )


class RuntimeLock:
    """An flock on $RUNTIME/sunsetd.lock: held for the daemon's life, released by the kernel at death.

    Because the kernel drops the lock when the holder dies, a stale lock cannot exist, and whoever
    holds it may delete the sockets it finds: they belong to a daemon that is gone.
    """

    def __init__(self, runtime_dir: Path):
        self.runtime_dir = runtime_dir
        self.fd: int | None = None

    def acquire(self) -> None:
        check_path_length(self.runtime_dir)
        try:
            self.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.runtime_dir, 0o700)
        except OSError as exc:
            raise RuntimeDirError(f"cannot create runtime directory {self.runtime_dir}: {exc.strerror}") from None
        path = self.runtime_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RuntimeDirError(
                f"another sunsetd (pid {holder}) is already running on {self.runtime_dir}; "
                "stop it first or use another --runtime-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        for name in (FRONT_SOCKET, AGENTS_SOCKET):  # left by a daemon that died without cleaning up
            try:
                (self.runtime_dir / name).unlink()
            except FileNotFoundError:
                pass

    def release(self) -> None:
        if self.fd is None:
            return
        for name in (FRONT_SOCKET, AGENTS_SOCKET):
            try:
                (self.runtime_dir / name).unlink()
            except FileNotFoundError:
                pass
        os.close(self.fd)  # closing drops the flock
        self.fd = None


def processes_using(runtime_dir: Path) -> list:
    """Every live process whose command line names this runtime directory: a daemon started on it and
    its agents (exec'd ones carry --runtime-dir, forked ones the zygote's command line). What tests,
    benchmarks and the chaos harness check to prove nothing was left behind."""
    import psutil  # for tests and tools only: the daemon and sunsetctl never pay for it here

    marker = str(runtime_dir)
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and any(marker in a for a in proc.info["cmdline"] or ()):
                found.append(proc)
        except psutil.Error:
            continue
    return found
