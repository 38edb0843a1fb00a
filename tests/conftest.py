"""Shared fixtures: the real embedded models (assembled once per session) and real audio."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from campus_guide.config import PACKAGE_DATA, Config

ROOT = Path(__file__).resolve().parents[1]
QUESTION_EN = PACKAGE_DATA / "question_en.wav"   # "Where is the library?" (piper, joe voice)
QUESTION_KO = PACKAGE_DATA / "question_ko.wav"   # "도서관은 어디에 있나요?" (espeak-ng)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """./models (or $CAMPUS_GUIDE_MODELS), assembled from the installed packages once.

    A missing model package fails here loudly: a test run that silently skipped the real
    models would prove nothing.
    """
    from device.models import fetch_models

    path = Path(os.environ.get("CAMPUS_GUIDE_MODELS", ROOT / "models"))
    fetch_models(path)
    return path


@pytest.fixture
def cfg(models_dir) -> Config:
    """Default config pointing at the session's models."""
    return Config(models_dir=str(models_dir))


@pytest.fixture(scope="session")
def question_en() -> np.ndarray:
    from device.audio import read_wav

    return read_wav(QUESTION_EN)


@pytest.fixture(scope="session")
def question_ko() -> np.ndarray:
    from device.audio import read_wav

    return read_wav(QUESTION_KO)


@pytest.fixture(scope="session")
def kb():
    """The sample campus (tests that need another campus define their own `kb`)."""
    from campus_guide.config import SAMPLE_KB
    from campus_guide.knowledge import load_kb

    return load_kb(SAMPLE_KB)


@pytest.fixture(scope="session")
def retriever(kb):
    """The retriever on the sample campus, kiosk at the Main Gate, embeddings loaded once."""
    from campus_guide.knowledge import Retriever

    return Retriever(kb)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    """A tiny random Gemma-3 as a real f16 GGUF (~8 MB), converted once per session."""
    from export.gguf import convert
    from training.tiny import make_tiny_model

    tmp = tmp_path_factory.mktemp("tiny-gguf")
    return convert(make_tiny_model(tmp / "merged", "gemma3"), tmp / "gguf", "f16")[0]


@pytest.fixture(scope="session")
def pipeline(models_dir, tmp_path_factory):
    """The whole device pipeline on the fast models (whisper tiny.en, Gemma-3 270M), loaded once."""
    from device.pipeline import Pipeline

    c = Config(models_dir=str(models_dir))
    c.asr.model = "whisper-tiny.en"
    c.llm.n_threads = 1          # six test runs share two cores; spinning threads thrash
    c.llm.max_tokens = 64
    c.runtime.state_dir = str(tmp_path_factory.mktemp("state"))
    p = Pipeline(c)
    yield p
    p.close()


@pytest.fixture(scope="session")
def say(pipeline):
    """English speech from the kiosk's piper voice at 16 kHz, the same samples on every run:
    piper samples its prosody at random unless its noise scales are 0, and tests want the same
    question each time (transcripts still differ between CPUs: assert what they mean)."""
    from piper import SynthesisConfig

    from device.audio import resample

    voice, cache = pipeline.tts.voices["en"], {}
    exact = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)

    def speak(text: str) -> np.ndarray:
        if text not in cache:
            chunks = list(voice.synthesize(text, exact))
            audio = np.concatenate([c.audio_float_array for c in chunks])
            cache[text] = resample(audio, chunks[0].sample_rate, 16000)
        return cache[text]
    return speak
