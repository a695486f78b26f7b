"""The chaos run's accounting and report: per-scenario table, JSON of every event, optional PNG figure.

The figure's geometry is computed as plain data by `plot_layout` (spans, labels, panels and where
everything goes, in seconds, milliseconds and inches), so that it can be checked without pixels;
`render` only turns that into matplotlib artists.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
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


# ---- the figure: layout (plain data) ------------------------------------------------------------------

PHASES = ("detection", "restart", "recovery")  # injection -> detected -> restarted -> recovered
NOT_RECOVERED = "not recovered"  # from the last phase reached to the end of the fault's window
DPI = 110
LABEL_FONT_PT = 7
LABEL_GAP_IN = 0.12  # between neighbouring fault labels (rotated text one line high, plus air)
LABEL_CHARS = 20
# Figure geometry, inches. The right margin holds the legends, so that they never cover data.
LEFT_IN, RIGHT_IN, TOP_IN, BOTTOM_IN = 0.85, 2.6, 0.75, 0.75
MIN_AXES_WIDTH_IN = 10.8
TIMELINE_HEIGHT_IN = 5.8
PANEL_HEIGHT_IN, PANEL_GAP_IN, PANEL_COLUMNS = 2.0, 0.95, 4  # gap: the x labels above, the title below
PANEL_HGAP_IN = 0.55
# The timeline's axes, bottom to top (axes fraction): latency data, then the fault strip: a lane of
# phase spans, leader lines, then the labels naming each fault's agent.
DATA_TOP = 0.70
SPAN_LANE = (0.715, 0.745)
LABEL_BASE = 0.78


@dataclass(frozen=True)
class Span:
    fault: int  # index into the faults
    phase: str  # one of PHASES, or NOT_RECOVERED
    start: float  # seconds since the start of the run
    end: float


@dataclass(frozen=True)
class FaultLabel:
    fault: int
    text: str  # the agent the fault hit (a cascade: its root and how many with it)
    at: float  # the injection, s: where the leader line points
    placed: float  # where the text stands, s: moved aside from its neighbours' as little as possible
    ok: bool  # recovered within its SLA with every check passed


@dataclass(frozen=True)
class Bar:
    round: int
    agent: str
    recovery_ms: float | None  # None: not recovered
    over_sla: bool


@dataclass(frozen=True)
class Panel:
    scenario: str
    sla_ms: float
    bars: tuple[Bar, ...]
    title: str
    ymax_ms: float
    rect_in: tuple[float, float, float, float]  # left, bottom, width, height from the figure's bottom left


@dataclass(frozen=True)
class Band:
    scenario: str
    start: float
    end: float


@dataclass(frozen=True)
class Layout:
    title: str
    size_in: tuple[float, float]
    dpi: int
    timeline_in: tuple[float, float, float, float]  # left, bottom, width, height
    legend_at_in: tuple[tuple[float, float], ...]  # top left corner of each legend, in the right margin
    xlim: tuple[float, float]
    ylim_ms: tuple[float, float]  # log scale; the data keep below DATA_TOP, the fault strip above
    yticks_ms: tuple[float, ...]
    ok: tuple[tuple[float, float], ...]  # (sent s, latency ms)
    errors: tuple[tuple[float, float], ...]
    lost: tuple[float, ...]  # sent s of requests without a reply, drawn at lost_ms
    lost_ms: float
    bands: tuple[Band, ...]
    spans: tuple[Span, ...]
    labels: tuple[FaultLabel, ...]
    panels: tuple[Panel, ...]


def fault_text(fault: Fault) -> str:
    if "all" in fault.targets:  # flood: everything, with the jobs on the first
        text = f"all ({', '.join(t for t in fault.targets if t != 'all')})"
    elif len(fault.targets) > 1:  # cascade: its root first
        text = f"{fault.targets[0]} +{len(fault.targets) - 1}"
    else:
        text = fault.targets[0] if fault.targets else fault.scenario
    return text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "…"


def fault_spans(index: int, fault: Fault) -> list[Span]:
    """Injection -> detection -> restart -> recovery, each phase from where the one before ended.

    A missing time adds nothing (flood restarts nothing). A phase seen ending after a later one (a
    status poll that saw the replacement ready only after its first right reply had come) ends with that
    later one, which is the better measure: the phases tile the fault in order. Not recovered: a span
    to the end of the fault's window."""
    times = [fault.detected, fault.restarted, fault.recovered]
    later = None
    for k in reversed(range(len(times))):
        if times[k] is not None:
            times[k] = later = times[k] if later is None else min(times[k], later)
    spans, start = [], fault.injected
    for phase, t in zip(PHASES, times):
        if t is None:
            continue
        end = max(start, t)
        spans.append(Span(index, phase, start, end))
        start = end
    if fault.recovered is None:
        spans.append(Span(index, NOT_RECOVERED, start, max(start, fault.window[1])))
    return spans


def spread(xs: list[float], gap: float, lo: float, hi: float) -> list[float]:
    """Positions nearest to `xs` (sorted) in least squares with at least `gap` between neighbours,
    within [lo, hi] (the gap shrinks if they cannot all fit). With p_i = q_i + i*gap the constraint is
    q non-decreasing: an isotonic regression of xs[i] - i*gap, by pooling adjacent violators."""
    n = len(xs)
    if n == 0:
        return []
    if n > 1:
        gap = min(gap, (hi - lo) / (n - 1))
    blocks: list[list[float]] = []  # [sum, count], block means non-decreasing
    for i, x in enumerate(xs):
        blocks.append([x - i * gap, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    q = [total / count for total, count in blocks for _ in range(int(count))]
    return [min(max(v, lo), hi - (n - 1) * gap) + i * gap for i, v in enumerate(q)]


def _decades(lo: float, hi: float) -> tuple[float, ...]:
    return tuple(10.0 ** e for e in range(math.ceil(math.log10(lo)), math.floor(math.log10(hi)) + 1))


def plot_layout(faults: list[Fault], records: list[Record], title: str) -> Layout:
    """Everything the figure shows and where, as data: no matplotlib."""
    ok = tuple((r.sent, (r.replied - r.sent) * 1000) for r in records if r.code == "ok")
    errors = tuple((r.sent, (r.replied - r.sent) * 1000) for r in records if r.code not in (None, "ok"))
    lost = tuple(r.sent for r in records if r.replies == 0)
    latencies = [y for _, y in ok + errors if y > 0]
    data_lo = min(latencies, default=1.0) / 1.5
    data_hi = max(latencies + [1000.0]) * 2.5  # room for the no-reply markers on top
    # Stretch the log axis so that the data end at DATA_TOP and the fault strip has the rest.
    log_lo, log_hi = math.log10(data_lo), math.log10(data_hi)
    ylim = (data_lo, 10 ** (log_lo + (log_hi - log_lo) / DATA_TOP))
    end = max([r.sent for r in records] + [f.window[1] for f in faults] + [1.0]) * 1.01

    scenarios = list(dict.fromkeys(f.scenario for f in faults))
    rows = math.ceil(len(scenarios) / PANEL_COLUMNS)
    columns = min(len(scenarios), PANEL_COLUMNS)
    axes_w = max(MIN_AXES_WIDTH_IN, len(faults) * LABEL_GAP_IN)  # every label gets its room
    width = LEFT_IN + axes_w + RIGHT_IN
    height = TOP_IN + TIMELINE_HEIGHT_IN + rows * (PANEL_GAP_IN + PANEL_HEIGHT_IN) + BOTTOM_IN
    timeline = (LEFT_IN, height - TOP_IN - TIMELINE_HEIGHT_IN, axes_w, TIMELINE_HEIGHT_IN)

    order = sorted(range(len(faults)), key=lambda i: faults[i].injected)
    gap_s = LABEL_GAP_IN / axes_w * end
    placed = spread([faults[i].injected for i in order], gap_s, gap_s / 2, end - gap_s / 2)
    labels = tuple(FaultLabel(i, fault_text(faults[i]), faults[i].injected, x, faults[i].ok)
                   for i, x in zip(order, placed))
    spans = tuple(s for i, f in enumerate(faults) for s in fault_spans(i, f))
    bands = tuple(Band(s, min(f.window[0] for f in faults if f.scenario == s),
                       max(f.window[1] for f in faults if f.scenario == s)) for s in scenarios)

    panels = []
    panel_w = (axes_w - (columns - 1) * PANEL_HGAP_IN) / columns if columns else 0.0
    for k, scenario in enumerate(scenarios):
        mine = [f for f in faults if f.scenario == scenario]
        sla = mine[0].sla_ms
        bars = tuple(Bar(f.round, fault_text(f), f.recovery_ms, f.recovery_ms is None or f.recovery_ms > sla)
                     for f in mine)
        times = [b.recovery_ms for b in bars if b.recovery_ms is not None]
        within = sum(not b.over_sla for b in bars)
        since = {"crashloop": " from healing", "flood": " from the flood's end"}.get(scenario, "")
        stats = (f"recovery{since}: p50 {_fmt(percentile(times, 0.5))}, max {_fmt(max(times))} ms" if times
                 else "nothing recovered")
        row, column = divmod(k, PANEL_COLUMNS)
        bottom = timeline[1] - (row + 1) * (PANEL_GAP_IN + PANEL_HEIGHT_IN)
        panels.append(Panel(scenario, sla, bars, f"{scenario}: {within}/{len(bars)} within {sla:g} ms\n{stats}",
                            max([sla * 1.25] + [t * 1.1 for t in times]),
                            (LEFT_IN + column * (panel_w + PANEL_HGAP_IN), bottom, panel_w, PANEL_HEIGHT_IN)))
    legend_x = LEFT_IN + axes_w + 0.15
    legends = ((legend_x, timeline[1] + timeline[3]),)
    if panels:
        legends += ((legend_x, panels[0].rect_in[1] + PANEL_HEIGHT_IN),)
    return Layout(title, (width, height), DPI, timeline, legends, (0.0, end), ylim,
                  _decades(data_lo, data_hi), ok, errors, lost, data_hi / 1.6, bands, spans,
                  labels, tuple(panels))


# ---- the figure: rendering (thin) ---------------------------------------------------------------------

PHASE_COLOURS = {"detection": "#e08214", "restart": "#8073ac", "recovery": "#1b7837", NOT_RECOVERED: "#b2182b"}
WITHIN_SLA, OVER_SLA = "#74add1", "#d6604d"
OK_COLOUR, ERROR_COLOUR = "#4a7bb7", "#d7301f"


def render(layout: Layout):
    """The matplotlib Figure for `layout` (matplotlib imported here: it is an optional extra)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle
    from matplotlib.ticker import MaxNLocator, NullLocator

    width, height = layout.size_in
    fig = Figure(figsize=layout.size_in, dpi=layout.dpi)
    FigureCanvasAgg(fig)

    def rect(r: tuple[float, float, float, float]) -> list[float]:
        return [r[0] / width, r[1] / height, r[2] / width, r[3] / height]

    ax = fig.add_axes(rect(layout.timeline_in))
    strip = ax.get_xaxis_transform()  # x in seconds, y in axes fraction
    ax.set_axisbelow(True)
    for k, band in enumerate(layout.bands):
        if k % 2 == 0:
            ax.axvspan(band.start, band.end, ymin=0, ymax=DATA_TOP, color="#eeeeee", zorder=0.1, lw=0)
        ax.text((band.start + band.end) / 2, 1.01, band.scenario, transform=strip, ha="center", va="bottom",
                fontsize=9, fontweight="bold")
    if layout.ok:
        ax.scatter(*zip(*layout.ok), s=2, color=OK_COLOUR, alpha=0.35, rasterized=True, zorder=2)
    if layout.errors:
        ax.scatter(*zip(*layout.errors), s=6, color=ERROR_COLOUR, marker="x", zorder=2.1)
    if layout.lost:
        ax.scatter(layout.lost, [layout.lost_ms] * len(layout.lost), s=12, color="black", marker="v", zorder=2.2)
    for label in layout.labels:
        ax.axvline(label.at, ymin=0, ymax=DATA_TOP, color="#555555", alpha=0.35, lw=0.7, zorder=1.5)
    # The fault strip covers the grid, so that it reads as a margin, not as latency.
    ax.add_patch(Rectangle((0, DATA_TOP), 1, 1 - DATA_TOP, transform=ax.transAxes, color="white", zorder=0.6))
    ax.plot([0, 1], [DATA_TOP, DATA_TOP], transform=ax.transAxes, color="#999999", lw=0.6, zorder=0.7)
    lane_lo, lane_hi = SPAN_LANE
    for span in layout.spans:
        colour = PHASE_COLOURS[span.phase]
        # An edge of the span's own colour: a 20 ms phase of a 6-minute run still shows as a hairline.
        ax.add_patch(Rectangle((span.start, lane_lo), span.end - span.start, lane_hi - lane_lo, transform=strip,
                               facecolor=colour, edgecolor=colour, lw=0.5, zorder=3,
                               hatch="////" if span.phase == NOT_RECOVERED else None))
    for label in layout.labels:
        ax.annotate(label.text, xy=(label.at, lane_hi), xycoords=strip, xytext=(label.placed, LABEL_BASE),
                    textcoords=strip, rotation=90, ha="center", va="bottom", fontsize=LABEL_FONT_PT,
                    color="black" if label.ok else OVER_SLA, fontweight="normal" if label.ok else "bold",
                    arrowprops=dict(arrowstyle="-", lw=0.5, color="#888888", shrinkA=0, shrinkB=0), zorder=3)
    ax.set_xlim(*layout.xlim)
    ax.set_yscale("log")
    ax.set_ylim(*layout.ylim_ms)
    ax.set_yticks(layout.yticks_ms)  # the decades of the data only: none in the fault strip
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("time since start of run (s)")
    ax.set_ylabel("request latency (ms)")
    ax.yaxis.set_label_coords(-0.045, DATA_TOP / 2)
    ax.set_title(layout.title, pad=20)
    ax.grid(True, alpha=0.25)

    for panel in layout.panels:
        pax = fig.add_axes(rect(panel.rect_in))
        xs = [b.round for b in panel.bars]
        bars = pax.bar(xs, [panel.ymax_ms if b.recovery_ms is None else b.recovery_ms for b in panel.bars],
                       color=[OVER_SLA if b.over_sla else WITHIN_SLA for b in panel.bars],
                       hatch=["////" if b.recovery_ms is None else None for b in panel.bars], width=0.8)
        if len(panel.bars) <= 12:  # a 40 ms bar under a 2000 ms SLA is a sliver: say its value
            pax.bar_label(bars, ["" if b.recovery_ms is None else _fmt(b.recovery_ms) for b in panel.bars],
                          fontsize=6.5, padding=1)
        pax.axhline(panel.sla_ms, color="black", ls="--", lw=1)  # its value is in the title: no text on bars
        pax.set_ylim(0, panel.ymax_ms)
        pax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
        if len(panel.bars) <= 6:  # few enough to name each round's agent
            pax.set_xticks(xs, [f"#{b.round}\n{b.agent}" for b in panel.bars], fontsize=6.5)
        else:
            pax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
            pax.set_xlabel("round", fontsize=7)
        pax.tick_params(labelsize=7)
        pax.set_title(panel.title, fontsize=8, loc="left")
        if panel.rect_in[0] == LEFT_IN:
            pax.set_ylabel("recovery (ms)", fontsize=8)
        pax.grid(True, axis="y", alpha=0.25)

    def legend(handles: list, at: tuple[float, float]) -> None:
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(at[0] / width, at[1] / height),
                   bbox_transform=fig.transFigure, fontsize=8, frameon=False, borderaxespad=0)

    dot = dict(linestyle="none", markersize=5)
    legend([Line2D([], [], marker="o", color=OK_COLOUR, label=f"ok reply ({len(layout.ok)})", **dot),
            Line2D([], [], marker="x", color=ERROR_COLOUR, label=f"error reply ({len(layout.errors)})", **dot),
            Line2D([], [], marker="v", color="black", label=f"no reply ({len(layout.lost)})", **dot),
            Line2D([], [], color="#555555", alpha=0.5, label="fault injected"),
            Patch(color=PHASE_COLOURS["detection"], label="injected → detected"),
            Patch(color=PHASE_COLOURS["restart"], label="detected → restarted"),
            Patch(color=PHASE_COLOURS["recovery"], label="restarted → recovered"),
            Patch(facecolor=PHASE_COLOURS[NOT_RECOVERED], hatch="////", label=NOT_RECOVERED),
            Line2D([], [], color=OVER_SLA, marker=r"$\mathbf{Ab}$", markersize=11, linestyle="none",
                   label="fault over SLA or a check failed")],
           layout.legend_at_in[0])
    if layout.panels:
        legend([Patch(color=WITHIN_SLA, label="recovered within SLA"), Patch(color=OVER_SLA, label="over SLA"),
                Patch(facecolor=OVER_SLA, hatch="////", label=NOT_RECOVERED),
                Line2D([], [], color="black", ls="--", label="SLA")], layout.legend_at_in[1])
    return fig


def plot(path: Path, faults: list[Fault], records: list[Record], title: str) -> str | None:
    """Write the PNG; None, or why it could not be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "--plot needs matplotlib, an optional extra (sunsetd[chaos])"
    render(plot_layout(faults, records, title)).savefig(path)
    return None
