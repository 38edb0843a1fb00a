"""Turn-taking: when has the visitor finished? Silence alone cannot tell.

People pause inside a question ("Excuse me. ... Where is the library?", "도서관에 가려면 ...
어떻게 가요?"). A fixed silence either answers the first fragment or makes every visitor wait.
So a short pause (turn.pause_s) only *starts* work: the speech so far is transcribed at once, in a
worker thread (Whisper's cost is fixed by its 30-s window, so it is hidden in the pause), and the
words and the sound decide:

- complete: a sentence-final ending (Korean -요, -까, -니다, -죠, -다, ...), a question mark, or
  Smart Turn v3.2 (an ONNX model on the last 8 s of audio) scoring it finished -> the turn ends
  as soon as the transcript is ready;
- incomplete: a connective ending or a trailing particle (-고, -는데, -서, -면, 을/를/에, "the",
  "to", "and") or a low Smart Turn score -> keep listening, up to turn.incomplete_wait_s;
- opener: only "excuse me" / "hi" / "저기요" -> wait turn.opener_wait_s for the question, and let
  the dialogue reply briefly only if nothing follows.

Smart Turn's human training data is English and Spanish, and on real Korean speech it calls most
whole sentences unfinished (docs/bench.md, "End of turn"), so for Korean the endings decide and
the model only breaks ties. If the visitor speaks again the speculative transcript is dropped:
a turn is only ever answered with the transcript of exactly the audio it contains.
"""
from __future__ import annotations

import functools
import logging
import re
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from campus_guide.config import Config, TurnConfig
from campus_guide.intents import split_social
from campus_guide.korean import has_hangul, split_syllable

from .asr import Transcript
from .models import onnx_session, require
from .vad import VAD, Utterance

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SMART_TURN_S = 8                 # the model hears the last 8 s (left-padded with silence)

# Korean: the last word's ending. Final endings close a sentence (declarative, question,
# request, in the polite and the plain styles); connective endings and particles mean more is
# coming. Checked longest first, so "있습니까" is final although "-니까" ("because") connects.
_KO_FINAL = ("습니까", "니다", "세요", "까요", "나요", "가요", "예요", "에요", "이요", "데요",
             "있다", "없다", "한다", "된다", "있어", "없어", "했어", "해줘", "알려줘",
             "죠", "요", "까", "냐", "니", "래", "야", "줘", "돼")
# (Bare -다, -지, -나, -어, -해 are left out: they end nouns and half-sentences as often as
# sentences - 바다, 하나, "끝나고 나" - and a wrong "final" answers a visitor mid-sentence.)
_KO_OPEN = ("려면", "는데", "은데", "인데", "니까", "는지", "은지", "인지", "이나", "지만",
            "면서", "거나", "든지", "도록", "에서", "으로", "까지", "부터", "하고", "이랑", "랑",
            "한테", "에게", "고", "서", "면", "며", "게", "은", "는", "이", "가", "을", "를", "에",
            "로", "의", "와", "과", "도", "만", "좀")
_BATCHIM_B = 17                  # the final-consonant index of ㅂ (합니까, 갑니까)
_KO_ENDINGS = sorted(_KO_FINAL + _KO_OPEN, key=len, reverse=True)
# English: a last word that cannot end a sentence even with Whisper's "?" after it ("How do I
# get to?"), and one that ends a question only with it ("Where are you from?", "Do you know
# where the library is?").
_EN_OPEN = frozenset("""a an the to of and or but because if my your our their um uh er""".split())
_EN_OPEN_UNLESS_ASKED = frozenset("""is are was can could would will do does at in on for from
with by into near where what which how who when like just get find so""".split())
# Whisper also writes "?" after English fragments ("When does the library?"); Smart Turn, strong
# on English, scores those 0.01-0.03 against 0.85-0.96 for whole questions. Below this it wins.
QUESTION_MARK_DOUBT = 0.1
_WORD = re.compile(r"[\w']+")


def ending(text: str) -> str | None:
    """'final' / 'open' from the words alone, or None when they do not say."""
    t = text.strip()
    if not t:
        return None
    if t.endswith(("...", "…", ",", "-")):
        return "open"
    words = _WORD.findall(t)
    if not words:
        return None
    last = words[-1]
    if last.lower() in _EN_OPEN:
        return "open"                # "How do I get to?": Whisper's question mark on a fragment
    if t.endswith("?"):
        return "final"               # also "도서관은?" (what about the library?)
    if last.lower() in _EN_OPEN_UNLESS_ASKED:
        return "open"
    if has_hangul(last):
        if last.endswith("니까") and len(last) > 2 and (split_syllable(last[-3]) or (0, 0, 0))[2] == _BATCHIM_B:
            return "final"           # 갑니까, 됩니까: the formal question, not "-니까" (because)
        for suffix in _KO_ENDINGS:
            if last.endswith(suffix) and len(last) > len(suffix) - (suffix in _KO_FINAL):
                return "final" if suffix in _KO_FINAL else "open"
    return None


@dataclass(frozen=True)
class Decision:
    verdict: str                 # complete | incomplete | opener | empty
    why: str                     # "ending", "smart-turn 0.91", "opener", ... (the log says it)
    p_complete: float | None = None


def decide(text: str, p_complete: float | None, threshold: float = 0.5) -> Decision:
    """The end-of-turn verdict on a speculative transcript and Smart Turn's score."""
    if not text.strip():
        return Decision("empty", "no words", p_complete)
    social = split_social(text)
    if social.kind and not _WORD.search(social.rest):
        if social.kind in ("opener", "greeting"):
            return Decision("opener", social.kind, p_complete)
        return Decision("complete", social.kind, p_complete)          # "thanks", "bye"
    e = ending(text)
    if e == "open":
        return Decision("incomplete", "open ending", p_complete)
    if e == "final":
        if (p_complete is not None and p_complete < QUESTION_MARK_DOUBT and not has_hangul(text)
                and text.rstrip().endswith("?")):
            return Decision("incomplete", f"'?' but smart-turn {p_complete:.2f}", p_complete)
        return Decision("complete", "final ending", p_complete)
    if p_complete is None:
        return Decision("complete", "no model, nothing unfinished", None)
    verdict = "complete" if p_complete >= threshold else "incomplete"
    return Decision(verdict, f"smart-turn {p_complete:.2f}", p_complete)


def log_mel(audio: np.ndarray) -> np.ndarray:
    """Smart Turn's input: Whisper's 80-bin log-mel of exactly 8 s (the clip normalised to zero
    mean and unit variance first, as its training did), shape (80, 800). faster-whisper's own
    feature extractor computes the transform."""
    x = np.asarray(audio, np.float32).reshape(-1)[-SMART_TURN_S * SAMPLE_RATE:]
    x = np.pad(x, (SMART_TURN_S * SAMPLE_RATE - x.size, 0))
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    return _extractor()(x, padding=0)[:, :SMART_TURN_S * SAMPLE_RATE // 160].astype(np.float32)


@functools.cache
def _extractor():
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE, chunk_length=SMART_TURN_S)


class SmartTurn:
    """Smart Turn v3.2 on onnxruntime: audio so far -> P(the speaker has finished)."""

    def __init__(self, path: str | Path, threads: int = 1):
        path = require(path, "end-of-turn model (Smart Turn v3.2 ONNX)", "turn.smart_turn")
        self.session = onnx_session(path, "cannot load the end-of-turn model; rebuild it with "
                                          "`campus-guide models fetch --force`, or set "
                                          "turn.smart_turn: null", threads)

    def __call__(self, audio: np.ndarray) -> float:
        out = self.session.run(None, {"input_features": log_mel(audio)[None]})
        return float(np.asarray(out[0]).reshape(-1)[0])


@dataclass
class Turn:
    """One visitor turn: everything said before the turn ended, pauses included."""
    audio: np.ndarray            # the speech segments, joined
    start_s: float               # stream clock (seconds since the listener started)
    end_s: float                 # the last voiced sample
    heard_s: float               # when the turn ended (end_s + the end-of-turn wait)
    transcript: Transcript | None = None   # ready when speculation made it; None: transcribe now
    decision: Decision | None = None
    cut: bool = False            # stopped at vad.max_utterance_s: the visitor had not finished

    @property
    def wait_s(self) -> float:
        """The end-of-turn wait the visitor felt (a floor of voice-to-voice latency)."""
        return max(0.0, self.heard_s - self.end_s)


class TurnTaker:
    """VAD segments (closed at a short pause) -> whole visitor turns.

    `transcribe(audio) -> Transcript` runs in one worker thread while the loop keeps reading the
    microphone. `turn.mode: silence` is the ancestor's behaviour (every VAD utterance closed at
    vad.end_silence_s is a turn, transcribed after it ends), kept as the benchmark's baseline."""

    def __init__(self, cfg: Config, vad_model: str | Path,
                 transcribe: Callable[[np.ndarray], Transcript], smart: SmartTurn | None = None):
        self.cfg: TurnConfig = cfg.turn
        self.max_s = cfg.vad.max_utterance_s
        self.smart = cfg.turn.mode == "smart"
        end = cfg.turn.pause_s if self.smart else cfg.vad.end_silence_s
        self.vad = VAD(vad_model, replace(cfg.vad, end_silence_s=end))
        self.transcribe = transcribe
        self.model = smart
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="speculate")
        self.reset()

    @property
    def speaking(self) -> bool:
        return self.vad.speaking

    @property
    def pending(self) -> bool:
        """Speech is coming in or a heard part waits for the rest (after an opener, say): the
        turn is not over, so whoever drives the microphone must not count this as silence."""
        return self.vad.speaking or bool(self._segments)

    def reset(self) -> None:
        """Forget the stream and any half-heard turn (after the kiosk has spoken)."""
        self.vad.reset()
        self._segments: list[Utterance] = []
        self._job: Future | None = None
        self._generation = 0

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def settle(self) -> None:
        """Wait for the speculation in flight (replays that model an instant ASR, and tests)."""
        if self._job is not None:
            wait([self._job])

    def turns(self, chunks: Iterable[np.ndarray]) -> Iterator[Turn]:
        """Microphone chunks in, finished turns out (the caller may reset() between chunks)."""
        for chunk in chunks:
            for seg in self.vad.feed(chunk):
                if not self.smart:
                    yield self._turn([seg], cut=seg.cut)
                    continue
                self._segments.append(seg)
                if seg.cut or seg.end_s - self._segments[0].start_s >= self.max_s:
                    yield self._finish(cut=True)
                else:
                    self._speculate()
            if self.smart and self._segments and not self.vad.speaking:
                turn = self._ready()
                if turn is not None:
                    yield turn
        last = self.vad.flush()
        if last is not None:
            self._segments.append(last)
        if self._segments:
            yield self._finish(cut=False)

    def _speculate(self) -> None:
        """Transcribe (and score) the speech so far, now, in the worker; a newer pause's job
        replaces one that has not started."""
        if self._job is not None:
            self._job.cancel()
        audio = np.concatenate([s.audio for s in self._segments])
        self._generation += 1
        self._job = self._pool.submit(self._judge, audio)
        self._job.generation = self._generation      # type: ignore[attr-defined]

    def _judge(self, audio: np.ndarray) -> tuple[Transcript, Decision]:
        tr = self.transcribe(audio)
        p = self.model(audio) if self.model is not None and tr.text else None
        return tr, decide(tr.text, p, self.cfg.threshold)

    def _fresh(self, wait: bool = False) -> tuple[Transcript | None, Decision] | None:
        """The speculation's result if it is of exactly the speech so far (None: not yet, or
        stale). A failed speculation ends the turn untranscribed: the pipeline tries again and
        reports the error as the turn's."""
        job = self._job
        if job is None or job.generation != self._generation:  # type: ignore[attr-defined]
            return None
        if not (wait or job.done()):
            return None
        try:
            return job.result()
        except Exception as e:  # noqa: BLE001 - logged, and the turn still ends
            log.warning("turns: speculative transcription failed (%s); transcribing at the end "
                        "of the turn", e)
            return None, Decision("complete", "speculation failed")

    def _ready(self) -> Turn | None:
        """The turn, if what was said so far and the silence since say it has ended."""
        fresh = self._fresh()
        if fresh is None:
            return None
        tr, d = fresh
        wait = {"complete": 0.0, "opener": self.cfg.opener_wait_s}.get(d.verdict, self.cfg.incomplete_wait_s)
        if self.vad.silence_s < wait:
            return None
        if d.verdict == "empty":       # a cough, a door: nothing to answer, nothing to keep
            log.info("turns: dropped %.1f s with no words in it", self._span())
            self._drop()
            return None
        log.info("turns: %s (%s) after %.2f s of silence", d.verdict, d.why, self.vad.silence_s)
        return self._turn(self._take(), transcript=tr, decision=d)

    def _finish(self, cut: bool) -> Turn:
        """End the turn now (stream over, or too long): the speculative transcript if it is of
        exactly this audio, else a fresh one."""
        fresh = None if cut else self._fresh(wait=True)
        segments = self._take()
        return self._turn(segments, transcript=fresh[0] if fresh else None,
                          decision=fresh[1] if fresh else None, cut=cut)

    def _span(self) -> float:
        return self._segments[-1].end_s - self._segments[0].start_s if self._segments else 0.0

    def _take(self) -> list[Utterance]:
        segments = self._segments
        self._drop()
        return segments

    def _drop(self) -> None:
        self._segments = []
        self._job = None
        self._generation += 1

    def _turn(self, segments: list[Utterance], transcript: Transcript | None = None,
              decision: Decision | None = None, cut: bool = False) -> Turn:
        audio = np.concatenate([s.audio for s in segments])
        last = segments[-1]
        end = last.end_s if last.speech_end_s is None else last.speech_end_s
        return Turn(audio, segments[0].start_s, end, self.vad.position_s, transcript, decision, cut)
