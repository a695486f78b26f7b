"""The runtime directory (DESIGN §6): where it is, its sockets, and the lock that allows one daemon.

Shared by the daemon and by every client (sunsetctl, the chaos harness, agents' calls), so that they
all resolve the same directory the same way.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
from dataclasses import dataclass
from pathlib import Path

FRONT_SOCKET = "sunsetd.sock"
AGENTS_SOCKET = "agents.sock"
EVENTS_SOCKET = "events.sock"  # PUB: transitions, exits, reloads and agents' log lines as they happen
SOCKETS = (FRONT_SOCKET, AGENTS_SOCKET, EVENTS_SOCKET)
SYSTEM_DIR = Path("/run/sunsetd")  # the installed service's: what a non-root operator falls back to
LOCK_FILE = "sunsetd.lock"
# sockaddr_un.sun_path is 108 bytes including the terminating NUL
SUN_PATH_MAX = 107


class RuntimeDirError(RuntimeError):
    """The runtime directory cannot be used; the message says why and what to do."""


def resolve(explicit: str | os.PathLike | None = None, client: bool = False) -> Path:
    """The runtime directory. A client (`client=True`) of a non-root user with no daemon of their own
    running uses the system service's, when there is one: the way an operator in the service's socket
    group reaches the installed daemon without options."""
    if explicit:
        return Path(explicit)
    if os.environ.get("RUNTIME_DIRECTORY"):  # set by systemd's RuntimeDirectory=
        return Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0])
    if os.environ.get("XDG_RUNTIME_DIR"):
        own = Path(os.environ["XDG_RUNTIME_DIR"]) / "sunsetd"
    elif os.geteuid() == 0:
        return SYSTEM_DIR
    else:
        own = Path(f"/tmp/sunsetd-{os.getuid()}")
    if client and not _daemon_in(own) and _exists(SYSTEM_DIR / FRONT_SOCKET):
        return SYSTEM_DIR
    return own


def _daemon_in(runtime_dir: Path) -> bool:
    """A daemon runs on this directory of our own: its socket is there and the pid in its lock lives."""
    if not (runtime_dir / FRONT_SOCKET).exists():
        return False
    try:
        pid = int((runtime_dir / LOCK_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return True  # cannot tell: ours, as the socket says
    return os.path.exists(f"/proc/{pid}")


def _exists(path: Path) -> bool:
    """Exists, or is there but not ours to see (a directory of the service's group we are not in)."""
    try:
        path.stat()
        return True
    except PermissionError:
        return True
    except OSError:
        return False


def endpoint(runtime_dir: Path, socket_name: str) -> str:
    return f"ipc://{runtime_dir}/{socket_name}"


def check_path_length(runtime_dir: Path) -> None:
    longest = runtime_dir / FRONT_SOCKET
    if len(os.fsencode(str(longest))) > SUN_PATH_MAX:
        raise RuntimeDirError(
            f"runtime directory {runtime_dir} is too long for an ipc:// socket path "
            f"({len(str(longest))} > {SUN_PATH_MAX} bytes for {longest.name}); choose a shorter --runtime-dir"
        )


@dataclass(frozen=True)
class Access:
    """Who may use the runtime directory besides the daemon's uid: an operator group, or nobody.

    Clients' sockets (front, events) are shared with the group; the agents socket and the lock never
    are. The directory opens to the group only once every socket in it has its final mode."""

    gid: int | None = None

    def socket(self, path: Path, shared: bool) -> None:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):  # chmod follows symlinks: only our own socket
            raise RuntimeDirError(f"{path} is not the socket sunsetd just bound")
        if shared and self.gid is not None:
            give_to_group(path, self.gid)
            os.chmod(path, 0o660)
        else:
            os.chmod(path, 0o600)

    def open_directory(self, runtime_dir: Path) -> None:
        if self.gid is not None:
            give_to_group(runtime_dir, self.gid)
            os.chmod(runtime_dir, 0o750)


def give_to_group(path: Path, gid: int) -> None:
    """chown to the group, unless it has it already: under systemd the runtime directory and our own
    sockets are the service's group from the start, and the unit's system-call filter refuses chown."""
    if os.stat(path).st_gid != gid:
        os.chown(path, -1, gid)


def group_id(name: str) -> int:
    """The gid of a group given by name or number, or RuntimeDirError saying it does not exist."""
    import grp

    try:
        return grp.getgrgid(int(name)).gr_gid if name.isdigit() else grp.getgrnam(name).gr_gid
    except (KeyError, OverflowError):
        raise RuntimeDirError(f"--socket-group {name}: no such group") from None


def check_safe(runtime_dir: Path) -> None:
    """The directory whose sockets clients and agents will trust: a real directory (not a symlink), owned
    by our effective uid, that no group and nobody else may write to (or a stranger could swap a socket,
    or plant a symlink for the lock and have a root daemon truncate what it points at)."""
    st = os.lstat(runtime_dir)
    euid = os.geteuid()
    problem = None
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symlink"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "is not a directory"
    elif st.st_uid != euid:
        problem = f"is owned by uid {st.st_uid}, not by sunsetd's uid {euid}"
    elif st.st_mode & 0o022:
        problem = f"may be written by its group or others (mode {stat.S_IMODE(st.st_mode):04o}): chmod go-w it"
    if problem is not None:
        raise RuntimeDirError(f"runtime directory {runtime_dir} {problem}; use another --runtime-dir")


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
        except OSError as exc:
            raise RuntimeDirError(f"cannot create runtime directory {self.runtime_dir}: {exc.strerror}") from None
        check_safe(self.runtime_dir)
        path = self.runtime_dir / LOCK_FILE
        try:  # never through a symlink: in a directory that is ours alone none can be there, but never trust it
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            why = "a symlink" if exc.errno == errno.ELOOP else exc.strerror
            raise RuntimeDirError(f"cannot use runtime directory {self.runtime_dir}: {path.name}: {why}; "
                                  "is it somebody else's? use another --runtime-dir") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RuntimeDirError(f"cannot use runtime directory {self.runtime_dir}: {path.name} is not a file")
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
        # Ours now, and only now: a second daemon refused above must not close the directory to the
        # operators of the one that runs. Closed until every socket in it has its mode (Access).
        try:
            os.chmod(self.runtime_dir, 0o700)
        except OSError as exc:
            os.close(fd)
            raise RuntimeDirError(f"cannot make runtime directory {self.runtime_dir} private: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        for name in SOCKETS:  # left by a daemon that died without cleaning up
            try:
                (self.runtime_dir / name).unlink()
            except FileNotFoundError:
                pass

    def release(self) -> None:
        if self.fd is None:
            return
        for name in SOCKETS:
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
