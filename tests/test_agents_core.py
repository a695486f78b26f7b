"""The core profile through a real daemon: all 16 agents ready, and every agent doing its job, with the
calls to the agents it depends on going through sunsetd.

One daemon serves the whole module (starting 16 agents takes seconds). Tests that change shared state
(model loads, a stopped agent) restore it themselves; the test that stops and pre-warms an agent runs last.
"""
from __future__ import annotations

import re

import pytest

from conftest import REPO, error_code, module_daemon, model_in_budget as model

pytestmark = pytest.mark.slow

CORE = REPO / "profiles" / "core.yaml"
AGENTS = {
    "ServiceRegistry": "agents.infrastructure:ServiceRegistry",
    "ObservabilityHub": "agents.infrastructure:ObservabilityHub",
    "SystemDigitalTwin": "agents.infrastructure:SystemDigitalTwin",
    "ModelManagerSuite": "agents.coordination:ModelManagerSuite",
    "VRAMOptimizerAgent": "agents.coordination:VRAMOptimizerAgent",
    "RequestCoordinator": "agents.coordination:RequestCoordinator",
    "LazyLoader": "agents.coordination:LazyLoader",
    "MemoryClient": "agents.memory:MemoryClient",
    "KnowledgeBase": "agents.memory:KnowledgeBase",
    "SessionMemoryAgent": "agents.memory:SessionMemoryAgent",
    "AudioCapture": "agents.speech:AudioCapture",
    "FusedAudioPreprocessor": "agents.speech:FusedAudioPreprocessor",
    "STTService": "agents.speech:STTService",
    "StreamingSpeechRecognition": "agents.speech:StreamingSpeechRecognition",
    "TTSService": "agents.speech:TTSService",
    "StreamingTTSAgent": "agents.speech:StreamingTTSAgent",
}
STT_MODEL, TTS_MODEL = "stt-tone-decoder", "tts-tone-voice"


@pytest.fixture(scope="module")
def core():
    """One core daemon for the module, on its own short runtime directory; at the end it must stop with
    exit code 0 and leave no process of its own."""
    with module_daemon(CORE) as daemon:
        yield daemon


def pull_playback(core, playback_id: str) -> tuple[bytes, list[int]]:
    chunks, seqs = [], []
    while True:
        n = core.call("StreamingTTSAgent", "next", {"id": playback_id})
        chunks.append(n["pcm"])
        seqs.append(n["seq"])
        if n["last"]:
            return b"".join(chunks), seqs


# ---- the profile ---------------------------------------------------------------------------------------
def test_all_sixteen_ready_in_dependency_order(core):
    status = core.status()
    assert status["profile"] == "core" and status["state"] == "running"
    assert {a["name"] for a in status["agents"]} == set(AGENTS)
    assert all(a["state"] == "ready" and a["essential"] and not a["lazy"] for a in status["agents"])
    assert status["counts"]["essential_ready"] == 16
    log = core.log()
    assert re.search(r'agent=sunsetd event=ready msg="all 16 essential agents ready" startup_ms=\d+', log)
    # the 7 levels: the deepest agents start only after the chain below them is ready
    assert log.index('agent=ServiceRegistry event=state msg="starting -> ready"') < log.index("agent=ObservabilityHub event=spawn")
    assert log.index('agent=VRAMOptimizerAgent event=state msg="starting -> ready"') < log.index("agent=RequestCoordinator event=spawn")
    assert log.index('agent=RequestCoordinator event=state msg="starting -> ready"') < log.index("agent=LazyLoader event=spawn")
    assert "Traceback" not in log


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_ping_info_and_stats(core, name):
    assert core.call(name, "ping") == "pong"
    info = core.call(name, "info")
    assert info["name"] == name and info["class"] == AGENTS[name]
    assert info["capabilities"] and {"ping", "info", "stats"} <= set(info["ops"])
    assert info["doc"]
    stats = core.call(name, "stats")
    assert stats["agent"] == name and stats["counters"]["op.stats"] >= 1
    if name != "ServiceRegistry":  # ObservabilityHub depends on the registry, so it never reports up to it
        assert core.call("ObservabilityHub", "metrics", {"source": name})["op.stats"] >= 1


# ---- infrastructure ------------------------------------------------------------------------------------
def test_service_registry_knows_every_agent_by_capability(core):
    listing = core.call("ServiceRegistry", "list")["agents"]
    assert set(listing) == set(AGENTS)  # each registered itself at setup, through sunsetd
    assert listing["KnowledgeBase"]["capabilities"] == ["knowledge.answer", "knowledge.facts", "knowledge.search"]
    assert "answer" in listing["KnowledgeBase"]["ops"]
    assert core.call("ServiceRegistry", "lookup", {"capability": "speech.tts"})["agents"] == ["TTSService"]
    memory = core.call("ServiceRegistry", "lookup", {"capability": "memory.*"})
    assert memory["matches"] == {"MemoryClient": ["memory.search", "memory.store"],
                                 "SessionMemoryAgent": ["memory.context", "memory.sessions"]}
    assert core.call("ServiceRegistry", "lookup", {"capability": "telepathy"})["agents"] == []
    assert core.call("ServiceRegistry", "capabilities")["models.route"] == ["ModelManagerSuite"]
    assert error_code(core.call, "ServiceRegistry", "lookup", {}) == "bad_request"
    reg = core.call("ServiceRegistry", "register", {"agent": "Probe", "capabilities": ["probe.x"], "ops": ["x"]})
    assert reg == {"agent": "Probe", "capabilities": ["probe.x"], "registrations": 1}
    assert core.call("ServiceRegistry", "lookup", {"capability": "probe.x"})["agents"] == ["Probe"]
    assert core.call("ServiceRegistry", "deregister", {"agent": "Probe"}) == {"agent": "Probe", "removed": True}


def test_observability_hub_scores_the_running_profile(core):
    health = core.call("ObservabilityHub", "health")  # from sunsetd's status and the registry
    assert health["profile"] == "core" and health["score"] == 100
    assert health["states"] == {"ready": 16} and health["agents"] == 16
    assert not [a for a in health["alerts"] if a["level"] == "critical"]


def test_observability_hub_score_and_alerts_of_a_given_snapshot(core):
    snapshot = {"state": "degraded", "agents": [
        {"name": "A", "state": "ready", "essential": True, "lazy": False, "restarts": 2},
        {"name": "B", "state": "failed", "essential": True, "lazy": False, "restarts": 0, "reason": "crash loop"},
        {"name": "C", "state": "stopped", "essential": False, "lazy": True, "restarts": 0},
        {"name": "D", "state": "ready", "essential": False, "lazy": True, "restarts": 0}]}
    health = core.call("ObservabilityHub", "health", {"status": snapshot, "registered": ["A", "C"]})
    # (3 * 0.8 + 3 * 0 + 1 * 1.0 + 1 * 1.0) / 8 = 55%
    assert health["score"] == 55 and health["status"] == "critical"
    assert health["alerts"] == [
        {"agent": "B", "level": "critical", "reason": "failed: crash loop"},
        {"agent": "sunsetd", "level": "critical", "reason": "daemon degraded"},
        {"agent": "A", "level": "warning", "reason": "restarted 2 times"},
        {"agent": "D", "level": "warning", "reason": "not registered with ServiceRegistry"},
    ]
    assert error_code(core.call, "ObservabilityHub", "health", {"status": "bad"}) == "bad_request"


def test_system_digital_twin_metrics_admission_and_forecasts(core):
    metrics = core.call("SystemDigitalTwin", "metrics")  # /proc, plus sunsetd's status for the agents
    assert metrics["agents_running"] == 16 and metrics["cpus"] >= 1
    assert 0 < metrics["mem_available_mb"] <= metrics["mem_total_mb"]
    assert metrics["agents_rss_mb"] > 16 * 10
    hub = core.call("ObservabilityHub", "metrics", {"source": "SystemDigitalTwin"})
    assert hub["mem_total_mb"] == metrics["mem_total_mb"] and hub["agents_running"] == 16  # pushed to the hub
    assert core.call("SystemDigitalTwin", "can_fit", {"mb": 1})["fits"] is True
    assert core.call("SystemDigitalTwin", "can_fit", {"mb": 10 ** 9})["fits"] is False
    p = core.call("SystemDigitalTwin", "predict", {"series": [10, 12, 14, 16], "steps": 2, "limit": 30})
    assert p == {"n": 4, "slope": 2.0, "forecast": [18.0, 20.0], "trend": "rising", "steps_to_limit": 7}
    assert core.call("SystemDigitalTwin", "predict", {"series": [5, 5, 5]})["trend"] == "flat"
    for value in (3, 6):
        core.call("SystemDigitalTwin", "observe", {"metric": "test.fill", "value": value})
    assert core.call("SystemDigitalTwin", "forecast", {"metric": "test.fill", "steps": 2})["forecast"] == [9.0, 12.0]
    assert error_code(core.call, "SystemDigitalTwin", "predict", {"series": []}) == "bad_request"
    assert error_code(core.call, "SystemDigitalTwin", "forecast", {"metric": "nope"}) == "bad_request"


# ---- coordination --------------------------------------------------------------------------------------
def test_model_manager_budget_lru_eviction_and_routes(core):
    core.call("VRAMOptimizerAgent", "optimize", {"target_mb": 0})  # start from the pinned models only
    status = core.call("ModelManagerSuite", "status")
    assert status["budget_mb"] == 64 and status["used_mb"] == status["pinned_mb"] == 20
    assert model(core, STT_MODEL)["owner"] == "STTService" and model(core, TTS_MODEL)["pinned"]
    admissions = core.call("SystemDigitalTwin", "stats")["counters"].get("admissions", 0)

    assert core.call("ModelManagerSuite", "route", {"model": "llm-7b"})["route"] == "remote"
    assert core.call("ModelManagerSuite", "route", {"model": "gpt-x"}) == {
        "model": "gpt-x", "route": "remote", "reason": "not in the local catalog"}
    assert core.call("ModelManagerSuite", "route", {"model": "translator"})["route"] == "local"
    for name, used in (("intent-small", 24), ("kb-embedder", 30), ("summarizer", 42)):
        r = core.call("ModelManagerSuite", "load", {"model": name})
        assert (r["loaded"], r["already"], r["evicted"], r["used_mb"]) == (True, False, [], used)
    assert core.call("ModelManagerSuite", "route", {"model": "translator"})["would_evict"] == ["intent-small"]
    r = core.call("ModelManagerSuite", "load", {"model": "translator"})  # 42 + 24 > 64: the LRU model goes
    assert r["evicted"] == ["intent-small"] and r["used_mb"] == 62
    assert core.call("ModelManagerSuite", "load", {"model": "translator"})["already"] is True
    # each load was admitted by SystemDigitalTwin, and the usage pushed to ObservabilityHub
    assert core.call("SystemDigitalTwin", "stats")["counters"]["admissions"] == admissions + 4
    assert core.call("ObservabilityHub", "metrics", {"source": "ModelManagerSuite"})["used_mb"] == 62

    assert error_code(core.call, "ModelManagerSuite", "load", {"model": "llm-7b"}) == "agent_error"
    assert error_code(core.call, "ModelManagerSuite", "load", {"model": "gpt-x"}) == "bad_request"
    assert error_code(core.call, "ModelManagerSuite", "unload", {"model": STT_MODEL}) == "agent_error"
    core.call("VRAMOptimizerAgent", "optimize", {"target_mb": 0})
    assert core.call("ModelManagerSuite", "status")["used_mb"] == 20


def test_vram_optimizer_plans_and_evicts_idle_and_lru_models(core):
    core.call("VRAMOptimizerAgent", "optimize", {"target_mb": 0})
    for name in ("kb-embedder", "summarizer", "translator"):
        core.call("ModelManagerSuite", "load", {"model": name})
    core.call("ModelManagerSuite", "use", {"model": "summarizer"})  # idle ticks: kb 3, translator 1, summarizer 0
    plan = core.call("VRAMOptimizerAgent", "plan", {"target_mb": 50})
    assert plan["evict"] == ["kb-embedder", "translator"] and plan["used_mb"] == 62 and plan["used_mb_after"] == 32
    assert core.call("ModelManagerSuite", "status")["used_mb"] == 62  # a plan evicts nothing
    high_water = core.call("VRAMOptimizerAgent", "plan", {})  # by default: down to 90% of the budget
    assert high_water["evict"] == ["kb-embedder"] and high_water["target_mb"] == 57.6

    done = core.call("VRAMOptimizerAgent", "optimize", {"max_idle_ticks": 1})
    assert done["evicted"] == ["kb-embedder"] and done["freed_mb"] == 6 and done["used_mb_after"] == 56
    assert model(core, "kb-embedder") is None and model(core, "translator") is not None
    events = core.call("ObservabilityHub", "events", {"source": "VRAMOptimizerAgent"})
    assert events[-1]["message"] == "optimize: evicted kb-embedder (6 MB)"
    done = core.call("VRAMOptimizerAgent", "optimize", {"target_mb": 0})
    assert done["evicted"] == ["translator", "summarizer"] and done["used_mb_after"] == 20


@pytest.mark.parametrize("text, intent, agent", [
    ("how healthy is the system?", "health", "ObservabilityHub"),
    ("how much cpu and ram is the host using", "resources", "SystemDigitalTwin"),
    ("evict idle models to free up memory", "optimize", "VRAMOptimizerAgent"),
    ("load the translator model", "models", "ModelManagerSuite"),
    ("say it out loud", "speak", "StreamingTTSAgent"),
    ("please transcribe this recording", "transcribe", "StreamingSpeechRecognition"),
    ("remember that the meeting moved to 3", "remember", "SessionMemoryAgent"),
    ("what is a circuit breaker?", "question", "KnowledgeBase"),
    ("good morning", "greeting", "SessionMemoryAgent"),
    ("xyzzy", "unknown", None),
])
def test_request_coordinator_classifies(core, text, intent, agent):
    c = core.call("RequestCoordinator", "classify", {"text": text})
    assert (c["intent"], c["agent"]) == (intent, agent)
    assert 0 <= c["confidence"] <= 1


def test_request_coordinator_forwards_to_its_specialists(core):
    c = core.call("RequestCoordinator", "classify", "remember that the meeting moved to 3 in 'Room B'")
    assert c["entities"] == {"numbers": [3], "quoted": ["Room B"]}
    health = core.call("RequestCoordinator", "route", {"text": "is everything healthy?"})
    assert health["forwarded"] and health["route"] == {"agent": "ObservabilityHub", "op": "health"}
    assert health["result"]["profile"] == "core" and "score" in health["result"]
    host = core.call("RequestCoordinator", "route", {"text": "how much cpu and ram is the host using"})
    assert host["forwarded"] and host["result"]["agents_running"] == 16
    core.call("VRAMOptimizerAgent", "optimize", {"target_mb": 0})
    core.call("ModelManagerSuite", "load", {"model": "summarizer"})
    freed = core.call("RequestCoordinator", "route", {"text": "evict idle models", "body": {"target_mb": 20}})
    assert freed["forwarded"] and freed["result"]["evicted"] == ["summarizer"]
    question = core.call("RequestCoordinator", "route", {"text": "what is a circuit breaker?"})
    assert question["forwarded"] is False and question["agent"] == "KnowledgeBase"
    assert "specialist is KnowledgeBase" in question["reason"]
    counters = core.call("RequestCoordinator", "stats")["counters"]
    assert counters["forwarded"] >= 3 and counters["intent.health"] >= 1


def test_lazy_loader_predicts_by_recency_weighted_frequency(core):
    core.call("LazyLoader", "observe", {"agents": ["KnowledgeBase", "KnowledgeBase", "SessionMemoryAgent"]})
    core.call("LazyLoader", "observe", {"agent": "TTSService"})
    p = core.call("LazyLoader", "predict", {"k": 3})  # decay 0.8: KB .64 + .512, TTS 1, SMA .8
    assert p["predictions"] == [{"agent": "KnowledgeBase", "score": 1.152}, {"agent": "TTSService", "score": 1.0},
                                {"agent": "SessionMemoryAgent", "score": 0.8}]
    hinted = core.call("LazyLoader", "predict", {"k": 2, "text": "please transcribe this recording"})
    assert hinted["intent"] == "transcribe" and hinted["hint"] == "StreamingSpeechRecognition"  # from RC
    assert [x["agent"] for x in hinted["predictions"]] == ["StreamingSpeechRecognition", "KnowledgeBase"]
    warm = core.call("LazyLoader", "prewarm", {"capability": "speech.tts", "agents": ["NoSuchAgent"]})
    assert warm == {"targets": ["NoSuchAgent", "TTSService"],  # TTSService found in ServiceRegistry
                    "outcome": {"NoSuchAgent": "unknown", "TTSService": "ready"}}
    assert error_code(core.call, "LazyLoader", "prewarm", {}) == "bad_request"


# ---- memory --------------------------------------------------------------------------------------------
def test_memory_client_store_and_usage_forecast(core):
    mc = lambda op, body: core.call("MemoryClient", op, body)  # noqa: E731
    assert mc("put", {"ns": "t", "key": "a", "value": {"n": 1, "tags": ["x"]}})["created"] is True
    assert mc("put", {"ns": "t", "key": "a", "value": {"n": 2}})["created"] is False
    assert mc("get", {"ns": "t", "key": "a"}) == {"ns": "t", "key": "a", "found": True, "value": {"n": 2}}
    assert mc("get", {"ns": "t", "key": "zz"})["found"] is False
    assert [mc("append", {"ns": "log", "value": f"line {i}"})["key"] for i in (1, 2, 3)] == \
        ["00000001", "00000002", "00000003"]
    listing = mc("list", {"ns": "log", "last": 2})
    assert listing["total"] == 3 and [i["value"] for i in listing["items"]] == ["line 2", "line 3"]
    mc("put", {"ns": "t", "key": "b", "value": "The Quick brown fox"})
    hits = mc("search", {"text": "quick FOX", "ns": "t"})["hits"]
    assert hits == [{"ns": "t", "key": "b", "value": "The Quick brown fox"}]
    assert mc("delete", {"ns": "t", "key": "a"})["deleted"] is True
    assert mc("namespaces", None)["log"] == 3
    assert mc("clear", {"ns": "log"})["deleted"] == 3
    assert error_code(core.call, "MemoryClient", "put", {"ns": "t", "key": "c"}) == "bad_request"
    # usage figures are recorded and forecast by SystemDigitalTwin, and pushed to ObservabilityHub
    for rows in (2, 4, 6):
        assert mc("put_many", {"ns": "grow", "items": {f"{rows}-{j}": j for j in range(2)}})["created"] == 2
        usage = mc("usage", {"ns": "grow"})
    assert (usage["rows"], usage["rows_next"], usage["trend"], usage["samples"]) == (6, 8.0, "rising", 3)
    assert core.call("ObservabilityHub", "metrics", {"source": "MemoryClient"})["rows.grow"] == 6


def test_knowledge_base_ranks_answers_and_keeps_facts_in_memory_client(core):
    assert core.call("KnowledgeBase", "count")["facts"] >= 4  # seeded from the profile into MemoryClient
    a = core.call("KnowledgeBase", "answer", {"question": "How many agents does the core profile run?"})
    assert a["answer"] == "The core profile runs sixteen essential agents."
    added = core.call("KnowledgeBase", "add", {"fact": "The tone code gives each letter its own frequency."})
    assert added["added"] is True
    again = core.call("KnowledgeBase", "add", {"fact": "the tone code  gives each letter its own frequency."})
    assert again == {"id": added["id"], "added": False, "facts": added["facts"]}
    stored = core.call("MemoryClient", "get", {"ns": "kb", "key": added["id"]})
    assert stored["value"]["fact"] == "The tone code gives each letter its own frequency."
    hits = core.call("KnowledgeBase", "search", {"query": "hung heartbeats", "k": 2})["results"]
    assert hits[0]["fact"].startswith("An agent that misses three heartbeats") and hits[0]["score"] > 0
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert core.call("KnowledgeBase", "answer", "zebra giraffe")["answer"] is None
    # a restarted KnowledgeBase rebuilds its index from MemoryClient
    facts = core.call("KnowledgeBase", "count")["facts"]
    core.call("sunsetd", "restart", {"agent": "KnowledgeBase"}, timeout=20)
    assert core.call("KnowledgeBase", "count")["facts"] == facts
    assert core.call("KnowledgeBase", "answer", "which frequency does each letter get")["id"] == added["id"]
    assert core.call("KnowledgeBase", "remove", {"id": added["id"]})["removed"] is True
    assert core.call("MemoryClient", "get", {"ns": "kb", "key": added["id"]})["found"] is False


def test_session_memory_tags_turns_with_intents_and_gives_context(core):
    sm = lambda op, body: core.call("SessionMemoryAgent", op, body)  # noqa: E731
    sm("clear", {"session": "s1"})
    turns = [sm("add_turn", {"session": "s1", "text": t}) for t in
             ("good morning", "what is the weather in Paris?", "remember that Paris is sunny")]
    assert [t["intent"] for t in turns] == ["greeting", "question", "remember"]  # classified by RC
    assert [t["turn"] for t in turns] == [1, 2, 3]
    sm("add_turn", {"session": "s1", "text": "Paris is sunny today.", "role": "assistant"})
    stored = core.call("MemoryClient", "list", {"ns": "session:s1"})  # kept in MemoryClient
    assert stored["total"] == 4 and stored["items"][3]["value"]["role"] == "assistant"
    history = sm("history", {"session": "s1", "last": 2})
    assert history["total"] == 4 and [t["text"] for t in history["turns"]] == [
        "remember that Paris is sunny", "Paris is sunny today."]
    ctx = sm("context", {"session": "s1", "k": 1})
    assert ctx["intents"] == {"greeting": 1, "question": 1, "remember": 1}
    assert ctx["topics"] == ["paris", "good", "morning", "remember", "sunny"]
    assert ctx["total"] == 4 and [t["role"] for t in ctx["turns"]] == ["assistant"]
    assert ctx["summary"] == "4 turns; mostly greeting; topics: paris, good, morning, remember, sunny"
    assert sm("clear", {"session": "s1"})["deleted"] == 4
    assert sm("context", {"session": "s1"})["summary"] == "empty session"


# ---- speech --------------------------------------------------------------------------------------------
def test_audio_capture_frames_and_overflow_alert(core):
    r = core.call("AudioCapture", "capture", {"stream": "cap", "segments": [{"kind": "tone", "ms": 110, "hz": 440}]})
    assert (r["frames_added"], r["buffered"], r["samples"]) == (5, 5, 1760)  # 10 ms wait for the next frame
    got = core.call("AudioCapture", "read", {"stream": "cap", "max_frames": 3})
    assert (got["frames"], got["first_frame"], got["remaining"], len(got["pcm"])) == (3, 0, 2, 3 * 640)
    core.call("AudioCapture", "push", {"stream": "cap", "pcm": bytes(320)})  # + 10 ms: one more whole frame
    got = core.call("AudioCapture", "read", {"stream": "cap"})
    assert (got["frames"], got["first_frame"], got["remaining"]) == (3, 3, 0)
    assert error_code(core.call, "AudioCapture", "push", {"stream": "cap", "pcm": b"\x00"}) == "bad_request"
    assert error_code(core.call, "AudioCapture", "push", {"stream": "cap", "pcm": b"", "rate": 8000}) == "bad_request"
    # a full buffer drops its oldest frames, and ObservabilityHub alerts on it
    core.call("AudioCapture", "open", {"stream": "small", "max_ms": 100})
    r = core.call("AudioCapture", "capture", {"stream": "small", "segments": [{"kind": "silence", "ms": 200}]})
    assert (r["buffered"], r["dropped"]) == (5, 5)
    assert core.call("AudioCapture", "read", {"stream": "small"})["first_frame"] == 5
    assert core.call("ObservabilityHub", "metrics", {"source": "AudioCapture"})["dropped_frames"] >= 5
    alerts = core.call("ObservabilityHub", "alerts")
    assert any(a["agent"] == "AudioCapture" and a["reason"].startswith("dropped_frames=") for a in alerts)


def test_preprocessor_gates_noise_and_marks_voice(core):
    core.call("AudioCapture", "capture", {"stream": "fap", "noise_amp": 0.005, "seed": 7, "segments": [
        {"kind": "tone", "ms": 200, "hz": 1000}, {"kind": "silence", "ms": 200},
        {"kind": "tone", "ms": 100, "hz": 700}]})
    out = core.call("FusedAudioPreprocessor", "process", {"stream": "fap"})  # reads from AudioCapture
    assert out["frames"] == 25 and out["voiced"] == 17
    assert out["segments"] == [[0, 12], [20, 25]]  # voice, held 2 frames (hangover), voice
    assert out["mask"] == [1] * 12 + [0] * 8 + [1] * 5
    assert -53 < out["noise_floor_db"] < -48
    frame = 640
    assert out["pcm"][12 * frame:20 * frame] == bytes(8 * frame)  # the gate zeroed the noise
    assert out["pcm"][:frame] != bytes(frame)
    assert core.call("FusedAudioPreprocessor", "process", {"stream": "fap"})["frames"] == 0


def test_tts_synthesizes_the_tone_code_and_counts_model_use(core):
    uses = model(core, TTS_MODEL)["uses"]
    r = core.call("TTSService", "synthesize", {"text": "Hello, World 42!"})
    assert r["text"] == "hello world 42" and r["rate"] == 16000
    assert r["duration_ms"] == 12 * 50 + 2 * 50 and r["samples"] == 700 * 16 and len(r["pcm"]) == 2 * r["samples"]
    assert core.call("TTSService", "synthesize", "hello world 42")["pcm"] == r["pcm"]  # deterministic
    assert model(core, TTS_MODEL)["uses"] == uses + 2  # each synthesis is a use in ModelManagerSuite
    assert core.call("TTSService", "alphabet")["a"] == 400.0
    assert error_code(core.call, "TTSService", "synthesize", {"text": "!!!"}) == "bad_request"
    assert error_code(core.call, "TTSService", "synthesize", {"text": "la " * 200}) == "bad_request"  # over max_chars


def test_stt_transcribes_what_tts_says(core):
    uses = model(core, STT_MODEL)["uses"]
    for text in ("hello world", "call 911 at 5 o'clock", "the quick brown fox jumps over the lazy dog"):
        pcm = core.call("TTSService", "synthesize", {"text": text})["pcm"]
        out = core.call("STTService", "transcribe", {"pcm": bytes(2 * 37) + pcm})  # off the 5 ms grid
        assert out["text"] == text and out["confidence"] > 0.9
    assert model(core, STT_MODEL)["uses"] == uses + 3
    assert core.call("STTService", "transcribe", {"pcm": bytes(3200)})["text"] == ""  # silence
    assert error_code(core.call, "STTService", "transcribe", {"pcm": b"\x01\x02\x03"}) == "bad_request"


def test_streaming_recognition_transcribes_utterances_and_spots_the_wake_word(core):
    for text in ("Hey Sunset, open the door!", "good morning"):
        pcm = core.call("TTSService", "synthesize", {"text": text, "pad_ms": 400})["pcm"]
        core.call("AudioCapture", "push", {"stream": "mic", "pcm": pcm})
    out = core.call("StreamingSpeechRecognition", "listen", {"stream": "mic"})  # FAP -> AudioCapture, then STT
    assert [(f["text"], f["wake"], f["command"]) for f in out["final"]] == [
        ("hey sunset open the door", True, "open the door"), ("good morning", False, None)]
    assert out["speaking"] is False
    # an utterance still going on is held until its silence, or a flush
    pcm = core.call("TTSService", "synthesize", {"text": "sunset stop"})["pcm"]
    core.call("AudioCapture", "push", {"stream": "mic", "pcm": pcm})
    out = core.call("StreamingSpeechRecognition", "listen", {"stream": "mic"})
    assert out["final"] == [] and out["speaking"] is True
    flushed = core.call("StreamingSpeechRecognition", "flush", {"stream": "mic"})["final"]
    assert [(f["text"], f["wake_word"], f["command"]) for f in flushed] == [("sunset stop", "sunset", "stop")]


def test_streaming_tts_streams_chunks_and_caches_phrases(core):
    first = core.call("StreamingTTSAgent", "speak", {"text": "Good evening, all systems nominal.", "chunk_ms": 250})
    assert first["phrases"] == ["good evening", "all systems nominal"]
    assert (first["cache_hits"], first["cache_misses"]) == (0, 2)  # both synthesized by TTSService
    audio, seqs = pull_playback(core, first["id"])
    assert seqs == list(range(first["chunks"])) and len(audio) == first["duration_ms"] * 32
    assert core.call("STTService", "transcribe", {"pcm": audio})["text"] == "good evening all systems nominal"
    again = core.call("StreamingTTSAgent", "speak", {"text": "good evening! all systems nominal", "chunk_ms": 250})
    assert (again["cache_hits"], again["cache_misses"]) == (2, 0)
    assert pull_playback(core, again["id"])[0] == audio
    assert error_code(core.call, "StreamingTTSAgent", "next", {"id": first["id"]}) == "bad_request"  # finished
    cache = core.call("StreamingTTSAgent", "cache")
    assert cache["entries"] >= 2 and cache["hits"] >= 2
    pushed = core.call("ObservabilityHub", "metrics", {"source": "StreamingTTSAgent"})
    assert pushed["cache_entries"] == cache["entries"] and pushed["cache_bytes"] == cache["bytes"]


# ---- last: changes which agents run --------------------------------------------------------------------
def test_stopped_agent_lowers_health_and_lazy_loader_prewarms_it(core):
    core.call("sunsetd", "stop", {"agent": "StreamingTTSAgent"}, timeout=20)
    health = core.call("ObservabilityHub", "health")
    assert health["score"] == 94 and health["status"] == "critical"  # (15 * 3 + 0) / 48
    assert [a["agent"] for a in health["alerts"] if a["level"] == "critical"] == ["StreamingTTSAgent"]
    warm = core.call("LazyLoader", "prewarm", {"capability": "speech.playback"}, timeout=20)
    assert warm == {"targets": ["StreamingTTSAgent"], "outcome": {"StreamingTTSAgent": "started"}}
    assert core.agent("StreamingTTSAgent")["state"] == "ready"
    assert core.call("ServiceRegistry", "list")["agents"]["StreamingTTSAgent"]["registrations"] == 2
    events = core.call("ObservabilityHub", "events", {"source": "LazyLoader"})
    assert events[-1]["message"] == "pre-warmed StreamingTTSAgent"
    health = core.call("ObservabilityHub", "health")
    assert health["score"] == 100 and not [a for a in health["alerts"] if a["level"] == "critical"]
