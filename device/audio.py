"""Audio in and out: WAV files, the microphone and the speaker.

Everything inside the device is float32 mono in [-1, 1]. Files at other rates or with more
channels are resampled and downmixed on read rather than refused, because operators feed the
demo whatever their phone recorded. The sound card is reached only through `_sounddevice()`,
the one seam tests replace (this build machine has no sound card).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from campus_guide.errors import UserError
from campus_guide.config import AudioConfig

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CHUNK = 512            # 32 ms at 16 kHz: the window silero VAD v5/v6 is trained on


class AudioError(UserError):
    """Audio that cannot be read, or a sound device that is not there."""


def resample(audio: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """A whole clip from src_rate to dst_rate, band-limited and phase-true (libsoxr, "HQ")."""
    audio = np.asarray(audio, dtype=np.float32)
    if src_rate == dst_rate or audio.size == 0:
        return audio
    import soxr

    return soxr.resample(audio, src_rate, dst_rate, quality="HQ")


def _stream_resampler(src_rate: int, dst_rate: int):
    """block -> resampled block, for live input; the identity at equal rates."""
    if src_rate == dst_rate:
        return lambda block: np.asarray(block, dtype=np.float32).ravel()
    import soxr

    stream = soxr.ResampleStream(src_rate, dst_rate, 1, dtype="float32", quality="HQ")
    return lambda block: stream.resample_chunk(np.asarray(block, dtype=np.float32).ravel())


def to_mono(audio: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (frames,) by averaging the channels."""
    audio = np.asarray(audio, dtype=np.float32)
    return audio.mean(axis=1, dtype=np.float32) if audio.ndim == 2 else audio


def read_wav(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Any WAV/FLAC/OGG soundfile reads -> float32 mono at `sample_rate`."""
    import soundfile as sf

    p = Path(path)
    if not p.is_file():
        raise AudioError(f"{p}: audio file not found (pass a WAV or FLAC file)")
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"{p}: not a readable audio file ({e}); convert it to WAV, e.g. "
                         f"`sox IN.mp3 -r 16000 -c 1 OUT.wav`") from None
    if data.shape[0] == 0:
        raise AudioError(f"{p}: the audio file is empty (0 samples); record the question again")
    return resample(to_mono(data), rate, sample_rate)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """float32 in [-1, 1] -> 16-bit PCM WAV (what every player and `aplay` accept)."""
    import soundfile as sf

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(p), np.clip(np.asarray(audio, dtype=np.float32), -1, 1), sample_rate,
             subtype="PCM_16")
    return p


def chunked(audio: np.ndarray, size: int = CHUNK) -> Iterator[np.ndarray]:
    """Fixed-size chunks; the last one is zero-padded so every chunk is a full VAD window."""
    for start in range(0, len(audio), size):
        piece = audio[start:start + size]
        if piece.size < size:
            piece = np.pad(piece, (0, size - piece.size))
        yield piece


class FileSource:
    """A WAV file (or an array) played into the pipeline as microphone-sized chunks.

    `realtime=True` paces the chunks like a live microphone, for demos and latency tests;
    otherwise they come as fast as the consumer takes them.
    """

    def __init__(self, source: str | Path | np.ndarray, sample_rate: int = SAMPLE_RATE,
                 realtime: bool = False, chunk: int = CHUNK):
        self.audio = (np.asarray(source, dtype=np.float32) if isinstance(source, np.ndarray)
                      else read_wav(source, sample_rate))
        self.sample_rate, self.realtime, self.chunk = sample_rate, realtime, chunk

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate

    def __iter__(self) -> Iterator[np.ndarray]:
        t0 = time.monotonic()
        for i, piece in enumerate(chunked(self.audio, self.chunk)):
            if self.realtime:
                delay = t0 + i * self.chunk / self.sample_rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            yield piece


def _sounddevice():
    """The sound card library; the one seam tests fake (no sound card on the build machine)."""
    try:
        import sounddevice
    except OSError as e:  # the PortAudio shared library itself is missing
        raise AudioError(f"sound is unavailable ({e}); install PortAudio "
                         f"(`apt-get install libportaudio2`)") from None
    return sounddevice


def _device(sd, wanted: str | None, kind: str) -> str | int | None:
    """Check that a device of `kind` exists before opening a stream, for a clear message."""
    try:
        sd.query_devices(wanted, kind=kind)
    except (ValueError, sd.PortAudioError) as e:
        what = "microphone" if kind == "input" else "speaker"
        key = "audio.input_device" if kind == "input" else "audio.output_device"
        raise AudioError(f"no {what} found ({e}); connect one or set {key} in the config "
                         f"(list them with `python -m sounddevice`), or use --wav FILE / typed "
                         f"questions") from None
    return wanted


def _open(stream_type, what: str, keys: str, **kwargs):
    """Open and start a PortAudio stream; a refusal (rate, busy device) becomes a clear error."""
    sd = _sounddevice()
    try:
        stream = stream_type(**kwargs)
        stream.start()
    except sd.PortAudioError as e:
        raise AudioError(f"cannot open the {what} at {kwargs['samplerate']} Hz ({e}); check "
                         f"{keys} in the config (`python -m sounddevice` lists devices)") from None
    return stream


class Microphone:
    """Microphone yielding CHUNK-sample float32 chunks at 16 kHz (what the VAD expects).

    The card is opened at audio.sample_rate (USB microphones often offer only 44.1/48 kHz)
    and resampled on the fly. PortAudio's callback thread only enqueues; resampling and
    iteration happen in the caller's thread, so a slow consumer never makes the driver drop
    audio. `flush()` drops what was heard while the kiosk was speaking (half-duplex).
    """

    OVERFLOW_LOG_S = 600.0      # an input overflow is logged once, then at most this often

    @staticmethod
    def find(cfg: AudioConfig | None = None) -> str | None:
        """None when the configured microphone is there, else why not (what the kiosk shows
        while it waits for one). PortAudio lists the devices once, when it starts, so it is
        restarted first to see a microphone plugged in since: call this only while no stream is
        open."""
        cfg = cfg or AudioConfig()
        try:
            sd = _sounddevice()
            terminate, initialize = getattr(sd, "_terminate", None), getattr(sd, "_initialize", None)
            if terminate is not None and initialize is not None:
                try:
                    terminate()
                except sd.PortAudioError:   # not initialised (an earlier restart failed)
                    pass
                initialize()
            _device(sd, cfg.input_device, "input")
        except AudioError as e:
            return str(e)
        except Exception as e:  # noqa: BLE001 - PortAudio failing to start: say why, look again later
            return f"the sound system did not start ({type(e).__name__}: {e})"
        return None

    def __init__(self, cfg: AudioConfig | None = None, chunk: int = CHUNK):
        cfg = cfg or AudioConfig()
        sd = _sounddevice()
        device = _device(sd, cfg.input_device, "input")
        self.sample_rate, self.chunk = SAMPLE_RATE, chunk
        self.overflows = 0
        self._overflow_logged = -self.OVERFLOW_LOG_S
        # a live stream keeps the filter's history between blocks (a microphone at 48 kHz)
        self._resampler = _stream_resampler(cfg.sample_rate, SAMPLE_RATE)
        self._queue: queue.Queue[np.ndarray] = queue.Queue()
        self._stream = _open(sd.InputStream, "microphone", "audio.input_device / audio.sample_rate",
                             samplerate=cfg.sample_rate, channels=1, dtype="float32",
                             blocksize=chunk * cfg.sample_rate // SAMPLE_RATE, device=device,
                             callback=self._callback)

    def _callback(self, indata, frames, time_info, status) -> None:
        if status:
            if getattr(status, "input_overflow", False):
                self.overflows += 1
                now = time.monotonic()
                if now - self._overflow_logged >= self.OVERFLOW_LOG_S:
                    self._overflow_logged = now
                    log.warning("microphone: input overflow (%d so far): the sound card dropped "
                                "audio because this process did not take it in time; if it "
                                "repeats, check the CPU load (`top`: another job beside the kiosk?)",
                                self.overflows)
            else:
                log.debug("microphone: %s", status)
        self._queue.put(indata[:, 0].copy())

    def flush(self) -> None:
        """Forget everything captured so far."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def __iter__(self) -> Iterator[np.ndarray]:
        buf = np.zeros(0, np.float32)
        while self._stream.active:
            try:
                block = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            buf = np.concatenate([buf, self._resampler(block)])
            while buf.size >= self.chunk:
                yield buf[:self.chunk]
                buf = buf[self.chunk:]

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()

    def __enter__(self) -> Microphone:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Speaker:
    """Plays float32 mono audio; `.playing` is true while sound goes out (half-duplex gate).

    Audio is written in short blocks so `stop()` (barge-in, Ctrl-C) takes effect within ~50 ms.
    A stream that fails (speaker unplugged, a PortAudio error) is closed and the answer raises
    AudioError; the next answer opens the speaker again, so a kiosk whose speaker comes back
    speaks again without a restart.
    """

    def __init__(self, cfg: AudioConfig | None = None, sample_rate: int = 22050):
        self.cfg = cfg or AudioConfig()
        self.sample_rate = sample_rate
        self._stop = threading.Event()
        self._playing = threading.Event()
        self._stream = None
        self.reopened = 0               # times a failed speaker was opened again
        self._open()

    def _open(self):
        sd = _sounddevice()
        device = _device(sd, self.cfg.output_device, "output")
        self._stream = _open(sd.OutputStream, "speaker", "audio.output_device",
                             samplerate=self.sample_rate, channels=1, dtype="float32", device=device)
        return self._stream

    @property
    def playing(self) -> bool:
        return self._playing.is_set()

    def play(self, audio: np.ndarray) -> None:
        """Blocking: returns when the audio has been handed to the driver (or stop() was called)."""
        self.play_stream([audio])

    def play_stream(self, chunks: Iterable[np.ndarray]) -> None:
        """Play chunks as they arrive (TTS sentence by sentence); `.playing` spans the whole stream.
        A stop() since the last resume() holds, even one that came before playback started."""
        sd = _sounddevice()
        self._playing.set()
        block = self.sample_rate // 20
        try:
            if self._stream is None:          # it failed during an earlier answer: try again
                self._open()
                self.reopened += 1
                log.warning("speaker: open again after a failure")
            for audio in chunks:
                audio = np.asarray(audio, dtype=np.float32)
                for start in range(0, len(audio), block):
                    if self._stop.is_set():
                        return
                    try:
                        self._stream.write(audio[start:start + block].reshape(-1, 1))
                    except sd.PortAudioError as e:
                        self._discard()
                        raise AudioError(f"the speaker failed ({e}); it is opened again for the next "
                                         f"answer; check the cable and audio.output_device") from None
        finally:
            self._playing.clear()

    def _discard(self) -> None:
        stream, self._stream = self._stream, None
        try:
            stream.stop()
            stream.close()
        except Exception:  # noqa: BLE001 - a dead stream may refuse to close; it is dropped anyway
            pass

    def stop(self) -> None:
        self._stop.set()

    def resume(self) -> None:
        """Allow playback again after stop(); the kiosk calls it as each turn starts."""
        self._stop.clear()

    def close(self) -> None:
        if self._stream is not None:
            self._discard()

    def __enter__(self) -> Speaker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
