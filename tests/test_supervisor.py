"""The supervisor with a fake spawner, a fake clock and a fake agent channel: each transition in
milliseconds, no process and no socket. Named like supervisord's: test_transition_<from>_to_<to>.

The request book is the real one, wired as the daemon wires it, so what a transition means for the
requests waiting on an agent is checked here too.
"""
from __future__ import annotations

import pytest

from fakes import Harness, profile, spec
from sunsetd.health import DaemonState
from sunsetd.policy import State
from sunsetd.profile import Intensity, RestartMode
from sunsetd.protocol import Kind
from sunsetd.reload import plan
from sunsetd.requestbook import Availability
from sunsetd.stamps import IDLE_STAMP_S

CHAIN = profile(spec("Base"), spec("Middle", depends_on=("Base",)), spec("Top", depends_on=("Middle",)))


def up(p=CHAIN) -> Harness:
    h = Harness(p).start()
    h.bring_up()
    assert all(s == "ready" for s in h.states().values()), h.states()
    return h


# ---- starting ----------------------------------------------------------------------------------------------

def test_transition_stopped_to_starting_in_dependency_order():
    h = Harness(CHAIN).start()
    assert h.spawner.names() == ["Base#1"]  # Middle waits for Base to be ready
    h.hello("Base")
    assert h.spawner.names() == ["Base#1", "Middle#1"]
    h.hello("Middle")
    h.hello("Top")
    assert h.states() == {"Base": "ready", "Middle": "ready", "Top": "ready"}
    assert h.ready_calls == 1 and h.sup.daemon_state() is DaemonState.RUNNING


def test_a_profile_of_lazy_agents_only_is_running_at_once():
    # found with an MCP server as the only (lazy) agent: the daemon stayed "starting" and never said READY=1
    h = Harness(profile(spec("L", lazy=True, essential=False))).start()
    assert h.spawner.names() == [] and h.ready_calls == 1 and h.sup.daemon_state() is DaemonState.RUNNING


def test_transition_starting_to_ready_then_heartbeats_both_ways():
    h = Harness(profile(spec("A"))).start()
    h.hello("A", ready=False)
    assert h.state("A") is State.STARTING  # HELLO is not READY: setup() may still be running
    assert h.channel.kinds("A") == [Kind.HEARTBEAT]  # a HELLO is answered at once: the agent hears us
    h.sup.on_agent_message("A", 1, Kind.READY, None)
    assert h.state("A") is State.READY
    h.live(0.35)
    assert h.channel.kinds("A").count(Kind.HEARTBEAT) == 1 + 3  # then every heartbeat_ms (100)


def test_transition_starting_is_never_hung_its_setup_counts_against_the_start_timeout_only():
    # found in #12: 77 agents started at once were all restarted during the start. A setup() that holds
    # the GIL, or a daemon that reads HELLOs late, is a slow start, judged by start_timeout_s alone
    h = Harness(profile(spec("A", start_timeout_s=2.0))).start()
    h.hello("A", ready=False)
    h.clock.advance(1.5)  # silent for five times its liveness (heartbeat_ms 100 x 3)
    assert h.state("A") is State.STARTING and h.sup.slots["A"].heartbeat_misses == 0
    assert h.channel.kinds("A").count(Kind.HEARTBEAT) >= 10  # we kept speaking to it all along
    h.sup.on_agent_message("A", 1, Kind.READY, None)
    assert h.state("A") is State.READY
    h.clock.advance(0.25)
    assert h.state("A") is State.READY  # liveness counts from READY
    h.clock.advance(0.1)
    assert h.state("A") is State.STOPPING and "hung: no heartbeat" in h.sup.slots["A"].lifecycle.reason


def test_transition_starting_to_stopping_when_not_ready_within_the_start_timeout():
    h = Harness(profile(spec("A", start_timeout_s=2.0))).start()
    h.hello("A", ready=False)
    h.live(2.1)
    assert h.moves("A")[-1] == "starting->stopping"
    assert h.spawner.latest("A").signals == ["TERM"]
    assert "not ready within start_timeout_s=2" in h.sup.slots["A"].lifecycle.reason


# ---- crashes ----------------------------------------------------------------------------------------------

def test_transition_ready_to_starting_a_crash_is_restarted_at_once():
    h = up()
    h.request("Middle")
    (forward,) = h.forwards
    h.spawner.latest("Middle").exit(-9)
    assert h.spawner.names()[-1] == "Middle#2"  # at once, no backoff for a first failure
    assert h.moves("Middle")[-1] == "ready->starting"
    assert h.sup.slots["Middle"].lifecycle.restarts == 1
    assert h.gone == [("Middle", 1, "killed by SIGKILL", 0.002)]
    h.clock.advance(0.002)  # the grace for its last replies
    assert h.codes() == ["agent_crashed"] and "Middle killed by SIGKILL" in h.replies[0].message
    h.hello("Middle")
    assert h.state("Middle") is State.READY and h.sup.incarnation("Middle") == 2


def test_a_clean_exit_gives_its_last_replies_a_longer_grace():
    h = up(profile(spec("A", restart=RestartMode.ON_FAILURE)))
    h.request("A")
    (forward,) = h.forwards
    h.spawner.latest("A").exit(0)
    assert h.state("A") is State.STOPPED and h.gone[-1][3] == 0.1
    h.reply(forward, "the last words")  # it wrote this before exiting: an answer, not a loss
    assert h.codes() == ["ok"]


def test_a_retry_request_goes_to_the_next_incarnation():
    h = up(profile(spec("A")))
    h.request("A", retry=True, cid="r")
    h.spawner.latest("A").exit(-9)
    h.clock.advance(0.02)
    assert h.replies == []  # waiting for incarnation 2
    h.hello("A")
    assert [(f.request.client_id, f.incarnation) for f in h.forwards] == [("r", 1), ("r", 2)]


def test_transition_starting_to_backoff_to_failed_a_crash_loop_opens_the_circuit():
    h = Harness(profile(spec("A", intensity=Intensity(max_restarts=3, within_s=60, cooldown_s=30)))).start()
    for _ in range(20):
        h.spawner.latest("A").start().exit(1)  # crashes in setup, every time
        if h.state("A") is State.FAILED:
            break
        h.clock.advance(1.0)  # past any backoff (max_ms 1000)
    assert h.state("A") is State.FAILED
    assert h.moves("A").count("starting->backoff") >= 1 and h.moves("A")[-1] == "starting->failed"
    assert h.sup.daemon_state() is DaemonState.DEGRADED
    h.request("A")
    assert h.codes() == ["unavailable"] and "circuit open" in h.replies[0].message
    assert "half-open trial in" in h.replies[0].message


def test_transition_failed_to_starting_half_open_trial_after_the_cooldown():
    h = Harness(profile(spec("A", intensity=Intensity(max_restarts=1, within_s=60, cooldown_s=30)))).start()
    h.spawner.latest("A").start().exit(1)
    h.spawner.latest("A").start().exit(1)
    assert h.state("A") is State.FAILED
    spawned = len(h.spawner.spawned)
    h.clock.advance(29.0)
    assert len(h.spawner.spawned) == spawned
    h.clock.advance(1.1)
    assert h.moves("A")[-1] == "failed->starting" and h.sup.slots["A"].lifecycle.circuit.value == "half-open"
    h.spawner.latest("A").start().exit(1)  # the trial fails: open again at once
    assert h.state("A") is State.FAILED
    h.clock.advance(30.1)
    h.hello("A")
    h.live(10.5)  # ready for stable_s: the circuit closes
    assert h.sup.slots["A"].lifecycle.circuit.value == "closed"


def test_transition_starting_to_starting_a_spawn_failure_takes_the_restart_path():
    h = Harness(profile(spec("A"))).start()
    h.spawner.latest("A").fail_to_spawn("Resource temporarily unavailable")
    assert h.spawner.names() == ["A#1", "A#2"] and h.sup.slots["A"].lifecycle.restarts == 1


def test_transition_ready_to_stopped_restart_never_and_the_queue_is_refused():
    h = up(profile(spec("A", restart=RestartMode.NEVER, max_inflight=1)))
    h.request("A", cid="in flight")
    h.request("A", cid="queued")
    h.spawner.latest("A").exit(1)
    assert h.state("A") is State.STOPPED and not h.sup.slots["A"].wanted
    h.clock.advance(0.02)
    assert sorted(h.codes()) == ["agent_crashed", "unavailable"]
    h.request("A")
    assert h.codes()[-1] == "unavailable" and "restart=never" in h.replies[-1].message


# ---- hangs and memory -------------------------------------------------------------------------------------

def test_transition_ready_to_stopping_when_hung_then_killed_after_the_stop_timeout_and_restarted():
    h = up(profile(spec("A", stop_timeout_s=2.0)))
    frozen = h.spawner.latest("A")
    h.clock.advance(0.31)  # heartbeat_ms 100 x liveness 3, and nothing heard
    assert h.moves("A")[-1] == "ready->stopping" and "hung: no heartbeat" in h.sup.slots["A"].lifecycle.reason
    assert frozen.signals == ["TERM"] and h.sup.slots["A"].heartbeat_misses == 1
    h.clock.advance(2.0)
    assert frozen.signals == ["TERM", "KILL"]  # it never obeyed
    frozen.exit(-9)
    assert h.moves("A")[-1] == "stopping->starting" and h.spawner.names() == ["A#1", "A#2"]
    assert h.sup.slots["A"].lifecycle.restarts == 1  # a hang is a failure


def test_a_stamped_agent_is_judged_by_its_stamp_on_one_timer_and_sent_no_heartbeat_frames():
    # #12: 77 idle agents cost 18.5 % of a core in heartbeat frames and their 77 timers. A local Python
    # agent now stamps a shared page; the daemon reads every page on one timer and sends no frames
    h = Harness(profile(spec("A"), spec("B", heartbeat_ms=250)))
    h.spawner.stamped = True
    h.start()
    for name in ("A", "B"):
        h.hello(name)
    a, b = h.spawner.latest("A"), h.spawner.latest("B")
    for _ in range(20):  # 2 s of both stamping every 100 ms
        a.stamp = b.stamp = h.clock.now
        h.clock.advance(0.1)
    assert h.states() == {"A": "ready", "B": "ready"}
    assert h.channel.kinds("A") == [] and h.channel.kinds("B") == []  # not one frame
    live_timers = [entry for entry in h.clock.timers._heap if not entry[2].cancelled]
    assert len(live_timers) == 2  # the liveness tick and the idle check: no timer per agent
    a.stamp = b.stamp = h.clock.now  # A's last stamp: it freezes
    h.clock.advance(0.25)
    assert h.state("A") is State.READY  # silent for less than heartbeat_ms 100 x liveness 3
    h.clock.advance(0.2)
    assert h.state("A") is State.STOPPING and "hung: no heartbeat" in h.sup.slots["A"].lifecycle.reason
    assert h.state("B") is State.READY  # 0.45 s is within its 0.75 s


def _stamped_and_idle(*specs):
    h = Harness(profile(*specs))
    h.spawner.stamped = True
    h.start()
    for sp in specs:
        h.hello(sp.name)
        handle = h.spawner.latest(sp.name)
        handle.stamp, handle.idle = h.clock.now, True
    return h


def test_an_idle_agent_stamps_every_idle_interval_and_is_hung_only_past_it():
    # #12: at 2.6 stamps a second 77 idle agents still cost 2.8 % of a core; an idle one stamps every
    # IDLE_STAMP_S (5 s), saying it is idle, and is judged by that interval plus its liveness
    h = _stamped_and_idle(spec("A"))  # heartbeat 100 ms x liveness 3
    a = h.spawner.latest("A")
    for _ in range(12):  # a minute of idle stamps
        h.clock.advance(IDLE_STAMP_S)
        a.stamp = h.clock.now
    assert h.state("A") is State.READY
    h.clock.advance(IDLE_STAMP_S + 0.25)
    assert h.state("A") is State.READY
    h.clock.advance(0.2)  # the next tick (every 0.1 s) past IDLE_STAMP_S + 0.3 s
    assert h.state("A") is State.STOPPING and "hung: no heartbeat for 5" in h.sup.slots["A"].lifecycle.reason


def test_an_idle_agent_given_work_it_never_takes_up_is_hung_within_its_liveness_of_the_forward():
    h = _stamped_and_idle(spec("A"))
    h.clock.advance(2.0)  # its idle stamp is 2 s old: it freezes (or a thread wedges the interpreter)
    h.request("A", cid="never taken up")
    h.clock.advance(0.3)
    assert h.state("A") is State.READY
    h.clock.advance(0.15)  # 0.3 s of liveness after the tick that saw the forward, ticks every 0.1 s
    assert h.state("A") is State.STOPPING and "hung" in h.sup.slots["A"].lifecycle.reason


def test_an_idle_agent_given_work_that_it_takes_up_is_judged_as_a_working_one():
    h = _stamped_and_idle(spec("A"))
    a = h.spawner.latest("A")
    h.clock.advance(2.0)
    h.request("A", cid="long")
    for _ in range(20):  # it works for 2 s, stamping every half of its liveness
        a.stamp, a.idle = h.clock.now, False
        h.clock.advance(0.15)
    assert h.state("A") is State.READY
    h.clock.advance(0.35)  # it wedges while working (a handler in C holding the GIL)
    assert h.state("A") is State.STOPPING


def test_an_idle_agent_stopped_by_a_signal_is_hung_within_its_liveness_of_the_stop():
    # the kernel tells the daemon (SIGCHLD, waitid WSTOPPED) what the agent cannot: it is frozen
    h = _stamped_and_idle(spec("A"))
    a = h.spawner.latest("A")
    h.clock.advance(3.0)
    a.stopped_since = h.clock.now
    h.clock.advance(0.25)
    assert h.state("A") is State.READY
    h.clock.advance(0.15)
    assert h.state("A") is State.STOPPING and "stopped by a signal" in h.sup.slots["A"].lifecycle.reason


def test_a_stopped_agent_is_found_at_its_deadline_not_at_the_next_tick():
    h = _stamped_and_idle(spec("A", heartbeat_ms=250))  # liveness 0.75 s, ticks every 0.25 s
    a = h.spawner.latest("A")
    h.clock.advance(1.37)
    a.stopped_since = h.clock.now  # between two ticks
    h.clock.advance(0.749)  # the tick that sees it arms one for its deadline, 0.75 s after the stop
    assert h.state("A") is State.READY
    h.clock.advance(0.003)
    assert h.state("A") is State.STOPPING


def test_an_idle_agent_stopped_and_continued_within_its_liveness_stays():
    h = _stamped_and_idle(spec("A"))
    a = h.spawner.latest("A")
    h.clock.advance(1.0)
    a.stopped_since = h.clock.now
    h.clock.advance(0.2)
    a.stopped_since = None  # SIGCONT: its poll timed out long ago, it stamps at once
    a.stamp = h.clock.now
    h.clock.advance(4.0)
    assert h.state("A") is State.READY


def test_an_agent_that_could_not_map_its_page_says_so_and_gets_heartbeat_frames():
    # found in review: the daemon took a page for granted; an agent that could not map it fell back to
    # frames nobody sent, and exited "sunsetd silent" again and again
    h = Harness(profile(spec("A")))
    h.spawner.stamped = True
    h.start()
    handle = h.spawner.latest("A")
    handle.start()
    h.sup.on_agent_message("A", 1, Kind.HELLO, {"pid": handle.pid, "stamps": False})
    h.sup.on_agent_message("A", 1, Kind.READY, None)
    h.live(0.35)
    assert h.channel.kinds("A").count(Kind.HEARTBEAT) == 1 + 3 and h.state("A") is State.READY


def test_a_hang_verdict_waits_while_messages_are_unread_but_not_for_ever():
    h = up(profile(spec("A")))
    h.channel.unread = True  # the loop is behind: its heartbeat may be among them
    h.clock.advance(0.45)
    assert h.state("A") is State.READY
    h.clock.advance(0.2)  # silent for twice the limit: hung whatever waits unread
    assert h.state("A") is State.STOPPING


def test_transition_ready_to_stopping_over_max_rss_mb():
    h = up(profile(spec("A", max_rss_mb=100)))
    h.spawner.latest("A").use_memory(80)
    assert h.state("A") is State.READY
    h.spawner.latest("A").use_memory(120)
    assert h.state("A") is State.STOPPING and "memory: rss 120MB over max_rss_mb=100" in h.sup.slots["A"].lifecycle.reason
    h.spawner.latest("A").exit(0)
    assert h.state("A") is State.STARTING and h.sup.slots["A"].lifecycle.restarts == 1


# ---- lazy agents and the memory budget --------------------------------------------------------------------

LAZY = profile(spec("Base"), spec("LazyDep", lazy=True, essential=False, depends_on=("Base",), idle_timeout_s=3.0),
               spec("LazyTop", lazy=True, essential=False, depends_on=("LazyDep",), idle_timeout_s=3.0))


def test_transition_stopped_to_starting_a_lazy_agent_on_its_first_request_after_its_lazy_dependencies():
    h = up(LAZY) if False else Harness(LAZY).start()
    h.hello("Base")
    assert h.states() == {"Base": "ready", "LazyDep": "stopped", "LazyTop": "stopped"}
    h.request("LazyTop", cid=1)
    h.request("LazyTop", cid=2)
    assert h.spawner.names() == ["Base#1", "LazyDep#1"]  # its dependency first
    h.hello("LazyDep")
    h.clock.advance(0.25)
    h.hello("LazyTop")
    assert [f.request.client_id for f in h.forwards] == [1, 2]  # queued in arrival order, then forwarded
    assert h.lazy_starts[0][0] == "LazyTop" and h.lazy_starts[0][1] == pytest.approx(0.25)


def test_transition_ready_to_stopping_an_idle_lazy_agent_and_its_dependents_stop_first():
    h = Harness(LAZY).start()
    h.hello("Base")
    h.request("LazyTop")
    h.bring_up()
    h.reply(h.forwards[0])
    h.live(3.5)
    assert h.state("LazyTop") is State.STOPPING and "idle for" in h.sup.slots["LazyTop"].lifecycle.reason
    assert h.state("LazyDep") is State.READY  # LazyTop still runs
    h.spawner.latest("LazyTop").exit(0)
    h.live(1.5)
    assert h.state("LazyDep") is State.STOPPING  # idle too, now that nothing needs it
    assert h.sup.slots["LazyTop"].lifecycle.restarts == 0
    assert h.book.update is not None and h.book._agents["LazyTop"].view.availability is Availability.ON_DEMAND


BUDGET = profile(spec("Base", memory_mb=50),
                 spec("HeavyA", lazy=True, essential=False, memory_mb=100),
                 spec("HeavyB", lazy=True, essential=False, memory_mb=100),
                 spec("HeavyC", lazy=True, essential=False, memory_mb=100),
                 spec("Giant", lazy=True, essential=False, memory_mb=500), memory_mb=330)


def test_eviction_under_the_budget_stops_the_least_recently_used_idle_lazy_agent():
    h = Harness(BUDGET).start()
    h.hello("Base")
    for name in ("HeavyA", "HeavyB"):
        h.request(name)
        h.hello(name)
        h.spawner.latest(name).use_memory(100)
        h.reply(h.forwards[-1])
        h.clock.advance(0.1)
    h.request("HeavyA")  # HeavyA is now the more recently used
    h.reply(h.forwards[-1])
    h.request("HeavyC")
    assert h.state("HeavyB") is State.STOPPING and h.state("HeavyA") is State.READY
    assert h.sup.slots["HeavyB"].lifecycle.reason == "evicted for HeavyC: memory budget 330 MB"
    assert h.state("HeavyC") is State.STARTING


def test_a_start_the_budget_cannot_hold_is_refused_overloaded_naming_the_budget():
    h = Harness(BUDGET).start()
    h.hello("Base")
    h.request("Giant")
    assert h.codes() == ["overloaded"] and "memory budget of 330 MB: starting Giant needs 500 MB" in h.replies[0].message
    assert h.state("Giant") is State.STOPPED and len(h.spawner.spawned) == 1


# ---- operators, shutdown ---------------------------------------------------------------------------------

def test_operator_stop_start_and_restart_are_not_failures():
    h = up()
    h.sup.stop_agent("Top")
    assert h.state("Top") is State.STOPPING
    assert h.channel.kinds("Top")[-1] is Kind.STOP and h.spawner.latest("Top").signals == ["TERM"]
    h.spawner.latest("Top").exit(0)
    h.request("Top")
    assert h.codes() == ["unavailable"] and "Top is stopped (operator stop: exit code 0)" in h.replies[0].message
    assert h.sup.start_agent("Top") is None
    h.hello("Top")
    h.sup.restart_agent("Top")
    h.spawner.latest("Top").exit(0)
    h.hello("Top")
    assert h.sup.incarnation("Top") == 3 and h.sup.slots["Top"].lifecycle.restarts == 0


def test_transition_ready_to_stopped_at_shutdown_in_reverse_dependency_order():
    h = up()
    h.sup.shutdown()
    assert h.states() == {"Base": "ready", "Middle": "ready", "Top": "stopping"}
    h.spawner.latest("Top").exit(0)
    assert h.state("Middle") is State.STOPPING
    h.spawner.latest("Middle").exit(0)
    h.spawner.latest("Base").exit(0)
    assert h.sup.all_stopped and h.sup.daemon_state() is DaemonState.STOPPING


def test_transition_ready_to_stopped_killed_by_a_second_signal_nothing_starts_again():
    h = up()
    h.sup.shutdown()
    h.sup.kill_all()
    assert all(handle.signals[-1] == "KILL" for handle in h.spawner.spawned)
    spawned = len(h.spawner.spawned)
    for name in ("Base", "Middle", "Top"):  # the two still ready die as crashes would
        h.spawner.latest(name).exit(-9)
    h.clock.advance(60.0)
    assert len(h.spawner.spawned) == spawned and h.sup.all_stopped
    assert all(h.sup.slots[n].lifecycle.restarts == 0 for n in ("Base", "Middle", "Top"))


def test_an_agent_waiting_to_restart_stops_at_shutdown():
    h = up(profile(spec("A")))
    h.spawner.latest("A").exit(1)
    h.spawner.latest("A").start().exit(1)  # a second quick failure: backoff
    assert h.state("A") is State.BACKOFF
    h.sup.shutdown()
    h.clock.advance(5.0)
    assert h.state("A") is State.STOPPED and h.sup.all_stopped


# ---- agent messages ---------------------------------------------------------------------------------------

def test_messages_of_an_older_incarnation_or_no_agent_are_counted_and_ignored():
    h = up(profile(spec("A")))
    h.spawner.latest("A").exit(-9)
    h.sup.on_agent_message("A", 1, Kind.READY, None)  # the dead one
    h.sup.on_agent_message("Ghost", 1, Kind.HELLO, None)
    assert h.sup.counters["stale_agent_messages"] == 2 and h.state("A") is State.STARTING


def test_output_lines_are_logged_even_after_the_incarnation_is_gone():
    h = up(profile(spec("A")))
    old = h.spawner.latest("A")
    old.exit(1)
    old.print("Traceback (most recent call last):", "stderr")  # no error: late output is still output


# ---- reload ------------------------------------------------------------------------------------------------

def reload(h: Harness, new) -> dict:
    current = {name: slot.spec for name, slot in h.sup.slots.items() if not slot.removed}
    h.outcome = h.sup.reload(plan(current, new), h.settled.append)
    return h.outcome.body()


def test_reload_diff_starts_added_stops_removed_and_restarts_changed():
    h = up()
    new = profile(spec("Base"), spec("Middle", depends_on=("Base",), config={"v": 2}),
                  spec("Other", depends_on=("Base",)))
    body = reload(h, new)
    assert (body["added"], body["removed"], body["changed"], body["unchanged"]) == (["Other"], ["Top"], ["Middle"], 1)
    assert body["settled"] is False and body["settle_s"] == pytest.approx(2.0 + 5.0 + 1.0)
    h.request("Top")
    assert h.codes() == ["unknown_agent"]  # removed: no longer in the profile
    h.spawner.latest("Top").exit(0)
    assert "Top" not in h.sup.slots
    h.spawner.latest("Middle").exit(0)
    h.bring_up()
    assert h.states() == {"Base": "ready", "Middle": "ready", "Other": "ready"}
    assert h.settled and h.settled[0].body()["outcomes"] == {"Middle": "ready"}
    assert h.sup.incarnation("Base") == 1  # unchanged: untouched


def test_reload_rolls_back_a_changed_agent_whose_new_definition_dies_while_starting():
    h = up(profile(spec("A")))
    reload(h, profile(spec("A", run="agents.testing:CrashAtStart")))
    h.spawner.latest("A").exit(0)
    h.spawner.latest("A").start().exit(1)  # the new definition crashes in setup
    assert h.settled and h.settled[0].body()["rolled_back"] == ["A"]
    assert h.settled[0].body()["outcomes"]["A"].startswith("rolled back: new spec did not become ready")
    h.clock.advance(0.0)
    h.bring_up()
    assert h.sup.slots["A"].spec.run == "agents.testing:Echo" and h.state("A") is State.READY


def test_reload_rolls_back_a_changed_agent_whose_new_definition_times_out_while_starting():
    h = up(profile(spec("A")))
    reload(h, profile(spec("A", start_timeout_s=3.0, config={"slow": True})))
    h.spawner.latest("A").exit(0)
    h.hello("A", ready=False)  # starts, never ready
    h.live(3.1)
    assert h.settled and h.settled[0].body()["rolled_back"] == ["A"]
    assert "not ready within start_timeout_s=3" in h.settled[0].body()["outcomes"]["A"]
    h.spawner.latest("A").exit(-15)  # the hung new incarnation goes; the previous definition comes back
    h.bring_up()
    assert h.state("A") is State.READY and "slow" not in h.sup.slots["A"].spec.config


def test_reload_rolls_back_at_the_end_of_its_budget_when_the_new_definition_never_starts():
    h = up(profile(spec("A")))
    # its new dependency is lazy and never asked for: the restarted agent waits for it, stopped
    reload(h, profile(spec("Dep", lazy=True, essential=False), spec("A", depends_on=("Dep",))))
    h.spawner.latest("A").exit(0)
    h.live(2.5)
    assert h.state("A") is State.STOPPED and not h.settled
    h.live(6.0)  # stop 2 s + start 5 s + 1 s
    assert h.settled and "new spec not ready within 8s" in h.settled[0].body()["outcomes"]["A"]
    h.bring_up()
    assert h.state("A") is State.READY and h.sup.slots["A"].spec.depends_on == ()


def test_transition_failed_to_starting_a_reload_that_fixes_the_definition_starts_it_at_once():
    h = Harness(profile(spec("X", run="agents.testing:CrashAtStart",
                             intensity=Intensity(max_restarts=1, within_s=60, cooldown_s=600)))).start()
    h.spawner.latest("X").start().exit(1)
    h.spawner.latest("X").start().exit(1)
    assert h.state("X") is State.FAILED
    body = reload(h, profile(spec("X", intensity=Intensity(max_restarts=1, within_s=60, cooldown_s=600))))
    assert body["changed"] == ["X"] and body["settle_s"] == pytest.approx(5.0 + 1.0)  # nothing to stop
    assert h.state("X") is State.STARTING and h.sup.slots["X"].lifecycle.circuit.value == "closed"
    h.hello("X")
    assert h.settled[0].body()["outcomes"] == {"X": "ready"} and h.sup.daemon_state() is DaemonState.RUNNING


def test_a_later_reload_supersedes_an_earlier_one_still_settling():
    h = up(profile(spec("A")))
    reload(h, profile(spec("A", config={"v": 2})))
    h.spawner.latest("A").exit(0)
    second = reload(h, profile(spec("A", config={"v": 3})))
    assert h.settled[0].body()["superseded"] == ["A"]
    assert second["changed"] == ["A"]


def test_a_stopped_lazy_agent_simply_starts_with_its_new_definition_next_time():
    h = Harness(LAZY).start()
    h.hello("Base")
    body = reload(h, profile(spec("Base"), spec("LazyDep", lazy=True, essential=False, depends_on=("Base",)),
                             spec("LazyTop", lazy=True, essential=False, depends_on=("LazyDep",), config={"v": 2})))
    assert body["settled"] is True and body["outcomes"]["LazyTop"].startswith("not running")
    assert h.settled  # nothing to wait for: settled at once


# ---- health -----------------------------------------------------------------------------------------------

def test_health_names_every_essential_agent_not_ready():
    h = up()
    assert h.sup.healthy() == (True, [])
    h.sup.stop_agent("Top")
    assert h.sup.healthy() == (False, ["Top"]) and h.sup.daemon_state() is DaemonState.RUNNING


# ---- found in review ---------------------------------------------------------------------------------------

def test_what_a_dead_incarnation_still_holds_does_not_take_the_room_of_the_next_one():
    """Found in review: the requests of an incarnation gone by a clean exit counted against max_inflight
    for its successor during their grace, and when the grace ended nothing flushed the queue: a ready,
    idle agent answered every later request `timeout`."""
    h = up(profile(spec("A", max_inflight=1)))
    h.request("A", cid="held")
    h.spawner.latest("A").exit(0)  # restart=always: a new incarnation at once
    h.hello("A")
    h.request("A", cid="next")
    assert [f.request.client_id for f in h.forwards] == ["held", "next"]  # not queued behind the orphan
    h.clock.advance(0.2)
    h.reply(h.forwards[-1])
    h.request("A", cid="later")
    assert h.codes() == ["agent_crashed", "ok"] and h.forwards[-1].request.client_id == "later"


def test_transition_stopping_to_stopped_when_a_spawn_fails_after_a_stop():
    """Found in review: shutdown while a spawn had not answered, then the spawn failed: the agent stayed
    stopping for ever and the daemon waited out its whole stop budget."""
    h = Harness(profile(spec("A"))).start()
    h.sup.shutdown()
    h.spawner.latest("A").fail_to_spawn("Too many open files")
    assert h.state("A") is State.STOPPED and h.sup.all_stopped


def test_a_hello_from_another_process_under_an_incarnations_id_is_ignored():
    """Found in review: a duplicate of an incarnation (a spawn a lost zygote had forked after all) could
    answer HELLO and READY for the real one."""
    h = Harness(profile(spec("A"))).start()
    real = h.spawner.latest("A").start()
    h.sup.on_agent_message("A", 1, Kind.HELLO, {"pid": real.pid + 1000})
    h.sup.on_agent_message("A", 1, Kind.READY, None)
    assert h.state("A") is State.STARTING and h.sup.counters["stale_agent_messages"] == 2
    h.sup.on_agent_message("A", 1, Kind.HELLO, {"pid": real.pid})
    h.sup.on_agent_message("A", 1, Kind.READY, None)
    assert h.state("A") is State.READY


def test_a_rollback_at_its_deadline_restarts_a_new_definition_still_starting():
    """Found in review: the deadline fired while the new definition was still starting (it had waited for
    a slow new dependency): the slot went back to the old definition but the new process came up."""
    h = up(profile(spec("A")))
    reload(h, profile(spec("Dep", start_timeout_s=10.0), spec("A", depends_on=("Dep",), config={"v": 2})))
    h.spawner.latest("A").exit(0)
    h.hello("Dep", ready=False)
    h.live(6.5)  # Dep takes 6.5 s to come up
    h.sup.on_agent_message("Dep", 1, Kind.READY, None)
    h.hello("A", ready=False)  # A's new definition starts...
    h.live(2.0)  # ...and the 8 s budget (2 + 5 + 1) runs out while it is still starting
    assert h.settled and h.settled[0].body()["rolled_back"] == ["A"]
    h.clock.advance(0.0)
    new_def = h.spawner.latest("A")
    assert new_def.spec.config == {"v": 2} and new_def.signals == ["TERM"]
    new_def.exit(0)
    h.bring_up()
    assert h.state("A") is State.READY and h.spawner.latest("A").spec.config == {}


def test_a_rollback_that_would_make_a_dependency_cycle_keeps_the_new_definition():
    """Found in review: B depended on A and a reload turned it round; rolling back only A made a live
    cycle, and then neither agent ever stopped."""
    h = up(profile(spec("B"), spec("A", depends_on=("B",))))
    reload(h, profile(spec("A", config={"v": 2}), spec("B", depends_on=("A",))))
    h.spawner.latest("A").exit(0)
    for _ in range(3):
        for name in ("A", "B"):
            handle = h.spawner.latest(name)
            if "TERM" in handle.signals and not handle.exited:
                handle.exit(0)
        h.clock.advance(0.01)
    h.spawner.latest("A").start().exit(1)  # A's new definition crashes while starting
    outcome = h.outcome.outcomes["A"]
    assert outcome.startswith("kept:") and "dependency cycle" in outcome
    assert h.sup.slots["A"].spec.depends_on == ()


def test_an_operator_start_of_an_agent_in_backoff_waits_for_its_dependencies():
    h = up()
    h.sup.stop_agent("Top")
    h.spawner.latest("Top").exit(0)
    h.spawner.latest("Middle").exit(1)
    h.spawner.latest("Middle").start().exit(1)  # a second quick failure: backoff
    assert h.state("Middle") is State.BACKOFF
    h.spawner.latest("Base").exit(-9)  # and what it depends on is restarting
    spawned = len(h.spawner.spawned)
    assert h.sup.start_agent("Middle") is None
    assert len(h.spawner.spawned) == spawned and h.state("Middle") is State.STOPPED  # not before Base is ready
    h.hello("Base")
    assert h.spawner.latest("Middle").incarnation == 3 and h.state("Middle") is State.STARTING
