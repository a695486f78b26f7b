"""The lazy agents of the core optional, reasoning, learning and emotion groups, through a real daemon
running the full profile (profiles/full.yaml), where all of them are lazy.
tests/test_agents_language.py covers the language, utility and audio groups on the same profile.

One daemon serves the whole module. Every agent here is lazy: each is started by its first request in
its own test (checked for most: stopped before, ready after), so the tests run in dependency order
(ChainOfThoughtAgent before GoTToTAgent, EmotionEngine before the agents that use it, ...); the core
optional group goes first, while ModelManagerSuite holds only the core's pinned models.
"""
from __future__ import annotations

import math
import re
from array import array
from fractions import Fraction

import pytest

from conftest import error_code, module_daemon, first_request, model_in_budget as pinned

from agents.speech import RATE, to_pcm

pytestmark = pytest.mark.slow

PROFILE = "full"
AGENTS = {
    "UnifiedSystemAgent": "agents.core_optional:UnifiedSystemAgent",
    "ModelOrchestrator": "agents.core_optional:ModelOrchestrator",
    "GoalManager": "agents.core_optional:GoalManager",
    "IntentionValidatorAgent": "agents.core_optional:IntentionValidatorAgent",
    "ChainOfThoughtAgent": "agents.reasoning:ChainOfThoughtAgent",
    "GoTToTAgent": "agents.reasoning:GoTToTAgent",
    "CognitiveModelAgent": "agents.reasoning:CognitiveModelAgent",
    "LearningOrchestrationService": "agents.learning:LearningOrchestrationService",
    "LearningOpportunityDetector": "agents.learning:LearningOpportunityDetector",
    "LearningManager": "agents.learning:LearningManager",
    "ActiveLearningMonitor": "agents.learning:ActiveLearningMonitor",
    "LearningAdjusterAgent": "agents.learning:LearningAdjusterAgent",
    "SelfTrainingOrchestrator": "agents.learning:SelfTrainingOrchestrator",
    "LocalFineTunerAgent": "agents.learning:LocalFineTunerAgent",
    "EmotionEngine": "agents.emotion:EmotionEngine",
    "MoodTrackerAgent": "agents.emotion:MoodTrackerAgent",
    "HumanAwarenessAgent": "agents.emotion:HumanAwarenessAgent",
    "ToneDetector": "agents.emotion:ToneDetector",
    "VoiceProfilingAgent": "agents.emotion:VoiceProfilingAgent",
    "EmpathyAgent": "agents.emotion:EmpathyAgent",
    "EmotionSynthesisAgent": "agents.emotion:EmotionSynthesisAgent",
}


@pytest.fixture(scope="module")
def daemon():
    """One daemon for the module, on its own short runtime directory; at the end it must stop with
    exit code 0 and leave no process of its own."""
    with module_daemon(PROFILE) as daemon:
        yield daemon


def glide(f0: float, f1: float, ms: int, amp: float, vibrato_st: float = 0.0) -> bytes:
    """A tone gliding from f0 to f1 Hz (with an optional 5 Hz vibrato), as 16 kHz PCM."""
    n = RATE * ms // 1000
    out, phase = array("h", bytes(2 * n)), 0.0
    for i in range(n):
        f = (f0 + (f1 - f0) * i / n) * 2 ** (vibrato_st * math.sin(2 * math.pi * 5 * i / RATE) / 12)
        phase += 2 * math.pi * f / RATE
        out[i] = int(amp * 32767 * math.sin(phase))
    return to_pcm(out)


# ---- the profile ---------------------------------------------------------------------------------------
def test_only_core_runs_until_the_first_requests(daemon):
    status = daemon.status()
    assert status["profile"] == "full" and status["state"] == "running"
    assert status["counts"] == {"total": 77, "ready": 24, "essential": 24, "essential_ready": 24, "failed": 0}
    lazy = {a["name"]: a for a in status["agents"] if a["lazy"]}
    assert len(lazy) == 53 and set(AGENTS) <= set(lazy)
    assert all(a["state"] == "stopped" and not a["essential"] for a in lazy.values())


# ---- core optional -------------------------------------------------------------------------------------
def test_unified_system_agent_overview_and_diagnosis(daemon):
    o = first_request(daemon, "UnifiedSystemAgent", "overview")
    assert o["profile"] == "full" and o["agents"] == 77 and o["lazy_running"] == ["UnifiedSystemAgent"]
    assert o["agents_by_state"] == {"ready": 25, "stopped": 52}
    assert o["health"]["score"] == 100 and o["health"]["critical"] == 0  # idle lazy agents are healthy
    assert o["host"]["cpus"] >= 1 and len(o["top_rss"]) == 3
    assert re.match(r"full: running, 25/77 agents ready \(1 lazy running\), health 100%, 0 critical alerts, "
                    r"\d+ MB free on the host$", o["summary"])
    d = daemon.call("UnifiedSystemAgent", "diagnose", {"agent": "MemoryClient"})
    assert (d["state"], d["verdict"], d["lazy"]) == ("ready", "healthy", False) and d["rss_mb"] > 5
    idle = daemon.call("UnifiedSystemAgent", "diagnose", {"agent": "Responder"})
    assert idle["verdict"] == "idle (lazy: starts on its next request)" and idle["pid"] is None
    assert error_code(daemon.call, "UnifiedSystemAgent", "diagnose", {"agent": "Nobody"}) == "bad_request"
    # its overview asked SystemDigitalTwin for host metrics (which pushed them to the hub)
    assert daemon.call("ObservabilityHub", "metrics", {"source": "SystemDigitalTwin"})["agents_running"] >= 17


def test_model_orchestrator_picks_the_first_local_model_and_loads_it(daemon):
    plan = first_request(daemon, "ModelOrchestrator", "plan", {"text": "Summarize this report for me"})
    assert plan["task"] == "summarize" and plan["intent"] is None
    assert [(c["model"], c["route"]) for c in plan["candidates"]] == [("summarizer", "local"), ("llm-7b", "remote")]
    assert plan["chosen"] == "summarizer"
    poem = daemon.call("ModelOrchestrator", "plan", "write a poem about sunsets")
    assert poem["task"] == "generate" and poem["chosen"] == "summarizer"  # llm-7b (4200 MB) routes remote
    assert poem["candidates"][0]["reason"].startswith("needs 4200 MB")
    q = daemon.call("ModelOrchestrator", "plan", {"text": "what is a circuit breaker?"})
    assert (q["task"], q["intent"], q["chosen"]) == ("embed", "question", "kb-embedder")  # by RC's intent
    run = daemon.call("ModelOrchestrator", "run", {"text": "give me a short summary of the logs"})
    assert run["loaded"]["model"] == "summarizer"
    assert pinned(daemon, "summarizer")["owner"] == "ModelManagerSuite"  # loaded at ModelManagerSuite
    daemon.call("VRAMOptimizerAgent", "optimize", {"target_mb": 0})
    assert pinned(daemon, "summarizer") is None


def test_goal_manager_splits_routes_and_keeps_goals_in_memory_client(daemon):
    goal = first_request(daemon, "GoalManager", "add", {
        "goal": "Check the system health, then summarize the alerts and remember the result", "priority": 1})
    assert [(s["text"], s["intent"], s["agent"]) for s in goal["steps"]] == [
        ("Check the system health", "health", "ObservabilityHub"),
        ("summarize the alerts", "health", "ObservabilityHub"),
        ("remember the result", "remember", "SessionMemoryAgent")]
    assert [s["model"] for s in goal["steps"]] == ["intent-small", "summarizer", "kb-embedder"]  # ModelOrchestrator
    later = daemon.call("GoalManager", "add", {"goal": "load the translator model", "priority": 4})
    assert daemon.call("GoalManager", "next")["text"] == "Check the system health"
    assert daemon.call("GoalManager", "complete", {"id": goal["id"], "step": 0}) == {
        "id": goal["id"], "progress": 0.333, "status": "open"}
    assert daemon.call("GoalManager", "next")["text"] == "summarize the alerts"
    stored = daemon.call("MemoryClient", "get", {"ns": "goals", "key": goal["id"]})
    assert stored["found"] and stored["value"]["steps"][0]["done"] is True
    daemon.call("sunsetd", "restart", {"agent": "GoalManager"}, timeout=20)  # nothing is lost
    for step in (1, 2):
        daemon.call("GoalManager", "complete", {"id": goal["id"], "step": step})
    listing = daemon.call("GoalManager", "list")["goals"]
    assert [(g["id"], g["status"], g["progress"]) for g in listing] == [(later["id"], "open", 0.0),
                                                                         (goal["id"], "done", 1.0)]
    assert daemon.call("GoalManager", "next")["id"] == later["id"]
    assert error_code(daemon.call, "GoalManager", "complete", {"id": "g9999", "step": 0}) == "bad_request"


@pytest.mark.parametrize("body, decision, issue", [
    ({"text": "how healthy is the system?"}, "allow", None),
    ({"text": "delete all my files"}, "confirm", "destructive: 'delete' needs confirmation"),
    ({"text": "delete all my files", "confirmed": True}, "allow", None),
    ({"text": "start and stop the recording"}, "deny", "contradictory: both 'start' and 'stop'"),
    ({"text": "xyzzy plugh"}, "deny", "not understood"),
    ({"text": "please remember"}, "deny", "nothing to remember"),
])
def test_intention_validator_decides(daemon, body, decision, issue):
    v = daemon.call("IntentionValidatorAgent", "validate", body)
    assert v["decision"] == decision
    assert v["issues"] == ([issue] if issue else [])


def test_intention_validator_checks_heavy_work_with_the_twin(daemon):
    v = daemon.call("IntentionValidatorAgent", "validate", {"text": "load the translator model"})
    assert v["decision"] == "allow" and v["intent"] == "models" and v["agent"] == "ModelManagerSuite"
    assert v["resources"]["fits"] is True and v["resources"]["mb"] == 512  # SystemDigitalTwin.can_fit


# ---- reasoning -----------------------------------------------------------------------------------------
def test_chain_of_thought_solves_step_by_step(daemon):
    problem = "Alice has 5 apples. She buys 3 more and gives away 2. How many apples does she have?"
    r = first_request(daemon, "ChainOfThoughtAgent", "solve", {"problem": problem})
    assert r["expression"] == "((5 + 3) - 2)" and r["answer"] == 6 and r["verified"] is True
    assert [s["text"] for s in r["steps"]] == ["5 + 3 = 8", "8 - 2 = 6"]
    r = daemon.call("ChainOfThoughtAgent", "solve", "What is 3 plus 4 times 2?")
    assert [s["text"] for s in r["steps"]] == ["4 * 2 = 8", "3 + 8 = 11"] and r["answer"] == 11
    r = daemon.call("ChainOfThoughtAgent", "solve", {"problem": "(1 + 2) / 4"})
    assert (r["answer"], r["fraction"]) == (0.75, "3/4")
    assert error_code(daemon.call, "ChainOfThoughtAgent", "solve", {"problem": "1 / (2 - 2)"}) == "bad_request"
    assert error_code(daemon.call, "ChainOfThoughtAgent", "solve", {"problem": "__import__('os')"}) == "bad_request"
    d = daemon.call("ChainOfThoughtAgent", "deduce", {
        "facts": ["it rains", "I am outside"], "goal": "I get wet",
        "rules": [{"if": ["it rains", "I am outside"], "then": "I get wet"},
                  {"if": ["I get wet"], "then": "I am cold"}]})
    assert d["proved"] is True and d["derived"] == ["i get wet", "i am cold"]
    assert d["given"] == ["i am outside", "it rains"]
    model = pinned(daemon, "cot-reasoner")  # admitted by the twin and pinned in the model budget
    assert model["owner"] == "ChainOfThoughtAgent" and model["mb"] == 2 and model["uses"] == 4


def test_tree_of_thought_finds_24_and_chain_of_thought_checks_it(daemon):
    cot_solves = daemon.call("ChainOfThoughtAgent", "stats")["counters"]["op.solve"]
    r = first_request(daemon, "GoTToTAgent", "search", {"numbers": [4, 7, 8, 8]})
    assert r["solved"] is True and r["target"] == 24
    assert eval(r["expression"], {"__builtins__": {}}) == 24  # noqa: S307 (digits and operators only)
    assert sorted(int(n) for n in re.findall(r"\d+", r["expression"])) == [4, 7, 8, 8]
    assert [t["depth"] for t in r["tree"]] == [1, 2, 3] and all(t["kept"] <= 5 for t in r["tree"])
    assert r["verification"]["answer"] == 24 and len(r["verification"]["steps"]) == 3
    assert daemon.call("ChainOfThoughtAgent", "stats")["counters"]["op.solve"] == cot_solves + 1
    hard = daemon.call("GoTToTAgent", "search", {"numbers": [3, 3, 8, 8]})  # needs fractions: 8 / (3 - 8/3)
    assert hard["solved"] is True and Fraction(hard["verification"]["answer"]) == 24
    assert hard["verification"]["steps"] == ["8 / 3 = 8/3", "3 - (8/3) = 1/3", "8 / (1/3) = 24"]
    none = daemon.call("GoTToTAgent", "search", {"numbers": [1, 1, 1, 1]})
    assert none["solved"] is False and none["expression"] is None and none["tree"][0]["kept"] == 0
    assert error_code(daemon.call, "GoTToTAgent", "search", {"numbers": [1]}) == "bad_request"


def test_cognitive_model_holds_revises_and_reasons_over_beliefs(daemon):
    told = first_request(daemon, "CognitiveModelAgent", "tell", {"belief": "Socrates is a man", "confidence": 0.9})
    assert told == {"belief": "socrates is a man", "accepted": True, "conflicts_with": None, "beliefs": 1}
    daemon.call("CognitiveModelAgent", "rule", {"if": ["socrates is a man"], "then": "socrates is mortal"})
    daemon.call("CognitiveModelAgent", "rule", {"if": ["socrates is mortal"], "then": "not socrates is a god"})
    yes = daemon.call("CognitiveModelAgent", "ask", {"query": "Socrates is mortal"})
    assert (yes["answer"], yes["confidence"], yes["because"]) == (True, 0.9, ["socrates is a man"])
    no = daemon.call("CognitiveModelAgent", "ask", "socrates is a god")  # the negation is proved
    assert no["answer"] is False and [p["derived"] for p in no["proof"]] == ["socrates is mortal",
                                                                               "not socrates is a god"]
    assert daemon.call("CognitiveModelAgent", "ask", "zeus is a god")["answer"] is None
    weak = daemon.call("CognitiveModelAgent", "tell", {"belief": "not socrates is a man", "confidence": 0.3})
    assert weak["accepted"] is False and weak["conflicts_with"] == "socrates is a man"
    strong = daemon.call("CognitiveModelAgent", "tell", {"belief": "not socrates is a man", "confidence": 0.95})
    assert strong["accepted"] is True and strong["beliefs"] == 1
    assert daemon.call("CognitiveModelAgent", "ask", "socrates is mortal")["answer"] is None
    assert daemon.call("SystemDigitalTwin", "series")["CognitiveModelAgent.beliefs"] == [1.0, 1.0, 1.0]


# ---- learning ------------------------------------------------------------------------------------------
INTENT_EXAMPLES = [
    ("book a table for two", "booking"), ("reserve a table tonight", "booking"), ("book a room for friday", "booking"),
    ("reserve two seats", "booking"), ("what is the weather today", "weather"), ("will it rain tomorrow", "weather"),
    ("is it sunny outside", "weather"), ("weather forecast for paris", "weather")]
EXAMPLES = [{"text": t, "label": label} for t, label in INTENT_EXAMPLES]


def test_learning_orchestration_places_trains_and_evaluates_jobs(daemon):
    job = first_request(daemon, "LearningOrchestrationService", "submit",
                        {"task": "intents", "examples": EXAMPLES, "base_model": "intent-small"})
    assert job["state"] == "queued" and job["route"]["route"] == "local"  # placed by ModelManagerSuite
    remote = daemon.call("LearningOrchestrationService", "submit",
                         {"task": "intents", "examples": EXAMPLES, "base_model": "gpt-x"})
    assert remote["state"] == "deferred" and remote["route"]["reason"] == "not in the local catalog"
    trained = daemon.call("LearningOrchestrationService", "run", {})["trained"]
    assert list(trained) == [job["job"]]  # the deferred job is not trained here
    assert trained[job["job"]] == {"train": 6, "held_out": 2, "accuracy": 1.0, "labels": ["booking", "weather"],
                                   "vocabulary": 13}
    p = daemon.call("LearningOrchestrationService", "predict", {"job": job["job"], "text": "book a table"})
    assert p["label"] == "booking" and p["confidence"] > 0.8
    assert daemon.call("ObservabilityHub", "metrics", {"source": "LearningOrchestrationService"})["jobs_done"] == 1


def test_learning_opportunity_detector_submits_a_job_from_corrections(daemon):
    for text, predicted, confidence, label in [("book a table", "booking", 0.9, None),
                                               ("rain tomorrow?", "booking", 0.55, "weather"),
                                               ("sunny today", "booking", 0.7, "weather"),
                                               ("forecast", "booking", 0.4, None),
                                               ("reserve seats", "weather", 0.6, "booking")]:
        body = {"task": "t1", "text": text, "predicted": predicted, "confidence": confidence, "label": label}
        if text == "book a table":
            assert first_request(daemon, "LearningOpportunityDetector", "observe", body)["kind"] == "ok"
        else:
            daemon.call("LearningOpportunityDetector", "observe", body)
    kept = daemon.call("MemoryClient", "list", {"ns": "interactions:t1"})  # kept in MemoryClient
    assert kept["total"] == 5 and kept["items"][1]["value"]["label"] == "weather"
    d = daemon.call("LearningOpportunityDetector", "detect", {"task": "t1"})
    assert d["opportunities"] == {"correction": 3, "low_confidence": 1} and d["rate"] == 0.8
    assert d["trend"] == "flat" and d["examples"] == 4  # the trend of the rate, from SystemDigitalTwin
    job = daemon.call("LearningOrchestrationService", "job", {"job": d["job"]})
    assert job["task"] == "t1" and job["state"] == "queued" and job["examples"] == 4


def test_learning_manager_traces_mastery_and_labels_with_the_coordinator(daemon):
    masteries = []
    for correct in (True, True, False, True, True):
        body = {"learner": "ann", "skill": "fractions", "correct": correct}
        r = first_request(daemon, "LearningManager", "record", body) if not masteries else \
            daemon.call("LearningManager", "record", body)
        masteries.append(r["mastery"])
    assert masteries == [0.6, 0.8903, 0.5781, 0.8814, 0.9753] and r["mastered"] is True
    daemon.call("LearningManager", "record", {"learner": "ann", "skill": "decimals", "correct": False})
    progress = daemon.call("LearningManager", "progress", {"learner": "ann"})
    assert [s["skill"] for s in progress["skills"]] == ["decimals", "fractions"]
    assert progress["mastered"] == ["fractions"]
    assert daemon.call("MemoryClient", "get", {"ns": "mastery", "key": "ann/fractions"})["value"]["attempts"] == 5
    labels = daemon.call("LearningManager", "label", {"texts": ["good morning", "xyzzy"]})["labels"]
    assert [(x["label"], x["margin"]) for x in labels] == [("greeting", 1.0), ("unknown", 0.0)]


def test_active_learning_monitor_queries_the_most_uncertain_texts(daemon):
    texts = ["hello", "how healthy is the system?", "xyzzy", "evict idle models to free up memory"]
    r = first_request(daemon, "ActiveLearningMonitor", "select", {"texts": texts, "k": 2})
    assert r["queries"] == ["how healthy is the system?", "xyzzy"]  # a tie between two intents; no intent at all
    assert {x["text"]: x["uncertainty"] for x in r["scored"]}["hello"] == 0.0
    assert daemon.call("LearningManager", "stats")["counters"]["labelled"] >= 6  # labelled by LearningManager
    for _ in range(2):
        daemon.call("ActiveLearningMonitor", "select", {"texts": ["hello", "good morning"], "k": 1})
    drift = daemon.call("ActiveLearningMonitor", "select", {"texts": ["xyzzy", "plugh"], "k": 1})
    assert drift["mean_uncertainty"] == 1.0
    status = daemon.call("ActiveLearningMonitor", "status")
    assert status["batches"] == 4 and status["drift"] is True and status["latest"] == 1.0
    assert daemon.call("SystemDigitalTwin", "series")["ActiveLearningMonitor.uncertainty"][-1] == 1.0


def test_self_training_pseudo_labels_and_pins_its_model(daemon):
    seeds = [EXAMPLES[0], EXAMPLES[1], EXAMPLES[4], EXAMPLES[5]]
    pool = [t for t, _ in INTENT_EXAMPLES[2:4] + INTENT_EXAMPLES[6:]] + ["book seats for the weather show"]
    r = first_request(daemon, "SelfTrainingOrchestrator", "train",
                      {"name": "intents", "labeled": seeds, "unlabeled": pool, "validation": EXAMPLES,
                       "threshold": 0.7})
    assert r["pseudo_labels"] == {"reserve two seats": "booking", "weather forecast for paris": "weather"}
    assert r["rounds"] == [{"round": 1, "added": 2, "remaining": 3}] and r["accuracy"] == 1.0
    model = pinned(daemon, "self-trained/intents")
    assert model["owner"] == "SelfTrainingOrchestrator" and model["mb"] == 1 and model["pinned"]
    p = daemon.call("SelfTrainingOrchestrator", "predict", {"name": "intents", "text": "reserve a table"})
    assert p["label"] == "booking"


def test_local_fine_tuner_adds_an_adapter_to_a_self_trained_model(daemon):
    food = [{"text": "order a pizza", "label": "food"}, {"text": "pizza delivery please", "label": "food"}]
    r = first_request(daemon, "LocalFineTunerAgent", "finetune",
                      {"base": "intents", "examples": food,
                       "eval": EXAMPLES + [{"text": "order pizza", "label": "food"}]})
    assert r["labels"] == ["booking", "food", "weather"]
    assert (r["accuracy_before"], r["accuracy_after"]) == (0.8889, 1.0)  # the base never saw "food"
    assert daemon.call("LocalFineTunerAgent", "predict", {"name": "intents+ft", "text": "pizza"})["label"] == "food"
    assert daemon.call("SelfTrainingOrchestrator", "models")["intents"]["labels"] == ["booking", "weather"]
    assert error_code(daemon.call, "LocalFineTunerAgent", "finetune",
                      {"base": "nope", "examples": food}) == "agent_error"


def test_learning_adjuster_tunes_the_threshold_and_reduces_the_rate_on_plateau(daemon):
    seeds = [EXAMPLES[0], EXAMPLES[4]]
    pool = [t for t, _ in INTENT_EXAMPLES[1:4] + INTENT_EXAMPLES[5:]]
    r = first_request(daemon, "LearningAdjusterAgent", "tune",
                      {"labeled": seeds, "unlabeled": pool, "validation": EXAMPLES, "thresholds": [0.55, 0.7, 0.95]},
                      timeout=30)
    assert [c["threshold"] for c in r["candidates"]] == [0.55, 0.7, 0.95]
    assert r["best"] == max(r["candidates"], key=lambda c: (c["accuracy"], c["threshold"]))
    assert daemon.call("SelfTrainingOrchestrator", "stats")["counters"]["op.train"] == 4  # three more runs
    assert pinned(daemon, "self-trained/tune-0.7") is None  # tuning runs are not kept
    down = daemon.call("LearningAdjusterAgent", "adjust", {"scores": [0.5, 0.7, 0.8, 0.81, 0.81, 0.812], "lr": 0.1})
    assert down == {"lr": 0.05, "reduced": True, "slope": 0.001, "reason": "slope 0.001 below 0.005"}
    up = daemon.call("LearningAdjusterAgent", "adjust", {"scores": [0.5, 0.6, 0.7], "lr": 0.1})
    assert (up["lr"], up["reduced"]) == (0.1, False)


# ---- emotion -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, emotion, cues", [
    ("I am so happy today!", "joy", ["happy"]),
    ("I'm not happy at all", "sadness", ["not happy"]),
    ("This is the worst, I HATE it!!", "anger", ["worst", "hate"]),
    ("I'm scared about my exam tomorrow", "fear", ["scared"]),
    ("Wow, that was unexpected", "surprise", ["wow", "unexpected"]),
    ("the meeting is at noon", "neutral", []),
])
def test_emotion_engine_reads_text(daemon, text, emotion, cues):
    e = daemon.call("EmotionEngine", "analyze", {"text": text}, timeout=20)
    assert (e["emotion"], e["cues"]) == (emotion, cues)
    assert -1 <= e["valence"] <= 1 and 0 <= e["arousal"] <= 1


def test_emotion_engine_fuses_text_and_voice(daemon):
    calm = daemon.call("EmotionEngine", "analyze", {"text": "the meeting is at noon"})
    loud = daemon.call("EmotionEngine", "analyze", {"text": "the meeting is at noon", "prosody": {"arousal": 1.0}})
    assert (calm["arousal"], loud["arousal"], loud["sources"]) == (0.3, 0.58, ["text", "voice"])
    assert daemon.call("EmotionEngine", "analyze", {"prosody": {"arousal": 0.9}})["emotion"] == "surprise"
    assert error_code(daemon.call, "EmotionEngine", "analyze", {}) == "bad_request"
    assert daemon.call("EmotionEngine", "info")["weights_mb"] == 8


def test_mood_tracker_follows_a_person_over_time(daemon):
    moods = []
    for text in ("I love this", "it's fine", "I am tired and sad", "everything failed, I'm miserable", "so lonely"):
        body = {"person": "ann", "text": text}
        r = first_request(daemon, "MoodTrackerAgent", "observe", body) if not moods else \
            daemon.call("MoodTrackerAgent", "observe", body)
        moods.append(r["mood"])
    assert moods == ["excited", "content", "neutral", "neutral", "down"]
    m = daemon.call("MoodTrackerAgent", "mood", {"person": "ann"})
    assert (m["mood"], m["trend"], m["observations"]) == ("down", "worsening", 5)  # trend: SystemDigitalTwin
    assert daemon.call("MoodTrackerAgent", "mood", {"person": "bob"})["mood"] == "unknown"


def test_human_awareness_tracks_presence_attention_and_distress(daemon):
    first_request(daemon, "HumanAwarenessAgent", "observe", {"person": "ann", "event": "arrived"})
    bob = daemon.call("HumanAwarenessAgent", "observe",
                      {"person": "bob", "event": "spoke", "text": "I'm so worried and stressed"})
    assert bob["emotion"] == "fear" and bob["valence"] == -0.6  # read by EmotionEngine
    daemon.call("HumanAwarenessAgent", "observe", {"person": "ann", "event": "spoke", "text": "hello there"})
    daemon.call("HumanAwarenessAgent", "observe", {"person": "cy", "event": "seen"})
    assert daemon.call("HumanAwarenessAgent", "scene") == {
        "present": ["ann", "bob", "cy"], "attention": "ann", "needs_attention": ["bob"], "clock": 4}
    daemon.call("HumanAwarenessAgent", "observe", {"person": "ann", "event": "left"})
    scene = daemon.call("HumanAwarenessAgent", "scene")
    assert scene["present"] == ["bob", "cy"] and scene["attention"] == "bob"
    assert error_code(daemon.call, "HumanAwarenessAgent", "observe", {"person": "x", "event": "flew"}) == "bad_request"


def test_tone_detector_measures_prosody(daemon):
    calm = first_request(daemon, "ToneDetector", "detect", {"pcm": glide(140, 142, 800, 0.05)})
    assert calm["tone"] == "subdued" and 138 <= calm["prosody"]["pitch_hz"] <= 146
    assert calm["prosody"]["voiced_ratio"] == 1.0 and -30 < calm["prosody"]["level_db"] < -28
    question = daemon.call("ToneDetector", "detect", {"pcm": glide(150, 300, 600, 0.1)})
    assert question["tone"] == "questioning" and question["prosody"]["pitch_slope_st_s"] > 6
    excited = daemon.call("ToneDetector", "detect", {"pcm": glide(330, 330, 800, 0.5, vibrato_st=4),
                                                     "text": "we won the match"})
    assert excited["tone"] == "excited" and excited["arousal"] > 0.7
    assert excited["emotion"] == "joy"  # the words, fused with the voice by EmotionEngine
    silent = daemon.call("ToneDetector", "detect", {"pcm": bytes(16000)})
    assert silent["tone"] == "silent" and silent["prosody"]["pitch_hz"] is None
    assert error_code(daemon.call, "ToneDetector", "detect", {"pcm": b"\x00"}) == "bad_request"


def test_voice_profiling_enrols_and_identifies_speakers(daemon):
    bob = first_request(daemon, "VoiceProfilingAgent", "enroll", {"name": "bob", "pcm": glide(120, 130, 600, 0.1)})
    assert bob["samples"] == 1 and bob["speakers"] == 1
    daemon.call("VoiceProfilingAgent", "enroll", {"name": "alice", "pcm": glide(220, 240, 600, 0.1)})
    who = daemon.call("VoiceProfilingAgent", "identify", {"pcm": glide(122, 128, 500, 0.12)})
    assert who["speaker"] == "bob" and who["distance"] < 0.1 and who["state"] == "neutral"
    assert daemon.call("VoiceProfilingAgent", "identify", {"pcm": glide(225, 235, 500, 0.08)})["speaker"] == "alice"
    stranger = daemon.call("VoiceProfilingAgent", "identify", {"pcm": glide(400, 410, 500, 0.1)})
    assert stranger["speaker"] is None and stranger["nearest"] == "alice"
    assert daemon.call("EmotionEngine", "stats")["counters"]["op.analyze"] >= 3  # each identify asked for the state


def test_empathy_agent_answers_the_feeling_and_speaks(daemon):
    r = first_request(daemon, "EmpathyAgent", "respond", {"text": "I'm worried about my mother"})
    assert r["reply"] == "That sounds worrying about your mother. Let's take it one step at a time."
    assert r["emotion"] == "fear" and r["voice"] == {"rate": 0.9, "pitch_st": 0}
    assert daemon.call("EmpathyAgent", "respond", "We won the match!")["reply"] == "I'm really happy for you!"
    spoken = daemon.call("EmpathyAgent", "respond", {"text": "I feel sad and lonely", "speak": True})
    assert spoken["reply"] == "That sounds hard. I'm here if you want to talk."
    play = spoken["playback"]
    assert play["phrases"] == ["that sounds hard", "i'm here if you want to talk"]
    chunks = []
    while True:  # the playback is StreamingTTSAgent's: pull it, and hear it back with STTService
        n = daemon.call("StreamingTTSAgent", "next", {"id": play["id"]})
        chunks.append(n["pcm"])
        if n["last"]:
            break
    heard = daemon.call("STTService", "transcribe", {"pcm": b"".join(chunks)})["text"]
    assert heard == "that sounds hard i'm here if you want to talk"


def test_emotion_synthesis_plans_expressive_speech(daemon):
    q = first_request(daemon, "EmotionSynthesisAgent", "synthesize",
                      {"text": "are you happy with it?", "emotion": "joy", "intensity": 0.5})
    assert q["prosody"] == {"rate": 1.05, "pitch_st": 1.0, "volume_db": 1.0, "range": 1.2}
    assert q["question"] is True and q["intent"] == "question"  # RequestCoordinator's intent
    assert q["contour_st"] == [1.0, 0.4, 2.2, -0.8, 5.8]  # emphasis on "happy", the final rise of a question
    assert q["ssml"] == ('<speak><prosody rate="105%" pitch="+1.0st" volume="+1.0dB">are you happy with it?'
                         '</prosody></speak>')
    sad = daemon.call("EmotionSynthesisAgent", "synthesize", {"text": "I miss you", "emotion": "sadness"})
    assert sad["prosody"]["rate"] == 0.85 and sad["question"] is False and sad["contour_st"][-1] < 0
    assert pinned(daemon, "emotion-prosody")["uses"] == 2
    assert error_code(daemon.call, "EmotionSynthesisAgent", "synthesize", {"text": "x", "emotion": "ennui"}) == \
        "bad_request"


# ---- every agent of the module -------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(AGENTS))
def test_ping_info_and_stats(daemon, name):
    assert daemon.call(name, "ping", timeout=20) == "pong"
    info = daemon.call(name, "info")
    assert info["name"] == name and info["class"] == AGENTS[name] and info["doc"]
    assert info["capabilities"] and {"ping", "info", "stats"} <= set(info["ops"])
    assert daemon.call(name, "stats")["counters"]["op.stats"] >= 1
    assert daemon.call("ServiceRegistry", "list")["agents"][name]["capabilities"] == info["capabilities"]
    assert daemon.agent(name)["state"] == "ready" and daemon.agent(name)["restarts"] == 0


def test_no_tracebacks_and_health_still_full(daemon):
    assert "Traceback" not in daemon.log()
    health = daemon.call("ObservabilityHub", "health")
    assert health["score"] == 100 and not [a for a in health["alerts"] if a["level"] == "critical"]
