"""`campus-guide soak`: many visitors, and the faults a kiosk meets in a year, through the real
kiosk in minutes.

The kiosk is the real one: `run_service` (budget check, status file, sd_notify, the watchdog,
the wait for a microphone) around the real loop (`device.kiosk.listen`) on the real models.
Only the sound card is simulated, as in device/replay.py: `SoakMic` plays a seeded, shuffled mix
of clips made with the kiosk's own voices (piper for English, espeak-ng for Korean) - questions,
some with a pause inside, greetings, silence, noise, coughs, a 60-s monologue, clipped and very
quiet questions, an 8 kHz one through the microphone's stream resampler and a stereo one through
the downmix - and `SoakSpeaker` takes the answers.

With faults, each kind in FAULTS is injected at least once, at seeded random turns, through one
thin seam: the pipeline's stage methods are wrapped on the instance for the soak
(`p.asr.transcribe` and the turn-taker's reference to it, `p.llm.stream`, `p.tts.synthesize`),
the simulated sound card misbehaves, and the state folder is blocked or filled. Nothing in the
models is mocked. A stage fault is armed at its turn and fires at the stage's first call after
that (a turn answered without the model carries an LLM fault on to the next one). Where the real
kiosk would exit (the microphone stream ends), the soak starts `run_service` again as systemd's
Restart=on-failure would, with the models still loaded.

Speed: the microphone delivers a clip as fast as the loop takes it (`speed` 0, the default) or
at `speed` x real time, and the speaker "plays" an answer in its duration / speed (0: at once).
The end of a turn is decided on the stream's clock, so pauses keep their length as the kiosk
hears them, while ASR, the model and synthesis take their real time; voice-to-voice is measured
on the wall clock, from the last voiced sample delivered to the first answer sample out. The
half-duplex deafness (the answer, then kiosk.ECHO_TAIL_S) is wall time too, so at a higher speed
it covers more of the stream: the simulated visitor waits until the kiosk listens again
(it flushes the microphone) before the next clip, as a patient visitor would.
"""
from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from campus_guide.config import Config
from campus_guide.errors import UserError

from . import kiosk
from .audio import CHUNK, SAMPLE_RATE, AudioError, _stream_resampler, resample, to_mono
from .budget import rss_mb, trim_heap
from .pipeline import TURN_LOG, Pipeline
from .replay import voiced_end
from .service import MicrophoneMissing, Notifier, Seams, ServiceError, run_service
from .tts import longest_sentence

log = logging.getLogger(__name__)

CHUNK_S = CHUNK / SAMPLE_RATE
LEAD_S = 0.5            # silence before each clip
WAIT_CHUNK_S = 0.01     # the fastest a quiet chunk comes while the kiosk works (no busy loop)
SETTLE_S = 2.5          # stream silence with nothing pending after which a clip had no answer
                        # (longer than turn.opener_wait_s and turn.incomplete_wait_s)
MIC_POLL_S = 0.5        # the kiosk's look for a microphone, sped up for the soak
UNPLUGGED_POLLS = 2     # looks that find no microphone after the stream ended
OVERFLOW_S = 0.4        # audio an overflow loses
MAX_RESTARTS = 20

FAULTS = {
    "asr_raises": "speech recognition raises on every call for one question",
    "llm_raises": "the LLM raises in the middle of its answer",
    "llm_hangs": "the LLM hangs past the hung-turn limit, so the watchdog must starve",
    "tts_raises": "speech synthesis raises",
    "speaker_raises": "the speaker raises in the middle of an answer (a PortAudio error)",
    "speaker_gone": "the speaker is gone when an answer starts",
    "mic_ends": "the microphone stream ends mid-question (unplugged) and comes back",
    "mic_overflow": f"the microphone overflows: {OVERFLOW_S} s of a question is lost",
    "state_unwritable": "the state folder cannot be written (as on a full disk)",
    "turn_log_full": "turns.jsonl reaches its size cap (runtime.turn_log_max_mb) and must rotate",
}
STAGE_FAULTS = ("asr_raises", "llm_raises", "llm_hangs", "tts_raises", "speaker_raises", "speaker_gone")
SURVIVABLE = ("llm_raises", "llm_hangs", "state_unwritable", "turn_log_full")  # the question is still answered

# Short questions keep a turn short. English place questions reach the model (stage faults are
# aimed at them); a number between parts is a pause in seconds.
EN_PLACES = ("Where is the library?", "Where is the gym?", "Where is the student union?",
             "Where can I print?", "Where is the dining hall?")
EN_PAUSED = (("Excuse me.", 0.7, "Where is the library?"), ("How do I get to", 0.6, "the student union?"))
EN_SOCIAL = ("Hello!", "Thank you.")   # a bare piper "Hi!" voices ~0.2 s: at vad.min_speech_s
KO = (("도서관은 어디에 있나요?",), ("체육관 어디예요?",), ("저기요.", 0.7, "도서관 어디예요?"),
      ("학생회관에 가려면", 0.6, "어떻게 가요?"), ("감사합니다.",))
MONOLOGUE = ("Good morning. My daughter starts here in the spring, and we drove up from the coast "
             "this morning to look around the campus before the open day. We parked near the main "
             "gate and walked past the clock tower and the central lawn, but the map at the "
             "entrance was hard to read in the sun. She wants to study music, and I would like to "
             "see the dormitories and the dining hall, and maybe the swimming pool if there is time.")


class SoakFault(RuntimeError):
    """What an injected stage fault raises."""


@dataclass
class Clip:
    name: str
    kind: str                 # question | silence | noise | cough | monologue
    audio: np.ndarray         # 16 kHz mono, as the microphone path delivers it
    expect: str               # answer | none | any
    llm: bool = False         # an English place question: the model is asked


@dataclass
class FaultEvent:
    kind: str
    armed_at: int             # the turn it was aimed at
    turn: int                 # the turn it fired in
    at: float                 # monotonic
    until: float | None = None
    starved: bool = False     # llm_hangs: the watchdog went unfed during it
    waited: bool = False      # mic_ends: the restarted kiosk waited for the microphone
    rotated: bool | None = None   # turn_log_full: turns.jsonl rotated
    logged: list[str] = field(default_factory=list)


@dataclass
class Played:
    index: int
    clip: Clip
    started: float = 0.0
    voiced_end: float = 0.0
    heard: list[str | None] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    first_audio_s: list[float] = field(default_factory=list)
    answers: list[float] = field(default_factory=list)   # first sample of each complete answer
    failed: int = 0
    faults: list[str] = field(default_factory=list)
    took_s: float = 0.0
    rss_mb: float = 0.0

    @property
    def answered(self) -> bool:
        return bool(self.answers)

    @property
    def v2v_s(self) -> float | None:
        after = [a for a in self.answers if a >= self.voiced_end]
        return after[0] - self.voiced_end if after and self.voiced_end else None


# --- the clips, in the kiosk's own voices ---------------------------------------------------

_CLIPS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _speak(p: Pipeline, text: str, lang: str) -> np.ndarray:
    """One phrase in the kiosk's own voice for `lang`, at 16 kHz. A piper voice speaks with its
    noise scales at 0: piper samples its prosody at random otherwise, and a seeded soak must play
    the same audio again. Without one (Korean), espeak-ng through p.tts.synthesize."""
    voice = p.tts.voices.get(lang)
    if voice is None:
        return resample(np.concatenate(list(p.tts.synthesize(text, lang))), p.tts.sample_rate, SAMPLE_RATE)
    from piper import SynthesisConfig

    exact = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, volume=0.9)
    chunks = list(voice.synthesize(text, exact))
    return resample(np.concatenate([c.audio_float_array for c in chunks]), chunks[0].sample_rate, SAMPLE_RATE)


def _say(p: Pipeline, lang: str, parts: Iterable) -> np.ndarray:
    """Speech at 16 kHz; a number between parts is a pause (cached per synthesizer and text)."""
    parts = tuple(parts)
    cache = _CLIPS.setdefault(p.tts, {})
    key = (lang, parts)
    if key not in cache:
        audio = [np.zeros(int(part * SAMPLE_RATE), np.float32) if isinstance(part, (int, float))
                 else _speak(p, part, lang) for part in parts]
        cache[key] = np.concatenate(audio).astype(np.float32)
    return cache[key]


def _speech_only(audio: np.ndarray) -> np.ndarray:
    """The 10-ms frames with speech in them: talk without a pause to close the turn."""
    frames = audio[: len(audio) // 160 * 160].reshape(-1, 160)
    return frames[np.sqrt((frames ** 2).mean(axis=1)) > 0.01].reshape(-1)


def _cough(rng: np.random.Generator) -> np.ndarray:
    """Two coughs: low-passed noise bursts with a fast attack and decay."""
    out = [np.zeros(int(0.3 * SAMPLE_RATE), np.float32)]
    for seconds in (0.22, 0.17):
        n = int(seconds * SAMPLE_RATE)
        burst = np.convolve(rng.standard_normal(n), np.ones(6) / 6, "same")
        envelope = np.exp(-np.linspace(0, 6, n)) * np.minimum(1, np.linspace(0, 30, n))
        out += [0.6 * burst * envelope / np.abs(burst).max(), np.zeros(int(0.25 * SAMPLE_RATE))]
    return np.concatenate(out).astype(np.float32)


def _at_8khz(audio: np.ndarray) -> np.ndarray:
    """A question from an 8 kHz microphone, brought to 16 kHz block by block by the resampler
    device.audio.Microphone uses for a card that is not at 16 kHz."""
    x8 = np.concatenate([resample(audio, SAMPLE_RATE, 8000), np.zeros(800, np.float32)])
    step = CHUNK * 8000 // SAMPLE_RATE
    up = _stream_resampler(8000, SAMPLE_RATE)
    return np.concatenate([up(x8[i:i + step]) for i in range(0, len(x8), step)]).astype(np.float32)


def _stereo(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A stereo recording (the other channel quieter, later, with hiss), downmixed as files are."""
    delay = int(0.003 * SAMPLE_RATE)
    right = 0.6 * np.concatenate([np.zeros(delay, np.float32), audio[:-delay]])
    right = right + 0.003 * rng.standard_normal(len(audio))
    return to_mono(np.stack([audio, right.astype(np.float32)], axis=1))


def build_clips(p: Pipeline, n: int, seed: int) -> list[Clip]:
    """`n` clips, shuffled with `seed`: the special cases once each (from 12 clips on), the rest
    questions. espeak-ng's Korean is not intelligible to Whisper (docs/bench.md), so Korean
    questions are answered or not as Whisper hears them ("any") unless a Korean piper voice is
    configured; the kiosk still has to take them without failing."""
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    english_only = p.asr.language == "en"
    ko_expect = "answer" if p.tts.voices.get("ko") is not None and not english_only else "any"
    pool = [Clip(f"en: {t}", "question", _say(p, "en", [t]), "answer", llm=True) for t in EN_PLACES]
    pool += [Clip("en: " + " ... ".join(x for x in parts if isinstance(x, str)), "question",
                  _say(p, "en", parts), "answer", llm=True) for parts in EN_PAUSED]
    pool += [Clip(f"en: {t}", "question", _say(p, "en", [t]), "answer") for t in EN_SOCIAL]
    pool += [Clip("ko: " + " ... ".join(x for x in parts if isinstance(x, str)), "question",
                  _say(p, "ko", parts), ko_expect) for parts in KO]
    clips: list[Clip] = []
    if n >= 12:
        speech = _speech_only(_say(p, "en", [MONOLOGUE]))
        monologue = np.tile(speech, int(np.ceil(60 * SAMPLE_RATE / len(speech))))[:60 * SAMPLE_RATE]
        gym, library = _say(p, "en", [EN_PLACES[1]]), _say(p, "en", [EN_PLACES[0]])
        union, dining = _say(p, "en", [EN_PLACES[2]]), _say(p, "en", [EN_PLACES[4]])
        clips += [
            Clip("silence 3 s", "silence", np.zeros(3 * SAMPLE_RATE, np.float32), "none"),
            Clip("noise 2 s", "noise", (0.05 * nrng.standard_normal(2 * SAMPLE_RATE)).astype(np.float32), "none"),
            Clip("coughs", "cough", _cough(nrng), "none"),
            Clip("monologue 60 s", "monologue", monologue.astype(np.float32), "answer"),
            Clip(f"clipped x20: {EN_PLACES[1]}", "question", np.clip(gym * 20, -1, 1), "answer", llm=True),
            Clip(f"quiet -30 dB: {EN_PLACES[0]}", "question", library * 0.03, "answer", llm=True),
            Clip(f"8 kHz: {EN_PLACES[2]}", "question", _at_8khz(union), "answer", llm=True),
            Clip(f"stereo: {EN_PLACES[4]}", "question", _stereo(dining, nrng), "answer", llm=True),
        ]
    while len(clips) < n:
        more = pool[:]
        rng.shuffle(more)
        clips += more[:n - len(clips)]
    rng.shuffle(clips)
    return clips


def schedule_faults(clips: list[Clip], kinds: Iterable[str], seed: int) -> dict[int, list[str]]:
    """Turn -> fault kinds aimed at it: in the first 80 % (so that questions follow), on
    questions that should be answered (stage faults on those that reach the model), apart."""
    rng = random.Random(seed + 1)
    limit = max(1, int(len(clips) * 0.8))
    answerable = [i for i in range(limit) if clips[i].kind == "question" and clips[i].expect == "answer"]
    model = [i for i in answerable if clips[i].llm] or answerable
    taken: set[int] = set()
    out: dict[int, list[str]] = {}
    kinds = list(kinds)
    rng.shuffle(kinds)
    for kind in kinds:
        slots = model if kind in STAGE_FAULTS else answerable
        free = ([i for i in slots if not {i - 1, i, i + 1} & taken]
                or [i for i in slots if i not in taken] or slots)
        if not free:
            log.warning("soak: too few turns to inject %s", kind)
            continue
        i = rng.choice(free)
        taken.add(i)
        out.setdefault(i, []).append(kind)
    return out


# --- the simulated sound card ---------------------------------------------------------------

class SoakMic:
    """The clips, each after LEAD_S of silence; after each, quiet chunks until the kiosk has
    answered (or nothing is pending for SETTLE_S) and listens again. One object across restarts:
    iterating again goes on with the next clip."""

    def __init__(self, soak: "Soak"):
        self.soak = soak
        self._next = 0.0
        self.listening = threading.Event()     # set by flush(): the kiosk's echo tail is over

    def flush(self) -> None:
        self.listening.set()

    def close(self) -> None:
        pass

    def _pace(self, dt: float) -> float:
        now = time.monotonic()
        if dt > 0:
            self._next = max(self._next + dt, now) if self._next else now
            if self._next > now:
                time.sleep(self._next - now)
        return time.monotonic()

    def __iter__(self) -> Iterator[np.ndarray]:
        s = self.soak
        quiet = np.zeros(CHUNK, np.float32)
        audio_dt = CHUNK_S / s.speed if s.speed else 0.0
        wait_dt = max(audio_dt, WAIT_CHUNK_S)
        while s.position < len(s.clips) and not s.stop.is_set():
            i = s.position
            played = s.begin(i)
            audio = np.concatenate([np.zeros(int(LEAD_S * SAMPLE_RATE), np.float32), played.clip.audio])
            end = int(voiced_end(audio) * SAMPLE_RATE)
            cut = len(audio) // 2 if s.injector.hit("mic_ends") else None
            drop = None
            if s.injector.hit("mic_overflow"):
                middle = (int(LEAD_S * SAMPLE_RATE) + end) // 2
                drop = (middle - int(OVERFLOW_S * SAMPLE_RATE / 2), middle + int(OVERFLOW_S * SAMPLE_RATE / 2))
            for k in range(0, len(audio), CHUNK):
                if s.stop.is_set():
                    return
                if cut is not None and k >= cut:
                    s.mic_ended(i)
                    return
                if drop is not None and drop[0] <= k < drop[1]:
                    continue
                now = self._pace(audio_dt)
                if k <= end <= k + CHUNK:
                    played.voiced_end = now - ((k + CHUNK - end) / SAMPLE_RATE / s.speed if s.speed else 0.0)
                yield np.pad(audio[k:k + CHUNK], (0, max(0, CHUNK - len(audio[k:k + CHUNK]))))
            # Quiet until the kiosk is done with this clip.
            quiet_s, since = 0.0, time.monotonic()
            patience = s.hung_turn_s + s.watchdog_s + 60
            while not s.stop.is_set():
                if s.idle():
                    quiet_s += CHUNK_S
                    if played.answered or quiet_s >= SETTLE_S:
                        break
                else:
                    quiet_s = 0.0
                if time.monotonic() - since > patience:
                    log.warning("soak: turn %d (%s) still pending after %.0f s; going on",
                                i + 1, played.clip.name, patience)
                    break
                s.sample_rss()
                self._pace(wait_dt)
                yield quiet
            # Half-duplex: after a turn the kiosk is deaf for its echo tail; it flushes the
            # microphone when it listens again.
            if played.heard and not s.pipeline.cfg.audio.barge_in:
                deadline = time.monotonic() + kiosk.ECHO_TAIL_S + 2.0
                while not self.listening.is_set() and time.monotonic() < deadline and not s.stop.is_set():
                    self._pace(wait_dt)
                    yield quiet
            s.finish(i)
        s.stop.set()            # the last clip is done: listen() returns at the next chunk
        yield quiet


class SoakSpeaker:
    """The real speaker's interface (play_stream, stop, resume, playing); an answer "plays" in
    its duration / speed. Injected: gone before the first sample, or failing after it."""

    def __init__(self, soak: "Soak", sample_rate: int):
        self.soak, self.sample_rate = soak, sample_rate
        self.playing = False
        self._stop = threading.Event()

    def play_stream(self, chunks: Iterable[np.ndarray]) -> None:
        s = self.soak
        self.playing = True
        first, samples = None, 0
        try:
            if s.injector.hit("speaker_gone"):
                raise AudioError("Error starting stream: Device unavailable [PaErrorCode -9985] "
                                 "(injected: the speaker is gone)")
            for c in chunks:
                if self._stop.is_set():
                    break
                if not len(c):
                    continue
                if first is None:
                    first = time.monotonic()
                samples += len(c)
                if s.injector.hit("speaker_raises"):
                    raise AudioError("Unanticipated host error [PaErrorCode -9999] "
                                     "(injected: the speaker failed mid-answer)")
            if s.speed and samples:
                until = time.monotonic() + samples / self.sample_rate / s.speed
                while time.monotonic() < until and not self._stop.is_set():
                    time.sleep(0.005)
            if first is not None and not self._stop.is_set():
                s.answered(first)
        finally:
            self.playing = False

    def stop(self) -> None:
        self._stop.set()

    def resume(self) -> None:
        self._stop.clear()

    def close(self) -> None:
        pass


class _WatchedNotifier(Notifier):
    """The real sd_notify (a no-op without $NOTIFY_SOCKET) that also tells the soak when the
    watchdog is fed and what the kiosk says; a gap longer than watchdog_s is a missed one."""

    def __init__(self, soak: "Soak"):
        super().__init__()
        self._soak = soak
        self._last: float | None = None

    def watchdog(self) -> None:
        now = time.monotonic()
        if self._last is not None and now - self._last > self._soak.watchdog_s:
            self._soak.misses.append((self._last, now))
        self._last = self._soak.last_feed = now
        super().watchdog()

    def notify(self, *assignments: str) -> None:
        self._soak.said.extend((time.monotonic(), a) for a in assignments)
        super().notify(*assignments)


class Injector:
    """Faults armed at their turn; each fires once, at the first chance (a stage's first call)."""

    def __init__(self, soak: "Soak"):
        self.soak = soak
        self.armed: dict[str, int] = {}          # kind -> the turn it was aimed at
        self.sticky: dict[str, int] = {}         # kind -> the turn it keeps firing in
        self.events: list[FaultEvent] = []
        self._lock = threading.Lock()

    def arm(self, kind: str, turn: int) -> None:
        with self._lock:
            self.armed.setdefault(kind, turn)

    def hit(self, kind: str, sticky: bool = False) -> bool:
        with self._lock:
            turn = self.soak.current.index
            if self.sticky.get(kind) == turn:
                return True
            if kind not in self.armed:
                return False
            armed_at = self.armed.pop(kind)
            self.events.append(FaultEvent(kind, armed_at, turn, time.monotonic()))
            if sticky:
                self.sticky[kind] = turn
            self.soak.current.faults.append(kind)
        log.warning("soak: turn %d: injected %s: %s", turn + 1, kind, FAULTS[kind])
        return True

    def turn_done(self, turn: int) -> None:
        with self._lock:
            self.sticky = {k: t for k, t in self.sticky.items() if t != turn}
            for e in self.events:
                if e.turn == turn and e.until is None:
                    e.until = time.monotonic()


class _Capture(logging.Handler):
    """The kiosk's warnings and errors during the soak (the soak's own lines left out)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == __name__:
            return
        message = f"{record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            message += f" [{type(record.exc_info[1]).__name__}: {record.exc_info[1]}]"
        self.records.append((time.monotonic(), message))


# --- the soak ---------------------------------------------------------------------------------

class Soak:
    def __init__(self, pipeline: Pipeline, clips: list[Clip], targets: dict[int, list[str]],
                 kinds: list[str], speed: float, hung_turn_s: float, watchdog_s: float,
                 progress: bool = True):
        self.pipeline, self.clips, self.targets, self.kinds = pipeline, clips, targets, kinds
        self.speed, self.hung_turn_s, self.watchdog_s = speed, hung_turn_s, watchdog_s
        self.progress = progress
        self.state_dir = Path(pipeline.cfg.runtime.state_dir)
        self.stop = threading.Event()
        self.position = 0
        self.played: list[Played] = []
        self.injector = Injector(self)
        self.mic = SoakMic(self)
        self.speaker = SoakSpeaker(self, pipeline.tts.sample_rate)
        self.misses: list[tuple[float, float]] = []
        self.said: list[tuple[float, str]] = []
        self.last_feed = time.monotonic()
        self.in_flight = self.asr_running = 0
        self.failed = 0
        self.restarts = 0
        self.unplugged = 0
        self.rss: list[float] = []
        self.rss_start = rss_mb()                # run_soak has warmed every stage up
        self._last_rss = 0.0
        self._lock = threading.Lock()
        self._blocked: Path | None = None
        self._bar = None

    # the kiosk's progress, as the simulated card and the wrapped stages see it

    @property
    def current(self) -> Played:
        """The clip being played or waited on (the last one begun)."""
        return self.played[-1]

    def idle(self) -> bool:
        return (self.in_flight == 0 and self.asr_running == 0 and not self.speaker.playing
                and not self.pipeline.turns.pending)

    def sample_rss(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_rss > 0.5:
            self._last_rss = now
            self.rss.append(rss_mb())

    def begin(self, i: int) -> Played:
        self.position = i
        played = Played(i, self.clips[i], started=time.monotonic())
        self.played.append(played)
        for kind in self.targets.get(i, ()):
            self.injector.arm(kind, i)
        if self.injector.hit("state_unwritable"):
            self._block_state()
        if self.injector.hit("turn_log_full"):
            self._fill_turn_log()
        return played

    def finish(self, i: int) -> None:
        played = self.played[i]
        played.took_s = time.monotonic() - played.started
        if self._blocked is not None:
            self._unblock_state()
        for e in self.injector.events:
            if e.turn == i and e.kind == "turn_log_full":
                cap = self.pipeline.cfg.runtime.turn_log_max_mb * 2**20
                log_file = self.state_dir / TURN_LOG
                e.rotated = (self.state_dir / f"{TURN_LOG}.1").is_file() and (
                    not log_file.exists() or log_file.stat().st_size < cap)
        self.injector.turn_done(i)
        self.sample_rss(force=True)
        played.rss_mb = self.rss[-1]
        self.position = i + 1
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(answered=sum(q.answered for q in self.played),
                                  lost=len(self._lost()), faults=len(self.injector.events))

    def mic_ended(self, i: int) -> None:
        """The stream ended mid-question: the kiosk exits, and its microphone is missing for a
        few looks after the restart."""
        self.unplugged = UNPLUGGED_POLLS
        self.finish(i)

    def answered(self, first_sample: float) -> None:
        self.current.answers.append(first_sample)

    def _heard(self, turn) -> None:
        with self._lock:
            self.in_flight += 1
        self.mic.listening.clear()
        self.current.heard.append(turn.transcript.text if turn.transcript else None)

    def _lost(self) -> list[Played]:
        return [q for q in self.played if q.clip.expect == "answer" and not q.answered and not q.faults
                and q.index < self.position]

    # faults on the state folder

    def _block_state(self) -> None:
        """A file where the state folder was: every write there fails, even as root."""
        away = self.state_dir.with_name(self.state_dir.name + ".soak-away")
        os.rename(self.state_dir, away)
        self.state_dir.write_text("soak: the state folder cannot be written\n")
        self._blocked = away

    def _unblock_state(self) -> None:
        if self._blocked is not None:
            self.state_dir.unlink(missing_ok=True)
            os.rename(self._blocked, self.state_dir)
            self._blocked = None

    def _fill_turn_log(self) -> None:
        """turns.jsonl up to its cap: the next turn's line rotates it."""
        path = self.state_dir / TURN_LOG
        cap = int(self.pipeline.cfg.runtime.turn_log_max_mb * 2**20)
        size = path.stat().st_size if path.exists() else 0
        line = json.dumps({"soak": "filler up to runtime.turn_log_max_mb", "pad": ""})
        pad = max(0, cap - size - len(line) - 1)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"soak": "filler up to runtime.turn_log_max_mb", "pad": "x" * pad}) + "\n")

    # the seams: the pipeline's stages wrapped on the instance, the sound card, the notifier

    def _install(self) -> list:
        p = self.pipeline
        saved = [(obj, name, vars(obj).get(name, _MISSING))
                 for obj, name in ((p.asr, "transcribe"), (p.llm, "stream"), (p.tts, "synthesize"),
                                   (p, "ask_turn"), (p, "close"))]
        saved.append((p.turns, "transcribe", p.turns.transcribe))
        transcribe, stream, synthesize, ask_turn = p.asr.transcribe, p.llm.stream, p.tts.synthesize, p.ask_turn
        soak = self

        def asr(audio, language=None):
            with soak._lock:
                soak.asr_running += 1
            try:
                if soak.injector.hit("asr_raises", sticky=True):
                    raise SoakFault("CTranslate2: std::runtime_error (injected: ASR failed)")
                return transcribe(audio, language)
            finally:
                with soak._lock:
                    soak.asr_running -= 1

        def llm(prompt, *args, **kwargs):
            if soak.injector.hit("llm_hangs"):
                cap = time.monotonic() + soak.hung_turn_s + soak.watchdog_s + 30
                while not soak.stop.is_set() and time.monotonic() < cap:
                    if time.monotonic() - soak.last_feed > soak.watchdog_s + 0.5:
                        break               # systemd would have killed it by now
                    time.sleep(0.05)
                raise SoakFault("the model stopped responding (injected: the LLM hung)")
            pieces = stream(prompt, *args, **kwargs)
            try:
                for n, piece in enumerate(pieces):
                    yield piece
                    if n >= 1 and soak.injector.hit("llm_raises"):
                        raise SoakFault("llama_decode returned -3 (injected: the LLM failed mid-answer)")
            finally:
                getattr(pieces, "close", lambda: None)()

        def tts(text, lang="en", *args, **kwargs):
            if soak.injector.hit("tts_raises"):
                raise SoakFault("onnxruntime: Non-zero status code (injected: TTS failed)")
            yield from synthesize(text, lang, *args, **kwargs)

        def turn(t, sink=None, **kw):
            try:
                result = ask_turn(t, sink, **kw)
                played = soak.current
                played.kinds.append(result.kind)
                if result.timings.first_audio_s is not None:
                    played.first_audio_s.append(result.timings.first_audio_s)
                return result
            except Exception:
                soak.failed += 1
                soak.current.failed += 1
                raise
            finally:
                with soak._lock:
                    soak.in_flight -= 1

        p.asr.transcribe = p.turns.transcribe = asr
        p.llm.stream, p.tts.synthesize, p.ask_turn = llm, tts, turn
        p.close = lambda: None          # run_service closes its pipeline; the soak's outlives it
        return saved

    @staticmethod
    def _restore(saved: list) -> None:
        for obj, name, value in saved:
            if value is _MISSING:
                vars(obj).pop(name, None)
            else:
                setattr(obj, name, value)

    def _audio(self, cfg: Config, pipeline: Any):
        if self.unplugged > 0:
            self.unplugged -= 1
            for e in self.injector.events:
                if e.kind == "mic_ends":
                    e.waited = True
            raise MicrophoneMissing("no microphone found (the soak's card: unplugged); connect one or "
                                    "set audio.input_device in the config (list them with "
                                    "`python -m sounddevice`)")
        return self.mic, self.speaker

    def _listen(self, pipeline, mic, speaker, **kw):
        return kiosk.listen(pipeline, mic, speaker, on_heard=self._heard, **kw)

    def replay(self) -> None:
        """The clips through the kiosk loop alone: no service, no faults, no report (the
        warm-up)."""
        saved = self._install()
        try:
            self._listen(self.pipeline, self.mic, self.speaker)
        finally:
            self._restore(saved)

    def run(self) -> dict:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        p = self.pipeline
        seams = Seams(pipeline=lambda c: p, audio=self._audio, listen=self._listen,
                      notifier=lambda: _WatchedNotifier(self))
        capture = _Capture()
        hung = kiosk.HUNG_TURN_S
        saved = self._install()
        kiosk.HUNG_TURN_S = self.hung_turn_s
        logging.getLogger().addHandler(capture)
        t0 = time.monotonic()
        self.sample_rss(force=True)
        try:
            with logging_redirect_tqdm(), tqdm(total=len(self.clips), desc="soak", unit="turn",
                                               disable=not self.progress) as self._bar:
                while True:
                    try:
                        run_service(p.cfg, seams, stop=self.stop, mic_poll_s=MIC_POLL_S)
                        break
                    except ServiceError as e:
                        if self.stop.is_set() or self.position >= len(self.clips):
                            break
                        self.restarts += 1
                        if self.restarts > MAX_RESTARTS:
                            raise
                        log.warning("soak: the kiosk exited (%s); starting it again as systemd's "
                                    "Restart=on-failure would, with the models still loaded", e)
        finally:
            self._bar = None
            logging.getLogger().removeHandler(capture)
            kiosk.HUNG_TURN_S = hung
            self._restore(saved)
            self._unblock_state()
        return self._report(t0, time.monotonic(), capture.records)

    def _report(self, t0: float, t1: float, records: list[tuple[float, str]]) -> dict:
        played = self.played
        events = self.injector.events
        for e in events:
            until = e.until or t1
            e.starved = any(a < until and b > e.at for a, b in self.misses)
            e.logged = [m for t, m in records if e.at <= t <= until + 0.5]
            if e.kind == "mic_ends":    # the exit and the wait are logged after the clip
                nxt = next((q.started for q in played if q.index > e.turn), t1)
                e.logged = [m for t, m in records if e.at <= t <= nxt]

        def recovered(e: FaultEvent) -> bool:
            after = next((q for q in played[e.turn + 1:] if q.clip.expect == "answer" and not q.faults), None)
            ok = after is not None and after.answered
            if e.kind in SURVIVABLE:
                ok = ok and played[e.turn].answered
            if e.kind == "llm_hangs":
                ok = ok and e.starved
            if e.kind == "mic_ends":
                ok = ok and e.waited
            if e.kind == "turn_log_full":
                ok = ok and bool(e.rotated)
            return ok

        windows = [(e.at, e.until or t1) for e in events if e.kind == "llm_hangs"]
        misses = [{"at_s": round(a - t0, 2), "gap_s": round(b - a, 2),
                   "during_hang": any(a < w1 and b > w0 for w0, w1 in windows)} for a, b in self.misses]
        faults = {}
        for kind in self.kinds:
            mine = [e for e in events if e.kind == kind]
            faults[kind] = {
                "what": FAULTS[kind],
                "injected": len(mine),
                "recovered": sum(recovered(e) for e in mine),
                "turns": [e.turn + 1 for e in mine],
                "windows_s": [[round(e.at - t0, 2), round((e.until or t1) - t0, 2)] for e in mine],
                "logged": [len(e.logged) for e in mine],
                "log": (mine[0].logged[0][:400] if mine and mine[0].logged else None),
            }
            if kind == "llm_hangs":
                faults[kind]["watchdog_starved"] = [e.starved for e in mine]
            if kind == "mic_ends":
                faults[kind]["waited_for_microphone"] = [e.waited for e in mine]
            if kind == "turn_log_full":
                faults[kind]["rotated"] = [e.rotated for e in mine]
        v2v = [q.v2v_s for q in played if q.v2v_s is not None]
        first_audio = [q.first_audio_s[0] for q in played if q.answered and q.first_audio_s]
        lost = self._lost()
        expected = [q for q in played if q.clip.expect == "answer"]
        rss_start = self.rss_start

        def pct(values, q):
            return round(float(np.percentile(values, q)), 3) if values else None

        cfg = self.pipeline.cfg
        report = {
            "turns": len(played), "questions": len(expected),
            "answered": sum(q.answered for q in played),
            "answered_questions": sum(q.answered for q in expected),
            "failed": self.failed, "lost": len(lost), "lost_turns": [q.index + 1 for q in lost],
            "spurious": sum(q.answered for q in played if q.clip.expect == "none"),
            "rss_start_mb": round(rss_start, 1),
            "rss_end_mb": round(self.rss[-1], 1) if self.rss else None,
            "rss_max_mb": round(max(self.rss), 1) if self.rss else None,
            "rss_growth_mb_per_turn": _slope([q.rss_mb for q in played[len(played) // 2:]]),
            "latency_p50_s": pct(v2v, 50), "latency_p95_s": pct(v2v, 95),
            "first_audio_p50_s": pct(first_audio, 50), "first_audio_p95_s": pct(first_audio, 95),
            "watchdog_missed": len(self.misses),
            "watchdog_missed_outside_hangs": sum(not m["during_hang"] for m in misses),
            "watchdog_misses": misses,
            "restarts": self.restarts,
            "faults": faults,
            "duration_s": round(t1 - t0, 1),
            "settings": {"speed": self.speed, "hung_turn_s": self.hung_turn_s,
                         "watchdog_s": self.watchdog_s, "asr": self.pipeline.asr.name,
                         "llm": Path(cfg.llm.model).name, "turn_mode": cfg.turn.mode},
            "t0_monotonic": t0,
            "items": [{"turn": q.index + 1, "at_s": round(q.started - t0, 2),
                       "took_s": round(q.took_s, 2), "clip": q.clip.name, "kind": q.clip.kind,
                       "expect": q.clip.expect, "answered": q.answered, "answers": len(q.answers),
                       "heard": q.heard, "kinds": q.kinds, "failed": q.failed, "faults": q.faults,
                       "v2v_s": None if q.v2v_s is None else round(q.v2v_s, 3),
                       "rss_mb": round(q.rss_mb, 1)} for q in played],
        }
        report["ok"] = (report["lost"] == 0 and report["watchdog_missed_outside_hangs"] == 0
                        and all(f["injected"] >= 1 and f["recovered"] == f["injected"]
                                for f in faults.values()))
        return report


_MISSING = object()


def _slope(values: list[float]) -> float | None:
    """Least-squares MB per turn (over the second half of the soak: past the early growth)."""
    if len(values) < 3:
        return None
    return round(float(np.polyfit(np.arange(len(values)), values, 1)[0]), 3)


def _warm_up(p: Pipeline, clips: list[Clip], hung_turn_s: float, watchdog_s: float) -> None:
    """Every stage at its largest and every kind of clip once, so that rss_start_mb is where
    the kiosk's first visitors leave it and growth after it is what a long day adds: each
    distinct clip through the kiosk loop itself (the turn-taker's speculation thread and Smart
    Turn allocate on first use what ask_audio alone never reaches: ~35 MB in the first two live
    turns, ~20 more at the first monologue); Whisper on vad.max_utterance_s of speech (its
    buffers grow with the audio); piper on a dialogue.max_sentence_chars sentence (the longest
    it is ever given; `budget --measure` speaks one for the same reason)."""
    distinct = list({c.name: c for c in clips}.values())
    Soak(p, distinct, {}, [], 0.0, hung_turn_s, watchdog_s, progress=False).replay()
    speech = _speech_only(_say(p, "en", [MONOLOGUE]))
    longest = int(p.cfg.vad.max_utterance_s * SAMPLE_RATE)
    p.asr.transcribe(np.tile(speech, int(np.ceil(longest / len(speech))))[:longest])
    for _ in p.tts.synthesize(longest_sentence(p.cfg.dialogue.max_sentence_chars), "en"):
        pass
    p.reset()
    trim_heap()             # as the kiosk does after every turn


def run_soak(cfg: Config, turns: int, out: str | Path | None = None, *,
             faults: bool | Iterable[str] = False, seed: int = 0, speed: float = 0.0,
             hung_turn_s: float = 30.0, watchdog_s: float = 5.0, pipeline: Pipeline | None = None,
             progress: bool = True) -> dict:
    """`turns` clips through the real kiosk; with `faults` (True: every kind in FAULTS, or a
    list of kinds) each fault injected at least once. Returns the report, also written to `out`.
    Without `pipeline` the models are loaded here and the soak keeps its status file and turn
    log in a temporary folder (a soak is not a day of visitors)."""
    if turns < 1:
        raise UserError("--turns must be at least 1")
    if speed < 0:
        raise UserError("--speed must be 0 (as fast as the kiosk takes audio) or more")
    if hung_turn_s <= 0 or watchdog_s <= 0:
        raise UserError("--hung-turn and --watchdog must be positive (seconds)")
    out = Path(out) if out else None
    if out is not None and out.suffix != ".json":
        raise UserError(f"--out {out}: give a .json file name")
    kinds = list(FAULTS) if faults is True else list(faults or [])
    unknown = [k for k in kinds if k not in FAULTS]
    if unknown:
        raise UserError(f"unknown fault kind {unknown[0]!r}; choose from {', '.join(FAULTS)}")
    tmp = None
    if pipeline is None:
        tmp = tempfile.TemporaryDirectory(prefix="campus-guide-soak-")
        cfg.runtime.state_dir = tmp.name
        print("loading models ...", flush=True)
        pipeline = Pipeline(cfg)
    try:
        clips = build_clips(pipeline, turns, seed)
        targets = schedule_faults(clips, kinds, seed)
        t = time.monotonic()
        _warm_up(pipeline, clips, hung_turn_s, watchdog_s)
        warmup_s = time.monotonic() - t
        soak = Soak(pipeline, clips, targets, kinds, speed, hung_turn_s, watchdog_s, progress)
        report = soak.run()
        report.update(seed=seed, warmup_s=round(warmup_s, 2))
    finally:
        if tmp is not None:
            pipeline.close()
            tmp.cleanup()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def format_report(r: dict) -> str:
    """The figures a person reads first (the JSON has every turn)."""
    lines = [f"turns {r['turns']} ({r['questions']} to answer): answered {r['answered']}, "
             f"failed {r['failed']}, lost {r['lost']}, spurious {r['spurious']}; "
             f"{r['restarts']} restart(s), {r['duration_s']:.0f} s",
             f"voice to voice p50 {r['latency_p50_s']} s, p95 {r['latency_p95_s']} s "
             f"(first audio p50 {r['first_audio_p50_s']} s, p95 {r['first_audio_p95_s']} s)",
             f"rss {r['rss_start_mb']} MB after warm-up, {r['rss_end_mb']} MB at the end, "
             f"max {r['rss_max_mb']} MB, {r['rss_growth_mb_per_turn']} MB/turn over the second half",
             f"watchdog missed {r['watchdog_missed']} ({r['watchdog_missed_outside_hangs']} outside "
             f"an injected hang)"]
    for kind, f in r["faults"].items():
        lines.append(f"  {kind:17s} injected {f['injected']}  recovered {f['recovered']}  "
                     f"turns {f['turns']}")
    lines.append("OK" if r["ok"] else "NOT OK: see lost_turns, watchdog_misses and faults")
    return "\n".join(lines)
