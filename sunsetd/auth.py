"""Who may speak on the daemon's sockets (DESIGN §9): the ZAP handler, the agents' secrets, the clients' connections.

libzmq asks a ZAP handler about every new connection to a socket that has a ZAP domain, before the peer
can send anything; with ZAP_ENFORCE_DOMAIN it admits nobody while no handler is bound (fail closed). The
handler is a ROUTER in the daemon's own context, bound before any other socket and served by the event
loop like the rest. For an ipc peer libzmq gives the kernel's credentials of the process that connected
as its address, `host:uid:gid:pid`.

- agents socket: only a pid the spawner started for a live incarnation. The connection's User-Id is that
  incarnation's routing id, and the router checks every frame against it, so a child can speak for
  itself alone; its HELLO must also carry the incarnation's secret (constant-time compare), and nothing
  else it says counts before that. An impostor of the same uid (before or after the real child, with the
  right routing id, even with a stolen secret, or an orphan of an earlier daemon) is never admitted.
- front and events sockets: the daemon's uid, root, and members of the operator group (--socket-group),
  judged by the kernel's credentials and the process's own groups, not only by file modes; at most
  `max_clients` connections at once (the rest refused with a log line, existing ones still served).
  A monitor of each socket tells connections from disconnections, so a reply owed to a client that has
  gone is dropped, never delivered to a newcomer that claims the same routing id.
"""
from __future__ import annotations

import ctypes
import hmac
import os
import resource
import secrets
import struct
from collections import Counter, deque
from typing import Callable

import zmq

from sunsetd import logs, protocol
from sunsetd.timers import Timer, Timers

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq sends its questions (RFC 27)
AGENTS = b"agents"  # ZAP domains
CLIENTS = b"clients"
BATCH = 256  # ZAP requests answered in one round
MONITOR_BATCH = 4096  # connection events read in one round; ZAP answers wait until all are read
PARK_S = 2.0  # a connection from a pid not known yet waits this long for the spawner to report it
MAX_PARKED = 256
SECRET_BYTES = 32
TAG_BYTES = 8  # of a routing id tag: 2^64 guesses, each a connection the daemon sees
MAX_CLIENTS = 4096  # front and events connections at once, unless the fd limit allows fewer
FD_RESERVE = 512  # descriptors kept for agents' pipes, pidfds and connections, below the limit
_ACCEPTED, _DISCONNECTED = int(zmq.EVENT_ACCEPTED), int(zmq.EVENT_DISCONNECTED)


def client_limit() -> int:
    """The documented connection limit: MAX_CLIENTS, or fewer when the fd limit leaves less room."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, min(MAX_CLIENTS, (soft - FD_RESERVE) // 2))


def seed_peer_numbers() -> None:
    """libzmq numbers a ROUTER's anonymous peers from the C library's rand(), which nothing seeds: the
    first is always 0x6b8b4567, and a peer that chose the next numbers as its routing id makes libzmq
    assert (abort) when an anonymous client is given a number already held. Seeded from the kernel's
    randomness before any socket is made, the numbers cannot be guessed."""
    try:
        ctypes.CDLL(None).srand(secrets.randbits(32))
    except (OSError, AttributeError):
        pass


def peer_credentials(address: bytes) -> tuple[int, int, int] | None:
    """(uid, gid, pid) from libzmq's address of an ipc peer, `host:uid:gid:pid`; None for anything else."""
    parts = address.split(b":")
    if len(parts) < 4:
        return None
    try:
        uid, gid, pid = int(parts[-3]), int(parts[-2]), int(parts[-1])
    except ValueError:
        return None
    return (uid, gid, pid) if pid > 0 else None


def _uids_hidden() -> int | None:
    """The overflow uid, when we run in a user namespace that does not map every uid (systemd's
    PrivateUsers=yes maps root and the service's own): other users then all look like it, and their
    groups cannot be known. None when every uid is visible."""
    try:
        with open("/proc/self/uid_map") as f:
            if f.read().split() == ["0", "0", "4294967295"]:
                return None
        with open("/proc/sys/kernel/overflowuid") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def groups_of(pid: int, uid: int, gid: int) -> set[int]:
    """The supplementary groups of a process: its own, from /proc; else (ProtectProc=invisible hides
    other users' processes from a systemd service) those the user database gives its uid."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    import pwd

    try:
        return set(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
    except (KeyError, OSError):
        return set()


class Authenticator:
    def __init__(self, ctx: zmq.Context, timers: Timers, operator_gid: int | None = None,
                 max_clients: int | None = None):
        self.timers = timers
        self.euid = os.geteuid()
        self.operator_gid = operator_gid
        self.hidden_uid = _uids_hidden()
        self.max_clients = client_limit() if max_clients is None else max_clients
        seed_peer_numbers()
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ZAP_ENDPOINT)  # first: a socket bound before this would have no one to ask
        self.counters: Counter[str] = Counter()
        # agents
        self.spawned: dict[int, bytes] = {}  # pid -> routing id of the incarnation it was started for
        self.secrets: dict[bytes, bytes] = {}  # routing id -> its secret, until its process is gone
        self.routes: dict[tuple[str, int], bytes] = {}  # (name, incarnation) -> its routing id, likewise
        self.proven: set[bytes] = set()  # routing ids whose HELLO carried their secret
        self.parked: deque[tuple[float, list[bytes], int]] = deque()  # (until, ZAP request, pid)
        self._park_timer: Timer | None = None
        # clients
        self.monitors: list[zmq.Socket] = []
        self.events = 0  # connection events seen: a client's connection is known by the count at its admission
        self.disconnected_at: dict[int, int] = {}  # fd -> event count of its last disconnection
        self.connections = 0  # open connections to the client sockets

    def close(self) -> None:
        for monitor in self.monitors:
            monitor.close(linger=0)
        self.sock.close(linger=0)

    # ---- the sockets it guards
    def guard(self, sock: zmq.Socket, domain: bytes) -> None:
        """Before `sock` binds: every connection to it needs our word. A client socket is also watched
        for connections coming and going."""
        sock.setsockopt(zmq.ZAP_DOMAIN, domain)
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        if sock.getsockopt(zmq.ZAP_ENFORCE_DOMAIN) != 1:
            raise RuntimeError("this libzmq cannot enforce ZAP domains: refusing to bind an unguarded socket")
        if domain == CLIENTS:
            self.monitors.append(sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED))

    # ---- what the spawner tells it
    def issue(self, name: str, incarnation: int) -> tuple[str, bytes]:
        """A new incarnation's routing id tag and secret: both unguessable, both known only to the daemon
        and, once it is made, that incarnation's process."""
        tag, secret = secrets.token_hex(TAG_BYTES), secrets.token_bytes(SECRET_BYTES)
        rid = protocol.routing_id(name, incarnation, tag)
        self.secrets[rid] = secret
        self.routes[(name, incarnation)] = rid
        return tag, secret

    def route(self, name: str, incarnation: int) -> bytes | None:
        """The routing id to send to that incarnation by; None once its process is gone."""
        return self.routes.get((name, incarnation))

    def admit(self, pid: int, routing_id: bytes) -> None:
        """That pid is the process started for that incarnation."""
        self.spawned[pid] = routing_id
        if self.parked:
            self._unpark(lambda parked_pid: parked_pid == pid)

    def forget(self, pid: int | None, routing_id: bytes) -> None:
        """Its process is gone (or was never made)."""
        if pid is not None and self.spawned.get(pid) == routing_id:
            del self.spawned[pid]
        self.secrets.pop(routing_id, None)
        self.proven.discard(routing_id)
        peer = protocol.parse_routing_id(routing_id)
        if peer is not None and self.routes.get(peer) == routing_id:
            del self.routes[peer]

    # ---- what the router asks
    def hello(self, routing_id: bytes, presented: object) -> bool:
        """A HELLO from a connection admitted as `routing_id`: does it carry that incarnation's secret?"""
        secret = self.secrets.get(routing_id)
        if secret is None or not isinstance(presented, bytes) or not hmac.compare_digest(presented, secret):
            return False
        self.proven.add(routing_id)
        return True

    def client_gone(self, origin: tuple[int, int]) -> bool:
        """The connection (fd, admitted at) that sent a request has closed since."""
        fd, admitted_at = origin
        return self.disconnected_at.get(fd, -1) > admitted_at

    # ---- the event loop's side
    def on_monitor_readable(self) -> None:
        self._read_monitors()

    def _read_monitors(self) -> bool:
        """Read connection events; True once none are left unread."""
        for monitor in self.monitors:
            for _ in range(MONITOR_BATCH):
                try:
                    frames = monitor.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if len(frames[0]) < 6:
                    continue
                event, fd = struct.unpack("=HI", frames[0][:6])
                self.events += 1
                if event == _ACCEPTED:
                    self.connections += 1
                elif event == _DISCONNECTED:
                    self.connections = max(0, self.connections - 1)
                    self.disconnected_at[fd] = self.events
            else:
                return False
        return True

    def on_readable(self) -> None:
        # Every disconnection that happened before a connection was accepted is read before it is
        # admitted: a newcomer on a reused fd is never taken for the client that had it.
        if not self._read_monitors():
            return
        for _ in range(BATCH):
            try:
                request = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            at = request.index(b"") if b"" in request[:2] else -1  # [envelope, "", version, ...]
            if at < 0 or len(request) < at + 7 or request[at + 1] != b"1.0":
                self.counters["zap_malformed"] += 1  # only libzmq speaks here (inproc): never expected
                continue
            self._judge(request)

    def _judge(self, request: list[bytes]) -> None:
        # [envelope, "", version, request id, domain, address, identity, mechanism, credentials...]
        at = request.index(b"")
        domain, address = request[at + 3], request[at + 4]
        cred = peer_credentials(address)
        if domain == AGENTS:
            self._judge_agent(request, cred)
        elif domain == CLIENTS:
            self._judge_client(request, cred)
        else:
            self._refuse(request, "unknown domain", f"a connection to a socket of unknown domain {domain[:40]!r}")

    def _judge_agent(self, request: list[bytes], cred: tuple[int, int, int] | None) -> None:
        if cred is None or cred[0] != self.euid:
            self._refuse(request, "not an agent", "a connection to the agents socket not from sunsetd's uid "
                         f"({self._who(cred)})")
            return
        routing_id = self.spawned.get(cred[2])
        if routing_id is not None:
            self._reply(request, b"200", routing_id)
            return
        if len(self.parked) >= MAX_PARKED:
            self._refuse(request, "not an agent", f"a connection to the agents socket from {self._who(cred)}, "
                         "not a process sunsetd started")
            return
        self.parked.append((self.timers.now() + PARK_S, request, cred[2]))  # its spawn may not be reported yet
        if self._park_timer is None:
            self._park_timer = self.timers.call_later(PARK_S, self._expire_parked)

    def _unpark(self, match: Callable[[int], bool]) -> None:
        keep: deque = deque()
        for until, request, pid in self.parked:
            if match(pid):
                self._judge(request)
            else:
                keep.append((until, request, pid))
        self.parked = keep

    def _expire_parked(self) -> None:
        self._park_timer = None
        now = self.timers.now()
        while self.parked and self.parked[0][0] <= now:
            _, request, pid = self.parked.popleft()
            routing_id = self.spawned.get(pid)
            if routing_id is not None:
                self._reply(request, b"200", routing_id)
            else:
                self._refuse(request, "not an agent", f"a connection to the agents socket from pid {pid}, "
                             "not a process sunsetd started")
        if self.parked:
            self._park_timer = self.timers.call_at(self.parked[0][0], self._expire_parked)

    def _judge_client(self, request: list[bytes], cred: tuple[int, int, int] | None) -> None:
        if cred is None:
            self._refuse(request, "no credentials", "a client connection with no peer credentials")
            return
        uid, gid, pid = cred
        allowed = uid in (self.euid, 0) or (self.operator_gid is not None and (
            gid == self.operator_gid or self.operator_gid in groups_of(pid, uid, gid)
            # under PrivateUsers=yes every other user looks like the overflow uid: what admitted it is the
            # kernel's check of the socket's group mode, the one check left that can know its groups
            or uid == self.hidden_uid))
        if not allowed:
            self._refuse(request, "not allowed", f"a client connection from {self._who(cred)}: not sunsetd's "
                         "uid, root, or a member of its --socket-group")
        elif self.connections > self.max_clients:
            self._refuse(request, "too many clients", f"a client connection from {self._who(cred)} refused: "
                         f"{self.connections - 1} connections open (limit {self.max_clients})")
        else:
            self._reply(request, b"200", str(self.events).encode())  # its User-Id: when it was admitted

    @staticmethod
    def _who(cred: tuple[int, int, int] | None) -> str:
        return "unknown peer" if cred is None else f"pid {cred[2]} uid {cred[0]}"

    def _refuse(self, request: list[bytes], status: str, message: str) -> None:
        key = "refused_" + status.replace(" ", "_")
        self.counters[key] += 1
        n = self.counters[key]
        if logs.sparse(n):
            logs.event(logs.DAEMON, "refused", message, "WARNING", count=n)
        self._reply(request, b"400", b"", status.encode())

    def _reply(self, request: list[bytes], code: bytes, user_id: bytes, text: bytes = b"OK") -> None:
        at = request.index(b"")
        try:
            self.sock.send_multipart(request[:at] + [b"", b"1.0", request[at + 2], code, text, user_id, b""],
                                     zmq.NOBLOCK)
        except zmq.ZMQError:
            self.counters["zap_unanswered"] += 1  # that connection is gone already
