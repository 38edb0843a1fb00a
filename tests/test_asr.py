"""faster-whisper on the real embedded models: the bundled questions, silence, noise,
clipping, hallucinations, and configuration mistakes."""
from __future__ import annotations

import numpy as np
import pytest

from campus_guide.config import ConfigError
from device.asr import Transcriber, kb_hotwords
from device.models import ModelError

pytestmark = pytest.mark.models
SR = 16000
HOTWORDS = ["Central Library", "도서관", "공학관", "학생회관"]


@pytest.fixture(scope="module")
def tiny(models_dir):
    from campus_guide.config import Config

    cfg = Config(models_dir=str(models_dir))
    cfg.asr.model, cfg.asr.hotwords = "whisper-tiny.en", True
    return Transcriber(cfg, HOTWORDS)


@pytest.fixture(scope="module")
def base(models_dir):
    from campus_guide.config import Config

    return Transcriber(Config(models_dir=str(models_dir)), HOTWORDS)   # language auto, defaults


def test_hotwords_are_off_by_default_and_never_korean(base, models_dir):
    from campus_guide.config import Config

    assert base.hotwords is None          # unclear speech came back as copied names
    cfg = Config(models_dir=str(models_dir))
    cfg.asr.hotwords = True
    assert Transcriber(cfg, HOTWORDS).hotwords == "Central Library"


def test_english_question_with_tiny_en(tiny, question_en):
    t = tiny.transcribe(question_en)
    assert "library" in t.text.lower() and t.text.rstrip().endswith("?")
    assert t.language == "en"
    assert 0.5 < t.confidence <= 1
    assert t.duration_s == pytest.approx(len(question_en) / SR)
    assert 0 < t.asr_s < 60
    assert tiny.hotwords == "Central Library"          # English-only model: Latin names only


def test_korean_question_with_whisper_base(base, question_ko, cfg):
    """espeak's robotic Korean is no test of recognition: whisper-base writes "도서관은 오디에인
    하요" for it on one CPU and "도사관을 놔디에 인하여" on an AVX-512 one (each deterministic).
    What holds on any CPU is what a visitor gets: Korean heard as Korean, the same answer twice,
    and either the library or an honest "I don't know", never another building (the tolerance
    for those mis-hearings is tested in test_knowledge_retrieval.py)."""
    from campus_guide.knowledge import Retriever, load_kb
    from campus_guide.prompt import language_of

    forced = base.transcribe(question_ko, language="ko")
    assert forced.language == "ko" and language_of(forced.text, default="") == "ko"
    assert base.transcribe(question_ko, language="ko").text == forced.text   # reproducible
    # Whisper's detector puts Japanese first here (ko 0.02, en 0.06): restricted to ko/en with
    # Korean's odds x20 (device/asr.py, KOREAN_ODDS), auto mode hears Korean by a wide margin.
    auto = base.transcribe(question_ko)
    assert auto.language == "ko" and language_of(auto.text, default="") == "ko"
    r = Retriever(load_kb(cfg.kb), here="main_gate").retrieve(forced.text)
    assert r.lang == "ko"
    assert not r.known(cfg.dialogue.min_score) or r.results[0].id == "library", r.results


def test_auto_language_stays_within_the_kiosk_languages(base, question_en):
    t = base.transcribe(question_en)
    assert t.language == "en" and "library" in t.text.lower()


def test_silence_and_noise_give_empty_text(tiny):
    silent = tiny.transcribe(np.zeros(SR * 2, np.float32))
    assert silent.empty and silent.confidence == 0 and silent.asr_s < 0.1   # not even decoded
    hiss = np.random.default_rng(1).normal(0, 0.003, SR * 2).astype(np.float32)
    assert tiny.transcribe(hiss).text == ""
    assert tiny.transcribe(np.zeros(100, np.float32)).text == ""


def test_clipped_speech_is_still_understood(tiny, question_en):
    t = tiny.transcribe(np.clip(question_en * 20, -1, 1))
    assert "library" in t.text.lower()


def test_whisper_silence_phrases_are_dropped_only_when_nobody_spoke(tiny, cfg):
    from device.audio import resample
    from device.tts import Synthesizer

    tts = Synthesizer(cfg)
    said = resample(np.concatenate(list(tts.synthesize("Thank you.", "en"))), tts.sample_rate, SR)
    pad = np.zeros(SR // 4, np.float32)
    loud = tiny.transcribe(np.concatenate([pad, said, pad]))
    assert loud.text.lower().startswith("thank you")        # a visitor may really say it
    faint = tiny.transcribe(np.concatenate([pad, said * 0.02, pad]))
    assert faint.text == ""


def test_kb_hotwords_put_every_entry_name_before_aliases(cfg):
    from campus_guide.knowledge.schema import load_kb

    kb = load_kb(cfg.kb)
    words = kb_hotwords(kb)
    assert words[:2] == [kb.buildings[0].name.ko, kb.buildings[0].name.en]
    assert set(words) == set(kb.names()) and len(words) == len(set(words))


def test_missing_model_names_the_file_and_the_fix(cfg, tmp_path):
    cfg.models_dir = str(tmp_path)
    with pytest.raises(ModelError, match=r"whisper-base.*model\.bin.*campus-guide models fetch.*asr\.model"):
        Transcriber(cfg)


def test_english_only_model_refuses_korean(cfg):
    cfg.asr.model, cfg.asr.language = "whisper-tiny.en", "ko"
    with pytest.raises(ConfigError, match="English only.*whisper-base"):
        Transcriber(cfg)
