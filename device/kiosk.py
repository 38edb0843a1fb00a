"""The kiosk loop (`listen`, what `campus-guide run` starts) and the operator's `demo`.

Half-duplex by default: while the kiosk answers, and for a short tail after, microphone chunks
are dropped and the turn-taker is reset, so the kiosk never hears (and answers) itself. With
`audio.barge_in` (only for an echo-cancelling microphone) it keeps listening, and a visitor who
starts speaking stops the playback; what they say becomes the next question.
Turns run in a worker thread so the loop keeps reading the microphone and ticking the watchdog
while an answer is generated and spoken.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

from campus_guide.config import Config

from .audio import AudioError, Microphone, Speaker, read_wav
from .budget import trim_heap
from .pipeline import Pipeline, TurnResult
from .turns import Turn, TurnTaker

log = logging.getLogger(__name__)

ECHO_TAIL_S = 0.3   # the room still rings (and the driver still plays) just after playback
HUNG_TURN_S = 120.0  # a turn this long is hung (speaker unplugged, GPU stuck): starve the watchdog


def listen(pipeline: Pipeline, mic, speaker, on_turn: Callable[[TurnResult], None] | None = None,
           on_tick: Callable[[], None] | None = None, stop: threading.Event | None = None,
           on_heard: Callable[[Turn], None] | None = None, sequential: bool = False,
           turns: TurnTaker | None = None) -> None:
    """Microphone chunks -> visitor turns (device/turns.py) -> pipeline -> speaker, until `stop`
    is set or the microphone ends. `mic` yields float32 chunks (and may have flush()); `speaker`
    has play_stream(), stop(), resume() and .playing. `on_heard` is called the moment a turn
    ends, `on_turn` when it has been answered. `on_tick` (the systemd watchdog) is called per
    chunk, except while one turn has been running longer than HUNG_TURN_S, so that systemd
    restarts a kiosk that still reads its microphone but can no longer answer. `turns` and
    `sequential` replace the configured turn-taking and streaming (the benchmark's baseline)."""
    stop = stop or threading.Event()
    turns, barge_in = turns or pipeline.turns, pipeline.cfg.audio.barge_in
    busy = threading.Event()
    busy_since = 0.0
    worker: threading.Thread | None = None

    def answer(turn: Turn) -> None:
        try:
            result = pipeline.ask_turn(turn, speaker, sequential=sequential)
            if on_turn:
                on_turn(result)
        except Exception as e:   # one bad turn must not take the kiosk down
            log.exception("kiosk: turn failed, the visitor got no answer; %s", _advice(e))
        finally:
            trim_heap()         # in the echo tail, while the kiosk is deaf anyway
            busy.clear()

    def chunks() -> Iterator:
        deaf_until = 0.0
        hung_since = None       # the turn (its busy_since) already reported as hung
        for chunk in mic:
            hung = busy.is_set() and time.monotonic() - busy_since > HUNG_TURN_S
            if hung and hung_since != busy_since:
                hung_since = busy_since
                log.error("kiosk: a turn has run for over %.0f s (HUNG_TURN_S): the watchdog is no "
                          "longer fed, so systemd restarts the kiosk; if it happens again, check "
                          "the speaker (unplugged?) and the LLM / GPU (`journalctl -u "
                          "campus-guide`, `tegrastats`)", HUNG_TURN_S)
            if on_tick and not hung:
                on_tick()
            if stop.is_set():
                return
            speaking = busy.is_set() or speaker.playing
            if barge_in:
                if speaking and speaker.playing and turns.speaking:
                    log.info("kiosk: barge-in, playback stopped")
                    speaker.stop()
                yield chunk
                continue
            now = time.monotonic()
            if speaking:
                deaf_until = now + ECHO_TAIL_S
                continue
            if deaf_until:
                if now < deaf_until:
                    continue
                deaf_until = 0.0
                turns.reset()           # forget whatever it heard of the kiosk's own voice
                getattr(mic, "flush", lambda: None)()
            yield chunk

    turns.reset()
    try:
        for turn in turns.turns(chunks()):
            if stop.is_set():           # the half-heard turn of a shutdown is not a question
                break
            if worker is not None and worker.is_alive():
                speaker.stop()          # barge-in: the new question replaces the pending answer
                worker.join()
            log.info("kiosk: turn of %.1f s, ended after %.2f s of silence%s",
                     turn.end_s - turn.start_s, turn.wait_s,
                     " (cut at vad.max_utterance_s)" if turn.cut else "")
            if on_heard:
                on_heard(turn)
            speaker.resume()
            busy_since = time.monotonic()
            busy.set()
            worker = threading.Thread(target=answer, args=(turn,), name="turn", daemon=True)
            worker.start()
    finally:
        if worker is not None and worker.is_alive():
            speaker.stop()
            worker.join()


def _advice(e: BaseException) -> str:
    """What to do about a turn that raised, for the log line (the traceback follows it)."""
    if isinstance(e, AudioError):
        return ("check the speaker and audio.output_device (`python -m sounddevice` lists the "
                "devices); the kiosk goes on listening")
    if isinstance(e, OSError):
        return "check free disk space and runtime.state_dir; the kiosk goes on listening"
    return ("the kiosk goes on listening; if every turn fails, restart it (`sudo systemctl "
            "restart campus-guide`) and report the traceback below")


def format_turn(r: TurnResult) -> str:
    """A readable turn for the operator's terminal."""
    if r.kind == "none":
        return f"(nothing to answer: {r.transcript!r})" if r.transcript else "(no speech heard)"
    t = r.timings
    fmt = lambda v: "-" if v is None else f"{v:.2f}s"  # noqa: E731
    lines = [f"you    [{r.language}]: {r.transcript}", f"guide  [{r.kind}]: {r.answer}"]
    if r.guard:
        lines.append(f"guard: fallback ({r.guard})")
    if r.sources:
        lines.append(f"sources: {', '.join(r.sources)}")
    if t.voice_to_voice_s is not None:
        lines.append(f"voice to voice {fmt(t.voice_to_voice_s)} (end of turn {fmt(t.end_of_turn_s)})")
    lines.append(f"timings: asr {fmt(t.asr_s)}  first token {fmt(t.first_token_s)}  first sentence "
                 f"{fmt(t.first_sentence_s)}  first audio {fmt(t.first_audio_s)}  total "
                 f"{fmt(t.total_s)}  rss {r.rss_mb:.0f} MB")
    return "\n".join(lines)


def _open_speaker(cfg: Config, sample_rate: int):
    try:
        return Speaker(cfg.audio, sample_rate=sample_rate)
    except AudioError as e:
        print(f"(no speaker: {e}; answers are shown, not played)")
        return None


def demo(cfg: Config, wavs: Sequence[str | Path] = (), use_mic: bool = True) -> int:
    """The operator's SSH session: the microphone when there is one, otherwise typed questions;
    `wavs` are asked first. A line naming a .wav file asks that file. Ctrl-C ends it."""
    print("loading models ...", flush=True)
    pipeline = Pipeline(cfg)
    speaker = _open_speaker(cfg, pipeline.tts.sample_rate)
    sink = speaker   # None: each answer is synthesised into memory and dropped
    show = lambda r: print(format_turn(r), flush=True)  # noqa: E731
    try:
        for wav in wavs:
            show(pipeline.ask_audio(read_wav(wav), sink))
        if use_mic and speaker is not None:
            try:
                mic = Microphone(cfg.audio)
            except AudioError as e:
                print(f"(no microphone: {e})")
            else:
                print("listening; speak a question (Ctrl-C to quit)", flush=True)
                with mic:
                    listen(pipeline, mic, speaker, on_turn=show)
                return 0
        print("type a question (or a .wav path); empty line or Ctrl-D to quit", flush=True)
        while True:
            try:
                line = input("question> ").strip()
            except EOFError:
                break
            if not line:
                break
            if line.lower().endswith((".wav", ".flac")) and Path(line).is_file():
                show(pipeline.ask_audio(read_wav(line), sink))
            else:
                show(pipeline.ask_text(line, sink))
    except KeyboardInterrupt:
        print("\nbye")
    finally:
        if speaker is not None:
            speaker.close()
        pipeline.close()
    return 0
