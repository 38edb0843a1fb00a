"""Audio I/O: resampling and downmix on real files, file source, and the sound-card seam."""
from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from campus_guide.config import AudioConfig
from device import audio
from device.audio import CHUNK, AudioError, FileSource, Microphone, Speaker, read_wav, write_wav


def tone(freq: float, rate: int, seconds: float) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate).astype(np.float32)


def dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def test_44k_stereo_is_resampled_and_downmixed(tmp_path):
    left, right = 0.8 * tone(440, 44100, 2.0), np.zeros(88200, np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 44100, subtype="PCM_16")

    x = read_wav(path)                       # default 16 kHz mono
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) == 32000
    assert dominant_hz(x, 16000) == pytest.approx(440, abs=2)
    inner = x[1000:-1000]
    assert np.abs(inner).max() == pytest.approx(0.4, abs=0.01)   # mean of the two channels
    expected = 0.4 * tone(440, 16000, 2.0)[1000:-1000]
    assert np.abs(inner - expected).max() < 2e-3                 # phase-true, no delay


def test_resampling_removes_what_the_new_rate_cannot_hold():
    high = tone(11000, 44100, 1.0)           # above the 8 kHz Nyquist of 16 kHz
    y = audio.resample(high, 44100, 16000)
    assert np.sqrt(np.mean(y[500:-500] ** 2)) < 1e-3   # filtered, not aliased to 5 kHz


def test_upsampling_keeps_the_signal():
    x = tone(1000, 16000, 0.5)
    y = audio.resample(x, 16000, 22050)
    assert len(y) == 11025
    assert np.abs(y[300:-300] - tone(1000, 22050, 0.5)[300:-300]).max() < 1e-3


def test_write_then_read_round_trip(tmp_path):
    x = 0.5 * tone(300, 16000, 0.3)
    y = read_wav(write_wav(tmp_path / "a" / "x.wav", x, 16000))
    assert np.abs(x - y).max() < 1e-4
    info = sf.info(tmp_path / "a" / "x.wav")
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")


def test_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        read_wav(tmp_path / "nope.wav")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioError, match="not a readable audio file.*sox"):
        read_wav(garbage)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="empty"):
        read_wav(empty)


def test_file_source_yields_full_vad_windows():
    x = np.arange(1300, dtype=np.float32)
    chunks = list(FileSource(x))
    assert [len(c) for c in chunks] == [CHUNK] * 3
    assert np.array_equal(np.concatenate(chunks)[:1300], x)
    assert not chunks[-1][1300 - 2 * CHUNK:].any()


def test_file_source_can_pace_like_a_microphone():
    src = FileSource(np.zeros(16000 // 4, np.float32), realtime=True)   # 0.25 s, 8 chunks
    t0 = time.monotonic()
    assert len(list(src)) == 8
    assert time.monotonic() - t0 >= 7 * CHUNK / 16000 - 0.01


def test_no_sound_card_is_a_clear_error():
    sd = audio._sounddevice()
    if sd.query_devices():
        pytest.skip("this machine has a sound device")
    with pytest.raises(AudioError, match="no microphone found.*--wav"):
        Microphone(AudioConfig())
    with pytest.raises(AudioError, match="no speaker found.*audio.output_device"):
        Speaker(AudioConfig())


class FakeSoundDevice:
    """Just enough of sounddevice for the stream logic: a microphone that produces numbered
    blocks on its own thread and a speaker that takes time to write."""

    PortAudioError = RuntimeError

    def __init__(self):
        self.written: list[np.ndarray] = []
        self.block = lambda i, n: np.full(n, i, np.float32)     # what the microphone hears
        self.refuse = False
        self.speaker_gone = False       # OutputStream refuses (unplugged)
        self.unplug_after = None        # the speaker fails after this many blocks written
        self.opened = 0

    def query_devices(self, device=None, kind=None):
        return {"name": f"fake {kind}"}

    def InputStream(self, samplerate, blocksize, channels, dtype, device, callback):
        sd = self
        if self.refuse:
            raise self.PortAudioError("Invalid sample rate")

        class Stream:
            active = False

            def start(self):
                self.active = True
                threading.Thread(target=self._run, daemon=True).start()

            def _run(self):
                for i in itertools.count():
                    if not self.active:
                        return
                    callback(sd.block(i, blocksize).reshape(-1, 1), blocksize, None, None)
                    time.sleep(0.001)

            def stop(self):
                self.active = False

            close = stop

        sd.input = Stream()
        return sd.input

    def OutputStream(self, samplerate, channels, dtype, device):
        sd = self
        if self.speaker_gone:
            raise self.PortAudioError("Device unavailable")
        sd.opened += 1

        class Stream:
            def start(self):
                pass

            def write(self, data):
                if sd.unplug_after is not None and len(sd.written) >= sd.unplug_after:
                    sd.unplug_after = None
                    raise sd.PortAudioError("Unanticipated host error")
                assert data.shape[1] == 1 and data.dtype == np.float32
                sd.written.append(data[:, 0].copy())
                time.sleep(len(data) / samplerate / 10)

            def stop(self):
                pass

            close = stop

        return Stream()


@pytest.fixture
def fake_sd(monkeypatch):
    fake = FakeSoundDevice()
    monkeypatch.setattr(audio, "_sounddevice", lambda: fake)
    return fake


def test_microphone_yields_fixed_chunks_in_order(fake_sd):
    with Microphone(AudioConfig()) as mic:
        got = list(itertools.islice(mic, 5))
        mic.flush()
        after = next(iter(mic))
    assert all(c.shape == (CHUNK,) and c.dtype == np.float32 for c in got)
    assert [int(c[0]) for c in got] == [0, 1, 2, 3, 4]
    assert after[0] > 4                       # flushed blocks are gone


def test_a_speaker_that_fails_is_opened_again_for_the_next_answer(fake_sd):
    spk = Speaker(AudioConfig(), sample_rate=22050)
    fake_sd.unplug_after = 2                                   # unplugged mid-answer
    with pytest.raises(AudioError, match="speaker failed.*opened again for the next answer"):
        spk.play(np.zeros(22050, np.float32))
    assert not spk.playing and len(fake_sd.written) == 2
    fake_sd.speaker_gone = True                                # still unplugged at the next answer
    with pytest.raises(AudioError, match="cannot open the speaker"):
        spk.play(np.zeros(2205, np.float32))
    fake_sd.speaker_gone = False                               # plugged back in
    spk.play(np.ones(2205, np.float32))
    assert fake_sd.opened == 2 and spk.reopened == 1 and fake_sd.written[-1][0] == 1.0
    spk.close()


def test_speaker_is_playing_only_while_it_plays_and_stops_early(fake_sd):
    spk = Speaker(AudioConfig(), sample_rate=22050)
    seen = []
    t = threading.Thread(target=spk.play, args=(np.ones(22050 * 2, np.float32),))
    assert not spk.playing
    t.start()
    time.sleep(0.03)
    seen.append(spk.playing)
    spk.stop()
    t.join(2)
    assert seen == [True] and not spk.playing
    assert 0 < sum(map(len, fake_sd.written)) < 22050 * 2     # stopped before the end

    fake_sd.written.clear()                 # a stop holds until resume(), even one that came
    spk.play_stream(iter([np.ones(1000, np.float32)]))    # before playback started (shutdown)
    assert fake_sd.written == []
    spk.resume()
    spk.play_stream(iter([np.ones(1000, np.float32), np.zeros(500, np.float32)]))
    assert sum(map(len, fake_sd.written)) == 1500 and not spk.playing


def test_microphone_at_48k_is_resampled_to_16k_vad_chunks(fake_sd):
    fake_sd.block = lambda i, n: tone(1000, 48000, 1.0)[(i * n) % 48000:][:n]   # 1536-sample blocks
    with Microphone(AudioConfig(sample_rate=48000)) as mic:
        got = list(itertools.islice(mic, 40))
    assert all(c.shape == (CHUNK,) for c in got)
    x = np.concatenate(got)[1000:]
    assert dominant_hz(x, 16000) == pytest.approx(1000, abs=20)
    assert np.abs(x).max() == pytest.approx(1.0, abs=0.02)


def test_a_refused_stream_is_a_clear_error(fake_sd):
    fake_sd.refuse = True
    with pytest.raises(AudioError, match="cannot open the microphone at 8000 Hz.*audio.sample_rate"):
        Microphone(AudioConfig(sample_rate=8000))
