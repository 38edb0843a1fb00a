"""The stages composed: utterance -> transcript -> grounded answer -> speech, with timings.

Streamed mode runs three stages at once: a producer thread generates and guards sentences, a
second thread synthesises each sentence as it arrives, and the caller's thread hands the audio to
the sink (the speaker, or a collector). The first sentence is therefore playing while the rest is
still being generated. Queues between the stages end with a sentinel written in `finally`, so a
slow or failing stage makes the next one wait or raise, never stop early or hang.
`sequential=True` is the ancestor's way, kept as the benchmark's baseline: the whole answer,
then the whole synthesis, then playback.
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import numpy as np

from campus_guide.config import Config
from campus_guide.knowledge import Retriever, load_kb

from .asr import Transcriber, kb_hotwords
from .audio import SAMPLE_RATE, FileSource
from .budget import rss_mb, tune_heap, with_threads
from .dialogue import Dialogue, DialogueResult
from .llm import LLM
from .tts import Synthesizer
from .turns import SmartTurn, Turn, TurnTaker
from .vad import Utterance

log = logging.getLogger(__name__)

VAD_MODEL = "silero_vad.onnx"
TURN_LOG = "turns.jsonl"
_END = object()


class Sink(Protocol):
    """Where the spoken answer goes: device.audio.Speaker, or a Collector."""
    def play_stream(self, chunks: Iterable[np.ndarray]) -> None: ...


class Collector:
    """A sink that keeps the answer's audio in memory (ask --out, tests, benchmarks)."""

    def __init__(self):
        self.chunks: list[np.ndarray] = []

    def play_stream(self, chunks: Iterable[np.ndarray]) -> None:
        self.chunks.extend(np.asarray(c, np.float32) for c in chunks)

    @property
    def audio(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)


@dataclass
class Timings:
    """Seconds from the end of the turn (when the kiosk decided the visitor had finished), and
    the end-of-turn wait before it: voice-to-voice = end_of_turn_s + first_audio_s, from the
    visitor's last sound to the kiosk's first (live turns only)."""
    end_of_turn_s: float | None = None
    asr_s: float | None = None       # ASR still to wait for (about 0 when speculation had it ready)
    first_token_s: float | None = None
    first_sentence_s: float | None = None
    first_audio_s: float | None = None
    total_s: float | None = None
    voice_to_voice_s: float | None = None


@dataclass
class TurnResult:
    transcript: str
    language: str
    answer: str = ""
    sources: list[str] = field(default_factory=list)
    kind: str = "none"              # llm | fallback | unknown | redirect | social | clarify | none (nothing heard)
    guard: str | None = None        # why the model's answer was replaced, if it was
    asr_confidence: float | None = None
    timings: Timings = field(default_factory=Timings)
    llm_tokens: int = 0
    prefill_s: float | None = None
    decode_tok_s: float | None = None
    rss_mb: float = 0.0
    mode: str = "streamed"
    audio: np.ndarray | None = field(default=None, repr=False)
    sample_rate: int = 0

    def to_dict(self) -> dict:
        d = asdict(replace(self, audio=None))     # asdict would deep-copy the answer's audio
        d.pop("audio")
        d["timings"] = {k: None if v is None else round(v, 4) for k, v in d["timings"].items()}
        return d


def _produce(items: Iterable, q: queue.Queue, cancel: threading.Event) -> None:
    """Thread body: copy `items` into `q`, then the end marker (or the error) - always."""
    it = iter(items)
    try:
        for item in it:
            if cancel.is_set():
                break
            q.put(item)
    except BaseException as e:  # handed to the consumer, which re-raises it
        q.put(e)
    finally:
        getattr(it, "close", lambda: None)()
        q.put(_END)


def _drain(q: queue.Queue) -> Iterator:
    while (item := q.get()) is not _END:
        if isinstance(item, BaseException):
            raise item
        yield item


class _TurnLog(logging.handlers.RotatingFileHandler):
    """turns.jsonl, one JSON object a line, rotated by size (the standard library's rotation).
    A write that fails raises instead of printing a traceback, so the pipeline logs it once."""

    def __init__(self, path: Path, rt):
        super().__init__(path, maxBytes=int(rt.turn_log_max_mb * 2**20), backupCount=rt.turn_log_keep,
                         encoding="utf-8", delay=True)

    def handleError(self, record: logging.LogRecord) -> None:
        raise


class Pipeline:
    """All models loaded once here; the kiosk is ready when the constructor returns."""

    def __init__(self, cfg: Config):
        tune_heap()
        self.cfg = cfg = with_threads(cfg)
        models = Path(cfg.models_dir)
        t = time.perf_counter()
        self.kb = load_kb(cfg.kb)
        self.asr = Transcriber(cfg, kb_hotwords(self.kb) if cfg.asr.hotwords else [])
        smart = cfg.turn.smart_turn if cfg.turn.mode == "smart" else None
        self.turns = TurnTaker(cfg, models / VAD_MODEL, self.asr.transcribe,
                               SmartTurn(models / smart) if smart else None)
        self.vad = self.turns.vad
        self.llm = LLM(cfg.llm, models)
        self.tts = Synthesizer(cfg)
        retriever = Retriever(self.kb, here=cfg.dialogue.kiosk_location)
        self.dialogue = Dialogue(cfg, self.kb, retriever, self.llm)
        self.state_dir = Path(cfg.runtime.state_dir)
        self._turns = _TurnLog(self.state_dir / TURN_LOG, cfg.runtime)
        self._log_failing = False
        log.info("pipeline: ready in %.1f s, %.0f MB resident", time.perf_counter() - t, rss_mb())

    def utterance(self, audio: np.ndarray):
        """All the speech in a recording (a WAV file) as one visitor turn, pauses included
        ("Excuse me. ... Where is the library?"), up to vad.max_utterance_s; None if nobody
        speaks in it."""
        self.vad.reset()
        try:
            parts = list(self.vad.utterances(FileSource(audio)))
        finally:
            self.vad.reset()
        if len(parts) < 2 or parts[0].cut:
            return parts[0] if parts else None
        begin = parts[0].end_s - len(parts[0].audio) / SAMPLE_RATE      # its pre-roll included
        last = parts[0]
        for u in parts[1:]:
            if u.end_s - begin > self.cfg.vad.max_utterance_s:
                break
            last = u
        if last is parts[0]:
            return last
        span = audio[max(0, int(begin * SAMPLE_RATE)):int(last.end_s * SAMPLE_RATE)]
        return Utterance(np.asarray(span, np.float32), parts[0].start_s, last.end_s)

    def ask_audio(self, audio: np.ndarray, sink: Sink | None = None, *, sequential: bool = False,
                  trim: bool = True, language: str | None = None) -> TurnResult:
        """One spoken question. `trim`: find the speech in a recording first (files); the kiosk
        passes VAD utterances, already trimmed. `language` overrides asr.language."""
        if trim:
            u = self.utterance(audio)
            if u is None:
                log.info("pipeline: no speech in the audio")
                return self._log(TurnResult("", "", kind="none", rss_mb=rss_mb()))
            audio = u.audio
        t0 = time.perf_counter()
        tr = self.asr.transcribe(audio, language)
        asr_s = time.perf_counter() - t0
        return self._turn(tr.text, tr.language, t0, sink, sequential, asr_s, tr.confidence)

    def ask_turn(self, turn: Turn, sink: Sink | None = None, *, sequential: bool = False) -> TurnResult:
        """One live turn from the TurnTaker, with its speculative transcript when it has one."""
        t0 = time.perf_counter()
        tr = turn.transcript or self.asr.transcribe(turn.audio)
        result = self._turn(tr.text, tr.language, t0, sink, sequential, time.perf_counter() - t0,
                            tr.confidence, end_of_turn_s=turn.wait_s)
        return result

    def ask_text(self, text: str, sink: Sink | None = None, *, sequential: bool = False,
                 lang: str | None = None) -> TurnResult:
        """One typed question (no ASR)."""
        return self._turn(text, lang, time.perf_counter(), sink, sequential, None, None)

    def _turn(self, text, lang, t0, sink, sequential, asr_s, confidence,
              end_of_turn_s: float | None = None) -> TurnResult:
        sink = sink if sink is not None else Collector()
        reply = self.dialogue.ask(text, lang)
        d: DialogueResult = reply.result
        timings = Timings(end_of_turn_s=end_of_turn_s, asr_s=asr_s)
        marks: dict[str, float] = {}

        def mark(name: str, items: Iterable) -> Iterator:
            for item in items:
                marks.setdefault(name, time.perf_counter())
                yield item

        sentences = mark("sentence", reply)
        if sequential:
            text_all = " ".join(sentences)
            audio = list(self.tts.synthesize(text_all, d.lang)) if text_all else []
            if audio:
                sink.play_stream(mark("audio", audio))
        else:
            self._stream(sentences, d.lang, sink, mark)
        end = time.perf_counter()

        since = lambda t: None if t is None else t - t0  # noqa: E731
        timings.first_token_s = since(d.first_token_t)
        timings.first_sentence_s = since(marks.get("sentence"))
        timings.first_audio_s = since(marks.get("audio"))
        timings.total_s = end - t0
        if end_of_turn_s is not None and timings.first_audio_s is not None:
            timings.voice_to_voice_s = end_of_turn_s + timings.first_audio_s
        stats = d.llm
        result = TurnResult(
            transcript=text.strip(), language=d.lang, answer=d.answer, sources=d.sources,
            kind=d.kind, guard=d.guard, asr_confidence=confidence, timings=timings,
            llm_tokens=stats.tokens if stats else 0,
            prefill_s=stats.prefill_s if stats else None,
            decode_tok_s=stats.tok_s if stats else None,
            rss_mb=rss_mb(), mode="sequential" if sequential else "streamed",
            audio=sink.audio if isinstance(sink, Collector) else None,
            sample_rate=self.tts.sample_rate,
        )
        return self._log(result)

    def _stream(self, sentences: Iterator[str], lang: str, sink: Sink, mark) -> None:
        cancel = threading.Event()
        first_audio = threading.Event()
        texts: queue.Queue = queue.Queue()
        audio: queue.Queue = queue.Queue()

        def first_sentence_first() -> Iterator[str]:
            """The model waits while the first sentence is synthesised: on a CPU-only box the two
            would share the cores and the visitor would hear nothing sooner. It decodes the rest
            while the first sentence plays, which takes longer than synthesising the next."""
            for n, s in enumerate(sentences):
                yield s
                while n == 0 and not first_audio.wait(0.05) and not cancel.is_set():
                    pass

        def synthesize() -> Iterator[np.ndarray]:
            for s in _drain(texts):
                yield from self.tts.synthesize(s, lang)
                first_audio.set()

        threads = [threading.Thread(target=_produce, args=(first_sentence_first(), texts, cancel),
                                    daemon=True, name="answer"),
                   threading.Thread(target=_produce, args=(synthesize(), audio, cancel),
                                    daemon=True, name="tts")]
        for t in threads:
            t.start()
        try:
            sink.play_stream(mark("audio", _drain(audio)))
        finally:
            cancel.set()           # playback stopped early (barge-in): stop generating too
            for t in threads:
                t.join()

    def _log(self, result: TurnResult) -> TurnResult:
        """The turn to state_dir/turns.jsonl (bounded: it rotates past runtime.turn_log_max_mb;
        the visitor's words only with runtime.log_transcripts); only kind, language and timings
        to the journal, which is kept longer and read more widely than the kiosk's own state."""
        d = result.to_dict()
        if not self.cfg.runtime.log_transcripts:
            d.pop("transcript")
            d.pop("answer")
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._turns.emit(logging.makeLogRecord({"msg": json.dumps(d, ensure_ascii=False)}))
            if self._log_failing:
                self._log_failing = False
                log.warning("pipeline: %s is written again", self.state_dir / TURN_LOG)
        except OSError as e:
            if not self._log_failing:      # once per outage, not once per turn
                self._log_failing = True
                log.warning("pipeline: cannot write %s: %s (check runtime.state_dir and free disk "
                            "space; answering goes on)", self.state_dir / TURN_LOG, e)
        log.info("turn: %s", json.dumps({k: d[k] for k in ("kind", "language", "guard", "timings")}))
        return result

    def reset(self) -> None:
        """A fresh start: empty KV cache and no conversation (benchmarks, a new visitor)."""
        self.llm.reset()
        self.dialogue.reset()

    def close(self) -> None:
        self.turns.close()
        self.llm.close()
        self._turns.close()
