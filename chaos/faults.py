"""Fault scenarios: each injects a real fault into real processes and measures what the daemon does.

Per fault: detection (injection -> the daemon shows it noticed: state or pid changed), restart
(-> the replacement is ready) and recovery (-> the first correct reply from the replacement, seen by a
probe that keeps asking `info` and checks the answering pid). Status is polled every POLL_S with a
cheap one-agent status request; probes are ordinary requests and enter the ledger like the load.
"""
from __future__ import annotations

import fnmatch
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil
import zmq

from load import Ledger, LoadClient, Sender, Target

from sunsetd.client import Client, DaemonUnreachable, RemoteError

POLL_S = 0.01
# Below the default restart intensity (more than 5 restarts within 60 s opens the circuit): the
# crashloop scenario is the one that exercises the circuit, on an agent of the harness's own.
KILLS_PER_AGENT_PER_MINUTE = 4
SETTLE_S = 0.3  # quiet time between faults, after everything is ready again

# Defaults of --sla-ms, per scenario (ms from injection to recovery; crashloop: from healing).
SLA_MS = {"kill": 2000, "freeze": 5000, "crashloop": 12000, "memory": 6000, "cascade": 6000,
          "daemon": 15000, "flood": 3000}
SCENARIOS = tuple(SLA_MS)

# Agents the harness adds to the profile under test (agents written for chaos testing, not the agents
# under test): an echo target for payload checks and floods, one that crash-loops while a file exists,
# and one whose memory the harness can push past its max_rss_mb.
CHAOS_AGENTS = """
  - name: ChaosEcho
    run: agents.testing:Echo
    essential: false
    max_inflight: 8
    max_queue: 32
  - name: ChaosFlaky
    run: agents.testing:CrashAtStart
    essential: false
    config: {{arm_file: {arm_file}}}
    backoff: {{initial_ms: 100, max_ms: 1000}}
    intensity: {{max_restarts: 5, within_s: 30, cooldown_s: 3}}
  - name: ChaosHog
    run: agents.testing:Echo
    essential: false
    max_rss_mb: 120
    stable_s: 0  # every memory fault is a first failure: restarted at once, never by the breaker
    intensity: {{max_restarts: 1000, within_s: 60, cooldown_s: 3}}
"""


@dataclass
class Fault:
    scenario: str
    round: int
    targets: list[str]
    injected: float
    sla_ms: float
    detected: float | None = None
    restarted: float | None = None
    recovered: float | None = None
    healed: float | None = None  # crashloop: when the cause was removed
    window: tuple[float, float] = (0.0, 0.0)  # this fault's share of the timeline, for accounting
    note: str = ""
    checks: dict = field(default_factory=dict)

    def ms(self, t: float | None) -> float | None:
        return None if t is None else round((t - self.injected) * 1000, 1)

    @property
    def recovery_ms(self) -> float | None:
        start = self.healed if self.healed is not None else self.injected
        return None if self.recovered is None else round((self.recovered - start) * 1000, 1)

    @property
    def ok(self) -> bool:
        return (self.recovery_ms is not None and self.recovery_ms <= self.sla_ms
                and all(self.checks.values()))

    def as_dict(self) -> dict:
        return {"scenario": self.scenario, "round": self.round, "targets": self.targets,
                "injected_s": round(self.injected, 4), "detection_ms": self.ms(self.detected),
                "restart_ms": self.ms(self.restarted), "recovery_ms": self.recovery_ms,
                "healed_after_ms": self.ms(self.healed), "sla_ms": self.sla_ms, "recovered": self.ok,
                "checks": self.checks, "note": self.note}


class DaemonUnderTest:
    """A sunsetd the harness started itself (and may kill and start again, as systemd would)."""

    def __init__(self, profile: Path, runtime_dir: Path, log_path: Path):
        self.profile = profile
        self.runtime_dir = runtime_dir
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sunsetd", "--profile", str(self.profile), "--runtime-dir",
             str(self.runtime_dir), "--metrics-addr", "off"], stdout=self.log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.log.close()


class Chaos:
    """What every scenario needs: the daemon, a control client, the ledger, the rng, the options."""

    def __init__(self, runtime_dir: Path, ledger: Ledger, rng: random.Random, sla_ms: dict[str, float],
                 daemon: DaemonUnderTest | None, arm_file: Path | None, clients: int, rate: float,
                 timeout_s: float, context: zmq.Context, say: Callable[[str], None],
                 victims: tuple[str, ...] = ("*",)):
        self.runtime_dir = runtime_dir
        self.victims = victims  # glob patterns of the agents kill and freeze may choose
        self.ledger = ledger
        self.rng = rng
        self.sla_ms = sla_ms
        self.daemon = daemon
        self.arm_file = arm_file
        self.clients = clients
        self.rate = rate
        self.timeout_s = timeout_s
        self.context = context
        self.say = say
        self.control = Client(runtime_dir, context)
        self.prober = Sender("probe", runtime_dir, ledger, context)
        self.recent_kills: dict[str, list[float]] = {}
        self.daemon_kills: list[float] = []

    # ---- daemon queries
    def status(self) -> dict:
        return self.control.call("sunsetd", "status", timeout=5.0)

    def agent(self, name: str) -> dict | None:
        try:
            return self.control.call("sunsetd", "status", {"agent": name}, timeout=1.0)
        except (RemoteError, DaemonUnreachable):
            return None

    def wait_all_ready(self, timeout_s: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                agents = self.status()["agents"]
                wanted = [a for a in agents if not a["lazy"] or a["state"] not in ("stopped",)]
                if all(a["state"] == "ready" for a in wanted):
                    return True
            except (RemoteError, DaemonUnreachable):
                pass
            time.sleep(0.05)
        return False

    def running_agents(self) -> list[dict]:
        return [a for a in self.status()["agents"] if a["state"] == "ready" and a["pid"]]

    def may_kill(self, name: str) -> bool:
        """At most KILLS_PER_AGENT_PER_MINUTE recent kills per agent, so that a run measures recovery
        rather than the restart-intensity limit (the crashloop scenario measures that)."""
        now = self.ledger.now()
        return (not name.startswith("Chaos")
                and sum(now - t < 60.0 for t in self.recent_kills.get(name, [])) < KILLS_PER_AGENT_PER_MINUTE)

    def wait_for(self, choose: Callable[[], list]) -> list:
        """choose() until it offers something: when every agent has had its share of kills, wait for the
        oldest kill to leave the window."""
        while True:
            options = choose()
            if options:
                return options
            now = self.ledger.now()
            oldest = min((t for ts in self.recent_kills.values() for t in ts if now - t < 60.0), default=now)
            time.sleep(max(0.05, oldest + 60.0 - now))

    def eligible(self, agents: list[dict]) -> list[dict]:
        chosen = [a for a in agents if any(fnmatch.fnmatchcase(a["name"], v) for v in self.victims)]
        return self.wait_for(lambda: [a for a in chosen if self.may_kill(a["name"])])

    def note_kill(self, name: str) -> None:
        self.recent_kills.setdefault(name, []).append(self.ledger.now())

    # ---- measuring one fault
    def measure(self, fault: Fault, old_pids: dict[str, int], until: float, restart_by: str = "pid") -> None:
        """Poll until every target is ready as a new incarnation and has answered a probe correctly."""
        names = set(old_pids)
        probed = {n for n in names if takes_requests(self.agent(n) or {})}  # a plain program answers none
        ready_new: set[str] = set()
        answered: set[str] = set()
        next_probe = 0.0
        while self.ledger.now() < until and answered != names:
            now = self.ledger.now()
            for name in names - ready_new:
                a = self.agent(name)
                if a is None:
                    continue
                changed = a["state"] != "ready" or a["pid"] != old_pids[name]
                if changed and fault.detected is None:
                    fault.detected = self.ledger.now()
                if a["state"] == "ready" and a["pid"] != old_pids[name]:
                    ready_new.add(name)
                    if not takes_requests(a):  # its ready probe passed: that is its first correct answer
                        answered.add(name)
                        if answered == names:
                            fault.recovered = self.ledger.now()
            if fault.restarted is None and ready_new == names:
                fault.restarted = self.ledger.now()
            if now >= next_probe:
                for name in (names - answered) & probed:
                    self.prober.send("probe", name, "info", None, None, 1.0)
                next_probe = now + 0.02
            for record in self.prober.receive(POLL_S):
                if (record.correct and record.agent in names and record.pid not in (None, old_pids[record.agent])
                        and record.agent not in answered):
                    answered.add(record.agent)
                    if answered == names:
                        fault.recovered = record.replied
        if fault.recovered is not None and (fault.restarted is None or fault.restarted > fault.recovered):
            # A correct reply from the new incarnation proves it ready: status polls may have seen that
            # only a poll later than the reply (or, within one poll interval, not at all).
            fault.restarted = fault.recovered
        if fault.detected is None and fault.restarted is not None:
            fault.detected = fault.restarted


def takes_requests(agent: dict) -> bool:
    """A Python agent or an MCP server answers requests; a plain program (command:) answers none, and
    its readiness probe is what says it is back."""
    return not agent.get("program") or agent.get("protocol") == "mcp"


# ---- the scenarios -----------------------------------------------------------------------------------

def kill(chaos: Chaos, round_no: int) -> Fault:
    victim = chaos.rng.choice(chaos.eligible(chaos.running_agents()))
    fault = Fault("kill", round_no, [victim["name"]], chaos.ledger.now(), chaos.sla_ms["kill"])
    os.kill(victim["pid"], signal.SIGKILL)
    chaos.note_kill(victim["name"])
    chaos.measure(fault, {victim["name"]: victim["pid"]}, fault.injected + fault.sla_ms / 1000 + 10)
    return fault


def freeze(chaos: Chaos, round_no: int) -> Fault:
    victim = chaos.rng.choice(chaos.eligible(chaos.running_agents()))
    fault = Fault("freeze", round_no, [victim["name"]], chaos.ledger.now(), chaos.sla_ms["freeze"])
    os.kill(victim["pid"], signal.SIGSTOP)  # and never SIGCONT: the daemon has to find and replace it
    chaos.note_kill(victim["name"])
    chaos.measure(fault, {victim["name"]: victim["pid"]}, fault.injected + fault.sla_ms / 1000 + 15)
    fault.checks["frozen incarnation gone"] = _gone_within(victim["pid"], 10.0)
    return fault


def crashloop(chaos: Chaos, round_no: int, armed_s: float = 1.5) -> Fault:
    """ChaosFlaky crashes at start from now on (its arm file exists), then is healed after `armed_s`."""
    victim = chaos.agent("ChaosFlaky")
    fault = Fault("crashloop", round_no, ["ChaosFlaky"], chaos.ledger.now(), chaos.sla_ms["crashloop"])
    chaos.arm_file.touch()
    os.kill(victim["pid"], signal.SIGKILL)
    while fault.detected is None and chaos.ledger.now() < fault.injected + armed_s:
        a = chaos.agent("ChaosFlaky")
        if a is not None and (a["state"] != "ready" or a["pid"] != victim["pid"]):
            fault.detected = chaos.ledger.now()
        time.sleep(POLL_S)
    time.sleep(max(0.0, fault.injected + armed_s - chaos.ledger.now()))
    armed = chaos.agent("ChaosFlaky") or {}
    chaos.arm_file.unlink()
    fault.healed = chaos.ledger.now()
    fault.note = f"{armed.get('restarts', 0) - victim['restarts']} restarts while armed; {armed.get('state')} when healed"
    chaos.measure(fault, {"ChaosFlaky": victim["pid"]}, fault.healed + fault.sla_ms / 1000 + 10)
    return fault


def memory(chaos: Chaos, round_no: int) -> Fault:
    victim = chaos.agent("ChaosHog")
    fault = Fault("memory", round_no, ["ChaosHog"], chaos.ledger.now(), chaos.sla_ms["memory"])
    chaos.prober.send("fault", "ChaosHog", "alloc", 150, None, 10.0)  # past max_rss_mb=120
    chaos.measure(fault, {"ChaosHog": victim["pid"]}, fault.injected + fault.sla_ms / 1000 + 10)
    return fault


def cascade(chaos: Chaos, round_no: int) -> Fault:
    """Kill an agent together with everything that depends on it, at once."""
    running = {a["name"]: a for a in chaos.running_agents()}

    def with_dependents(root: str) -> set[str]:
        found, frontier = {root}, [root]
        while frontier:
            n = frontier.pop()
            for other, a in running.items():
                if n in a["depends_on"] and other not in found:
                    found.add(other)
                    frontier.append(other)
        return found

    def groups() -> list[str]:  # roots that have dependents, with every member still within its share
        return [name for name in running if any(name in other["depends_on"] for other in running.values())
                and all(chaos.may_kill(member) for member in with_dependents(name))]

    root = chaos.rng.choice(chaos.wait_for(groups))
    group = [root] + sorted(with_dependents(root) - {root})  # the root first: the plot names the fault by it
    fault = Fault("cascade", round_no, group, chaos.ledger.now(), chaos.sla_ms["cascade"])
    for name in group:
        os.kill(running[name]["pid"], signal.SIGKILL)
        chaos.note_kill(name)
    fault.note = f"{root} and its {len(group) - 1} dependents"
    chaos.measure(fault, {n: running[n]["pid"] for n in group}, fault.injected + fault.sla_ms / 1000 + 15)
    return fault


def daemon(chaos: Chaos, round_no: int, restart_after_s: float = 1.0) -> Fault:
    """SIGKILL sunsetd itself; start it again after RestartSec, as the unit's Restart=on-failure does."""
    old_pids = [a["pid"] for a in chaos.status()["agents"] if a["pid"]]
    fault = Fault("daemon", round_no, ["sunsetd"], chaos.ledger.now(), chaos.sla_ms["daemon"])
    chaos.daemon.kill()  # SIGKILL, then wait for its death: requests sent until then may be inside it
    fault.detected = chaos.ledger.now()  # the supervisor of the daemon (systemd, here us) sees it at once
    chaos.daemon_kills.append(fault.detected)
    fault.checks["no agent of the killed daemon survives 2 s"] = all(_gone_within(pid, 2.0) for pid in old_pids)
    time.sleep(max(0.0, fault.injected + restart_after_s - chaos.ledger.now()))
    chaos.daemon.start()
    deadline = fault.injected + fault.sla_ms / 1000 + 30
    while chaos.ledger.now() < deadline:
        try:
            status = chaos.control.call("sunsetd", "status", timeout=1.0)
            if status["state"] == "running" and status["pid"] == chaos.daemon.proc.pid:
                fault.restarted = chaos.ledger.now()
                break
        except (RemoteError, DaemonUnreachable):
            pass
        time.sleep(POLL_S)
    essential = [a["name"] for a in chaos.status()["agents"] if a["essential"]]
    fault.note = f"restarted after {restart_after_s:g}s (RestartSec); {len(old_pids)} agents died with it"
    if fault.restarted is not None:
        probe_target = essential[0]
        while chaos.ledger.now() < deadline and fault.recovered is None:
            chaos.prober.send("probe", probe_target, "info", None, None, 1.0)
            for record in chaos.prober.receive(0.02):
                if record.correct and record.agent == probe_target and record.pid not in old_pids:
                    fault.recovered = record.replied
    return fault


def flood(chaos: Chaos, round_no: int, seconds: float = 3.0) -> Fault:
    """10x the load for a few seconds, half of it 10 ms jobs for ChaosEcho (100 jobs/s at most): its
    queue must stay within max_queue, the excess must get `overloaded`, and nothing may restart.
    Recovery counts from the end of the flood to ChaosEcho's next correct answer."""
    before = {a["name"]: a for a in chaos.status()["agents"]}
    fault = Fault("flood", round_no, ["ChaosEcho", "all"], chaos.ledger.now(), chaos.sla_ms["flood"])
    targets = [Target(n, "ping") for n, a in before.items()
               if a["state"] == "ready" and not n.startswith("Chaos") and takes_requests(a)]
    targets += [Target("ChaosEcho", "sleep")] * max(1, len(targets))
    flooders = [LoadClient(f"flood{round_no}.{i}", "flood", chaos.runtime_dir, chaos.ledger, lambda: targets,
                           rate=chaos.rate * 10, window=64, timeout_s=chaos.timeout_s,
                           seed=chaos.rng.randrange(1 << 30), context=chaos.context)
                for i in range(chaos.clients)]
    for f in flooders:
        f.start()
    deepest: dict[str, int] = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for a in chaos.status()["agents"]:
            deepest[a["name"]] = max(deepest.get(a["name"], 0), a["queued"])
        time.sleep(0.05)
    for f in flooders:
        f.stop()
    fault.healed = chaos.ledger.now()
    while fault.recovered is None and chaos.ledger.now() < fault.healed + fault.sla_ms / 1000 + 5:
        chaos.prober.send("probe", "ChaosEcho", "info", None, None, 2.0)
        for record in chaos.prober.receive(0.02):
            if record.correct and record.agent == "ChaosEcho":
                fault.recovered = record.replied
    for f in flooders:
        f.join()
    after = {a["name"]: a for a in chaos.status()["agents"]}
    records = [r for r in chaos.ledger.snapshot() if r.kind == "flood" and r.id.startswith(f"flood{round_no}.")]
    overloaded = sum(r.code == "overloaded" for r in records)
    fault.detected = min((r.replied for r in records if r.code == "overloaded"), default=None)
    fault.checks["queues within max_queue"] = all(deepest.get(n, 0) <= a["max_queue"] for n, a in after.items())
    fault.checks["no agent restarted"] = all(after[n]["restarts"] == before[n]["restarts"] for n in before)
    fault.checks["excess answered overloaded"] = overloaded > 0
    top = max(deepest, key=deepest.get)
    fault.note = (f"{len(records)} flood requests: {sum(r.code == 'ok' for r in records)} ok, {overloaded} "
                  f"overloaded; deepest queue {deepest[top]} ({top}, max_queue {after[top]['max_queue']})")
    return fault


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


INJECTORS: dict[str, Callable[[Chaos, int], Fault]] = {
    "kill": kill, "freeze": freeze, "crashloop": crashloop, "memory": memory, "cascade": cascade,
    "daemon": daemon, "flood": flood,
}
