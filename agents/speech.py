"""Reference agents of the speech group: AudioCapture, FusedAudioPreprocessor, STTService,
StreamingSpeechRecognition, TTSService, StreamingTTSAgent.

Audio is 16-bit signed little-endian mono PCM at 16 kHz, carried as bytes. Speech stands in as a
tone code: TTSService says each letter, digit or apostrophe as a 40 ms tone of its own frequency
(400 Hz + 60 Hz per symbol index), 10 ms apart, with 50 ms more between words; STTService finds the
tones by their energy and names each by its frequency (zero crossings, then Goertzel filters), so that
STT(TTS(text)) gives back the normalised text, through real signal processing, without a model.
"""
from __future__ import annotations

import math
import operator
import random
import re
import sys
from array import array
from collections import OrderedDict, deque
from typing import Any

from sunsetd.agent import BadRequest

from agents.infrastructure import TWIN, CatalogAgent, field

MMS = "ModelManagerSuite"
CAPTURE = "AudioCapture"
PREPROCESSOR = "FusedAudioPreprocessor"
STT = "STTService"
TTS = "TTSService"

RATE = 16_000
SYMBOLS = "abcdefghijklmnopqrstuvwxyz0123456789'"
BASE_HZ, STEP_HZ = 400.0, 60.0
SYMBOL_SAMPLES = RATE * 40 // 1000  # one symbol's tone
GAP_SAMPLES = RATE * 10 // 1000  # silence after each symbol
SPACE_SAMPLES = RATE * 50 // 1000  # extra silence between words
FADE_SAMPLES = RATE * 5 // 1000  # raised-cosine edges, so a tone starts and ends without a click
SUB = RATE * 5 // 1000  # STT's analysis step: 5 ms
_NOT_SPOKEN = re.compile(f"[^{re.escape(SYMBOLS)}]+")


def symbol_hz(index: int) -> float:
    return BASE_HZ + STEP_HZ * index


def normalize_text(text: str) -> str:
    """What the tone code can say: lower case letters, digits and apostrophes, words one space apart."""
    return " ".join(_NOT_SPOKEN.sub(" ", text.lower()).split())


def to_pcm(samples: array) -> bytes:
    if sys.byteorder == "big":
        samples = array("h", samples)
        samples.byteswap()
    return samples.tobytes()


def from_pcm(pcm: bytes) -> array:
    if len(pcm) % 2:
        raise BadRequest(f"PCM must be 16-bit samples: {len(pcm)} bytes is odd")
    samples = array("h")
    samples.frombytes(pcm)
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


def mean_square(samples: array | list) -> float:
    return sum(map(operator.mul, samples, samples)) / len(samples) if len(samples) else 0.0


def level_db(samples: array | list) -> float:
    """RMS level in dB relative to full scale, floored at -100."""
    ms = mean_square(samples)
    return max(-100.0, 10.0 * math.log10(ms / (32768.0 * 32768.0))) if ms > 0 else -100.0


def goertzel_power(samples: array | list, hz: float) -> float:
    """Power of one frequency in the samples (a single DFT bin at any frequency)."""
    coeff = 2.0 * math.cos(2.0 * math.pi * hz / RATE)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    return s1 * s1 + s2 * s2 - coeff * s1 * s2


def tone(hz: float, n: int, amp: float, fade: int = FADE_SAMPLES) -> array:
    peak = amp * 32767.0
    w = 2.0 * math.pi * hz / RATE
    out = array("h", bytes(2 * n))
    for i in range(n):
        edge = min(i, n - 1 - i)
        env = 0.5 - 0.5 * math.cos(math.pi * edge / fade) if edge < fade else 1.0
        out[i] = int(peak * env * math.sin(w * i))
    return out


class ModelBacked(CatalogAgent):
    """A reference agent whose "model" is memory it holds, admitted by SystemDigitalTwin and pinned in
    ModelManagerSuite's budget (which drops the pin when sunsetd says the agent no longer runs)."""

    MODEL = ""

    def load_model(self) -> None:
        mb = int(self.config.get("weights_mb", 0))
        fit = self.call(TWIN, "can_fit", {"mb": mb}, timeout=3.0)
        if not fit.get("fits"):
            raise RuntimeError(f"{self.MODEL} ({mb} MB) does not fit: {fit}")
        self.hold_weights()
        self.call(MMS, "register_model", {"model": self.MODEL, "mb": mb, "owner": self.name}, timeout=3.0)

    def use_model(self) -> None:
        self.call(MMS, "use", {"model": self.MODEL}, timeout=2.0)


# ---- AudioCapture ----------------------------------------------------------------------------------------
class AudioCapture(CatalogAgent):
    """PCM frames in.

    Real: per-stream capture buffers of fixed frames (`frame_ms`, 20 ms) filled from pushed PCM, bounded
    (`max_buffer_ms`: the oldest frames are dropped, counted and reported to ObservabilityHub), read in
    order with each frame's absolute index. Stands in: there is no microphone; `capture` synthesises
    what one would hear (tones, silence, seeded noise) and pushes it like any other source.
    """

    CAPABILITIES = ("audio.capture",)

    def setup(self) -> None:
        self.frame_ms = int(self.config.get("frame_ms", 20))
        self.frame_bytes = 2 * RATE * self.frame_ms // 1000
        self.max_buffer_ms = int(self.config.get("max_buffer_ms", 10_000))
        self.streams: dict[str, dict] = {}
        self.dropped_total = 0
        super().setup()

    def _stream(self, name: str, max_ms: int | None = None) -> dict:
        s = self.streams.get(name)
        if s is None:
            s = self.streams[name] = {"frames": deque(), "pending": bytearray(), "next": 0, "dropped": 0,
                                      "max_frames": max(1, (max_ms or self.max_buffer_ms) // self.frame_ms)}
        elif max_ms is not None:
            s["max_frames"] = max(1, max_ms // self.frame_ms)
        return s

    def handle_open(self, body: Any) -> dict:
        """{stream, max_ms?}: create a stream (or change its buffer bound)."""
        name = field(body, "stream", str)
        s = self._stream(name, field(body, "max_ms", int, None))
        return {"stream": name, "max_frames": s["max_frames"], "frame_ms": self.frame_ms}

    def _push(self, name: str, pcm: bytes) -> dict:
        if len(pcm) % 2:
            raise BadRequest(f"PCM must be 16-bit samples: {len(pcm)} bytes is odd")
        s = self._stream(name)
        s["pending"] += pcm
        added = 0
        fb = self.frame_bytes
        while len(s["pending"]) >= fb:
            s["frames"].append((s["next"], bytes(s["pending"][:fb])))
            del s["pending"][:fb]
            s["next"] += 1
            added += 1
        dropped = 0
        while len(s["frames"]) > s["max_frames"]:
            s["frames"].popleft()
            dropped += 1
        if dropped:
            s["dropped"] += dropped
            self.dropped_total += dropped
            self.report({"dropped_frames": self.dropped_total})
        self.counters["frames_in"] += added
        return {"stream": name, "frames_added": added, "buffered": len(s["frames"]), "dropped": dropped}

    def handle_push(self, body: Any) -> dict:
        """{stream, pcm, rate?}: append PCM to a stream; whole frames become readable."""
        rate = field(body, "rate", int, RATE)
        if rate != RATE:
            raise BadRequest(f"rate must be {RATE} Hz, got {rate}")
        return self._push(field(body, "stream", str), field(body, "pcm", bytes))

    def handle_capture(self, body: Any) -> dict:
        """{stream, segments: [{kind: tone|silence, ms, hz?, amp?}], noise_amp?, seed?}: what a microphone
        would hear: the segments one after another, plus seeded uniform noise throughout."""
        segments = field(body, "segments", list)
        parts = array("h")
        for seg in segments:
            kind, n = field(seg, "kind", str), RATE * field(seg, "ms", int) // 1000
            if kind == "tone":
                parts.extend(tone(field(seg, "hz", float), n, field(seg, "amp", float, 0.3)))
            elif kind == "silence":
                parts.extend(array("h", bytes(2 * n)))
            else:
                raise BadRequest(f"segment kind must be tone or silence, got {kind!r}")
        noise = field(body, "noise_amp", float, 0.0)
        if noise > 0:
            rng, scale = random.Random(field(body, "seed", int, 0)), noise * 32767.0
            for i in range(len(parts)):
                parts[i] = max(-32768, min(32767, parts[i] + int(rng.uniform(-scale, scale))))
        result = self._push(field(body, "stream", str), to_pcm(parts))
        result["samples"] = len(parts)
        return result

    def handle_read(self, body: Any) -> dict:
        """{stream, max_frames?} -> the oldest buffered frames, concatenated, with the first one's index."""
        name = field(body, "stream", str)
        s = self._stream(name)
        n = min(field(body, "max_frames", int, 500), len(s["frames"]))
        frames = [s["frames"].popleft() for _ in range(n)]
        self.counters["frames_out"] += n
        return {"stream": name, "pcm": b"".join(f for _, f in frames), "frames": n,
                "first_frame": frames[0][0] if frames else s["next"] - len(s["frames"]),
                "frame_ms": self.frame_ms, "rate": RATE, "remaining": len(s["frames"])}

    def handle_streams(self, body: Any) -> dict:
        return {name: {"buffered": len(s["frames"]), "dropped": s["dropped"], "frames_total": s["next"],
                       "max_frames": s["max_frames"]} for name, s in sorted(self.streams.items())}


# ---- FusedAudioPreprocessor ------------------------------------------------------------------------------
class FusedAudioPreprocessor(CatalogAgent):
    """Noise gate and voice activity detection.

    Real: per 20 ms frame, the RMS level in dBFS against an adaptive noise floor (calibrated on a
    stream's first batch as its 10th percentile, then following the quiet frames, rising at most
    `rise_db` per frame); a frame is voice when it is `gate_db` above the floor (and above `min_db`),
    held `hangover_frames` longer; frames that are not voice are zeroed (the noise gate). Reads its
    frames from AudioCapture. Stands in: energy VAD stands in for a neural VAD.
    """

    CAPABILITIES = ("audio.vad", "audio.noise_gate")

    def setup(self) -> None:
        self.gate_db = float(self.config.get("gate_db", 10.0))
        self.min_db = float(self.config.get("min_db", -50.0))
        self.rise_db = float(self.config.get("rise_db", 0.5))
        self.hangover = int(self.config.get("hangover_frames", 2))
        self.streams: dict[str, dict] = {}
        super().setup()

    def _analyse(self, state: dict, pcm: bytes, frame_samples: int, first_frame: int) -> dict:
        samples = from_pcm(pcm)
        n = len(samples) // frame_samples
        frames = [samples[i * frame_samples:(i + 1) * frame_samples] for i in range(n)]
        levels = [level_db(f) for f in frames]
        if state.get("floor") is None and levels:
            state["floor"] = sorted(levels)[len(levels) // 10]
        mask, gated, segments = [], array("h"), []
        silence = array("h", bytes(2 * frame_samples))
        for i, (frame, level) in enumerate(zip(frames, levels)):
            threshold = max(state["floor"] + self.gate_db, self.min_db)
            if level > threshold:
                voiced, state["hang"] = True, self.hangover
            elif state.get("hang", 0) > 0:
                voiced, state["hang"] = True, state["hang"] - 1
            else:
                voiced = False
            if level < state["floor"]:
                state["floor"] = level
            elif level <= threshold:
                state["floor"] = min(level, state["floor"] + self.rise_db)
            mask.append(1 if voiced else 0)
            gated.extend(frame if voiced else silence)
            if voiced and (not segments or segments[-1][1] != first_frame + i):
                segments.append([first_frame + i, first_frame + i + 1])
            elif voiced:
                segments[-1][1] += 1
        return {"frames": n, "voiced": sum(mask), "mask": mask, "segments": segments, "pcm": to_pcm(gated),
                "levels_db": [round(v, 1) for v in levels],
                "noise_floor_db": round(state["floor"], 1) if state.get("floor") is not None else None,
                "first_frame": first_frame}

    def handle_process(self, body: Any) -> dict:
        """{stream, max_frames?}: read frames from AudioCapture; gate them and mark the voiced ones."""
        stream = field(body, "stream", str)
        got = self.call(CAPTURE, "read", {"stream": stream, "max_frames": field(body, "max_frames", int, 500)},
                        timeout=3.0)
        frame_samples = RATE * got["frame_ms"] // 1000
        out = self._analyse(self.streams.setdefault(stream, {}), got["pcm"], frame_samples, got["first_frame"])
        out.update(stream=stream, frame_ms=got["frame_ms"], remaining=got["remaining"])
        self.counters["frames"] += out["frames"]
        self.counters["voiced_frames"] += out["voiced"]
        return out

    def handle_vad(self, body: Any) -> dict:
        """{pcm, frame_ms?}: the same analysis on PCM given whole, with a fresh noise floor."""
        frame_ms = field(body, "frame_ms", int, 20)
        return self._analyse({}, field(body, "pcm", bytes), RATE * frame_ms // 1000, 0)

    def handle_reset(self, body: Any) -> dict:
        stream = field(body, "stream", str)
        return {"stream": stream, "reset": self.streams.pop(stream, None) is not None}


# ---- STTService ------------------------------------------------------------------------------------------
def decode_tones(samples: array) -> tuple[str, float, int]:
    """(text, mean confidence, symbols) of a tone-coded signal: segment by energy, name each tone."""
    n_sub = len(samples) // SUB
    energy = [mean_square(samples[i * SUB:(i + 1) * SUB]) for i in range(n_sub)]
    peak = max(energy, default=0.0)
    threshold = max(peak * 0.01, 300.0 ** 2)  # 20 dB under the loudest 5 ms, and above -41 dBFS
    runs, start = [], None
    for i, e in enumerate(energy + [0.0]):
        if e > threshold and start is None:
            start = i
        elif e <= threshold and start is not None:
            if i - start >= 3:  # 15 ms at least: shorter bursts are clicks, not symbols
                runs.append((start, i))
            start = None
    text, confidences, prev_end = [], [], None
    for s, e in runs:
        if prev_end is not None and s - prev_end >= 4:  # 20 ms of silence or more: a word boundary
            text.append(" ")
        prev_end = e
        seg = samples[(s + 1) * SUB:(e - 1) * SUB] if e - s >= 5 else samples[s * SUB:e * SUB]
        crossings = sum(1 for a, b in zip(seg, seg[1:]) if (a < 0) != (b < 0))
        estimate = round((crossings * RATE / (2.0 * len(seg)) - BASE_HZ) / STEP_HZ)
        estimate = min(max(estimate, 0), len(SYMBOLS) - 1)
        candidates = range(max(0, estimate - 2), min(len(SYMBOLS), estimate + 3))
        powers = {c: goertzel_power(seg, symbol_hz(c)) for c in candidates}
        best = max(powers, key=powers.get)
        text.append(SYMBOLS[best])
        confidences.append(powers[best] / (sum(powers.values()) or 1.0))
    return "".join(text), (sum(confidences) / len(confidences) if confidences else 0.0), len(runs)


class STTService(ModelBacked):
    """Speech to text.

    Real: decoding of the tone code TTSService speaks: 5 ms energy frames find each symbol and the word
    gaps; zero crossings estimate each tone's frequency and a bank of Goertzel filters around it picks the
    symbol; the confidence is the winning filter's share of the power. The model is admitted by
    SystemDigitalTwin, pinned in ModelManagerSuite, and each transcription counts as one use of it.
    Stands in: the tone code stands in for speech and `weights_mb` of held memory for an acoustic model.
    """

    CAPABILITIES = ("speech.stt",)
    MODEL = "stt-tone-decoder"

    def setup(self) -> None:
        self.load_model()
        super().setup()

    def handle_transcribe(self, body: Any) -> dict:
        """{pcm, rate?} -> {text, confidence, symbols, duration_ms}."""
        rate = field(body, "rate", int, RATE)
        if rate != RATE:
            raise BadRequest(f"rate must be {RATE} Hz, got {rate}")
        samples = from_pcm(field(body, "pcm", bytes))
        self.use_model()
        text, confidence, symbols = decode_tones(samples)
        self.counters["transcriptions"] += 1
        return {"text": text, "confidence": round(confidence, 3), "symbols": symbols,
                "duration_ms": len(samples) * 1000 // RATE}


# ---- StreamingSpeechRecognition --------------------------------------------------------------------------
class StreamingSpeechRecognition(CatalogAgent):
    """Streaming transcripts and wake word.

    Real: pulls gated, voice-marked frames from FusedAudioPreprocessor per stream, gathers each utterance
    from its first voiced frame until `end_silence_ms` of silence, has STTService transcribe it, and
    spots the wake word (`wake_words`), giving the command that follows it. Stands in: `weights_mb` of
    held memory for a wake-word model; the spotting itself is on the transcript.
    """

    CAPABILITIES = ("speech.streaming_stt", "speech.wake_word")

    def setup(self) -> None:
        self.hold_weights()
        self.wake_words = [w.lower() for w in self.config.get("wake_words", ["sunset"])]
        self.end_silence_ms = int(self.config.get("end_silence_ms", 300))
        self.max_utterance_ms = int(self.config.get("max_utterance_ms", 15_000))  # within a request's 1 MiB
        self.streams: dict[str, dict] = {}
        super().setup()

    def _finish(self, state: dict) -> dict:
        pcm = bytes(state["buf"])
        state.update(buf=bytearray(), speaking=False, silence=0)
        t = self.call(STT, "transcribe", {"pcm": pcm}, timeout=5.0)
        words = t["text"].split()
        wake = next((w for w in words if w in self.wake_words), None)
        command = " ".join(words[words.index(wake) + 1:]) if wake else None
        self.counters["utterances"] += 1
        self.counters["wakes"] += wake is not None
        return {"text": t["text"], "confidence": t["confidence"], "wake": wake is not None, "wake_word": wake,
                "command": command, "duration_ms": t["duration_ms"]}

    def handle_listen(self, body: Any) -> dict:
        """{stream, max_frames?}: process what has arrived; final transcripts of finished utterances."""
        stream = field(body, "stream", str)
        got = self.call(PREPROCESSOR, "process", {"stream": stream, "max_frames": field(body, "max_frames", int, 500)},
                        timeout=5.0)
        state = self.streams.setdefault(stream, {"buf": bytearray(), "speaking": False, "silence": 0})
        frame_ms, frame_bytes = got["frame_ms"], 2 * RATE * got["frame_ms"] // 1000
        finals = []
        for i, voiced in enumerate(got["mask"]):
            frame = got["pcm"][i * frame_bytes:(i + 1) * frame_bytes]
            if voiced:
                state.update(speaking=True, silence=0)
                state["buf"] += frame
            elif state["speaking"]:
                state["buf"] += frame
                state["silence"] += 1
                if state["silence"] * frame_ms >= self.end_silence_ms:
                    finals.append(self._finish(state))
                    continue
            if state["speaking"] and len(state["buf"]) >= 2 * RATE * self.max_utterance_ms // 1000:
                finals.append(self._finish(state))  # nobody stops talking for ever: cut, do not grow
        return {"stream": stream, "final": finals, "speaking": state["speaking"],
                "buffered_ms": len(state["buf"]) * 1000 // (2 * RATE)}

    def handle_flush(self, body: Any) -> dict:
        """{stream}: end the utterance in progress now, if any."""
        stream = field(body, "stream", str)
        state = self.streams.get(stream)
        if not state or not state["buf"]:
            return {"stream": stream, "final": []}
        return {"stream": stream, "final": [self._finish(state)]}


# ---- TTSService ------------------------------------------------------------------------------------------
class TTSService(ModelBacked):
    """Text to speech.

    Real: text normalisation and synthesis of the tone code (one raised-cosine-edged 40 ms tone per
    symbol from wavetables made on first use, gaps between symbols and words) as 16 kHz PCM, which STTService
    decodes back. The model is admitted by SystemDigitalTwin, pinned in ModelManagerSuite, and each
    synthesis counts as one use. Stands in: the tone code for a voice, `weights_mb` for a vocoder's weights.
    """

    CAPABILITIES = ("speech.tts",)
    MODEL = "tts-tone-voice"

    def setup(self) -> None:
        self.load_model()
        self.amplitude = float(self.config.get("amplitude", 0.3))
        self.tables: dict[str, bytes] = {}  # symbol -> its tone and gap, made on first use (not at start)
        self.space = bytes(2 * SPACE_SAMPLES)
        self.max_chars = int(self.config.get("max_chars", 500))  # 25 s at most: the reply stays under 1 MiB
        super().setup()

    def _table(self, symbol: str) -> bytes:
        pcm = self.tables.get(symbol)
        if pcm is None:
            pcm = self.tables[symbol] = to_pcm(tone(symbol_hz(SYMBOLS.index(symbol)), SYMBOL_SAMPLES,
                                                    self.amplitude)) + bytes(2 * GAP_SAMPLES)
        return pcm

    def synthesize(self, text: str, pad_ms: int = 0) -> tuple[str, bytes]:
        spoken = normalize_text(text)
        pcm = self.space.join(b"".join(self._table(c) for c in word) for word in spoken.split(" ") if word)
        return spoken, pcm + bytes(2 * (RATE * pad_ms // 1000))

    def handle_synthesize(self, body: Any) -> dict:
        """{text, pad_ms?} -> {text (as spoken), pcm, rate, samples, duration_ms}."""
        text = body if isinstance(body, str) else field(body, "text", str)
        pad_ms = field(body, "pad_ms", int, 0) if isinstance(body, dict) else 0
        if len(text) > self.max_chars:
            raise BadRequest(f"text of {len(text)} characters is over the {self.max_chars}-character limit; "
                             f"split it (StreamingTTSAgent does, by phrase)")
        spoken, pcm = self.synthesize(text, max(0, min(pad_ms, 5000)))
        if not spoken:
            raise BadRequest("nothing to say: the text has no letters or digits")
        self.use_model()
        self.counters["syntheses"] += 1
        return {"text": spoken, "pcm": pcm, "rate": RATE, "samples": len(pcm) // 2,
                "duration_ms": len(pcm) * 1000 // (2 * RATE)}

    def handle_alphabet(self, body: Any) -> dict:
        """The tone code: symbol -> frequency in Hz."""
        return {c: symbol_hz(i) for i, c in enumerate(SYMBOLS)}


# ---- StreamingTTSAgent -----------------------------------------------------------------------------------
class StreamingTTSAgent(CatalogAgent):
    """Streamed playback with a cache.

    Real: splits text into phrases, takes each phrase's audio from an LRU cache bounded in bytes
    (`cache_mb`) or from TTSService, joins phrases with a pause and streams the result as `chunk_ms`
    chunks pulled one by one (`speak`, then `next`), reporting cache figures to ObservabilityHub.
    Stands in: there is no sound card; a chunk pulled is a chunk played.
    """

    CAPABILITIES = ("speech.playback", "speech.tts_cache")
    _PHRASE = re.compile(r"[,.;:!?]+")

    def setup(self) -> None:
        self.cache: OrderedDict[str, bytes] = OrderedDict()
        self.cache_bytes = 0
        self.cache_limit = int(float(self.config.get("cache_mb", 8)) * 1048576)
        self.pause = bytes(2 * RATE * int(self.config.get("phrase_pause_ms", 100)) // 1000)
        self.playbacks: OrderedDict[str, dict] = OrderedDict()
        self.next_id = 0
        super().setup()

    def _phrase_audio(self, phrase: str) -> tuple[bytes, bool]:
        pcm = self.cache.get(phrase)
        if pcm is not None:
            self.cache.move_to_end(phrase)
            self.counters["cache_hits"] += 1
            return pcm, True
        pcm = self.call(TTS, "synthesize", {"text": phrase}, timeout=5.0)["pcm"]
        self.counters["cache_misses"] += 1
        if len(pcm) <= self.cache_limit:
            self.cache[phrase] = pcm
            self.cache_bytes += len(pcm)
            while self.cache_bytes > self.cache_limit:
                _, old = self.cache.popitem(last=False)
                self.cache_bytes -= len(old)
                self.counters["cache_evictions"] += 1
        return pcm, False

    def handle_speak(self, body: Any) -> dict:
        """{text, chunk_ms?} -> a playback id and its size; pull the audio with `next`."""
        text = body if isinstance(body, str) else field(body, "text", str)
        chunk_ms = field(body, "chunk_ms", int, 200) if isinstance(body, dict) else 200
        if not 10 <= chunk_ms <= 5000:
            raise BadRequest("chunk_ms must be between 10 and 5000")
        phrases = [p for p in (normalize_text(x) for x in self._PHRASE.split(text)) if p]
        if not phrases:
            raise BadRequest("nothing to say: the text has no letters or digits")
        hits = 0
        parts = []
        for phrase in phrases:
            pcm, hit = self._phrase_audio(phrase)
            hits += hit
            parts.append(pcm)
        audio = self.pause.join(parts)
        step = 2 * RATE * chunk_ms // 1000
        chunks = deque(audio[i:i + step] for i in range(0, len(audio), step))
        self.next_id += 1
        pid = f"p{self.next_id}"
        self.playbacks[pid] = {"chunks": chunks, "seq": 0}
        while len(self.playbacks) > 16:  # abandoned playbacks do not pile up
            self.playbacks.popitem(last=False)
        return {"id": pid, "phrases": phrases, "chunks": len(chunks), "duration_ms": len(audio) * 1000 // (2 * RATE),
                "cache_hits": hits, "cache_misses": len(phrases) - hits}

    def handle_next(self, body: Any) -> dict:
        """{id} -> the next chunk of a playback: {seq, pcm, last}."""
        pid = field(body, "id", str)
        playback = self.playbacks.get(pid)
        if playback is None:
            raise BadRequest(f"no playback {pid!r} (finished, or never started)")
        pcm, seq = playback["chunks"].popleft(), playback["seq"]
        playback["seq"] += 1
        last = not playback["chunks"]
        if last:
            del self.playbacks[pid]
        self.counters["chunks_played"] += 1
        return {"id": pid, "seq": seq, "pcm": pcm, "last": last}

    def handle_cache(self, body: Any) -> dict:
        stats = {"entries": len(self.cache), "bytes": self.cache_bytes, "limit_bytes": self.cache_limit,
                 "hits": self.counters["cache_hits"], "misses": self.counters["cache_misses"],
                 "evictions": self.counters["cache_evictions"]}
        self.report({"cache_entries": stats["entries"], "cache_bytes": stats["bytes"]})
        return stats
