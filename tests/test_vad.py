"""Silero VAD on onnxruntime with the real model: speech found, silence and noise ignored,
long monologues cut cleanly."""
from __future__ import annotations

import numpy as np
import pytest

from campus_guide.config import VADConfig
from device.audio import FileSource, chunked
from device.models import ModelError
from device.vad import VAD, WINDOW_S

pytestmark = pytest.mark.models
SR = 16000


@pytest.fixture
def vad(models_dir):
    return VAD(models_dir / "silero_vad.onnx", VADConfig())


def speech_span(x: np.ndarray) -> tuple[float, float]:
    """Where the bundled question's samples are audible, in seconds (ground truth)."""
    loud = np.flatnonzero(np.abs(x) > 0.02)
    return loud[0] / SR, loud[-1] / SR


def test_finds_the_spoken_question(vad, question_en):
    probs = vad.probabilities(question_en)
    onset, offset = speech_span(question_en)
    t = np.arange(len(probs)) * WINDOW_S
    assert probs[t < onset - 0.1].max() < 0.2
    assert np.median(probs[(t > onset + 0.2) & (t < offset - 0.2)]) > 0.8

    seen = []

    def watched():
        for chunk in FileSource(question_en):
            seen.append(vad.speaking)
            yield chunk

    list(vad.utterances(watched()))
    assert any(seen) and not vad.speaking           # open mid-question (barge-in), closed after
    vad.reset()
    (u,) = list(vad.utterances(FileSource(question_en)))
    assert not u.cut
    assert onset - 0.35 <= u.start_s <= onset            # pre-roll keeps the first syllable
    assert offset <= u.end_s <= offset + 0.3
    assert len(u.audio) == pytest.approx(u.duration_s * SR, abs=1)
    start = round(u.start_s * SR)
    assert np.array_equal(u.audio, question_en[start:start + len(u.audio)])


def test_two_questions_in_a_row_each_keep_their_first_syllable(vad, question_en):
    onset, offset = speech_span(question_en)
    phrase = question_en[int(onset * SR):int(offset * SR)]
    pause = np.zeros(int(0.6 * SR), np.float32)               # just over end_silence
    x = np.concatenate([pause, phrase, pause, phrase, pause])
    us = list(vad.utterances(FileSource(x)))
    assert len(us) == 2
    second_onset = (2 * len(pause) + len(phrase)) / SR
    assert second_onset - 0.35 <= us[1].start_s <= second_onset - 0.2
    for u in us:
        start = round(u.start_s * SR)
        assert np.array_equal(u.audio, x[start:start + len(u.audio)])


def test_chunk_size_does_not_change_the_result(vad, question_en):
    whole = list(vad.utterances([question_en]))
    vad.reset()
    odd = list(vad.utterances(chunked(question_en, 700)))
    assert len(whole) == len(odd) == 1
    assert (whole[0].start_s, whole[0].end_s) == (odd[0].start_s, odd[0].end_s)


def test_silence_and_noise_are_not_speech(vad):
    rng = np.random.default_rng(0)
    silence = np.zeros(SR * 3, np.float32)
    hiss = rng.normal(0, 0.05, SR * 3).astype(np.float32)
    hum = (0.3 * np.sin(2 * np.pi * 50 * np.arange(SR * 3) / SR)).astype(np.float32)
    for x in (silence, hiss, hum):
        vad.reset()
        assert list(vad.utterances(FileSource(x))) == []


@pytest.mark.parametrize("quiet_s", [30, 120])
def test_a_short_word_after_a_long_quiet_spell_is_heard(vad, say, quiet_s):
    """A kiosk idles for hours: silero's recurrent state drifts over a long silence, and a bare
    "Hello!" after half a minute of a quiet room (-60 dBFS hiss) used to go unheard."""
    rng = np.random.default_rng(1)
    hello = say("Hello!")
    x = np.concatenate([say("Where is the library?"), np.zeros(int(quiet_s * SR), np.float32),
                        hello, np.zeros(SR, np.float32)])
    x = (x + rng.normal(0, 1e-3, len(x))).astype(np.float32)
    us = list(vad.utterances(FileSource(x)))
    assert len(us) == 2
    assert us[1].start_s == pytest.approx((len(x) - SR - len(hello)) / SR, abs=0.5)


def test_clipped_speech_is_still_found(vad, question_en):
    clipped = np.clip(question_en * 20, -1, 1)
    (u,) = list(vad.utterances(FileSource(clipped)))
    assert u.duration_s > 1.0


def test_short_bursts_are_dropped(models_dir, question_en):
    vad = VAD(models_dir / "silero_vad.onnx", VADConfig(min_speech_s=3.0))
    assert list(vad.utterances(FileSource(question_en))) == []


def test_sixty_second_monologue_is_cut_cleanly(vad, question_en):
    onset, offset = speech_span(question_en)
    phrase = question_en[int(onset * SR):int(offset * SR)]
    gap = np.zeros(int(0.2 * SR), np.float32)          # shorter than end_silence: one breath
    reps = int(60 / ((len(phrase) + len(gap)) / SR)) + 1
    monologue = np.concatenate([np.concatenate([phrase, gap])] * reps)[:60 * SR]

    us = list(vad.utterances(FileSource(monologue)))
    max_s = vad.cfg.max_utterance_s
    assert len(us) >= 60 / max_s
    assert all(u.duration_s <= max_s + WINDOW_S for u in us)
    assert all(u.cut for u in us[:-1])
    assert us[0].duration_s > max_s * 2 / 3
    for a, b in zip(us, us[1:]):                       # nothing lost between the pieces
        assert b.start_s == pytest.approx(a.end_s)
    for u in us[:-1]:                                   # cut in a pause, not mid-word
        tail = u.audio[-int(0.05 * SR):]
        assert np.sqrt(np.mean(tail ** 2)) < 0.01


def test_reset_restarts_the_clock(vad, question_en):
    first = list(vad.utterances(FileSource(np.concatenate([np.zeros(SR * 2, np.float32),
                                                           question_en]))))
    vad.reset()
    again = list(vad.utterances(FileSource(question_en)))
    assert first[0].start_s == pytest.approx(again[0].start_s + 2.0, abs=WINDOW_S)


def test_missing_model_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(ModelError, match=r"nope\.onnx.*campus-guide models fetch"):
        VAD(tmp_path / "nope.onnx", VADConfig())
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match=r"bad\.onnx.*models fetch --force"):
        VAD(bad, VADConfig())
