"""The chaos harness: a short chaos run (kill and freeze under live load) with its accounting checked
request by request; how it starts from any python; its usage errors; and its plot, as layout data and as
a real rendering."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TEST_PROFILES

sys.path.insert(0, str(REPO / "chaos"))

from faults import Fault  # noqa: E402
from load import Record  # noqa: E402

import report  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_chaos(*args: str, python: tuple[str, ...] = (sys.executable,), script: Path = REPO / "chaos" / "run.py",
              cwd: Path = REPO, env: dict | None = None, timeout: float = 280) -> subprocess.CompletedProcess:
    return subprocess.run([*python, str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


# ---- a real run ----------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_short_chaos_run_loses_nothing(tmp_path):
    out = tmp_path / "events.json"
    png = tmp_path / "run.png"
    result = run_chaos("--profile", str(TEST_PROFILES / "mini.yaml"), "--scenario", "kill,freeze", "--rounds", "3",
                       "--clients", "3", "--seed", "5", "--json", str(out), "--plot", str(png))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    events = json.loads(out.read_text())
    faults = events["faults"]
    assert [f["scenario"] for f in faults] == ["kill"] * 3 + ["freeze"] * 3
    assert all(f["recovered"] and f["detection_ms"] <= f["restart_ms"] <= f["recovery_ms"] for f in faults)
    requests = events["requests"]
    assert len(requests) > 200
    assert all(r["replies"] == 1 for r in requests)  # exactly one reply each: nothing lost, nothing twice
    assert not [r for r in requests if r["code"] == "ok" and r["correct"] is False]
    total = events["total"]
    assert (total["lost"], total["wrong"], total["duplicates"]) == (0, 0, 0)
    assert total["answered"] == total["sent"] == len(requests)
    assert sum(total["errors"].values()) == sum(r["code"] != "ok" for r in requests)
    assert "PASS: nothing lost" in result.stdout
    assert f"plot: {png}" in result.stdout and png.read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_tools_profile_under_chaos_loses_nothing_when_its_programs_and_mcp_servers_die(tmp_path):
    out = tmp_path / "events.json"
    result = run_chaos("--profile", "tools", "--victims", "tools.*", "--scenario", "kill,freeze,flood",
                       "--rounds", "kill=4", "--rounds", "freeze=3", "--rounds", "flood=1", "--clients", "3",
                       "--seed", "3", "--json", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    events = json.loads(out.read_text())
    victims = {t for f in events["faults"] if f["scenario"] in ("kill", "freeze") for t in f["targets"]}
    assert victims <= {"tools.files", "tools.time", "tools.fetch"} and len(victims) >= 2, victims
    assert all(f["recovered"] for f in events["faults"])
    loaded = {(r["agent"], r["op"]) for r in events["requests"] if r["kind"] == "load"}
    assert {("tools.time", "tools/list"), ("tools.fetch", "tools/list")} <= loaded  # the servers' own answers
    assert not [r for r in events["requests"] if r["agent"] == "tools.files"]  # a plain program is sent nothing
    total = events["total"]
    assert (total["lost"], total["wrong"], total["duplicates"]) == (0, 0, 0) and total["answered"] == total["sent"]


@pytest.mark.slow
def test_victims_that_match_no_agent_are_a_usage_error():
    result = run_chaos("--profile", str(TEST_PROFILES / "mini.yaml"), "--victims", "nobody.*", "--scenario", "kill",
                       timeout=120)
    assert result.returncode == 2 and "--victims nobody.* matches no agent" in result.stderr
    assert "kept /tmp/sdc-" not in result.stdout  # nothing to inspect after a usage error


# ---- starting from any python --------------------------------------------------------------------------

def pythons_without_dependencies() -> list:
    """Interpreters that cannot import zmq: the system's python3 (if it has no zmq), and this one with -S
    (no site-packages) wherever it runs."""
    found = [pytest.param((sys.executable, "-S"), id="python-S")]
    system = "/usr/bin/python3"
    if os.access(system, os.X_OK) and subprocess.run([system, "-c", "import zmq"], capture_output=True).returncode:
        found.append(pytest.param((system,), id="usr-bin-python3"))
    return found


@pytest.mark.parametrize("python", pythons_without_dependencies())
def test_any_python_runs_it_under_the_projects_venv(python):
    if not (REPO / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv beside the repository to re-exec under")
    result = run_chaos("--help", python=python, timeout=60)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout.startswith("usage: chaos/run.py") and "Exit status" in result.stdout
    # Arguments are parsed by the re-exec'd harness, under the venv: the same argv went across.
    result = run_chaos("--scenario", "earthquake", python=python, timeout=60)
    assert result.returncode == 2 and "unknown scenario 'earthquake'" in result.stderr
    assert "Traceback" not in result.stderr


def copy_of_the_harness(root: Path) -> Path:
    """chaos/ alone in a directory of its own: a checkout with no .venv beside it."""
    shutil.copytree(REPO / "chaos", root / "chaos", ignore=shutil.ignore_patterns("__pycache__"))
    return root / "chaos" / "run.py"


def test_without_a_venv_it_says_what_to_run_in_one_line(tmp_path):
    script = copy_of_the_harness(tmp_path)
    for args in (("--help",), ("--scenario", "kill")):
        result = run_chaos(*args, python=(sys.executable, "-S"), script=script, cwd=tmp_path, timeout=60)
        assert result.returncode == 2 and result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert line.startswith("chaos/run.py: needs sunsetd's dependencies (No module named 'zmq'")
        assert "run `make compile` (creates .venv) and then `.venv/bin/python chaos/run.py`" in line


def test_it_re_execs_once_and_no_more(tmp_path):
    """A .venv whose python cannot import the dependencies either: one re-exec, then the one line."""
    script = copy_of_the_harness(tmp_path)
    log = tmp_path / "execs.log"
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {sys.executable} -S "$@"\n')
    python.chmod(0o755)
    result = run_chaos("--rounds", "2", python=(sys.executable, "-S"), script=script, cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "needs sunsetd's dependencies" in line
    assert log.read_text().splitlines() == [f"{script} --rounds 2"]  # the same argv, exec'd exactly once


# ---- usage errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (("--scenario", "earthquake"), "unknown scenario 'earthquake'"),
    (("--rounds", "kill=many"), "--rounds must be N or SCENARIO=N, got 'kill=many'"),
    (("--rounds", "quake=2"), "--rounds: unknown scenario 'quake'"),
    (("--rounds", "2.5"), "--rounds must be a whole number"),
    (("--sla-ms", "kill=0"), "--sla-ms must be more than 0: kill=0"),
    (("--clients", "0"), "--clients must be more than 0"),
    (("--profile", "no-such-profile"), "--profile: profile 'no-such-profile' not found"),
    (("--seed", "x"), "argument --seed: invalid int value"),
    (("--frobnicate",), "unrecognized arguments: --frobnicate"),
])
def test_usage_errors_exit_2_with_one_line(args, message):
    result = run_chaos(*args, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("usage: chaos/run.py") and "Traceback" not in result.stderr
    errors = [line for line in lines if line.startswith("chaos/run.py: error: ")]
    assert errors == [lines[-1]] and message in lines[-1]


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "matplotlib.py").write_text("raise ImportError('matplotlib blocked for this test')\n")
    result = run_chaos("--plot", str(tmp_path / "never.png"), env={"PYTHONPATH": str(blocked)}, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--plot needs matplotlib" in result.stderr.splitlines()[-1]
    assert "`.venv/bin/pip install -e '.[chaos]'`" in result.stderr
    assert not (tmp_path / "never.png").exists()


# ---- the plot ------------------------------------------------------------------------------------------

def fault(scenario: str, round_no: int, targets: list[str], at: float, detect: float | None, restart: float | None,
          recover: float | None, sla_ms: float = 2000, healed: float | None = None) -> Fault:
    """A fault as the harness records it, times in seconds after `at` (None: not reached)."""
    f = Fault(scenario, round_no, targets, at, sla_ms, healed=None if healed is None else at + healed)
    f.detected, f.restarted, f.recovered = (None if t is None else at + t for t in (detect, restart, recover))
    f.window = (at - 0.3, at + 6.0)
    return f


def a_run() -> tuple[list[Fault], list[Record]]:
    faults = [
        fault("kill", 1, ["SystemDigitalTwin"], 1.0, 0.012, 0.041, 0.045),
        fault("kill", 2, ["ModelManagerSuiteAgentX"], 1.2, 0.010, 0.300, 0.290),  # a reply seen before the ready poll
        fault("freeze", 1, ["Tutor"], 8.0, 0.770, 0.830, 0.840, sla_ms=5000),
        fault("freeze", 2, ["Vision"], 15.0, 0.750, None, None, sla_ms=5000),  # never recovered
        fault("cascade", 1, ["Root", "Leaf1", "Leaf2"], 22.0, 0.011, 0.190, 0.200, sla_ms=6000),
        fault("crashloop", 1, ["ChaosFlaky"], 29.0, 0.015, 4.5, 4.52, sla_ms=1000, healed=1.5),  # over its SLA
        fault("flood", 1, ["ChaosEcho", "all"], 36.0, 0.100, None, 3.4, sla_ms=3000, healed=3.0),
    ]
    records = []
    for i in range(2000):
        r = Record(f"c0-{i}", "load", "Tutor", "ping", i * 0.021, 3.0, "pong")
        r.replied, r.replies = r.sent + 0.002 + (i % 7) * 0.001, 1
        r.code, r.correct = ("ok", True) if i % 40 else ("agent_crashed", None)
        records.append(r)
    records.append(Record("c1-0", "load", "Vision", "info", 15.1, 3.0))  # no reply
    return faults, records


def test_plot_layout_is_the_faults_phases_labels_and_panels():
    faults, records = a_run()
    layout = report.plot_layout(faults, records, "a run")
    for i, f in enumerate(faults):
        spans = [s for s in layout.spans if s.fault == i]
        phases = [s.phase for s in spans]
        assert spans[0].start == f.injected
        assert all(s.start <= s.end for s in spans)
        assert all(a.end == b.start for a, b in zip(spans, spans[1:]))  # inject <= detect <= restart <= recover
        if f.recovered is not None:
            assert spans[-1] == report.Span(i, "recovery", spans[-1].start, f.recovered)
    by_fault = {i: [s.phase for s in layout.spans if s.fault == i] for i in range(len(faults))}
    assert by_fault[0] == ["detection", "restart", "recovery"]
    assert by_fault[3] == ["detection", "not recovered"]  # Vision: detected, never back
    assert [s.end for s in layout.spans if s.fault == 3][-1] == faults[3].window[1]
    assert by_fault[6] == ["detection", "recovery"]  # a flood restarts nothing
    kill2 = {s.phase: s for s in layout.spans if s.fault == 1}
    assert kill2["restart"].end == kill2["recovery"].end == faults[1].recovered

    assert sorted(label.fault for label in layout.labels) == list(range(len(faults)))  # one label per fault
    text = {label.fault: label.text for label in layout.labels}
    assert text == {0: "SystemDigitalTwin", 1: "ModelManagerSuiteAg…", 2: "Tutor", 3: "Vision", 4: "Root +2",
                    5: "ChaosFlaky", 6: "all (ChaosEcho)"}
    assert all(len(t) <= report.LABEL_CHARS for t in text.values())  # the longest still fits the strip
    assert all(label.at == faults[label.fault].injected for label in layout.labels)
    assert [label.ok for label in sorted(layout.labels, key=lambda label: label.fault)] == [f.ok for f in faults]
    # The two kills 0.2 s apart get their labels spread, one label's room apart at least.
    placed = [label.placed for label in layout.labels]
    room = report.LABEL_GAP_IN / layout.timeline_in[2] * (layout.xlim[1] - layout.xlim[0])
    assert all(b - a >= room * 0.999 for a, b in zip(placed, placed[1:]))
    assert all(layout.xlim[0] <= x <= layout.xlim[1] for x in placed)

    assert [p.scenario for p in layout.panels] == ["kill", "freeze", "cascade", "crashloop", "flood"]
    panel = {p.scenario: p for p in layout.panels}
    assert [p.sla_ms for p in layout.panels] == [2000, 5000, 6000, 1000, 3000]
    assert [(b.round, b.agent, b.recovery_ms, b.over_sla) for b in panel["freeze"].bars] == \
        [(1, "Tutor", 840.0, False), (2, "Vision", None, True)]
    assert [b.over_sla for b in panel["crashloop"].bars] == [True]  # 3020 ms from healing, SLA 1000
    assert panel["crashloop"].bars[0].recovery_ms == 3020.0
    assert panel["kill"].title.startswith("kill: 2/2 within 2000 ms")
    assert panel["freeze"].title.startswith("freeze: 1/2 within 5000 ms")
    assert all(p.ymax_ms > p.sla_ms for p in layout.panels)
    assert (len(layout.ok), len(layout.errors), len(layout.lost)) == (1950, 50, 1)
    assert [b.scenario for b in layout.bands] == ["kill", "freeze", "cascade", "crashloop", "flood"]


def test_plot_layout_of_a_long_run_gives_every_label_its_room():
    faults = [fault("kill", n, [f"Agent{n % 16}"], 1.0 + n * 0.4, 0.01, 0.04, 0.05) for n in range(1, 171)]
    layout = report.plot_layout(faults, [], "170 faults")
    assert layout.timeline_in[2] >= 170 * report.LABEL_GAP_IN  # the figure widens rather than pile them up
    placed = [label.placed for label in layout.labels]
    room = report.LABEL_GAP_IN / layout.timeline_in[2] * (layout.xlim[1] - layout.xlim[0])
    assert all(b - a >= room * 0.999 for a, b in zip(placed, placed[1:]))
    assert len(layout.panels) == 1


def test_plot_renders_a_figure_that_keeps_its_legends_off_the_data(tmp_path):
    pytest.importorskip("matplotlib")
    faults, records = a_run()
    layout = report.plot_layout(faults, records, "a run")
    fig = report.render(layout)
    path = tmp_path / "run.png"
    fig.savefig(path)
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert len(fig.axes) == 1 + len({f.scenario for f in faults})
    renderer = fig.canvas.get_renderer()
    timeline, *panels = fig.axes
    assert timeline.get_yscale() == "log" and len(fig.legends) == 2
    for legend in fig.legends:
        box = legend.get_window_extent(renderer)
        assert not [ax for ax in fig.axes if box.overlaps(ax.get_window_extent(renderer))]
        assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)  # not cut off
    # Each fault's label, naming its agent, stands in the timeline's strip above the data, apart from the others.
    texts = {t.get_text(): t for t in timeline.texts}
    frame = timeline.get_window_extent(renderer)
    data_top = frame.y0 + report.DATA_TOP * frame.height
    boxes = []
    for label in layout.labels:
        box = texts[label.text].get_window_extent(renderer)
        assert box.y0 >= data_top and frame.x0 <= box.x0 and box.x1 <= frame.x1 and box.y1 <= frame.y1
        boxes.append(box)
    assert not [(a, b) for a, b in zip(boxes, boxes[1:]) if a.overlaps(b)]
    # One panel per scenario: its SLA as a dashed horizontal line, bars coloured over or within it.
    for panel, ax in zip(layout.panels, panels):
        (sla_line,) = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert tuple(sla_line.get_ydata()) == (panel.sla_ms, panel.sla_ms)
        assert ax.get_title(loc="left") == panel.title
        colours = [tuple(round(c, 3) for c in bar.get_facecolor()[:3]) for bar in ax.patches]
        import matplotlib.colors as mcolors
        expected = [tuple(round(c, 3) for c in mcolors.to_rgb(report.OVER_SLA if b.over_sla else report.WITHIN_SLA))
                    for b in panel.bars]
        assert colours == expected


def test_plot_writes_the_png(tmp_path):
    pytest.importorskip("matplotlib")
    faults, records = a_run()
    path = tmp_path / "run.png"
    assert report.plot(path, faults, records, "a run") is None
    assert path.read_bytes().startswith(PNG_SIGNATURE)
