"""Reference agents of the audio group: StreamingInterruptHandler, WakeWordDetector, StreamingLanguageAnalyzer,
ProactiveAgent.

They work on the speech group's audio (16 kHz 16-bit PCM, speech as the tone code): barge-in during
playback, keyword spotting by dynamic time warping of pitch tracks against enrolled templates (no
speech recogniser involved), language analysis of streaming transcripts, and suggestions from the
system's own state. What stands in is the models: templates and rules replace trained detectors.
"""
from __future__ import annotations

import math
from typing import Any

from sunsetd.agent import AgentError, BadRequest

from agents.infrastructure import TWIN, CatalogAgent, field
from agents.memory import terms
from agents.speech import RATE, from_pcm, mean_square

SSR = "StreamingSpeechRecognition"
STREAMING_TTS = "StreamingTTSAgent"
CAPTURE = "AudioCapture"
PREPROCESSOR = "FusedAudioPreprocessor"
TRANSLATION = "TranslationService"
RC = "RequestCoordinator"


# ---- StreamingInterruptHandler ---------------------------------------------------------------------------
STOP_WORDS = {"stop", "wait", "cancel", "quiet", "pause", "enough", "shut"}


class StreamingInterruptHandler(CatalogAgent):
    """Barge-in: the user talks while the assistant speaks.

    Real: `play` starts a playback at StreamingTTSAgent; each `step` plays its next chunk and listens to
    the microphone stream through StreamingSpeechRecognition; speech heard during playback interrupts
    it: a stop word ("stop", "wait", "cancel", ...) ends it (`stop`), any other finished utterance, or
    speech still going on, yields the turn (`barge_in`) and hands over what was said; `run` steps until
    the end or an interruption. Interruptions are counted and reported to ObservabilityHub.
    Stands in: pulling a chunk is playing it (there is no sound card).
    """

    CAPABILITIES = ("audio.barge_in", "speech.interrupt")

    def setup(self) -> None:
        self.sessions: dict[str, dict] = {}
        super().setup()

    def handle_play(self, body: Any) -> dict:
        """{text, mic, chunk_ms?} -> {id, chunks}: a playback to step through while listening to `mic`."""
        text, mic = field(body, "text", str), field(body, "mic", str)
        play = self.call(STREAMING_TTS, "speak", {"text": text, "chunk_ms": field(body, "chunk_ms", int, 200)},
                         timeout=10.0)
        self.sessions[play["id"]] = {"mic": mic, "chunks": play["chunks"], "played": 0, "done": False}
        while len(self.sessions) > 16:
            self.sessions.pop(next(iter(self.sessions)))
        return {"id": play["id"], "chunks": play["chunks"], "duration_ms": play["duration_ms"]}

    def _step(self, pid: str) -> dict:
        s = self.sessions.get(pid)
        if s is None or s["done"]:
            raise BadRequest(f"no playback {pid!r} in progress")
        chunk = self.call(STREAMING_TTS, "next", {"id": pid}, timeout=5.0)
        s["played"] += 1
        heard = self.call(SSR, "listen", {"stream": s["mic"]}, timeout=10.0)
        said = " ".join(f["text"] for f in heard["final"] if f["text"])
        words = set(said.split())
        kind = None
        if words & STOP_WORDS:
            kind = "stop"
        elif said or heard["speaking"]:
            kind = "barge_in"
        out = {"id": pid, "played": s["played"], "remaining": s["chunks"] - s["played"], "last": chunk["last"],
               "interrupted": kind is not None, "kind": kind, "heard": said or None, "speaking": heard["speaking"]}
        if kind is not None or chunk["last"]:
            s["done"] = True
        if kind is not None:
            self.counters[f"interrupt.{kind}"] += 1
            self.report({"interruptions": self.counters["interrupt.stop"] + self.counters["interrupt.barge_in"]})
        return out

    def handle_step(self, body: Any) -> dict:
        """{id} -> {played, remaining, last, interrupted, kind: stop | barge_in | None, heard}."""
        return self._step(field(body, "id", str))

    def handle_run(self, body: Any) -> dict:
        """{id, max_steps?}: step until the playback ends or is interrupted."""
        pid = field(body, "id", str)
        out = None
        for _ in range(field(body, "max_steps", int, 100)):
            out = self._step(pid)
            if out["interrupted"] or out["last"]:
                break
        return out


# ---- WakeWordDetector ------------------------------------------------------------------------------------
WIN, HOP = RATE * 20 // 1000, RATE * 10 // 1000  # 20 ms windows every 10 ms


def pitch_track(pcm: bytes, min_level: float = 300.0 ** 2) -> list[float | None]:
    """Per 10 ms: the zero-crossing pitch in semitones above 100 Hz, or None where it is silent."""
    samples = from_pcm(pcm)
    track: list[float | None] = []
    for start in range(0, max(0, len(samples) - WIN + 1), HOP):
        frame = samples[start:start + WIN]
        if mean_square(frame) < min_level:
            track.append(None)
            continue
        crossings = sum(1 for a, b in zip(frame, frame[1:]) if (a < 0) != (b < 0))
        hz = max(crossings * RATE / (2.0 * len(frame)), 1.0)
        track.append(12.0 * math.log2(hz / 100.0))
    return track


def trim(track: list) -> list:
    voiced = [i for i, v in enumerate(track) if v is not None]
    return track[voiced[0]:voiced[-1] + 1] if voiced else []


def _dist(a: float | None, b: float | None) -> float:
    if a is None and b is None:
        return 0.0
    if a is None or b is None:
        return 1.0
    return min(1.0, abs(a - b) / 6.0)  # half an octave apart or more: as different as can be


def subsequence_dtw(template: list, track: list) -> tuple[float, int]:
    """Best match of the template anywhere in the track (free start and end): (mean cost per template frame,
    end frame of the match)."""
    m = len(template)
    if not m or not track:
        return math.inf, -1
    inf = math.inf
    prev = [0.0] * (len(track) + 1)  # row 0: a match may start anywhere
    for i in range(1, m + 1):
        cur = [inf] * (len(track) + 1)
        t = template[i - 1]
        for j in range(1, len(track) + 1):
            cur[j] = _dist(t, track[j - 1]) + min(prev[j], cur[j - 1], prev[j - 1])
        prev = cur
    end = min(range(1, len(track) + 1), key=lambda j: prev[j])
    return prev[end] / m, end - 1


class WakeWordDetector(CatalogAgent):
    """Wake-word spotting on the audio itself, without a speech recogniser.

    Real: `enroll` keeps a template of a wake word: its pitch track (zero-crossing pitch in semitones per
    10 ms, silence marked); `detect` takes the gated audio of a stream from FusedAudioPreprocessor (which
    reads it from AudioCapture), computes its pitch track and finds the best match of every template
    anywhere in it by subsequence dynamic time warping; a match whose mean cost per frame is at most
    `max_cost` is a detection, with where it ends. `watch` opens the stream at AudioCapture with a bounded
    buffer. Stands in: template matching for a neural keyword spotter, `weights_mb` for its weights.
    """

    CAPABILITIES = ("audio.wake_word", "audio.keyword_spotting")

    def setup(self) -> None:
        self.hold_weights()
        self.max_cost = float(self.config.get("max_cost", 0.12))
        self.templates: dict[str, list] = {}
        super().setup()

    def handle_enroll(self, body: Any) -> dict:
        """{word, pcm}: a recording of the wake word (silence around it is trimmed)."""
        word = field(body, "word", str).lower()
        track = trim(pitch_track(field(body, "pcm", bytes)))
        if len(track) < 10:
            raise BadRequest("the recording has less than 100 ms of sound")
        self.templates[word] = track
        return {"word": word, "frames": len(track), "words": sorted(self.templates)}

    def handle_watch(self, body: Any) -> dict:
        """{stream, max_ms?}: open the stream at AudioCapture."""
        return self.call(CAPTURE, "open", {"stream": field(body, "stream", str),
                                           "max_ms": field(body, "max_ms", int, 10_000)}, timeout=3.0)

    def handle_detect(self, body: Any) -> dict:
        """{stream} -> {detected, word, cost, end_ms, costs: per template}: spot enrolled words in what
        has arrived on the stream since the last call."""
        if not self.templates:
            raise BadRequest("no wake word enrolled")
        stream = field(body, "stream", str)
        got = self.call(PREPROCESSOR, "process", {"stream": stream}, timeout=5.0)
        offset_ms = got["first_frame"] * got["frame_ms"]
        track = pitch_track(got["pcm"])
        costs, best = {}, (math.inf, None, -1)
        for word, template in sorted(self.templates.items()):
            cost, end = subsequence_dtw(template, track)
            costs[word] = round(cost, 4) if cost != math.inf else None
            if cost < best[0]:
                best = (cost, word, end)
        detected = best[0] <= self.max_cost
        self.counters["detections" if detected else "misses"] += 1
        return {"stream": stream, "detected": detected, "word": best[1] if detected else None,
                "cost": costs.get(best[1]) if best[1] else None,
                "end_ms": offset_ms + (best[2] + 1) * 10 + 10 if detected else None, "costs": costs,
                "audio_ms": got["frames"] * got["frame_ms"]}


# ---- StreamingLanguageAnalyzer ---------------------------------------------------------------------------
class StreamingLanguageAnalyzer(CatalogAgent):
    """What language is being spoken, what it says in another, and how fast.

    Real: takes the finished utterances of a stream from StreamingSpeechRecognition (flushing the one in
    progress when asked), has TranslationService detect each one's language and translate it into the
    target language when it differs, and keeps per-stream figures: words, speech time, words per minute,
    languages heard and the most frequent content words. Stands in: nothing beyond the agents it calls.
    """

    CAPABILITIES = ("language.streaming_analysis",)

    def setup(self) -> None:
        self.streams: dict[str, dict] = {}
        super().setup()

    def handle_analyze(self, body: Any) -> dict:
        """{stream, to?: en, flush?} -> {utterances: [{text, language, translation}], totals}."""
        stream, target = field(body, "stream", str), field(body, "to", str, "en")
        heard = self.call(SSR, "listen", {"stream": stream}, timeout=10.0)["final"]
        if field(body, "flush", bool, False):
            heard += self.call(SSR, "flush", {"stream": stream}, timeout=10.0)["final"]
        st = self.streams.setdefault(stream, {"words": 0, "ms": 0, "languages": {}, "terms": {}})
        out = []
        for u in heard:
            if not u["text"]:
                continue
            d = self.call(TRANSLATION, "detect", {"text": u["text"]}, timeout=3.0)
            lang = d["language"]
            translation = None
            if lang is not None and lang != target:
                translation = self.call(TRANSLATION, "translate", {"text": u["text"], "from": lang, "to": target},
                                        timeout=3.0)["text"]
            words = len(u["text"].split())
            st["words"] += words
            st["ms"] += u["duration_ms"]
            if lang:
                st["languages"][lang] = st["languages"].get(lang, 0) + 1
            for t in terms(translation or u["text"]):
                st["terms"][t] = st["terms"].get(t, 0) + 1
            out.append({"text": u["text"], "language": lang, "confidence": d["confidence"], "translation": translation,
                        "words": words, "duration_ms": u["duration_ms"],
                        "wpm": round(words * 60000 / u["duration_ms"], 1) if u["duration_ms"] else None})
        self.counters["utterances"] += len(out)
        totals = {"words": st["words"], "speech_ms": st["ms"],
                  "wpm": round(st["words"] * 60000 / st["ms"], 1) if st["ms"] else None,
                  "languages": dict(sorted(st["languages"].items())),
                  "keywords": [w for w, _ in sorted(st["terms"].items(), key=lambda kv: (-kv[1], kv[0]))[:5]]}
        return {"stream": stream, "utterances": out, "totals": totals}


# ---- ProactiveAgent --------------------------------------------------------------------------------------
DEFAULT_RULES = [
    {"metric": "mem_available_pct", "below": 10, "suggestion": "evict idle models to free up memory"},
    {"metric": "health_score", "below": 90, "suggestion": "check the health alerts of failing agents"},
    {"metric": "load_per_cpu", "above": 1.5, "suggestion": "the host load is high: reduce resource usage"},
]


class ProactiveAgent(CatalogAgent):
    """Speaks up before being asked: suggestions from the system's state, and reminders.

    Real: `check` asks RequestCoordinator for the host's resources and the profile's health (two routed
    requests, which it forwards to SystemDigitalTwin and ObservabilityHub), evaluates rules (metric above
    or below a threshold; `config.rules` or the request's own) and returns each triggered suggestion with
    the intent and specialist RequestCoordinator gives for it, so a caller can act on it; `remind` keeps
    reminders on a logical clock, each classified the same way, and `tick` returns those that fall due.
    Stands in: nothing.
    """

    CAPABILITIES = ("assistant.proactive", "assistant.reminders")

    def setup(self) -> None:
        self.rules = list(self.config.get("rules") or DEFAULT_RULES)
        self.reminders: list[dict] = []
        self.clock = 0
        self.next_id = 0
        super().setup()

    def _metrics(self) -> dict:
        host = self.call(RC, "route", {"text": "how much cpu and ram is the host using"}, timeout=5.0)
        health = self.call(RC, "route", {"text": "is everything healthy?"}, timeout=5.0)
        if not host.get("forwarded") or not health.get("forwarded"):
            raise AgentError("RequestCoordinator did not forward the resource and health requests")
        m = dict(host["result"])
        m["health_score"] = health["result"]["score"]
        m["critical_alerts"] = sum(a["level"] == "critical" for a in health["result"]["alerts"])
        m["load_per_cpu"] = round(m["load1"] / max(1, m["cpus"]), 3)
        return m

    def handle_check(self, body: Any) -> dict:
        """{rules?: [{metric, above | below, suggestion}]} -> {suggestions, metrics}."""
        rules = field(body, "rules", list, self.rules) if isinstance(body, dict) else self.rules
        metrics = self._metrics()
        suggestions = []
        for r in rules:
            metric = field(r, "metric", str)
            value = metrics.get(metric)
            if not isinstance(value, (int, float)):
                continue
            above, below = field(r, "above", float, None), field(r, "below", float, None)
            if (above is not None and value > above) or (below is not None and value < below):
                text = field(r, "suggestion", str)
                c = self.call(RC, "classify", {"text": text}, timeout=2.0)
                suggestions.append({"metric": metric, "value": value, "suggestion": text, "intent": c["intent"],
                                    "agent": c["agent"]})
        self.counters["checks"] += 1
        self.counters["suggestions"] += len(suggestions)
        return {"suggestions": suggestions, "metrics": metrics}

    def handle_remind(self, body: Any) -> dict:
        """{text, in_ticks} -> the reminder, with the intent and specialist of its text."""
        text, ticks = field(body, "text", str), field(body, "in_ticks", int)
        if ticks < 0:
            raise BadRequest("in_ticks must not be negative")
        c = self.call(RC, "classify", {"text": text}, timeout=2.0)
        self.next_id += 1
        r = {"id": self.next_id, "text": text, "due": self.clock + ticks, "intent": c["intent"], "agent": c["agent"]}
        self.reminders.append(r)
        return dict(r)

    def handle_tick(self, body: Any) -> dict:
        """{ticks?: 1} -> {clock, due: reminders due now (removed), pending}."""
        self.clock += field(body, "ticks", int, 1) if isinstance(body, dict) else 1
        due = sorted((r for r in self.reminders if r["due"] <= self.clock), key=lambda r: (r["due"], r["id"]))
        self.reminders = [r for r in self.reminders if r["due"] > self.clock]
        if due:
            self.call(TWIN, "observe", {"metric": f"{self.name}.reminders_due", "value": len(due)}, timeout=2.0)
        return {"clock": self.clock, "due": due, "pending": len(self.reminders)}
