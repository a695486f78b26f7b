"""Prometheus metrics and the /health endpoint, served over HTTP by threads of their own.

The event loop owns all state and accepts the connections; each request is served on a thread of its
own, which never touches the loop's state: the loop publishes an immutable snapshot of the agents (about
once a second while someone scrapes, and on every state change) and the thread only reads the latest. Request counts and durations are prometheus_client objects, which are thread-safe,
updated by the loop as each reply goes out.
"""
from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from sunsetd.policy import Circuit, State

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
HTTP_TIMEOUT_S = 10.0
START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def parse_address(text: str) -> tuple[str, int] | None:
    """'HOST:PORT' -> (host, port); 'off' -> None. Raises ValueError with what is wrong."""
    if text == "off":
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--metrics-addr must be HOST:PORT or off, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class _SnapshotCollector:
    def __init__(self, metrics: "Metrics"):
        self.metrics = metrics

    def collect(self):
        snap = self.metrics.snapshot
        agents = snap.get("agents", [])

        def gauge(name: str, doc: str, labels: list[str], rows):
            family = GaugeMetricFamily(name, doc, labels=labels)
            for values, value in rows:
                family.add_metric(values, value)
            return family

        def counter(name: str, doc: str, labels: list[str], rows):
            family = CounterMetricFamily(name, doc, labels=labels)
            for values, value in rows:
                family.add_metric(values, value)
            return family

        yield gauge("sunsetd_agent_up", "1 if the agent is ready", ["agent"],
                    (([a["name"]], float(a["state"] == State.READY.value)) for a in agents))
        yield gauge("sunsetd_agent_state", "1 for the agent's current state", ["agent", "state"],
                    (([a["name"], s.value], float(a["state"] == s.value)) for a in agents for s in State))
        yield gauge("sunsetd_agent_circuit", "1 for the agent's circuit state", ["agent", "circuit"],
                    (([a["name"], c.value], float(a["circuit"] == c.value)) for a in agents for c in Circuit))
        yield gauge("sunsetd_agent_essential", "1 if the agent gates readiness", ["agent"],
                    (([a["name"]], float(a["essential"])) for a in agents))
        yield counter("sunsetd_agent_restarts", "Restarts caused by failures", ["agent"],
                      (([a["name"]], a["restarts"]) for a in agents))
        yield counter("sunsetd_agent_heartbeat_misses", "Times the agent was found hung", ["agent"],
                      (([a["name"]], a["heartbeat_misses"]) for a in agents))
        yield gauge("sunsetd_agent_rss_bytes", "Resident memory of the agent's process", ["agent"],
                    (([a["name"]], a["rss_bytes"]) for a in agents if a["rss_bytes"] is not None))
        yield gauge("sunsetd_agent_queue_depth", "Requests waiting in the daemon for the agent", ["agent"],
                    (([a["name"]], a["queued"]) for a in agents))
        yield gauge("sunsetd_agent_inflight", "Requests sent to the agent and not answered yet", ["agent"],
                    (([a["name"]], a["inflight"]) for a in agents))
        memory = snap.get("memory", {})
        if memory.get("budget_mb"):
            yield gauge("sunsetd_memory_budget_bytes", "The profile's memory budget", [],
                        [([], memory["budget_mb"] * 1048576)])
        yield gauge("sunsetd_memory_used_bytes", "Memory counted against the budget", [],
                    [([], memory.get("used_mb", 0) * 1048576)])
        yield gauge("sunsetd_essential_ready", "1 when the daemon is running with every essential agent ready", [],
                    [([], float(snap.get("healthy", False)))])
        router = snap.get("router", {})
        yield counter("sunsetd_bad_frames", "Malformed frames received", ["socket"],
                      [(["front"], router.get("bad_frames_front", 0)), (["agents"], router.get("bad_frames_agents", 0))])
        yield counter("sunsetd_late_replies", "Agent replies that came after their deadline", [],
                      [([], router.get("late_replies", 0))])
        yield counter("sunsetd_undeliverable_replies", "Replies a client was not there to receive", [],
                      [([], router.get("undeliverable_replies", 0))])


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck scraper must not keep the daemon from exiting
    block_on_close = False  # nor its close(), which would otherwise join every handler thread


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("sunsetd_requests", "Requests answered, by agent and reply code",
                                ["agent", "code"], registry=self.registry)
        self.duration = Histogram("sunsetd_request_duration_seconds", "Time from accept to reply, by agent",
                                  ["agent"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.lazy_starts = Counter("sunsetd_lazy_starts", "Lazy agents started by a request", ["agent"],
                                   registry=self.registry)
        self.lazy_start_duration = Histogram("sunsetd_lazy_start_duration_seconds",
                                             "First request to ready, for lazy starts", ["agent"],
                                             buckets=START_BUCKETS, registry=self.registry)
        self._request_children: dict[tuple[str, str], Any] = {}
        self._duration_children: dict[str, Any] = {}
        self.snapshot: dict[str, Any] = {}  # replaced whole by the loop, read by the HTTP thread
        self.asked_at = float("-inf")  # monotonic time of the last request to the HTTP side
        self.registry.register(_SnapshotCollector(self))
        self.server: ThreadingHTTPServer | None = None
        self.address: str | None = None

    # ---- called by the event loop
    def observe_reply(self, agent: str, code: str, seconds: float) -> None:
        """Count one reply. `agent` must be a name of the profile (or a fixed word such as "unknown"):
        a label taken from client input would let any client grow the series without bound."""
        counter = self._request_children.get((agent, code))
        if counter is None:  # label lookups cost more than the increment: keep the children
            counter = self._request_children[(agent, code)] = self.requests.labels(agent, code)
        counter.inc()
        histogram = self._duration_children.get(agent)
        if histogram is None:
            histogram = self._duration_children[agent] = self.duration.labels(agent)
        histogram.observe(seconds)

    def observe_lazy_start(self, agent: str, seconds: float) -> None:
        self.lazy_starts.labels(agent).inc()
        self.lazy_start_duration.labels(agent).observe(seconds)

    def publish(self, status: dict) -> None:
        """A new snapshot: the daemon's status, with `healthy` and `not_ready` as sunsetd.health says."""
        self.snapshot = status

    # ---- the HTTP side
    def serve(self, host: str, port: int, fds: Any) -> str:
        """Listen on host:port; `fds` (the event loop) tells when a connection waits."""
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                metrics.asked_at = time.monotonic()  # the loop refreshes the snapshot while it is read
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry))
                elif path == "/health":
                    snap = metrics.snapshot
                    body = {"healthy": snap.get("healthy", False), "state": snap.get("state", "starting"),
                            "profile": snap.get("profile"), "counts": snap.get("counts", {}),
                            "not_ready": snap.get("not_ready", [])}
                    self._send(200 if body["healthy"] else 503, "application/json", json.dumps(body).encode())
                else:
                    self._send(404, "text/plain", b"not found: try /metrics or /health\n")

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass  # scrapes every few seconds are not events worth a log line

        self.server = _Server((host, port), Handler)
        bound_host, bound_port = self.server.server_address[:2]
        self.address = f"{bound_host}:{bound_port}"
        # Accepted on the event loop, served on a thread per request (ThreadingHTTPServer): a
        # serve_forever thread wakes every poll_interval to look for its shutdown flag, 20 wake-ups a
        # second of an idle daemon at the 50 ms it needed for a prompt exit.
        self.server.socket.setblocking(False)
        self._fds = fds
        fds.watch(self.server.socket.fileno(), self._accept)
        return self.address

    def _accept(self) -> None:
        server = self.server
        if server is None:
            return
        for _ in range(64):  # a flood of connections must not hold the loop
            try:
                request, client = server.get_request()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of descriptors: the connection stays queued, and the socket readable
                fd = server.socket.fileno()
                self._fds.unwatch(fd)  # level-triggered: watched, it would spin the loop; back in a second
                self._fds.timers.call_later(1.0, lambda: self.server is server and self._fds.watch(fd, self._accept))
                return
            request.setblocking(True)
            request.settimeout(HTTP_TIMEOUT_S)  # a scraper that never sends its request holds a thread this long
            try:
                server.process_request(request, client)
            except Exception:  # no thread to be had: drop this connection, keep the daemon
                server.shutdown_request(request)

    def close(self) -> None:
        if self.server is not None:
            self._fds.unwatch(self.server.socket.fileno())
            self.server.server_close()
            self.server = None
