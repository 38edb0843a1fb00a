"""Silero VAD on onnxruntime, and endpointing: a chunk stream -> whole utterances.

The model sees 32-ms windows (512 samples at 16 kHz) with the last 64 samples of the previous
window prepended as context, and carries an LSTM state from window to window. Both published
ONNX layouts are accepted: faster-whisper's silero v6 (inputs input/h/c; a batch of windows is
one time sequence) and the silero-vad package's (input/state/sr; one window per call).
Importing the silero_vad package would import torch, which the device never does.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from campus_guide.config import VADConfig
from device.models import ModelError, onnx_session, require

SAMPLE_RATE = 16000
WINDOW = 512
CONTEXT = 64
WINDOW_S = WINDOW / SAMPLE_RATE
_HYSTERESIS = 0.15      # speech continues until the probability falls this far below threshold
_TAIL_S = 0.2           # silence kept after the last speech window (Whisper likes a soft ending)
_PAUSE_WINDOWS = 3      # ~0.1 s below threshold: a pause where a too-long utterance may be cut
# Silero's recurrent state drifts over a long stretch without speech: after 15-30 s of a quiet
# room a short "Hello!" no longer reaches the threshold (0.89 from a fresh state, 0.6 after 30 s
# at -60 dBFS; silero-vad issue #725). A kiosk idles for hours, so the state is reset after this
# much silence with no utterance open (the pre-roll audio is kept, and silence loses nothing).
_STATE_RESET_S = 5.0
_STATE_RESET_WINDOWS = round(_STATE_RESET_S / WINDOW_S)


@dataclass
class Utterance:
    audio: np.ndarray   # float32 mono 16 kHz, pre-roll included
    start_s: float      # seconds since the stream (or reset) began
    end_s: float
    cut: bool = False   # True: stopped at vad.max_utterance_s, the speaker had not finished
    speech_end_s: float | None = None   # the last window with speech (end_s less the soft tail)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


class _Silero:
    """The ONNX model and its recurrent state."""

    def __init__(self, path: Path):
        # a tiny model: threads only cost
        self.session = onnx_session(path, "cannot load the VAD model; rebuild it with "
                                          "`campus-guide models fetch --force`")
        names = {i.name for i in self.session.get_inputs()}
        if {"input", "h", "c"} <= names:
            self.layout = "hc"
        elif {"input", "state", "sr"} <= names:
            self.layout = "state"
        else:
            raise ModelError(f"{path}: not a silero VAD model (inputs {sorted(names)}); "
                             f"run `campus-guide models fetch --force`")
        self.reset()

    def reset(self) -> None:
        self.reset_state()
        self.context = np.zeros(CONTEXT, np.float32)

    def reset_state(self) -> None:
        """The recurrent state only: the audio context (the previous window's tail) stays."""
        self.h = np.zeros((1, 1, 128), np.float32)
        self.c = np.zeros((1, 1, 128), np.float32)
        self.state = np.zeros((2, 1, 128), np.float32)

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """(n, WINDOW) consecutive windows -> (n,) speech probabilities; state carries over."""
        previous = np.concatenate([self.context[None], windows[:-1, -CONTEXT:]])
        x = np.concatenate([previous, windows], axis=1).astype(np.float32)
        self.context = windows[-1, -CONTEXT:].copy()
        if self.layout == "hc":
            out, self.h, self.c = self.session.run(None, {"input": x, "h": self.h, "c": self.c})
            return np.asarray(out, np.float32).reshape(-1)
        sr = np.array(SAMPLE_RATE, dtype=np.int64)
        probs = np.empty(len(x), np.float32)
        for i, row in enumerate(x):
            out, self.state = self.session.run(None, {"input": row[None], "state": self.state,
                                                      "sr": sr})
            probs[i] = np.asarray(out).reshape(-1)[0]
        return probs


class VAD:
    """Endpointing on silero probabilities.

    An utterance opens at the first window >= cfg.threshold (with cfg.pre_roll_s of audio from
    before it, so the first syllable is not clipped) and closes after cfg.end_silence_s below
    threshold - 0.15. Bursts with less than cfg.min_speech_s of speech are dropped as noise.
    At cfg.max_utterance_s it is cut at the last short pause (else at the limit) and returned
    with cut=True; the speech after the cut continues as the next utterance, so nothing is lost.
    """

    def __init__(self, onnx_path: str | Path, cfg: VADConfig | None = None):
        self.cfg = cfg or VADConfig()
        self.model = _Silero(require(onnx_path, "VAD model (silero ONNX)", "models_dir"))
        self.reset()

    def reset(self) -> None:
        """Forget the stream (call between sessions or after the kiosk has spoken)."""
        self.model.reset()
        self._pending = np.zeros(0, np.float32)
        self._n = 0                                  # windows seen since reset
        self._last_speech = 0                        # window index just after the last speech
        self._pre: deque[np.ndarray] = deque(maxlen=max(1, round(self.cfg.pre_roll_s / WINDOW_S)))
        self._quiet = 0                              # windows without speech since the last state reset
        self._close()

    def _close(self) -> None:
        self._windows: list[np.ndarray] = []         # the open utterance, one entry per window
        self._probs: list[float] = []
        self._start = 0                              # window index of _windows[0]
        self._silence = 0                            # trailing windows below the low threshold
        self._speaking = False

    @property
    def speaking(self) -> bool:
        """An utterance is open (someone is talking now): the barge-in signal."""
        return self._speaking

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """Speech probability per 32-ms window of a whole 16-kHz clip, from a fresh state."""
        audio = np.asarray(audio, np.float32).reshape(-1)
        if audio.size == 0:
            return np.zeros(0, np.float32)
        audio = np.pad(audio, (0, -audio.size % WINDOW))
        saved = (self.model.h, self.model.c, self.model.state, self.model.context)
        self.model.reset()
        try:
            return self.model(audio.reshape(-1, WINDOW))
        finally:
            self.model.h, self.model.c, self.model.state, self.model.context = saved

    def utterances(self, chunks: Iterable[np.ndarray]) -> Iterator[Utterance]:
        """Chunks of any size (16 kHz float32) in, finished utterances out, as they end."""
        for chunk in chunks:
            yield from self.feed(chunk)
        u = self.flush()
        if u:
            yield u

    def feed(self, chunk: np.ndarray) -> list[Utterance]:
        """One chunk of a live stream in; the utterances it finished (usually none) out."""
        self._pending = np.concatenate([self._pending, np.asarray(chunk, np.float32).ravel()])
        n = self._pending.size // WINDOW
        if n == 0:
            return []
        windows = self._pending[:n * WINDOW].reshape(n, WINDOW)
        self._pending = self._pending[n * WINDOW:]
        return [u for window, p in zip(windows, self.model(windows)) for u in self._step(window, float(p))]

    def flush(self) -> Utterance | None:
        """The stream ended: the open utterance, if any (and long enough), closed now."""
        return self._emit(len(self._windows) - self._silence) if self._speaking else None

    @property
    def position_s(self) -> float:
        """Seconds of audio analysed since reset (the stream's clock)."""
        return self._n * WINDOW_S

    @property
    def silence_s(self) -> float:
        """Seconds since the last speech window, while no utterance is open (0 while one is)."""
        return 0.0 if self._speaking else (self._n - self._last_speech) * WINDOW_S

    def _step(self, window: np.ndarray, p: float) -> Iterator[Utterance]:
        cfg, i = self.cfg, self._n
        self._n += 1
        if not self._speaking:
            if p < cfg.threshold:
                self._pre.append(window)
                self._quiet += 1
                if self._quiet >= _STATE_RESET_WINDOWS:
                    self.model.reset_state()
                    self._quiet = 0
                return
            self._quiet = 0
            self._speaking = True
            self._windows, self._probs = list(self._pre), [0.0] * len(self._pre)
            self._start = i - len(self._pre)
            self._pre.clear()
        self._windows.append(window)
        self._probs.append(p)
        if p >= cfg.threshold:
            self._silence = 0
            self._last_speech = i + 1
        elif p < cfg.threshold - _HYSTERESIS or self._silence:
            self._silence += 1
        if self._silence * WINDOW_S >= cfg.end_silence_s:
            u = self._emit(len(self._windows) - self._silence)
            if u:
                yield u
        elif len(self._windows) * WINDOW_S >= cfg.max_utterance_s:
            yield self._cut()

    def _emit(self, speech_end: int) -> Utterance | None:
        """Close the utterance after window `speech_end` (+ a short tail); None if too short."""
        tail = min(round(_TAIL_S / WINDOW_S), len(self._windows) - speech_end)
        keep = self._windows[:speech_end + tail]
        speech = sum(p >= self.cfg.threshold for p in self._probs[:speech_end])
        start, after = self._start, self._windows[speech_end + tail:]
        self._close()
        self._pre.extend(after)          # pre-roll for a visitor who goes on right away
        if speech * WINDOW_S < self.cfg.min_speech_s:
            return None
        return Utterance(np.concatenate(keep), start * WINDOW_S, (start + len(keep)) * WINDOW_S,
                         speech_end_s=(start + speech_end) * WINDOW_S)

    def _cut(self) -> Utterance:
        """Cut a too-long utterance in its last pause in the final third, else at the limit.

        The cut goes in the middle of the pause: silero's probability lags the audio by a
        window or two at both ends, so the end of the low run is already the next word."""
        low = self.cfg.threshold - _HYSTERESIS
        at, end = len(self._windows), None
        for k in range(len(self._probs) - 1, len(self._probs) * 2 // 3, -1):
            if self._probs[k] < low:
                end = k if end is None else end
                continue
            if end is not None and end - k >= _PAUSE_WINDOWS:
                at = (k + 1 + end + 1) // 2
                break
            end = None
        rest_windows, rest_probs = self._windows[at:], self._probs[at:]
        start = self._start + at
        u = Utterance(np.concatenate(self._windows[:at]), self._start * WINDOW_S,
                      start * WINDOW_S, cut=True, speech_end_s=start * WINDOW_S)
        self._close()
        self._speaking, self._windows, self._probs, self._start = True, rest_windows, rest_probs, start
        return u
