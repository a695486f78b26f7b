"""Agent SDK and the runtime that runs inside every agent process (DESIGN §4).

A user writes a subclass of `Agent` with one `handle_<op>(self, body)` method per operation, an
optional slow `setup()`, and calls other agents with `self.call(...)`, which goes through sunsetd.

The runtime owns the agent's sockets on one I/O thread: it says HELLO, heartbeats both ways, hands
requests to a pool of handler threads (so a long request never stops heartbeats), sends replies, and
stops cleanly on STOP or SIGTERM. Everything it needs to know comes in one `protocol.Launch`. The
spawner that started it made it die with the daemon (PR_SET_PDEATHSIG); it also exits by itself when
the daemon goes silent: an agent never outlives its supervisor.
"""
from __future__ import annotations

import enum
import importlib
import itertools
import os
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sunsetd import protocol
from sunsetd.protocol import LAUNCH_ENV, SECRET_FD_ENV, ErrorCode, Kind, Launch, ProtocolError, RemoteError
from sunsetd.stamps import DAEMON_SILENT_MIN_S, IDLE_STAMP_S

EXIT_SETUP_FAILED = 1
EXIT_DAEMON_LOST = 3
STOP_FRAME_WAIT_S = 0.5  # after SIGTERM, how long to wait for the daemon's STOP frame (and what precedes it)


class AgentError(Exception):
    """Raise from a handler to answer with an error; `code` is agent_error unless said otherwise."""

    code = ErrorCode.AGENT_ERROR.value

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class BadRequest(AgentError):
    """The request's body is not what the op expects."""

    code = ErrorCode.BAD_REQUEST.value


class Inbox(bytes, enum.Enum):
    """What handler threads post to the agent's I/O thread (an inproc PUSH/PULL, first frame)."""

    REPLY = b"reply"  # [tag, packed REPLY body]: send it to the daemon
    CALL = b"call"  # [tag, packed request]: send it to the front socket
    READY = b"ready"  # setup() returned
    SETUP_FAILED = b"setup_failed"


_INBOX = {tag.value: tag for tag in Inbox}  # a dict lookup per message, not an enum call


class Agent:
    """Base class of every agent. Define `handle_<op>(self, body)`; return any msgpack-able value."""

    def __init__(self, name: str, config: dict | None = None, runtime: "AgentRuntime | None" = None):
        self.name = name
        self.config = dict(config or {})
        self._runtime = runtime
        self.started_at = time.time()

    # ---- hooks a subclass may override
    def setup(self) -> None:
        """Load what the agent needs. May be slow: heartbeats go on, READY is sent when it returns."""

    def teardown(self) -> None:
        """Release resources at a clean stop."""

    # ---- built-in ops every agent answers
    def handle_ping(self, body: Any) -> str:
        return "pong"

    def handle_info(self, body: Any) -> dict:
        doc = (type(self).__doc__ or "").strip().splitlines()
        return {
            "name": self.name,
            "class": f"{type(self).__module__}:{type(self).__qualname__}",
            "doc": doc[0] if doc else "",
            "ops": self.ops(),
            "pid": os.getpid(),
            "incarnation": self._runtime.incarnation if self._runtime else 0,
            "uptime_s": round(time.time() - self.started_at, 3),
        }

    # ---- services for subclasses
    @classmethod
    def ops(cls) -> list[str]:
        return sorted(n[len("handle_"):] for n in dir(cls) if n.startswith("handle_") and callable(getattr(cls, n)))

    def call(self, agent: str, op: str, body: Any = None, timeout: float = 5.0, retry: bool = False) -> Any:
        """Call another agent through sunsetd; return its reply body or raise RemoteError."""
        if self._runtime is None:
            raise RemoteError(ErrorCode.UNAVAILABLE.value, "agent is not running under sunsetd")
        return self._runtime.call(agent, op, body, timeout, retry)

    def log(self, message: str) -> None:
        """One line to the daemon's log, tagged with this agent's name."""
        print(message, flush=True)

    def dispatch(self, op: str, body: Any) -> Any:
        handler = getattr(self, f"handle_{op}", None) if op.isidentifier() else None
        if handler is None:
            raise BadRequest(f"{self.name} has no op {op!r} (ops: {', '.join(self.ops())})")
        return handler(body)


def load_agent_class(run: str) -> type[Agent]:
    module_name, _, class_name = run.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise TypeError(f"{run} is not a subclass of sunsetd.agent.Agent")
    return cls


class _Waiter:
    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: dict | None = None


class AgentRuntime:
    """The agent process's I/O thread: sockets, heartbeats, dispatch to handler threads, clean stop."""

    def __init__(self, launch: Launch, secret: bytes = b"", pages: tuple[Any, Any] | None = None):
        import zmq  # imported here so that `import sunsetd.agent` (run-target checks) stays light

        self.zmq = zmq
        self.launch = launch
        self.secret = secret  # proves to the daemon, in HELLO, that we are the process it started
        self.name = launch.name
        self.incarnation = launch.incarnation
        self.heartbeat_s = launch.heartbeat_ms / 1000.0
        self.liveness = launch.liveness
        self.first_word_s = launch.start_timeout_s + launch.liveness * self.heartbeat_s
        # (ours, the daemon's) stamp pages (sunsetd.stamps): liveness both ways without heartbeat frames
        self.own_page, self.daemon_page = pages if pages is not None else (None, None)
        # A stamp every half of the silence the daemon allows is as safe as one every heartbeat (it reads
        # them on a timer of its own), and each wake-up is the whole cost of an idle agent (~0.1 ms here):
        # one with nothing to do stamps every IDLE_STAMP_S, saying so (sunsetd.stamps)
        self.beat_s = self.heartbeat_s if self.own_page is None else self.liveness * self.heartbeat_s / 2
        self.ctx = _prepared_context() or zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, launch.routing_id)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.connect(launch.agents_endpoint)
        self.calls = None  # DEALER to the front socket, made on the first call
        self.inbox = self.ctx.socket(zmq.PULL)  # handler threads post replies and calls here
        self.inbox_addr = f"inproc://outbox-{id(self)}"
        self.inbox.bind(self.inbox_addr)
        self.local = threading.local()
        self.thread_sockets: list = []  # each handler thread's PUSH to the inbox, closed at exit
        self.waiters: dict[int, _Waiter] = {}
        self.call_ids = itertools.count(1)
        self.pool = ThreadPoolExecutor(max_workers=launch.concurrency, thread_name_prefix="handler")
        self.busy = 0
        self.busy_lock = threading.Lock()
        self.stopping_since: float | None = None
        self.grace_s = launch.stop_timeout_s * 0.8
        self.ready = False
        self.teardown_ok = True
        self.stop_frame_seen = False
        self.agent: Agent | None = None

    # ---- used from handler threads
    def _post(self, frames: list[bytes]) -> None:
        self._outbox().send_multipart(frames)

    def _outbox(self) -> Any:
        """This thread's PUSH to the inbox, made at its first use."""
        out = getattr(self.local, "out", None)
        if out is None:
            out = self.local.out = self.ctx.socket(self.zmq.PUSH)
            out.setsockopt(self.zmq.LINGER, 0)
            out.connect(self.inbox_addr)
            with self.busy_lock:
                self.thread_sockets.append(out)
        return out

    def call(self, to: str, op: str, body: Any, timeout: float, retry: bool) -> Any:
        deadline = getattr(self.local, "deadline", None)
        if deadline is not None:  # never wait longer than the request we are serving may
            timeout = min(timeout, deadline - time.time())
            if timeout <= 0:
                raise RemoteError(ErrorCode.TIMEOUT.value, f"no time left to call {to}.{op}")
        rid = next(self.call_ids)
        waiter = self.waiters[rid] = _Waiter()
        request = {"v": protocol.VERSION, "id": rid, "to": to, "op": op, "body": body,
                   "timeout_ms": max(1, int(timeout * 1000)), "retry": retry}
        try:
            self._post([Inbox.CALL.value, protocol.pack(request)])
            # the daemon answers `timeout` itself at the deadline; the slack covers a dead daemon
            if not waiter.event.wait(timeout + 2.0):
                raise RemoteError(ErrorCode.TIMEOUT.value, f"no reply from sunsetd for {to}.{op}")
        finally:
            self.waiters.pop(rid, None)
        reply = waiter.reply
        if reply.get("ok"):
            return reply.get("body")
        error = reply.get("error") or {}
        raise RemoteError(str(error.get("code")), str(error.get("message")))

    def _dropped(self, rid: int) -> dict:
        """The reply that says a request was dropped unrun: the daemon answered it `timeout` already, and
        counts it against our max_inflight until it hears we are done with it."""
        return {"id": rid, "ok": False, "error": {
            "code": ErrorCode.TIMEOUT.value, "message": f"{self.name} dropped it unrun: its deadline had passed"}}

    def _run_handler(self, rid: int, op: str, body: Any, deadline: float) -> None:
        if time.time() > deadline:
            self._post([Inbox.REPLY.value, protocol.pack(self._dropped(rid))])  # it waited past its deadline
            return
        self.local.deadline = deadline
        try:
            result = {"id": rid, "ok": True, "body": self.agent.dispatch(op, body)}
        except AgentError as exc:
            result = {"id": rid, "ok": False, "error": {"code": exc.code, "message": str(exc)}}
        except RemoteError as exc:
            result = {"id": rid, "ok": False, "error": {"code": ErrorCode.AGENT_ERROR.value,
                                                         "message": f"{self.name}.{op}: call failed: {exc}"}}
        except Exception as exc:  # a handler bug is an error reply, never a dead agent
            traceback.print_exc()
            result = {"id": rid, "ok": False, "error": {"code": ErrorCode.AGENT_ERROR.value,
                                                         "message": f"{type(exc).__name__}: {exc}"}}
        finally:
            self.local.deadline = None
        try:
            frame = protocol.pack(result)
        except Exception as exc:
            frame = protocol.pack({"id": rid, "ok": False, "error": {
                "code": ErrorCode.AGENT_ERROR.value, "message": f"reply cannot be encoded: {exc}"}})
        if len(frame) > protocol.MAX_FRAME_BYTES:
            frame = protocol.pack({"id": rid, "ok": False, "error": {
                "code": ErrorCode.AGENT_ERROR.value,
                "message": f"reply of {len(frame)} bytes is over the {protocol.MAX_FRAME_BYTES}-byte limit"}})
        self._post([Inbox.REPLY.value, frame])

    def _run_setup(self) -> None:
        try:
            self.agent.setup()
        except Exception:
            traceback.print_exc()
            self._post([Inbox.SETUP_FAILED.value])
            return
        self._post([Inbox.READY.value])

    # ---- the I/O thread
    def _send(self, kind: Kind, body: Any = None) -> None:
        frames = [kind.value] if body is None else [kind.value, protocol.pack(body)]
        try:
            self.sock.send_multipart(frames, flags=self.zmq.NOBLOCK)
        except self.zmq.Again:
            pass  # the daemon is not reading; heartbeats will tell

    def _on_daemon_message(self, frames: list[bytes]) -> None:
        try:
            kind, body = protocol.parse_agent_frames(frames)
        except protocol.ProtocolError as exc:
            print(f"ignoring bad frame from sunsetd: {exc}", file=sys.stderr, flush=True)
            return
        if kind is Kind.REQUEST:
            if not isinstance(body, dict) or not isinstance(body.get("id"), int):
                return
            if self.stop_frame_seen:  # the daemon forwards nothing after STOP; this is a stray
                self._send(Kind.REPLY, {"id": body["id"], "ok": False, "error": {
                    "code": ErrorCode.UNAVAILABLE.value, "message": f"{self.name} is stopping"}})
                return
            deadline = body.get("deadline")
            if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
                deadline = time.time() + 3600.0
            elif deadline < time.time():  # the daemon has answered it `timeout`: no work, but say so
                self._send(Kind.REPLY, self._dropped(body["id"]))
                return
            with self.busy_lock:
                self.busy += 1
            future = self.pool.submit(self._run_handler, body["id"], str(body.get("op")), body.get("body"), deadline)
            future.add_done_callback(self._handler_done)
        elif kind is Kind.STOP:
            self.stop_frame_seen = True
            grace_ms = body.get("grace_ms") if isinstance(body, dict) else None
            self._begin_stop(grace_ms / 1000.0 if isinstance(grace_ms, (int, float)) else self.grace_s)

    def _handler_done(self, _future: Any) -> None:
        with self.busy_lock:
            self.busy -= 1

    def _on_call_reply(self, frames: list[bytes]) -> None:
        try:
            reply = protocol.unpack(frames[-1], "call reply")
        except protocol.ProtocolError:
            return
        waiter = self.waiters.get(reply.get("id")) if isinstance(reply, dict) else None
        if waiter is not None:
            waiter.reply = reply
            waiter.event.set()

    def _on_inbox(self, frames: list[bytes]) -> int | None:
        what = _INBOX[frames[0]]
        if what is Inbox.REPLY:
            try:
                self.sock.send_multipart([Kind.REPLY.value, frames[1]], flags=self.zmq.NOBLOCK)
            except self.zmq.Again:
                print("reply dropped: the daemon is not reading", file=sys.stderr, flush=True)
        elif what is Inbox.CALL:
            if self.calls is None:
                self.calls = self.ctx.socket(self.zmq.DEALER)
                self.calls.setsockopt(self.zmq.LINGER, 0)
                self.calls.connect(self.launch.front_endpoint)
                self.poller.register(self.calls, self.zmq.POLLIN)
            self.calls.send_multipart([frames[1]])
        elif what is Inbox.READY:
            self.ready = True
            self._send(Kind.READY)
        elif what is Inbox.SETUP_FAILED:
            return EXIT_SETUP_FAILED
        return None

    def _begin_stop(self, grace_s: float) -> None:
        if self.stopping_since is None:
            self.stopping_since = time.monotonic()
            self.grace_s = grace_s

    def _signal_received(self, wakeup_r: int) -> None:
        try:
            data = os.read(wakeup_r, 64)
        except BlockingIOError:
            return
        if any(sig in (signal.SIGTERM, signal.SIGINT) for sig in data):
            self._begin_stop(self.grace_s)

    def run(self) -> int:
        zmq = self.zmq
        cls = load_agent_class(self.launch.run)
        self.agent = cls(self.name, dict(self.launch.config), self)
        wakeup_r, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wakeup_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)  # the wake-up fd carries the signal into the loop
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.poller.register(self.inbox, zmq.POLLIN)
        self.poller.register(wakeup_r, zmq.POLLIN)
        self._send(Kind.HELLO, {"name": self.name, "pid": os.getpid(), "incarnation": self.incarnation,
                                "secret": self.secret,
                                "stamps": self.own_page is not None})  # else: heartbeat frames, please
        threading.Thread(target=self._run_setup, name="setup", daemon=True).start()
        # the first handler thread and its socket are made while setup() runs, not for the first request
        # (after a restart, the one that waited for it: about 0.5 ms of the restart)
        self.pool.submit(self._outbox)
        last_heard = time.monotonic()
        silence_s = self.first_word_s  # until the daemon first speaks (or, with stamps, we are ready)
        next_beat = last_heard + self.beat_s
        if self.own_page is not None:
            self.own_page.stamp()
        teardown: threading.Thread | None = None
        while True:
            now = time.monotonic()
            if self.stopping_since is not None:
                out_of_grace = now - self.stopping_since > self.grace_s
                # Requests the daemon sent before its STOP are ahead of it on our socket: serve them
                # before leaving. A SIGTERM alone (no daemon behind it) waits for STOP only briefly.
                drained = self.stop_frame_seen or now - self.stopping_since > STOP_FRAME_WAIT_S
                if teardown is None and ((drained and self.busy == 0) or out_of_grace):
                    # teardown runs off this thread, which keeps serving its calls to other agents
                    teardown = threading.Thread(target=self._run_teardown, name="teardown", daemon=True)
                    teardown.start()
                if teardown is not None and (not teardown.is_alive() or out_of_grace):
                    break
            timeout_ms = max(0, int((next_beat - now) * 1000)) + 1
            if self.stopping_since is not None:
                timeout_ms = min(timeout_ms, 20)
            for sock, _ in self.poller.poll(timeout_ms):
                if sock is self.sock:
                    last_heard = time.monotonic()
                    if self.daemon_page is None:
                        silence_s = self.liveness * self.heartbeat_s
                    for _ in range(256):
                        try:
                            self._on_daemon_message(self.sock.recv_multipart(zmq.NOBLOCK))
                        except zmq.Again:
                            break
                elif sock is self.inbox:
                    for _ in range(256):
                        try:
                            code = self._on_inbox(self.inbox.recv_multipart(zmq.NOBLOCK))
                        except zmq.Again:
                            break
                        if code is not None:
                            return self._exit(code)
                elif sock is self.calls:
                    for _ in range(256):
                        try:
                            self._on_call_reply(self.calls.recv_multipart(zmq.NOBLOCK))
                        except zmq.Again:
                            break
                else:
                    self._signal_received(wakeup_r)
            now = time.monotonic()
            if self.own_page is None:
                if now >= next_beat:
                    self._send(Kind.HEARTBEAT)
                    next_beat = now + self.beat_s
            else:  # a stamp at every wake-up, not a frame: no wake-up of libzmq's threads, here or in the daemon
                idle = self.ready and self.busy == 0 and self.stopping_since is None
                self.own_page.stamp(idle=idle)
                next_beat = now + (IDLE_STAMP_S if idle else self.beat_s)
            if self.daemon_page is not None:
                stamped = self.daemon_page.read()
                if stamped is not None and stamped > last_heard:
                    last_heard = stamped
                if self.ready:  # a daemon busy starting many agents may stamp late: not before we are ready
                    silence_s = max(self.liveness * self.heartbeat_s, DAEMON_SILENT_MIN_S)
            if now - last_heard > silence_s and self.stopping_since is None:
                if self.sock.poll(0):
                    continue  # we were the slow one (a handler held the GIL): read what the daemon sent
                print(f"sunsetd silent for {now - last_heard:.2f}s: exiting", file=sys.stderr, flush=True)
                return self._exit(EXIT_DAEMON_LOST, linger_ms=0)
        # clean stop: in-flight handlers and teardown are done (or out of grace); queued replies go out
        while True:
            try:
                self._on_inbox(self.inbox.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
        return self._exit(0 if self.teardown_ok else 1)

    def _run_teardown(self) -> None:
        try:
            self.agent.teardown()
        except Exception:
            traceback.print_exc()
            self.teardown_ok = False

    def _exit(self, code: int, linger_ms: int = 500) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        with self.busy_lock:
            for out in self.thread_sockets:
                out.close(linger=0)
        for sock in (self.inbox, self.calls):
            if sock is not None:
                sock.close(linger=0)
        self.sock.close(linger=linger_ms)  # the last replies still reach the daemon
        term = threading.Thread(target=self.ctx.term, daemon=True)
        term.start()
        term.join(linger_ms / 1000.0 + 0.1)
        # os._exit: handler threads may still be stuck in user code; the pool must not block our exit
        os._exit(code)


_PREPARED: list = []  # a zygote's spare makes the context (and its threads) while it waits for a launch


def prepare_context() -> None:
    """In a spare: make the context, and rehearse what a start does (a launch decoded, sockets made,
    a thread started), so that the copy-on-write faults of a forked process are taken now, not in the
    restart (about 3 ms of Python in a fresh fork, most of it the first touch of the zygote's pages)."""
    import zmq

    ctx = zmq.Context()
    sample = Launch(name="spare", incarnation=1, agents_endpoint="ipc:///nonexistent/a",
                    front_endpoint="ipc:///nonexistent/f", heartbeat_ms=250, liveness=3, stop_timeout_s=1.0,
                    parent_pid=0, run="sunsetd.agent:Agent")
    Launch.decode(sample.encode())
    protocol.pack({"name": sample.name, "pid": os.getpid(), "incarnation": 1, "secret": b"", "stamps": True})
    for kind in (zmq.DEALER, zmq.PULL, zmq.PUSH):
        ctx.socket(kind).close(linger=0)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(lambda: None).result()
    zmq.Poller().poll(0)
    _PREPARED.append(ctx)


def _prepared_context() -> Any:
    return _PREPARED.pop() if _PREPARED else None


def _inherited_secret() -> bytes:
    """An exec'd agent's secret: on the pipe whose fd SECRET_FD_ENV names (never in argv or the environment)."""
    fd = os.environ.pop(SECRET_FD_ENV, None)
    if fd is None or not fd.isdigit():
        return b""
    try:
        with os.fdopen(int(fd), "rb") as pipe:
            return pipe.read(4096)
    except OSError:
        return b""


def _inherited_pages() -> tuple[Any, Any] | None:
    """Our stamp page and the daemon's, from the descriptors STAMP_FDS_ENV names; None without them
    (then heartbeat frames, as to a daemon across a wire)."""
    from sunsetd.stamps import STAMP_FDS_ENV, StampPage

    fds = os.environ.pop(STAMP_FDS_ENV, "").split(",")
    if len(fds) != 2 or not all(fd.isdigit() for fd in fds):
        return None
    own_fd, daemon_fd = int(fds[0]), int(fds[1])
    try:
        own = StampPage.attach(own_fd, writable=True)
    except (OSError, ValueError):
        _close_quietly(daemon_fd)  # never left for a subprocess of ours to inherit
        return None
    try:
        return own, StampPage.attach(daemon_fd, writable=False)
    except (OSError, ValueError):
        own.close()
        return None


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def main(secret: bytes | None = None) -> int:
    """The agent process: `secret` comes in memory from the zygote, else on an inherited pipe."""
    if secret is None:  # exec'd: a forked agent inherits the zygote's (and its first ctypes call costs 1 ms)
        from sunsetd.forkserver import keep_private

        keep_private()  # before the secret is read: nobody of our uid may read our memory
        secret = _inherited_secret()
    try:
        launch = Launch.decode(os.environ.get(LAUNCH_ENV, ""))
    except ProtocolError as exc:
        print(f"sunsetd.agent: {exc}", file=sys.stderr, flush=True)
        return EXIT_SETUP_FAILED
    if launch.parent_pid and os.getppid() != launch.parent_pid:
        return EXIT_DAEMON_LOST  # the daemon that started us is gone already
    import setproctitle  # forked agents have it from the zygote already

    setproctitle.setproctitle(launch.title)
    setproctitle.setthreadtitle(launch.name)  # the 15-byte comm (top, pgrep NAME): the agent, not "sunsetd-agent"
    try:
        runtime = AgentRuntime(launch, secret, _inherited_pages())
        return runtime.run()
    except Exception:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(EXIT_SETUP_FAILED)


if __name__ == "__main__":
    # Run as `python -m sunsetd.agent`: import the module under its package name so that Agent
    # subclasses and this runtime share one `Agent` class (not a second copy living in __main__).
    from sunsetd.agent import main as package_main

    sys.exit(package_main())
