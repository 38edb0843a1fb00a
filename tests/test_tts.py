"""Piper and the espeak-ng fallback on the real voice; text normalisation for speech."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from campus_guide.config import Config, TTSConfig
from device import tts as tts_module
from device.models import ModelError
from device.tts import Synthesizer, TTSError, normalize_for_speech


@pytest.fixture(scope="module")
def synth(models_dir):
    return Synthesizer(Config(models_dir=str(models_dir)))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x ** 2)))


@pytest.mark.models
def test_english_is_spoken_by_piper_sentence_by_sentence(synth):
    chunks = list(synth.synthesize("The Central Library is building 10. It is north of the lawn.",
                                   "en"))
    assert synth.sample_rate == 22050
    assert len(chunks) == 2                                 # streamed per sentence
    for c in chunks:
        assert c.dtype == np.float32 and c.ndim == 1
        assert 0.5 < len(c) / synth.sample_rate < 6
        assert rms(c) > 0.05 and np.abs(c).max() <= 1.0


@pytest.mark.models
def test_the_spoken_answer_is_intelligible(synth, models_dir):
    from device.asr import Transcriber
    from device.audio import resample

    cfg = Config(models_dir=str(models_dir))
    cfg.asr.model = "whisper-tiny.en"
    audio = np.concatenate(list(synth.synthesize("The library is open until 23:00.", "en")))
    heard = Transcriber(cfg).transcribe(resample(audio, synth.sample_rate, 16000)).text.lower()
    assert "library" in heard and ("11" in heard or "eleven" in heard)


@pytest.mark.models
def test_korean_falls_back_to_espeak_with_one_warning(synth, caplog, monkeypatch):
    monkeypatch.setattr(tts_module, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="device.tts"):
        first = list(synth.synthesize("중앙도서관은 10번 건물입니다.", "ko"))
        second = list(synth.synthesize("시계탑 맞은편에 있어요.", "ko"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "espeak-ng" in warnings[0].getMessage()
    for chunks in (first, second):
        (audio,) = chunks
        assert audio.dtype == np.float32 and rms(audio) > 0.02
        assert 1.0 < len(audio) / synth.sample_rate < 8     # resampled to the common rate


@pytest.mark.models
def test_without_espeak_korean_is_a_clear_error(synth, monkeypatch):
    monkeypatch.setattr(tts_module.shutil, "which", lambda name: None)
    with pytest.raises(TTSError, match=r"no voice for language 'ko'.*tts\.voices\.ko.*espeak-ng"):
        list(synth.synthesize("안녕하세요.", "ko"))


def test_nothing_to_say_yields_nothing():
    s = Synthesizer(TTSConfig(voices={}))
    assert list(s.synthesize(" ... ** ", "en")) == []
    assert s.sample_rate == 22050


def test_missing_voice_names_the_file_and_the_key(tmp_path):
    with pytest.raises(ModelError, match=r"en_US-joe-medium\.onnx.*models fetch.*tts\.voices\.en"):
        Synthesizer(TTSConfig(), tmp_path)


@pytest.mark.parametrize("lang,text,spoken", [
    ("en", "Go to B12, then E3-2.", "Go to B 12, then E 3 2."),
    ("ko", "B12 건물로 가세요.", "비 12 건물로 가세요."),
    ("en", "Open 08:00–23:00, about 350 m or 5 min.",
     "Open 8 a.m. to 11 p.m., about 350 metres or 5 minutes."),
    ("ko", "평일 09:00~18:30, 약 350m", "평일 9시부터 18시 30분까지, 약 350 미터"),
    ("en", "Gate → Lawn → **Library**", "Gate, then Lawn, then Library"),
    ("en", "Daily 07:00–24:00, lunch at 12:00.", "Daily 7 a.m. to midnight, lunch at noon."),
])
def test_text_is_normalised_for_speech(lang, text, spoken):
    assert normalize_for_speech(text, lang) == spoken
