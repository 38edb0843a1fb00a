"""Piper and the espeak-ng fallback on the real voice, and a configured Korean piper voice.
(Text normalisation for speech: tests/test_normalize.py.)"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from campus_guide.config import Config, TTSConfig
from device import tts as tts_module
from device.models import ModelError
from device.tts import Synthesizer, TTSError


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
def test_piper_never_gets_more_than_the_longest_planned_sentence(synth, monkeypatch):
    """Piper's onnxruntime arena keeps the size of the longest sentence it ever spoke, so a
    run-on route sentence (longer still once numbers are read out) is cut before it reaches
    piper, and every word is still spoken."""
    voice, piper_synthesize = synth.voices["en"], synth.voices["en"].synthesize
    given: list[str] = []

    def spy(text, *args, **kwargs):
        given.append(text)
        yield from piper_synthesize(text, *args, **kwargs)

    monkeypatch.setattr(voice, "synthesize", spy)
    run_on = ("It is about 3 minutes on foot (220 metres) from the Main Gate to the Student Union, "
              "building 2, going past the clock tower, the central lawn and the old library, then "
              "left at the fountain, through the arcade with the bookshop and the bank, and up the "
              "stairs by the lecture halls 101 to 105 where the union's doors face the car park")
    audio = np.concatenate(list(synth.synthesize(run_on, "en")))
    assert synth.max_chars == 160
    assert len(given) >= 3 and max(len(t) for t in given) <= synth.max_chars
    assert " ".join(given).split() == tts_module.normalize_for_speech(run_on, "en").split()
    assert len(audio) / synth.sample_rate > 15            # all of it spoken


@pytest.mark.models
def test_piper_gives_its_memory_back_after_every_sentence(synth):
    """onnxruntime's default arena keeps, and goes on growing, what piper's longest sentences
    needed (+170 MB after one 160-character sentence, +250 after 15); piper's session gives it
    back at the end of every run, so a kiosk that has spoken long answers is as small as one
    that has not."""
    from device.budget import rss_mb, trim_heap

    sentences = [tts_module.longest_sentence(synth.max_chars), "Where is the library?",
                 "It is building 10, north of the central lawn, about two minutes from here.",
                 "One, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve."]
    list(synth.synthesize("Hello.", "en"))
    trim_heap()
    before = rss_mb()
    grown = []
    for sentence in sentences * 2:
        assert sum(len(c) for c in synth.synthesize(sentence, "en")) > 0
        trim_heap()
        grown.append(round(rss_mb() - before, 1))
    assert max(grown) < 40, grown


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


def korean_piper_voice(models_dir: Path, folder: Path, sample_rate: int = 16000) -> Path:
    """A stand-in Korean piper voice: joe's network with a Korean config (espeak voice "ko",
    language ko_KR) and a different sample rate, as a deployment's own voice might have."""
    src = models_dir / "en_US-joe-medium.onnx"
    voice = folder / "ko_KR-test-medium.onnx"
    shutil.copyfile(src, voice)
    conf = json.loads(Path(f"{src}.json").read_text())
    conf["espeak"]["voice"] = "ko"
    conf["audio"]["sample_rate"] = sample_rate
    conf["dataset"] = "test"
    conf["language"] = {"code": "ko_KR", "family": "ko", "region": "KR", "name_native": "한국어",
                        "name_english": "Korean", "country_english": "South Korea"}
    Path(f"{voice}.json").write_text(json.dumps(conf, ensure_ascii=False))
    return voice


@pytest.mark.models
def test_a_configured_korean_piper_voice_speaks_korean(models_dir, tmp_path, monkeypatch, caplog):
    cfg = Config(models_dir=str(models_dir))
    cfg.tts.voices = {"en": "en_US-joe-medium.onnx", "ko": str(korean_piper_voice(models_dir, tmp_path))}
    synth = Synthesizer(cfg)
    assert synth.sample_rate == 22050 and synth.voices["ko"].config.sample_rate == 16000
    assert synth.voices["ko"].config.espeak_voice == "ko"

    heard, raw = [], []                          # what piper was given, and what it gave back
    ko_voice, piper_synthesize = synth.voices["ko"], synth.voices["ko"].synthesize

    def spy(text, *args, **kwargs):
        heard.append(text)
        for chunk in piper_synthesize(text, *args, **kwargs):
            raw.append(chunk)
            yield chunk

    def no_espeak(*args, **kwargs):
        raise AssertionError(f"espeak-ng subprocess started: {args}")

    monkeypatch.setattr(ko_voice, "synthesize", spy)
    monkeypatch.setattr(tts_module.shutil, "which", lambda name: None)   # no espeak-ng to fall back on
    monkeypatch.setattr(tts_module.subprocess, "run", no_espeak)
    monkeypatch.setattr(tts_module, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="device.tts"):
        chunks = list(synth.synthesize("중앙도서관은 10번 건물입니다. 평일 09:00–18:00에 엽니다.", "ko"))

    assert heard == ["중앙도서관은 십 번 건물입니다.", "평일 오전 아홉 시부터 오후 여섯 시까지에 엽니다."]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(chunks) == len(raw) == 2                      # piper streams it sentence by sentence
    for chunk, piper_chunk in zip(chunks, raw):
        assert piper_chunk.sample_rate == 16000
        assert chunk.dtype == np.float32 and chunk.ndim == 1
        # resampled 16 kHz -> the common 22.05 kHz: the same duration, more samples
        assert abs(len(chunk) - len(piper_chunk.audio_float_array) * 22050 / 16000) <= 2
        assert 0.3 < len(chunk) / synth.sample_rate < 8 and rms(chunk) > 0.02
        assert np.abs(chunk).max() <= 1.0
    english = list(synth.synthesize("It is building 10.", "en"))   # English still on joe, 22.05 kHz
    assert len(english) == 1 and english[0].dtype == np.float32

    from device.budget import plan_for_config

    rows = {i.name: i.bytes for i in plan_for_config(cfg).items}
    assert rows["piper voice (ko)"] == rows["piper voice (en)"]       # same network, same size
    assert not any("espeak" in name for name in rows)
    default = {i.name for i in plan_for_config(Config(models_dir=str(models_dir))).items}
    assert "espeak-ng subprocess" in default and "piper voice (ko)" not in default
