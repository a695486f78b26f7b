"""Reference agents of the emotion group: EmotionEngine, MoodTrackerAgent, HumanAwarenessAgent, ToneDetector,
VoiceProfilingAgent, EmpathyAgent, EmotionSynthesisAgent.

Emotion is read from text with a lexicon (words -> emotion and intensity, with negation and
intensifiers) and from voice with prosody measured on PCM (level, zero-crossing pitch, its range and
slope, voiced ratio); both map onto valence and arousal. What stands in is the model: the lexicon and
the prosody rules replace trained classifiers.
"""
from __future__ import annotations

import math
import re
from typing import Any

from sunsetd.agent import BadRequest

from agents.infrastructure import TWIN, CatalogAgent, field
from agents.memory import STOPWORDS
from agents.speech import RATE, ModelBacked, from_pcm, level_db

ENGINE = "EmotionEngine"
RC = "RequestCoordinator"
STREAMING_TTS = "StreamingTTSAgent"

# emotion -> (valence -1..1, arousal 0..1)
EMOTIONS = {"joy": (0.8, 0.6), "sadness": (-0.7, 0.25), "anger": (-0.7, 0.85), "fear": (-0.6, 0.75),
            "surprise": (0.2, 0.85), "disgust": (-0.6, 0.5), "neutral": (0.0, 0.3)}
_LEXICON_SRC = {
    "joy": """happy glad joy joyful delighted love loved lovely great good wonderful awesome amazing excellent
              fantastic pleased cheerful excited thrilled fun enjoy enjoyed nice beautiful proud grateful thanks
              thank relieved smile laugh win won success perfect brilliant yay hooray helpful""",
    "sadness": """sad unhappy depressed down miserable lonely alone cry crying cried tears sorry grief grieving
                  lost lose loss miss missing hurt heartbroken disappointed disappointing gloomy tired exhausted
                  hopeless failed fail failure regret bad""",
    "anger": """angry mad furious annoyed annoying irritated hate hated rage outraged frustrated frustrating
                unfair ridiculous stupid terrible awful worst broken useless wrong incorrect unhelpful""",
    "fear": """afraid scared fear frightened terrified anxious worried worry nervous panic panicking dread
               danger dangerous threat unsafe uneasy stressed stress""",
    "surprise": """surprised surprise surprising wow unexpected unbelievable incredible shocked shocking astonished
                   sudden suddenly whoa""",
    "disgust": """disgusting disgusted gross nasty vile revolting sick yuck awful""",
}
LEXICON: dict[str, str] = {}
for _emotion, _words in _LEXICON_SRC.items():
    for _w in _words.split():
        LEXICON.setdefault(_w, _emotion)
STRONG = {"love", "hate", "furious", "terrified", "heartbroken", "thrilled", "ecstatic", "devastated", "worst",
          "awesome", "amazing", "fantastic", "hopeless", "panic", "disgusting", "outraged"}
NEGATIONS = {"not", "no", "never", "nothing", "hardly", "without", "nor", "cannot"}
INTENSIFIERS = {"very": 1.5, "really": 1.4, "so": 1.3, "extremely": 2.0, "incredibly": 1.8, "too": 1.3,
                "totally": 1.5, "absolutely": 1.7, "quite": 1.2, "slightly": 0.5, "somewhat": 0.6, "little": 0.6,
                "bit": 0.6, "kinda": 0.7}
NEGATED = {"joy": "sadness", "sadness": "neutral", "anger": "neutral", "fear": "neutral", "surprise": "neutral",
           "disgust": "neutral"}
_TOKEN = re.compile(r"[A-Za-z']+|[!?]")


def analyze_text(text: str) -> dict:
    """Lexicon emotion analysis: per-emotion scores, the winner, valence and arousal, and the cue words.

    A negation word flips the next three words (negated joy counts as sadness at 0.7, negated negative
    emotions count as mild relief); an intensifier scales the next emotion word; exclamation marks and
    words in capitals raise arousal."""
    tokens = _TOKEN.findall(text)
    scores = {e: 0.0 for e in EMOTIONS if e != "neutral"}
    cues, negate, boost, relief = [], 0, 1.0, 0.0
    exclaims = caps = 0
    for tok in tokens:
        if tok == "!":
            exclaims += 1
            continue
        if tok == "?":
            continue
        low = tok.lower()
        if len(tok) > 2 and tok.isupper():
            caps += 1
        if low in NEGATIONS or low.endswith("n't"):
            negate = 3
            continue
        if low in INTENSIFIERS:
            boost *= INTENSIFIERS[low]
            continue
        emotion = LEXICON.get(low) or (LEXICON.get(low[:-1]) if low.endswith("s") else None)
        if emotion is not None:
            weight = (2.0 if low in STRONG else 1.0) * boost
            if negate > 0:
                flipped = NEGATED[emotion]
                if flipped == "neutral":
                    relief += 0.5 * weight
                else:
                    scores[flipped] += 0.7 * weight
                cues.append(f"not {low}")
            else:
                scores[emotion] += weight
                cues.append(low)
            boost = 1.0
        negate = max(0, negate - 1)
    total = sum(scores.values())
    if total == 0 and relief == 0:
        label, valence, arousal = "neutral", 0.0, EMOTIONS["neutral"][1]
    elif total == 0:
        label, valence, arousal = "neutral", min(0.3, 0.15 * relief), 0.3
    else:
        label = max(scores, key=lambda e: (scores[e], -list(scores).index(e)))
        valence = sum(scores[e] * EMOTIONS[e][0] for e in scores) / total
        arousal = sum(scores[e] * EMOTIONS[e][1] for e in scores) / total
        valence += 0.15 * relief / (total + relief)
    arousal = min(1.0, arousal + 0.1 * min(exclaims, 3) + 0.05 * min(caps, 4))
    intensity = min(1.0, (total + relief) / max(1, len([t for t in tokens if t not in "!?"])) * 2.0)
    return {"emotion": label, "valence": round(max(-1.0, min(1.0, valence)), 3), "arousal": round(arousal, 3),
            "intensity": round(intensity, 3), "scores": {e: round(s, 3) for e, s in scores.items() if s},
            "cues": cues}


# ---- prosody ---------------------------------------------------------------------------------------------
FRAME = RATE * 20 // 1000  # 20 ms


def prosody(pcm: bytes, voiced_db: float = -40.0) -> dict:
    """Prosody of 16 kHz 16-bit PCM from 20 ms frames: level (dBFS), zero-crossing pitch of the voiced frames
    (mean, spread, range in semitones, slope in semitones per second), voiced ratio and voice onsets per second."""
    samples = from_pcm(pcm)
    n = len(samples) // FRAME
    if n == 0:
        raise BadRequest("need at least 20 ms of audio")
    levels, pitches, times = [], [], []
    onsets, was_voiced = 0, False
    for i in range(n):
        frame = samples[i * FRAME:(i + 1) * FRAME]
        db = level_db(frame)
        levels.append(db)
        voiced = db > voiced_db
        if voiced:
            crossings = sum(1 for a, b in zip(frame, frame[1:]) if (a < 0) != (b < 0))
            hz = crossings * RATE / (2.0 * len(frame))
            if 50.0 <= hz <= 2000.0:
                pitches.append(hz)
                times.append(i * 0.02)
        onsets += voiced and not was_voiced
        was_voiced = voiced
    voiced_levels = [db for db in levels if db > voiced_db]
    out = {"duration_ms": n * 20, "frames": n, "voiced_ratio": round(len(voiced_levels) / n, 3),
           "level_db": round(sum(voiced_levels) / len(voiced_levels), 2) if voiced_levels else -100.0,
           "peak_db": round(max(levels), 2), "onsets_per_s": round(onsets / (n * 0.02), 2),
           "pitch_hz": None, "pitch_std_hz": None, "pitch_range_st": None, "pitch_slope_st_s": None}
    if pitches:
        mean = sum(pitches) / len(pitches)
        semis = [12.0 * math.log2(p / mean) for p in pitches]
        slope = 0.0
        if len(times) > 1:
            mt, ms = sum(times) / len(times), sum(semis) / len(semis)
            sxx = sum((t - mt) ** 2 for t in times)
            slope = sum((t - mt) * (s - ms) for t, s in zip(times, semis)) / sxx if sxx else 0.0
        out.update(pitch_hz=round(mean, 1),
                   pitch_std_hz=round(math.sqrt(sum((p - mean) ** 2 for p in pitches) / len(pitches)), 1),
                   pitch_range_st=round(max(semis) - min(semis), 2), pitch_slope_st_s=round(slope, 2))
    return out


def prosody_arousal(p: dict) -> float:
    """Arousal 0..1 from prosody: loudness, pitch height and pitch movement."""
    if p["pitch_hz"] is None:
        return round(max(0.0, min(1.0, (p["level_db"] + 50.0) / 40.0)) * 0.5, 3)
    loud = max(0.0, min(1.0, (p["level_db"] + 40.0) / 30.0))  # -40 dBFS quiet .. -10 dBFS loud
    high = max(0.0, min(1.0, (p["pitch_hz"] - 100.0) / 300.0))  # 100 Hz low .. 400 Hz high
    lively = max(0.0, min(1.0, (p["pitch_range_st"] or 0.0) / 12.0))  # an octave of movement is lively
    return round(0.5 * loud + 0.3 * high + 0.2 * lively, 3)


# ---- EmotionEngine ---------------------------------------------------------------------------------------
class EmotionEngine(CatalogAgent):
    """Emotion from text and voice.

    Real: lexicon-based emotion analysis of text (joy, sadness, anger, fear, surprise, disgust or neutral,
    with negation, intensifiers, exclamations and capitals; see `analyze_text`), mapped to valence and
    arousal; fused with prosodic arousal when a voice's prosody is given (ToneDetector measures it);
    per-emotion counts pushed to ObservabilityHub. Stands in: the lexicon for a trained emotion model,
    `weights_mb` of held memory for its weights.
    """

    CAPABILITIES = ("emotion.analyze",)

    def setup(self) -> None:
        self.hold_weights()
        self.voice_weight = float(self.config.get("voice_weight", 0.4))
        super().setup()

    def handle_analyze(self, body: Any) -> dict:
        """{text?, prosody?: {arousal}} -> {emotion, valence, arousal, intensity, scores, cues, sources}."""
        if isinstance(body, str):
            body = {"text": body}
        text = field(body, "text", str, None)
        voice = field(body, "prosody", dict, None)
        if text is None and voice is None:
            raise BadRequest("give text, prosody, or both")
        out = analyze_text(text) if text is not None else {
            "emotion": "neutral", "valence": 0.0, "arousal": 0.3, "intensity": 0.0, "scores": {}, "cues": []}
        sources = ["text"] if text is not None else []
        if voice is not None:
            arousal = field(voice, "arousal", float)
            w = self.voice_weight if text is not None else 1.0
            out["arousal"] = round((1 - w) * out["arousal"] + w * arousal, 3)
            sources.append("voice")
            if out["emotion"] == "neutral" and arousal >= 0.7:  # a raised voice with no words of feeling
                out["emotion"] = "surprise" if out["valence"] >= 0 else "anger"
        out["sources"] = sources
        self.counters[f"emotion.{out['emotion']}"] += 1
        return out


class _UsesEngine(CatalogAgent):
    def analyze(self, text: str | None = None, arousal: float | None = None) -> dict:
        body: dict = {}
        if text is not None:
            body["text"] = text
        if arousal is not None:
            body["prosody"] = {"arousal": arousal}
        return self.call(ENGINE, "analyze", body, timeout=3.0)


def mood_label(valence: float, arousal: float) -> str:
    if valence >= 0.2:
        return "excited" if arousal >= 0.55 else "content"
    if valence <= -0.2:
        return "stressed" if arousal >= 0.55 else "down"
    return "neutral"


# ---- MoodTrackerAgent ------------------------------------------------------------------------------------
class MoodTrackerAgent(_UsesEngine):
    """A person's mood over time.

    Real: each utterance's valence and arousal (from EmotionEngine) update the person's mood as an
    exponential moving average (`alpha`); the mood is named by its quadrant (excited, content, stressed,
    down, neutral), and SystemDigitalTwin's trend over the person's recent valences says whether it is
    improving or worsening. Stands in: nothing beyond EmotionEngine's lexicon.
    """

    CAPABILITIES = ("emotion.mood",)

    def setup(self) -> None:
        self.alpha = float(self.config.get("alpha", 0.3))
        self.people: dict[str, dict] = {}
        super().setup()

    def handle_observe(self, body: Any) -> dict:
        """{person, text} -> the utterance's emotion and the person's updated mood."""
        person, text = field(body, "person", str), field(body, "text", str)
        e = self.analyze(text)
        m = self.people.get(person)
        if m is None:
            m = self.people[person] = {"valence": e["valence"], "arousal": e["arousal"], "history": [], "n": 0}
        else:
            m["valence"] = (1 - self.alpha) * m["valence"] + self.alpha * e["valence"]
            m["arousal"] = (1 - self.alpha) * m["arousal"] + self.alpha * e["arousal"]
        m["history"] = (m["history"] + [e["valence"]])[-32:]
        m["n"] += 1
        self.counters["observations"] += 1
        return {"person": person, "emotion": e["emotion"], "mood": mood_label(m["valence"], m["arousal"]),
                "valence": round(m["valence"], 3), "arousal": round(m["arousal"], 3)}

    def handle_mood(self, body: Any) -> dict:
        """{person} -> {mood, valence, arousal, trend: improving | worsening | steady, observations}."""
        person = field(body, "person", str)
        m = self.people.get(person)
        if m is None:
            return {"person": person, "mood": "unknown", "observations": 0, "trend": None}
        trend = "steady"
        if len(m["history"]) >= 3:
            slope = self.call(TWIN, "predict", {"series": m["history"][-8:]}, timeout=2.0)["slope"]
            trend = "improving" if slope > 0.05 else "worsening" if slope < -0.05 else "steady"
        return {"person": person, "mood": mood_label(m["valence"], m["arousal"]), "valence": round(m["valence"], 3),
                "arousal": round(m["arousal"], 3), "trend": trend, "observations": m["n"]}


# ---- HumanAwarenessAgent ---------------------------------------------------------------------------------
class HumanAwarenessAgent(_UsesEngine):
    """Who is here, who has the floor, and who may need attention.

    Real: a presence table driven by events (arrived, seen, spoke, left) on a logical clock; people not
    seen or heard for `absent_after` events count as gone; what a person says is read by EmotionEngine,
    and `scene` names the attention target (the latest speaker present) and the people whose last
    utterance was distressed (valence at or below `distress_valence`). Stands in: events for the camera
    and microphone that would produce them.
    """

    CAPABILITIES = ("emotion.awareness", "presence.people")
    EVENTS = ("arrived", "seen", "spoke", "left")

    def setup(self) -> None:
        self.absent_after = int(self.config.get("absent_after", 20))
        self.distress = float(self.config.get("distress_valence", -0.4))
        self.people: dict[str, dict] = {}
        self.clock = 0
        super().setup()

    def handle_observe(self, body: Any) -> dict:
        """{person, event: arrived|seen|spoke|left, text?} -> the person's state."""
        person, event = field(body, "person", str), field(body, "event", str)
        if event not in self.EVENTS:
            raise BadRequest(f"event must be one of {', '.join(self.EVENTS)}")
        self.clock += 1
        p = self.people.setdefault(person, {"present": False, "last_seen": 0, "last_spoke": None, "emotion": None,
                                            "valence": None})
        p["present"] = event != "left"
        p["last_seen"] = self.clock
        if event == "spoke":
            p["last_spoke"] = self.clock
            text = field(body, "text", str, None)
            if text:
                e = self.analyze(text)
                p["emotion"], p["valence"] = e["emotion"], e["valence"]
        self.counters[f"event.{event}"] += 1
        return {"person": person, **p}

    def handle_scene(self, body: Any) -> dict:
        """-> {present, attention, needs_attention, clock}."""
        present = sorted(n for n, p in self.people.items()
                         if p["present"] and self.clock - p["last_seen"] < self.absent_after)
        speakers = [n for n in present if self.people[n]["last_spoke"] is not None]
        attention = max(speakers, key=lambda n: self.people[n]["last_spoke"]) if speakers else None
        distressed = [n for n in present if self.people[n]["valence"] is not None
                      and self.people[n]["valence"] <= self.distress]
        return {"present": present, "attention": attention, "needs_attention": distressed, "clock": self.clock}


# ---- ToneDetector ----------------------------------------------------------------------------------------
def tone_of(p: dict, arousal: float) -> str:
    if p["pitch_hz"] is None:
        return "silent" if p["voiced_ratio"] == 0 else "whisper"
    if (p["pitch_slope_st_s"] or 0) > 6 and p["duration_ms"] >= 200:
        return "questioning"
    if arousal >= 0.7:
        return "excited" if (p["pitch_range_st"] or 0) >= 3 else "tense"
    if arousal <= 0.3:
        return "subdued"
    return "calm" if (p["pitch_range_st"] or 0) < 3 else "animated"


class ToneDetector(_UsesEngine):
    """Tone of voice from audio.

    Real: prosody measured on the PCM (see `prosody`: level, zero-crossing pitch, pitch range and slope,
    voiced ratio, onsets), prosodic arousal, a tone name (questioning, excited, tense, animated, calm,
    subdued, whisper, silent) by rules on those features, and the emotion EmotionEngine gives when the
    prosody is fused with the transcript (if one is given). Stands in: rules for a trained paralinguistic
    model, `weights_mb` of held memory for its weights.
    """

    CAPABILITIES = ("emotion.tone", "audio.prosody")

    def setup(self) -> None:
        self.hold_weights()
        super().setup()

    def handle_detect(self, body: Any) -> dict:
        """{pcm, text?} -> {tone, arousal, prosody, emotion}."""
        p = prosody(field(body, "pcm", bytes))
        arousal = prosody_arousal(p)
        e = self.analyze(field(body, "text", str, None), arousal)
        self.counters["detections"] += 1
        return {"tone": tone_of(p, arousal), "arousal": arousal, "prosody": p, "emotion": e["emotion"],
                "valence": e["valence"]}


# ---- VoiceProfilingAgent ---------------------------------------------------------------------------------
def voice_print(p: dict) -> list[float]:
    """A speaker's prosodic print: pitch height (octaves), pitch spread (semitones), level (tens of dB)."""
    if p["pitch_hz"] is None:
        raise BadRequest("no voiced audio to profile")
    spread = 12.0 * math.log2(1.0 + (p["pitch_std_hz"] or 0.0) / p["pitch_hz"])
    return [math.log2(p["pitch_hz"] / 100.0), spread / 12.0, p["level_db"] / 40.0]


class VoiceProfilingAgent(_UsesEngine):
    """Who is speaking, and in what state, from the voice.

    Real: enrolment of a speaker's voice print (mean pitch in octaves, pitch spread, level; averaged over
    the samples enrolled), identification by the nearest print within `max_distance`, and the speaker's
    state from EmotionEngine fed with the sample's prosodic arousal. Stands in: three prosodic features
    for a speaker-embedding network, `weights_mb` of held memory for its weights.
    """

    CAPABILITIES = ("emotion.voice_profile", "audio.speaker_id")

    def setup(self) -> None:
        self.hold_weights()
        self.max_distance = float(self.config.get("max_distance", 0.25))
        self.profiles: dict[str, dict] = {}
        super().setup()

    def handle_enroll(self, body: Any) -> dict:
        """{name, pcm} -> the print, averaged with earlier samples of the same speaker."""
        name = field(body, "name", str)
        vp = voice_print(prosody(field(body, "pcm", bytes)))
        prof = self.profiles.get(name)
        if prof is None:
            prof = self.profiles[name] = {"print": vp, "samples": 1}
        else:
            k = prof["samples"]
            prof["print"] = [(a * k + b) / (k + 1) for a, b in zip(prof["print"], vp)]
            prof["samples"] = k + 1
        return {"name": name, "samples": prof["samples"], "print": [round(x, 4) for x in prof["print"]],
                "speakers": len(self.profiles)}

    def handle_identify(self, body: Any) -> dict:
        """{pcm} -> {speaker or None, distance, pitch_hz, state (EmotionEngine on the prosody)}."""
        p = prosody(field(body, "pcm", bytes))
        vp = voice_print(p)
        best, best_d = None, math.inf
        for name in sorted(self.profiles):
            d = math.dist(vp, self.profiles[name]["print"])
            if d < best_d:
                best, best_d = name, d
        e = self.analyze(None, prosody_arousal(p))
        speaker = best if best_d <= self.max_distance else None
        self.counters["identified" if speaker else "unknown"] += 1
        return {"speaker": speaker, "nearest": best, "distance": None if best is None else round(best_d, 4),
                "pitch_hz": p["pitch_hz"], "state": e["emotion"], "arousal": e["arousal"]}


# ---- EmpathyAgent ----------------------------------------------------------------------------------------
RESPONSES = {
    "sadness": ("I'm sorry you're going through this{about}.",
                "That sounds hard{about}. I'm here if you want to talk."),
    "anger": ("That sounds really frustrating{about}.", "I understand why that would make you angry{about}."),
    "fear": ("That sounds worrying{about}. Let's take it one step at a time.",
             "It's okay to feel anxious{about}. You're not alone in this."),
    "joy": ("That's wonderful{about}!", "I'm really happy for you{about}!"),
    "surprise": ("Wow, that's unexpected{about}!", "That must have caught you off guard{about}."),
    "disgust": ("That sounds really unpleasant{about}.", "Ugh, I can see why that put you off{about}."),
    "neutral": ("I see. Tell me more.", "Got it. How do you feel about it?"),
}
VOICE = {"sadness": {"rate": 0.85, "pitch_st": -2}, "anger": {"rate": 0.9, "pitch_st": -1},
         "fear": {"rate": 0.9, "pitch_st": 0}, "joy": {"rate": 1.1, "pitch_st": 2},
         "surprise": {"rate": 1.05, "pitch_st": 3}, "disgust": {"rate": 0.95, "pitch_st": -1},
         "neutral": {"rate": 1.0, "pitch_st": 0}}
_ABOUT = re.compile(r"\b(about|with|of) (?:(my|our|the|your|his|her|their) )?([a-z]+)", re.I)
_REFLECT = {"my": "your", "our": "your", "your": "my"}


def what_about(text: str) -> str:
    """' about your exam' for '... about my exam': what a feeling is about, pronouns reflected."""
    m = _ABOUT.search(text)
    if m is None or m.group(3).lower() in STOPWORDS:
        return ""
    owner = (m.group(2) or "").lower()
    owner = _REFLECT.get(owner, owner)
    return f" {m.group(1).lower()} {owner + ' ' if owner else ''}{m.group(3).lower()}"


class EmpathyAgent(_UsesEngine):
    """Empathetic replies, spoken.

    Real: EmotionEngine reads the person's text; the reply is chosen from templates for that emotion (the
    stronger variant when the intensity is high), mirrors what the feeling is about ("about my exam" ->
    "about your exam", "with the neighbours"), comes with voice settings for the emotion (slower and
    lower for sadness), and is spoken through StreamingTTSAgent when asked. Stands in: templates for a
    dialogue model.
    """

    CAPABILITIES = ("emotion.empathy",)

    def setup(self) -> None:
        self.strong_at = float(self.config.get("strong_at", 0.5))
        super().setup()

    def handle_respond(self, body: Any) -> dict:
        """{text, speak?} -> {reply, emotion, voice, playback?: StreamingTTSAgent's playback}."""
        text = body if isinstance(body, str) else field(body, "text", str)
        e = self.analyze(text)
        about = what_about(text)
        weak, strong = RESPONSES[e["emotion"]]
        template = strong if e["intensity"] >= self.strong_at else weak
        reply = template.format(about=about)
        out = {"reply": reply, "emotion": e["emotion"], "intensity": e["intensity"], "voice": VOICE[e["emotion"]],
               "playback": None}
        if isinstance(body, dict) and field(body, "speak", bool, False):
            out["playback"] = self.call(STREAMING_TTS, "speak", {"text": reply}, timeout=10.0)
        self.counters[f"reply.{e['emotion']}"] += 1
        return out


# ---- EmotionSynthesisAgent -------------------------------------------------------------------------------
# emotion -> rate factor, pitch shift (semitones), volume (dB), pitch range factor
EXPRESSION = {"joy": (1.1, 2.0, 2.0, 1.4), "sadness": (0.85, -3.0, -4.0, 0.6), "anger": (1.05, -1.0, 5.0, 1.2),
              "fear": (1.15, 2.5, -1.0, 1.3), "surprise": (1.05, 4.0, 3.0, 1.6), "disgust": (0.9, -2.0, 0.0, 0.8),
              "neutral": (1.0, 0.0, 0.0, 1.0)}


class EmotionSynthesisAgent(ModelBacked):
    """Expressive speech plans: how to say a text with an emotion.

    Real: prosody for an emotion at an intensity (rate, pitch shift, volume, pitch range, interpolated
    from neutral), a per-word pitch contour (declination, a rise at the end when RequestCoordinator
    classifies the text as a question, emphasis on emotion words), and SSML carrying it. The model is
    pinned in ModelManagerSuite and each plan is one use. Stands in: rules for an expressive TTS model.
    """

    CAPABILITIES = ("emotion.synthesis", "speech.expressive")
    MODEL = "emotion-prosody"

    def setup(self) -> None:
        self.load_model()
        super().setup()

    def handle_synthesize(self, body: Any) -> dict:
        """{text, emotion, intensity?: 0..1} -> {prosody, contour_st: per word, ssml, intent}."""
        text, emotion = field(body, "text", str), field(body, "emotion", str)
        if emotion not in EXPRESSION:
            raise BadRequest(f"emotion must be one of {', '.join(EXPRESSION)}")
        k = field(body, "intensity", float, 1.0)
        if not 0.0 <= k <= 1.0:
            raise BadRequest("intensity must be between 0 and 1")
        words = text.split()
        if not words:
            raise BadRequest("nothing to say")
        rate, shift, volume, spread = (1 + (x - 1) * k if i in (0, 3) else x * k
                                       for i, x in enumerate(EXPRESSION[emotion]))
        c = self.call(RC, "classify", {"text": text}, timeout=2.0)
        self.use_model()
        question = c["intent"] == "question" or text.rstrip().endswith("?")
        contour = []
        for i, w in enumerate(words):
            st = shift - 2.0 * i / max(1, len(words) - 1) * spread  # declination across the phrase
            if LEXICON.get(re.sub(r"[^a-z']", "", w.lower())):
                st += 2.0 * spread  # emphasis on the emotion's words
            if question and i == len(words) - 1:
                st = shift + 4.0 * spread  # the final rise of a question
            contour.append(round(st, 2))
        pros = {"rate": round(rate, 3), "pitch_st": round(shift, 2), "volume_db": round(volume, 2),
                "range": round(spread, 3)}
        ssml = (f'<speak><prosody rate="{round(rate * 100)}%" pitch="{shift:+.1f}st" volume="{volume:+.1f}dB">'
                f'{_xml(text)}</prosody></speak>')
        self.counters[f"synth.{emotion}"] += 1
        return {"text": text, "emotion": emotion, "intensity": k, "prosody": pros, "contour_st": contour,
                "question": question, "intent": c["intent"], "ssml": ssml}


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
