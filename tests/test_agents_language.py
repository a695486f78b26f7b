"""The lazy agents of the language, utility and audio groups (and FaceRecognitionAgent, which Responder
needs), through a real daemon running the full profile. tests/test_agents_lazy.py covers
the core optional, reasoning, learning and emotion groups on the same profile.

One daemon serves the whole module. Every agent here is lazy and is started by its first request in its
own test (checked for most: stopped before, ready after), so the tests run in dependency order (NLUAgent
and CodeGenerator before the agents that call them, TranslationService before StreamingLanguageAnalyzer);
the tests that kill agents on purpose (PredictiveHealthMonitor's, Executor's) run last but for the one
that pings every agent.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from conftest import REPO, error_code, module_daemon, wait_until, first_request, model_in_budget as pinned
from sunsetd.client import Client, RemoteError

from agents.audio import DEFAULT_RULES
from agents.vision import synthetic_face

pytestmark = pytest.mark.slow

PROFILE = "full"
AGENTS = {
    "NLUAgent": "agents.language:NLUAgent",
    "AdvancedCommandHandler": "agents.language:AdvancedCommandHandler",
    "ChitchatAgent": "agents.language:ChitchatAgent",
    "FeedbackHandler": "agents.language:FeedbackHandler",
    "Responder": "agents.language:Responder",
    "TranslationService": "agents.language:TranslationService",
    "DynamicIdentityAgent": "agents.language:DynamicIdentityAgent",
    "CodeGenerator": "agents.utility:CodeGenerator",
    "Executor": "agents.utility:Executor",
    "FixedStreamingTranslation": "agents.utility:FixedStreamingTranslation",
    "TinyLlamaServiceEnhanced": "agents.utility:TinyLlamaServiceEnhanced",
    "NLLBAdapter": "agents.utility:NLLBAdapter",
    "PredictiveHealthMonitor": "agents.utility:PredictiveHealthMonitor",
    "StreamingInterruptHandler": "agents.audio:StreamingInterruptHandler",
    "WakeWordDetector": "agents.audio:WakeWordDetector",
    "StreamingLanguageAnalyzer": "agents.audio:StreamingLanguageAnalyzer",
    "ProactiveAgent": "agents.audio:ProactiveAgent",
}
KILLED = {"NLLBAdapter", "Executor"}  # killed on purpose by their tests


@pytest.fixture(scope="module")
def daemon():
    """One daemon for the module, on its own short runtime directory; at the end it must stop with
    exit code 0 and leave no process of its own."""
    with module_daemon(PROFILE) as daemon:
        yield daemon


def say(d, stream: str, text: str, pad_ms: int = 400) -> None:
    """Speak `text` into an AudioCapture stream (TTSService's tone code), followed by silence."""
    pcm = d.call("TTSService", "synthesize", {"text": text, "pad_ms": pad_ms})["pcm"]
    d.call("AudioCapture", "push", {"stream": stream, "pcm": pcm})


# ---- the profile ---------------------------------------------------------------------------------------
def test_lazy_agents_wait_for_their_first_request(daemon):
    status = daemon.status()
    assert status["counts"]["ready"] == 24 and status["counts"]["total"] == 77
    lazy = {a["name"]: a["state"] for a in status["agents"] if a["lazy"]}
    assert set(AGENTS) | {"FaceRecognitionAgent"} <= set(lazy) and set(lazy.values()) == {"stopped"}


# ---- language ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, intent, slots", [
    ("Set a timer for 5 minutes", "set_timer", {"duration_s": 300}),
    ("remind me to call Alice at 5pm tomorrow", "set_reminder", {"task": "call Alice", "time": "17:00",
                                                                 "date": "tomorrow"}),
    ("what is the weather in New York today", "weather", {"location": "New York", "date": "today"}),
    ("play Bohemian Rhapsody by Queen", "play_music", {"query": "Bohemian Rhapsody", "artist": "Queen"}),
    ("how do you say thank you in Spanish", "translate", {"text": "thank you", "target": "es"}),
    ("what is 12 times 7", "calculate", {"expression": "12 times 7"}),
    ("write a function that adds two numbers", "write_code", {"description": "adds two numbers"}),
    ("send a message to Bob saying hi there", "communicate", {"contact": "Bob", "message": "hi there"}),
    ("that was great, 5 stars", "feedback", {"rating": 5.0}),
    ("blorp", "unknown", {}),
])
def test_nlu_intents_and_slots(daemon, text, intent, slots):
    p = daemon.call("NLUAgent", "parse", {"text": text}, timeout=20)
    assert (p["intent"], p["slots"]) == (intent, slots)


def test_nlu_entities_sentiment_and_model_use(daemon):
    p = daemon.call("NLUAgent", "parse", "email ann@example.com the notes from https://x.org/a at 9:30 on Friday")
    assert p["entities"] == {"times": ["09:30"], "dates": ["friday"], "emails": ["ann@example.com"],
                             "urls": ["https://x.org/a"]}
    assert daemon.call("NLUAgent", "parse", "I hate this, it is useless")["sentiment"]["polarity"] == "negative"
    assert pinned(daemon, "nlu-rules")["uses"] >= 12 and pinned(daemon, "nlu-rules")["owner"] == "NLUAgent"
    assert error_code(daemon.call, "NLUAgent", "parse", {"text": "  "}) == "bad_request"


def test_code_generator_templates_and_checked_specs(daemon):
    g = first_request(daemon, "CodeGenerator", "generate", {"description": "convert celsius to fahrenheit"})
    assert g["name"] == "celsius_to_fahrenheit" and g["compiled"] is True
    assert g["source"].startswith("def celsius_to_fahrenheit(celsius):\n")
    assert g["examples"] == [{"args": [100], "result": 212.0}, {"args": [0], "result": 32.0}]
    spec = daemon.call("CodeGenerator", "generate", {"name": "hyp", "params": ["a", "b"],
                                                     "expression": "(a * a + b * b) ** 0.5"})
    assert spec["source"] == 'def hyp(a, b):\n    """Generated from a spec."""\n    return (a * a + b * b) ** 0.5\n'
    for bad in ("__import__('os').system('ls')", "a.__class__", "open('x')", "c + 1"):
        assert error_code(daemon.call, "CodeGenerator", "generate",
                          {"name": "f", "params": ["a"], "expression": bad}) == "bad_request"
    assert error_code(daemon.call, "CodeGenerator", "generate", "fly me to the moon") == "agent_error"
    check = daemon.call("CodeGenerator", "check", {"source": "def f(:\n    pass\n"})
    assert check == {"compiled": False, "error": {"line": 1, "message": "invalid syntax"}}


def test_advanced_command_handler_runs_compound_commands(daemon):
    r = first_request(daemon, "AdvancedCommandHandler", "execute", {
        "text": "calculate 12 times 7 and then write a function that adds two numbers; set a timer for 2 minutes"})
    assert [s["intent"] for s in r["steps"]] == ["calculate", "write_code", "set_timer"] and r["done"]
    assert r["steps"][0]["result"] == {"expression": "12 * 7", "answer": 84, "steps": 1}
    assert r["steps"][1]["result"]["name"] == "add" and r["steps"][1]["result"]["compiled"]  # by CodeGenerator
    assert r["steps"][2]["result"]["seconds"] == 120
    assert daemon.call("AdvancedCommandHandler", "tick", {"seconds": 60})["due"] == []
    due = daemon.call("AdvancedCommandHandler", "tick", {"seconds": 60})
    assert [t["seconds"] for t in due["due"]] == [120] and due["pending"] == 0
    daemon.call("AdvancedCommandHandler", "define", {"name": "Morning", "commands": ["play some jazz",
                                                                                   "what is 2 plus 2"]})
    macro = daemon.call("AdvancedCommandHandler", "run", {"name": "morning"})
    steps = [r["steps"][0] for r in macro["results"]]
    assert [(s["intent"], s["done"]) for s in steps] == [("play_music", False), ("calculate", True)]
    assert steps[0]["result"] == {"routed": "play_music"} and steps[1]["result"]["answer"] == 4
    assert error_code(daemon.call, "AdvancedCommandHandler", "run", {"name": "evening"}) == "bad_request"


def test_chitchat_replies_in_kind(daemon):
    replies = [first_request(daemon, "ChitchatAgent", "chat", {"text": "hello there", "session": "s"})["reply"]]
    for text in ("how are you?", "what's your name?", "tell me a joke", "tell me a joke",
                 "I feel lost in my job", "I'm exhausted", "thank you", "bye"):
        replies.append(daemon.call("ChitchatAgent", "chat", {"text": text, "session": "s"})["reply"])
    assert replies == [
        "Hello! How can I help?", "I'm doing well, thanks for asking. How are you?",
        "I'm Sunset, the assistant on this machine.",
        "Why do programmers prefer dark mode? Because light attracts bugs.",
        "There are 10 kinds of people: those who understand binary and those who don't.",
        "Why do you feel lost in your job?", "I'm sorry to hear you're exhausted. Want to talk about it?",
        "Any time!", "Goodbye! Talk soon."]
    assert daemon.call("NLUAgent", "stats")["counters"]["intent.chitchat"] >= 4  # every turn parsed by NLUAgent


def test_feedback_handler_rates_and_summarises(daemon):
    first = first_request(daemon, "FeedbackHandler", "submit", {"text": "Great answers, 9/10", "target": "tts"})
    assert (first["rating"], first["source"]) == (4.5, "stated")
    for text in ("4 stars", "the voice is terrible and too slow", "it was fine", "useless, the voice is wrong"):
        daemon.call("FeedbackHandler", "submit", {"text": text, "target": "tts"})
    s = daemon.call("FeedbackHandler", "summary", {"target": "tts"})
    assert s["count"] == 5 and s["mean_rating"] == 3.1 and s["net_score"] == 0.0
    assert s["sentiment"] == {"positive": 1, "neutral": 2, "negative": 2}
    assert s["complaints"][0] == "voice"
    assert daemon.call("ObservabilityHub", "metrics", {"source": "FeedbackHandler"})["mean_rating.tts"] == 3.1


@pytest.mark.parametrize("text, to, expected", [
    ("the red car", "es", "El coche rojo"),
    ("the red car", "fr", "La voiture rouge"),
    ("the red car", "de", "Das rote Auto"),
    ("The small house is beautiful.", "fr", "La petite maison est belle."),
    ("a big black dog and a small white cat", "de", "Ein großer schwarzer Hund und eine kleine weiße Katze"),
    ("where is the school?", "fr", "Où est l'école?"),
    ("good morning my friend", "es", "Buenos días mi amigo"),
])
def test_translation_service_translates(daemon, text, to, expected):
    out = daemon.call("TranslationService", "translate", {"text": text, "to": to, "from": "en"}, timeout=20)
    assert out["text"] == expected and out["unknown"] == []
    back = daemon.call("TranslationService", "translate", {"text": expected, "to": "en"})  # source detected
    assert back["source"] == to and back["text"].lower() == text.lower()


def test_translation_service_pivots_detects_and_lists_unknown_words(daemon):
    pivot = daemon.call("TranslationService", "translate", {"text": "el coche rojo", "from": "es", "to": "fr"})
    assert (pivot["text"], pivot["via"]) == ("La voiture rouge", "en")
    odd = daemon.call("TranslationService", "translate", {"text": "the zebra is happy", "to": "French"})
    assert odd["text"] == "Le zebra est heureux" and odd["unknown"] == ["zebra"]
    assert daemon.call("TranslationService", "detect", "das rote Auto ist schnell")["language"] == "de"
    assert error_code(daemon.call, "TranslationService", "translate", {"text": "x", "to": "klingon"}) == "bad_request"
    assert pinned(daemon, "translation-tables")["owner"] == "TranslationService"


def test_dynamic_identity_chooses_personas_and_styles(daemon):
    sel = first_request(daemon, "DynamicIdentityAgent", "select", {"text": "what is a heartbeat?", "session": "a"})
    assert (sel["persona"], sel["intent"]) == ("teacher", "question")  # RequestCoordinator's intent
    assert daemon.call("DynamicIdentityAgent", "select", {"text": "how much ram is the host using",
                                                          "session": "b"})["persona"] == "engineer"
    t = daemon.call("DynamicIdentityAgent", "stylize", {"text": "It's simple: don't panic.", "session": "a"})
    assert t == {"persona": "teacher", "text": "Good question. It is simple: do not panic. Does that make sense?"}
    e = daemon.call("DynamicIdentityAgent", "stylize", {"text": "I think you should really just restart it. "
                                                                "Then check the logs.", "session": "b"})
    assert e["text"] == "You should restart it."
    daemon.call("DynamicIdentityAgent", "set", {"session": "a", "persona": "friend"})
    f = daemon.call("DynamicIdentityAgent", "stylize", {"text": "I am sure it is fine.", "session": "a"})
    assert f["text"] == "Hey! I'm sure it's fine. :)"
    assert daemon.call("DynamicIdentityAgent", "describe", {"session": "a"})["style"] == "casual"
    assert error_code(daemon.call, "DynamicIdentityAgent", "set", {"persona": "pirate"}) == "bad_request"


def test_responder_knows_the_face_reads_the_request_and_the_mood(daemon):
    enrolled = first_request(daemon, "FaceRecognitionAgent", "enroll", {"name": "Ada", "image": synthetic_face(3)})
    assert enrolled["people"] == 1
    r = first_request(daemon, "Responder", "respond",
                      {"text": "set a timer for 5 minutes", "image": synthetic_face(3, noise=4)})
    assert (r["person"], r["intent"], r["emotion"]) == ("Ada", "set_timer", "neutral") and r["face_score"] > 0.9
    assert r["reply"] == "Ada, timer set for 5 minutes."
    hello = daemon.call("Responder", "respond", {"text": "hello", "image": synthetic_face(3, brightness=20)})
    assert hello["reply"] == "Hello, Ada!"
    sad = daemon.call("Responder", "respond", {"text": "I'm so sad, remind me to call mom"})
    assert sad["reply"] == "I'm sorry to hear that. I'll remind you to call mom." and sad["person"] is None
    stranger = daemon.call("Responder", "respond", {"text": "play some jazz", "image": synthetic_face(99)})
    assert stranger["person"] is None and stranger["face_score"] < 0.9 and stranger["reply"] == "Playing jazz."
    assert daemon.call("FaceRecognitionAgent", "stats")["counters"]["identified"] == 2


def test_responder_speaks_streamed_or_direct(daemon):
    streamed = daemon.call("Responder", "respond", {"text": "thanks", "speak": "stream"})
    assert streamed["reply"] == "You're welcome!" and streamed["audio"]["via"] == "StreamingTTSAgent"
    n = daemon.call("StreamingTTSAgent", "next", {"id": streamed["audio"]["playback"]})
    assert n["seq"] == 0 and len(n["pcm"]) > 0
    direct = daemon.call("Responder", "respond", {"text": "what is the weather in Paris", "speak": "direct"})
    assert direct["reply"] == "Here is the weather for Paris, today."
    assert direct["audio"]["via"] == "TTSService" and direct["audio"]["spoken"] == "here is the weather for paris today"
    assert direct["audio"]["duration_ms"] > 1000
    assert error_code(daemon.call, "Responder", "respond", {"text": "hi", "speak": "loudly"}) == "bad_request"


# ---- utility -------------------------------------------------------------------------------------------
def test_executor_runs_allowed_commands_only(daemon):
    r = first_request(daemon, "Executor", "run", {"argv": ["echo", "hello", "world"]})
    assert (r["exit_code"], r["stdout"], r["timed_out"]) == (0, "hello world\n", False)
    assert daemon.call("Executor", "run", {"argv": ["uname", "-s"]})["stdout"] == "Linux\n"
    sorted_ = daemon.call("Executor", "run", {"argv": ["sort"], "stdin": "pear\napple\nfig\n"})
    assert sorted_["stdout"] == "apple\nfig\npear\n"
    for argv in (["rm", "-rf", "x"], ["sh", "-c", "echo hi"], ["/bin/echo", "x"], ["wc", "/etc/passwd"],
                 ["wc", "../x"]):
        with pytest.raises(RemoteError) as info:
            daemon.call("Executor", "run", {"argv": argv})
        assert info.value.code == "bad_request" and info.value.message.startswith("refused")
    t0 = time.monotonic()
    slow = daemon.call("Executor", "run", {"argv": ["sleep", "10"], "timeout_s": 0.5})
    assert slow["timed_out"] is True and slow["exit_code"] == -9 and time.monotonic() - t0 < 3
    assert daemon.call("Executor", "stats")["counters"]["refused"] == 5
    workdir = daemon.call("Executor", "allowed")["workdir"]
    assert workdir.startswith(tempfile.gettempdir()) and not workdir.startswith(str(REPO))


def test_executor_runs_generated_code_in_an_isolated_child(daemon):
    t = daemon.call("Executor", "run_code", {"description": "factorial", "test": True})
    assert (t["name"], t["passed"], t["failed"]) == ("factorial", 2, 0)
    r = daemon.call("Executor", "run_code", {"description": "check if a number is prime", "calls": [[97], [91]]})
    assert [x["value"] for x in r["results"]] == [True, False]
    err = daemon.call("Executor", "run_code", {"description": "factorial", "calls": [[-1]]})
    assert err["results"] == [{"ok": False, "error": "ValueError: n must not be negative"}]
    spec = daemon.call("Executor", "run_code", {"name": "hyp", "params": ["a", "b"], "expression": "(a*a + b*b) ** 0.5",
                                                "calls": [[3, 4]]})
    assert spec["results"] == [{"ok": True, "value": 5.0}]
    assert daemon.call("CodeGenerator", "stats")["counters"]["op.generate"] >= 4  # generated by CodeGenerator


def test_fixed_streaming_translation_emits_fixed_pieces(daemon):
    pieces = []
    for chunk in ("the", "small", "house", "is beautiful", "good", "morning my", "old friend"):
        out = daemon.call("FixedStreamingTranslation", "push", {"stream": "s1", "text": chunk, "to": "fr"}, timeout=20)
        pieces.append(out["emitted"])
    assert pieces == ["", "", "", "La petite maison", " est", "", " belle bonjour"]  # wait-k, k = 2
    final = daemon.call("FixedStreamingTranslation", "push", {"stream": "s1", "text": ".", "to": "fr", "final": True})
    assert final["text"] == "La petite maison est belle bonjour mon vieux ami." and final["mean_lag_words"] == 1.75
    whole = daemon.call("TranslationService", "translate",
                        {"text": "the small house is beautiful good morning my old friend.", "from": "en", "to": "fr"})
    assert final["text"] == whole["text"]  # the same text as translating it all at once
    assert error_code(daemon.call, "FixedStreamingTranslation", "push", {"stream": "s2", "text": "x", "to": "en"}) == \
        "bad_request"


def test_tinyllama_generates_summarises_and_answers(daemon):
    g = first_request(daemon, "TinyLlamaServiceEnhanced", "generate", {"prompt": "Lazy agents", "max_tokens": 20})
    assert g["text"] == "start on their first request and stop when they are idle."
    assert g["backend"]["route"] == "remote" and g["backend"]["served_by"] == "tinyllama-trigram"  # llm-7b: too big
    daemon.call("TinyLlamaServiceEnhanced", "learn", {"text": "The daemon answers every request exactly once."})
    assert daemon.call("TinyLlamaServiceEnhanced", "generate", {"prompt": "the daemon"})["text"] == \
        "answers every request exactly once."
    text = ("Sunsetd supervises agents. Agents crash sometimes. The supervisor restarts crashed agents quickly. "
            "Lunch was good.")
    s = daemon.call("TinyLlamaServiceEnhanced", "summarize", {"text": text, "sentences": 2})
    assert s["picked"] == [0, 1] and s["summary"] == "Sunsetd supervises agents. Agents crash sometimes."
    a = daemon.call("TinyLlamaServiceEnhanced", "answer", {"question": "Who restarts crashed agents?", "context": text})
    assert a["answer"] == "The supervisor restarts crashed agents quickly."
    assert pinned(daemon, "tinyllama-trigram")["uses"] == 4


def test_nllb_adapter_speaks_flores_codes(daemon):
    r = first_request(daemon, "NLLBAdapter", "translate",
                      {"text": "the old woman has a red car.", "src_lang": "eng_Latn", "tgt_lang": "deu_Latn"})
    assert r == {"translation_text": "Die alte Frau hat ein rotes Auto.", "unknown_words": []}
    batch = daemon.call("NLLBAdapter", "translate_batch", {"texts": ["hello", "thank you"], "src_lang": "en",
                                                           "tgt_lang": "spa_Latn"})
    assert batch["translations"] == ["Hola", "Gracias"]
    assert error_code(daemon.call, "NLLBAdapter", "translate",
                      {"text": "привет", "src_lang": "eng_Latn", "tgt_lang": "fra_Latn"}) == "bad_request"
    assert error_code(daemon.call, "NLLBAdapter", "translate",
                      {"text": "привет", "src_lang": "rus_Cyrl", "tgt_lang": "fra_Latn"}) == "agent_error"
    assert daemon.call("NLLBAdapter", "detect", {"text": "la maison est belle"}) == {
        "script": "Latn", "language": "fra_Latn", "confidence": 1.0}
    assert daemon.call("NLLBAdapter", "info")["weights_mb"] == 16


# ---- audio ---------------------------------------------------------------------------------------------
def test_interrupt_handler_stops_playback_when_the_user_speaks(daemon):
    play = first_request(daemon, "StreamingInterruptHandler", "play",
                         {"text": "Good evening. All systems nominal.", "mic": "sih"})
    assert play["chunks"] > 3
    quiet = daemon.call("StreamingInterruptHandler", "step", {"id": play["id"]})
    assert (quiet["played"], quiet["interrupted"], quiet["last"]) == (1, False, False)
    say(daemon, "sih", "stop")
    stop = daemon.call("StreamingInterruptHandler", "step", {"id": play["id"]})
    assert (stop["interrupted"], stop["kind"], stop["heard"], stop["played"]) == (True, "stop", "stop", 2)
    assert error_code(daemon.call, "StreamingInterruptHandler", "step", {"id": play["id"]}) == "bad_request"
    again = daemon.call("StreamingInterruptHandler", "play", {"text": "Here is a long story about agents.",
                                                              "mic": "sih"})
    say(daemon, "sih", "what time is it")
    barge = daemon.call("StreamingInterruptHandler", "run", {"id": again["id"]})
    assert (barge["kind"], barge["heard"], barge["played"]) == ("barge_in", "what time is it", 1)
    calm = daemon.call("StreamingInterruptHandler", "play", {"text": "ok", "mic": "sih", "chunk_ms": 1000})
    done = daemon.call("StreamingInterruptHandler", "run", {"id": calm["id"]})
    assert done["last"] is True and done["interrupted"] is False
    assert daemon.call("ObservabilityHub", "metrics", {"source": "StreamingInterruptHandler"})["interruptions"] == 2


def test_wake_word_detector_spots_an_enrolled_word_in_the_audio(daemon):
    template = daemon.call("TTSService", "synthesize", {"text": "sunset"})["pcm"]
    enrolled = first_request(daemon, "WakeWordDetector", "enroll", {"word": "Sunset", "pcm": template})
    assert enrolled["word"] == "sunset" and 25 <= enrolled["frames"] <= 32
    daemon.call("WakeWordDetector", "watch", {"stream": "ww"})
    say(daemon, "ww", "hey sunset open the door", pad_ms=200)
    hit = daemon.call("WakeWordDetector", "detect", {"stream": "ww"})
    assert hit["detected"] is True and hit["word"] == "sunset" and hit["cost"] < 0.05
    assert 450 <= hit["end_ms"] <= 550  # "hey" and a pause take 200 ms, "sunset" 300 ms
    for text in ("good morning", "sunrise", "open the door"):
        say(daemon, "ww", text, pad_ms=200)
        miss = daemon.call("WakeWordDetector", "detect", {"stream": "ww"})
        assert miss["detected"] is False and miss["costs"]["sunset"] > 0.12, text
    assert daemon.call("FusedAudioPreprocessor", "stats")["counters"]["op.process"] >= 4


def test_streaming_language_analyzer_detects_and_translates_what_is_said(daemon):
    say(daemon, "sla", "la casa es grande")
    say(daemon, "sla", "hello my friend")
    r = first_request(daemon, "StreamingLanguageAnalyzer", "analyze", {"stream": "sla", "to": "en"})
    assert [(u["text"], u["language"], u["translation"]) for u in r["utterances"]] == [
        ("la casa es grande", "es", "The house is big"), ("hello my friend", "en", None)]
    assert r["totals"]["languages"] == {"en": 1, "es": 1} and r["totals"]["words"] == 7
    assert r["totals"]["keywords"][0] == "big" and r["totals"]["wpm"] > 0
    say(daemon, "sla", "bonjour mon ami", pad_ms=0)
    r = daemon.call("StreamingLanguageAnalyzer", "analyze", {"stream": "sla", "to": "de", "flush": True})
    assert [(u["language"], u["translation"]) for u in r["utterances"]] == [("fr", "Guten Morgen mein Freund")]


def test_proactive_agent_suggests_from_the_system_state_and_reminds(daemon):
    r = first_request(daemon, "ProactiveAgent", "check", {
        "rules": [{"metric": "agents_running", "above": 0, "suggestion": "evict idle models to free up memory"},
                  {"metric": "health_score", "below": 50, "suggestion": "check the alerts"}]})
    assert r["metrics"]["health_score"] == 100 and r["metrics"]["agents_running"] >= 20  # via RC's routes
    assert r["suggestions"] == [{"metric": "agents_running", "value": r["metrics"]["agents_running"],
                                 "suggestion": "evict idle models to free up memory", "intent": "optimize",
                                 "agent": "VRAMOptimizerAgent"}]
    default = daemon.call("ProactiveAgent", "check", {})  # the default rules: memory, health, load
    m = default["metrics"]
    expected = [rule["suggestion"] for rule in DEFAULT_RULES if m[rule["metric"]] > rule.get("above", float("inf"))
                or m[rule["metric"]] < rule.get("below", float("-inf"))]
    assert [s["suggestion"] for s in default["suggestions"]] == expected
    assert m["health_score"] == 100 and "health_score" not in {s["metric"] for s in default["suggestions"]}
    rem = daemon.call("ProactiveAgent", "remind", {"text": "remember to stretch", "in_ticks": 2})
    assert (rem["intent"], rem["agent"]) == ("remember", "SessionMemoryAgent")
    assert daemon.call("ProactiveAgent", "tick", {})["due"] == []
    due = daemon.call("ProactiveAgent", "tick", {"ticks": 1})
    assert [d["text"] for d in due["due"]] == ["remember to stretch"] and due["pending"] == 0


# ---- last: agents killed on purpose --------------------------------------------------------------------
def test_predictive_health_monitor_sees_restarts_coming(daemon):
    hist = [{"t": 0, "agents": [{"name": "A", "state": "ready", "restarts": 0}, {"name": "B", "state": "ready",
                                                                                  "restarts": 0}]},
            {"t": 60, "agents": [{"name": "A", "state": "ready", "restarts": 3}, {"name": "B", "state": "backoff",
                                                                                  "restarts": 0}]},
            {"t": 120, "agents": [{"name": "A", "state": "ready", "restarts": 4}, {"name": "B", "state": "backoff",
                                                                                   "restarts": 0}]}]
    given = first_request(daemon, "PredictiveHealthMonitor", "predict", {"history": hist})
    assert [(r["agent"], r["risk"], r["rate_per_min"], r["p_circuit"]) for r in given["risks"]] == [
        ("A", 0.8647, 2.0, 0.1429), ("B", 0.75, 0.0, 0.0)]
    assert given["alerts"] == ["A", "B"]
    daemon.call("PredictiveHealthMonitor", "sample")
    for n in (1, 2):  # NLLBAdapter crashes twice; sunsetd restarts it
        pid = daemon.agent("NLLBAdapter")["pid"]
        os.kill(pid, signal.SIGKILL)
        daemon.wait_agent("NLLBAdapter", lambda a: a["restarts"] == n and a["state"] == "ready", timeout=15,
                          what=f"restart {n}")
    live = daemon.call("PredictiveHealthMonitor", "predict", {"top": 3})
    top = live["risks"][0]
    assert top["agent"] == "NLLBAdapter" and top["restarts_in_window"] == 2 and top["risk"] > 0.9
    assert live["risks"][1]["risk"] == 0.0 and live["alerts"] == ["NLLBAdapter"]
    events = daemon.call("ObservabilityHub", "events", {"source": "PredictiveHealthMonitor"})
    assert events[-1]["message"] == "failure predicted: NLLBAdapter" and events[-1]["level"] == "warning"


def test_a_command_never_outlives_the_executor(daemon):
    executor = daemon.agent("Executor")["pid"]
    workdir = Path(daemon.call("Executor", "allowed")["workdir"])
    with Client(daemon.runtime_dir) as c:
        c.send("Executor", "run", {"argv": ["sleep", "30"], "timeout_s": 25}, timeout=30)
        sleeper = wait_until(lambda: next((p for p in psutil.Process(executor).children() if p.name() == "sleep"),
                                          None), 5, what="the command to start")
        os.kill(executor, signal.SIGKILL)
        reply = c.recv(10)
    assert reply["ok"] is False and reply["error"]["code"] == "agent_crashed"

    def gone() -> bool:
        try:
            return sleeper.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(gone, 5, what="the command to die with the executor")
    daemon.wait_agent("Executor", lambda a: a["state"] == "ready" and a["restarts"] == 1, timeout=15)
    assert daemon.call("Executor", "run", {"argv": ["echo", "back"]})["stdout"] == "back\n"
    assert Path(daemon.call("Executor", "allowed")["workdir"]) != workdir  # a fresh one for the new incarnation
    shutil.rmtree(workdir)  # killed, it could not remove its own (a clean stop does)


def test_executor_sweeps_grandchildren_that_escape_their_parent(tmp_path):
    """The subreaper sweep, in a process of its own (it makes that process a child subreaper): a command that
    leaves a background grandchild in a new session behind is answered only after the grandchild is dead."""
    script = f"""
import json, sys
sys.path.insert(0, {str(REPO)!r})
from agents.utility import Executor
e = Executor("Executor", {{"allow": ["sh"], "workdir": {str(tmp_path)!r}}})
e.log = lambda m: None
e.setup()
r = e.handle_run({{"argv": ["sh", "-c", "setsid sleep 60 & echo $!"]}})
print(json.dumps(r))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["exit_code"] == 0 and r["leftovers_killed"] == 1
    grandchild = int(r["stdout"].strip())
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE


# ---- every agent of the module -------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(AGENTS))
def test_ping_info_and_stats(daemon, name):
    assert daemon.call(name, "ping", timeout=20) == "pong"
    info = daemon.call(name, "info")
    assert info["name"] == name and info["class"] == AGENTS[name] and info["doc"]
    assert info["capabilities"] and {"ping", "info", "stats"} <= set(info["ops"])
    assert daemon.call(name, "stats")["counters"]["op.stats"] >= 1
    assert daemon.call("ServiceRegistry", "list")["agents"][name]["capabilities"] == info["capabilities"]
    a = daemon.agent(name)
    assert a["state"] == "ready" and a["restarts"] == (0 if name not in KILLED else a["restarts"])


def test_no_tracebacks_and_no_critical_alerts(daemon):
    assert "Traceback" not in daemon.log()
    health = daemon.call("ObservabilityHub", "health")
    assert not [a for a in health["alerts"] if a["level"] == "critical"]
    restarted = sorted(a["agent"] for a in health["alerts"] if a["reason"].startswith("restarted"))
    assert restarted == sorted(KILLED)
    assert re.search(r"agent=NLLBAdapter event=exit .*SIGKILL", daemon.log())
