"""Visitors played into the real kiosk loop in real time: a simulated microphone and speaker.

Only the sound card is simulated. `SimMic` yields 32-ms chunks at 1x speed, each question
with silence around it, and waits for the kiosk's answer (and its playback) before the next;
`SimSpeaker` "plays" what it is given at 1x speed, so the half-duplex kiosk is deaf for as long
as a real one would be, and stamps the wall time of the first sample out. Voice-to-voice is then
measured the way a visitor feels it: from the last voiced sample of the question to the first
sample of the answer. The benchmark (`campus-guide bench`) and the soak use it.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from .audio import CHUNK, SAMPLE_RATE
from .turns import Turn

CHUNK_S = CHUNK / SAMPLE_RATE
_VOICED = 0.02          # |sample| above this is voice (piper and espeak are silent at ~1e-4)


def voiced_end(audio: np.ndarray) -> float:
    """Seconds into `audio` of its last voiced sample."""
    loud = np.flatnonzero(np.abs(np.asarray(audio)) > _VOICED)
    return (loud[-1] + 1) / SAMPLE_RATE if loud.size else 0.0


@dataclass
class Played:
    """One question as the kiosk received it."""
    name: str
    started: float = 0.0              # wall time of its first chunk
    voiced_end: float = 0.0           # wall time the last voiced sample went in
    heard: list[tuple[float, Turn]] = field(default_factory=list)   # turns the kiosk ended
    answers: list[float] = field(default_factory=list)              # first samples out

    @property
    def miscut(self) -> bool:
        """The kiosk ended a turn before the visitor had finished."""
        return any(t < self.voiced_end - CHUNK_S for t, _ in self.heard)

    @property
    def v2v_s(self) -> float | None:
        """Voice-to-voice: the last voiced sample to the first answer sample after it."""
        after = [a for a in self.answers if a >= self.voiced_end]
        return after[0] - self.voiced_end if after else None


class SimSpeaker:
    """A speaker with the real one's interface (play_stream, stop, resume, playing)."""

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate
        self.playing = False
        self.first_samples: list[float] = []     # wall time of each answer's first sample
        self.done = threading.Event()            # set when a playback has ended
        self._stop = threading.Event()

    def play_stream(self, chunks: Iterable[np.ndarray]) -> None:
        self.playing, self.done = True, threading.Event()
        until = 0.0
        try:
            for c in chunks:
                if self._stop.is_set():
                    break
                if not len(c):
                    continue
                now = time.monotonic()
                if until == 0.0:
                    self.first_samples.append(now)
                until = max(until, now) + len(c) / self.sample_rate
            while time.monotonic() < until and not self._stop.is_set():
                time.sleep(0.01)
        finally:
            self.playing = False
            self.done.set()

    def stop(self) -> None:
        self._stop.set()

    def resume(self) -> None:
        self._stop.clear()


class SimMic:
    """Questions at 1x speed, `lead_s` of silence before each; after each, silence until the
    kiosk has answered and finished speaking (or `patience_s` passed), then `tail_s` more."""

    def __init__(self, questions: list[tuple[str, np.ndarray]], speaker: SimSpeaker,
                 lead_s: float = 0.5, tail_s: float = 1.0, patience_s: float = 30.0):
        self.questions, self.speaker = questions, speaker
        self.lead_s, self.tail_s, self.patience_s = lead_s, tail_s, patience_s
        self.played: list[Played] = []
        self._next = 0.0

    def heard(self, turn: Turn) -> None:
        """listen()'s on_heard: the turn ended now."""
        if self.played:
            self.played[-1].heard.append((time.monotonic(), turn))

    def _pace(self) -> None:
        """Hold each chunk until its time: the microphone delivers in real time."""
        now = time.monotonic()
        self._next = max(self._next + CHUNK_S, now) if self._next else now
        if self._next > now:
            time.sleep(self._next - now)

    def __iter__(self) -> Iterator[np.ndarray]:
        quiet = np.zeros(CHUNK, np.float32)
        for name, audio in self.questions:
            p = Played(name)
            self.played.append(p)
            answers_before = len(self.speaker.first_samples)
            audio = np.concatenate([np.zeros(int(self.lead_s * SAMPLE_RATE), np.float32), audio])
            end = int(voiced_end(audio) * SAMPLE_RATE)
            for i in range(0, len(audio), CHUNK):
                chunk = audio[i:i + CHUNK]
                self._pace()
                if i == 0:
                    p.started = time.monotonic()
                if i < end <= i + CHUNK:     # spoken (i + CHUNK - end) samples before delivery
                    p.voiced_end = time.monotonic() - (i + CHUNK - end) / SAMPLE_RATE
                yield np.pad(chunk, (0, CHUNK - len(chunk)))
            deadline = time.monotonic() + self.patience_s
            while time.monotonic() < deadline and (
                    len(self.speaker.first_samples) == answers_before or self.speaker.playing):
                self._pace()
                yield quiet
            for _ in range(int(self.tail_s / CHUNK_S)):
                self._pace()
                yield quiet
            p.answers = self.speaker.first_samples[answers_before:]
