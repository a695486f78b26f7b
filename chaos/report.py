"""The chaos run's accounting and report: per-scenario table, JSON of every event, optional PNG timeline."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from faults import Fault
from load import REPLY_SLACK_S, Record

DEATH_NOTICE_S = 0.01  # how long after a peer's death a client's ZeroMQ may still write into its connection


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def classify(record: Record, daemon_kills: list[float]) -> str:
    """answered | duplicate | died_with_daemon | lost."""
    if record.replies > 1:
        return "duplicate"
    if record.replies == 1:
        return "answered"
    # Outstanding when the SIGKILLed daemon died: held by a process that no longer exists, or written by
    # the client's ZeroMQ into the dead connection in the moment before it saw the connection drop
    # (DEATH_NOTICE_S). A client cannot get an answer from a dead daemon; these are counted, not as lost.
    # Requests sent later wait in the client's queue and are answered by the next daemon.
    if any(record.sent <= death + DEATH_NOTICE_S and death <= record.sent + record.timeout_s + REPLY_SLACK_S
           for death in daemon_kills):
        return "died_with_daemon"
    return "lost"


def account(records: list[Record], daemon_kills: list[float]) -> dict:
    outcome = Counter(classify(r, daemon_kills) for r in records)
    errors = Counter(r.code for r in records if r.code not in (None, "ok"))
    return {
        "sent": len(records),
        "answered": outcome["answered"],
        "lost": outcome["lost"],
        "duplicates": outcome["duplicate"],
        "died_with_daemon": outcome["died_with_daemon"],
        "ok": sum(r.code == "ok" for r in records),
        "wrong": sum(r.code == "ok" and r.correct is False for r in records),
        "errors": dict(sorted(errors.items())),
    }


def scenario_rows(faults: list[Fault], records: list[Record], daemon_kills: list[float]) -> list[dict]:
    rows = []
    for scenario in dict.fromkeys(f.scenario for f in faults):
        mine = [f for f in faults if f.scenario == scenario]
        start, end = min(f.window[0] for f in mine), max(f.window[1] for f in mine)
        in_window = [r for r in records if start <= r.sent < end]
        recovery = [f.recovery_ms for f in mine if f.recovery_ms is not None]
        rows.append({
            "scenario": scenario, "faults": len(mine), "recovered": sum(f.ok for f in mine),
            "recovery_ms": {"min": min(recovery, default=None), "p50": percentile(recovery, 0.5),
                            "p95": percentile(recovery, 0.95), "max": max(recovery, default=None)},
            "detection_p50_ms": percentile([f.ms(f.detected) for f in mine if f.detected is not None], 0.5),
            "restart_p50_ms": percentile([f.ms(f.restarted) for f in mine if f.restarted is not None], 0.5),
            "sla_ms": mine[0].sla_ms,
            **account(in_window, daemon_kills),
        })
    return rows


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def table(rows: list[dict], total: dict) -> str:
    head = ("scenario", "faults", "recovered", "sla ms", "detect p50", "restart p50", "recovery min/p50/p95/max ms",
            "requests", "lost", "wrong", "errors by code")
    lines = [head]
    for r in rows:
        rec = r["recovery_ms"]
        lines.append((r["scenario"], str(r["faults"]), str(r["recovered"]), _fmt(r["sla_ms"]), _fmt(r["detection_p50_ms"]),
                      _fmt(r["restart_p50_ms"]), "/".join(_fmt(rec[k]) for k in ("min", "p50", "p95", "max")),
                      str(r["sent"]), str(r["lost"]), str(r["wrong"]),
                      " ".join(f"{k}:{v}" for k, v in r["errors"].items()) or "-"))
    lines.append(("all", str(sum(r["faults"] for r in rows)), str(sum(r["recovered"] for r in rows)), "", "", "", "",
                  str(total["sent"]), str(total["lost"]), str(total["wrong"]),
                  " ".join(f"{k}:{v}" for k, v in total["errors"].items()) or "-"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def write_json(path: Path, meta: dict, rows: list[dict], total: dict, faults: list[Fault], records: list[Record],
               daemon_kills: list[float]) -> None:
    events = {
        "meta": meta, "scenarios": rows, "total": total,
        "faults": [f.as_dict() for f in faults],
        "requests": [{"id": r.id, "kind": r.kind, "agent": r.agent, "op": r.op, "sent_s": round(r.sent, 4),
                      "latency_ms": None if r.replied is None else round((r.replied - r.sent) * 1000, 2),
                      "code": r.code, "correct": r.correct, "replies": r.replies,
                      "outcome": classify(r, daemon_kills)} for r in records],
    }
    path.write_text(json.dumps(events, indent=1))


def plot(path: Path, faults: list[Fault], records: list[Record], title: str) -> str | None:
    """A PNG timeline of request latency with the faults marked; None, or why it could not be drawn."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ("--plot needs matplotlib, an optional extra: pip install 'sunsetd[chaos]' "
                "(or: pip install matplotlib)")
    fig, ax = plt.subplots(figsize=(14, 5.5), dpi=110)
    ok = [(r.sent, (r.replied - r.sent) * 1000) for r in records if r.code == "ok"]
    bad = [(r.sent, (r.replied - r.sent) * 1000) for r in records if r.code not in (None, "ok")]
    lost = [r.sent for r in records if r.replies == 0]
    if ok:
        ax.scatter(*zip(*ok), s=2, color="#4a7bb7", alpha=0.35, label=f"ok ({len(ok)})", rasterized=True)
    if bad:
        ax.scatter(*zip(*bad), s=6, color="#d7301f", marker="x", label=f"error reply ({len(bad)})")
    if lost:
        top = max([y for _, y in ok + bad] + [1000])
        ax.scatter(lost, [top * 1.5] * len(lost), s=12, color="black", marker="v", label=f"no reply ({len(lost)})")
    colours = dict(zip(("kill", "freeze", "crashloop", "memory", "cascade", "daemon", "flood"),
                       ("#e6550d", "#756bb1", "#31a354", "#de2d26", "#636363", "#000000", "#3182bd")))
    seen = set()
    for f in faults:
        ax.axvline(f.injected if f.healed is None else f.healed, color=colours.get(f.scenario, "grey"), alpha=0.35,
                   lw=0.8, label=None if f.scenario in seen else f"{f.scenario} fault")
        seen.add(f.scenario)
    ax.set_yscale("log")
    ax.set_xlabel("time since start of run (s)")
    ax.set_ylabel("request latency (ms)")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8, ncol=3)
    ax.grid(True, which="both", alpha=0.2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None
