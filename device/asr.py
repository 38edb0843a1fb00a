"""Speech to text with faster-whisper (CTranslate2, int8 on CPU by default).

The VAD has already cut one utterance, so Whisper's own VAD is off and timestamps are not
asked for. Campus names in Latin script go in as `hotwords` (a short prompt prefix) so "Haedong"
is not heard as "had on". Korean names do not: on unclear Korean speech whisper-base copied names
from the list instead of listening ("도서관은 어디에 있나요?" came out as "동아리관, 대학원,";
without Korean hotwords, "도서관은 오디에인 하요", which retrieval gets right).

Automatic language detection is restricted to the kiosk's languages: Whisper's probabilities for
Korean and English alone decide, with Korean's weighted by KOREAN_ODDS, and the utterance is
decoded once, in that language (see `_detect`).
"""
from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from campus_guide.bundle import MANIFEST_FILE, BundleError, verify_bundle
from campus_guide.config import Config, ConfigError
from campus_guide.korean import has_hangul
from campus_guide.prompt import LANGUAGES
from device.models import ModelError, require

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
HOTWORD_TOKENS = 96        # prompt budget (Whisper allows 223): the main names, still fast
_MIN_SAMPLES = SAMPLE_RATE // 10
_QUIET_RMS = 0.01          # -40 dBFS: nobody is speaking to the kiosk this softly
# Whisper's language detector learned from ~55x more English than Korean (Whisper paper,
# appendix E), and on short or reverberant Korean it says English: the one miss on 80 real clips
# (../shared/korean-speech, a 1 s two-word reply in a dance studio) had P(ko) 0.11 vs P(en) 0.76,
# i.e. 0.13 of the ko/en mass; every other Korean clip had >= 0.977. English speech (piper and
# espeak-ng, 40 questions) never gave Korean more than 0.014 of it. Multiplying Korean's odds by
# 20 sits midway (in log odds) between those: that clip needs > 6.8, the English ones
# flip above ~70. It also hears the robotic espeak Korean question (P(ko) 0.02, P(en) 0.06,
# Whisper's top guess Japanese) as Korean. docs/bench.md, "ASR on real speech".
KOREAN_ODDS = 20.0
# What Whisper says over silence or noise (learned from subtitled videos), normalised by _key.
_HALLUCINATIONS = {
    "thankyou", "thankyouverymuch", "thanksforwatching", "thankyouforwatching", "you", "bye",
    "pleasesubscribe", "subtitlesbytheamaraorgcommunity", "ohm", "so",
    "시청해주셔서감사합니다", "감사합니다", "구독과좋아요부탁드립니다", "시청해주셔서고맙습니다",
    "다음영상에서만나요", "mbc뉴스이덕영입니다",
}


def _cuda_devices() -> int:
    import ctranslate2

    return ctranslate2.get_cuda_device_count()


def kb_hotwords(kb) -> list[str]:
    """A knowledge base's names in the order worth a prompt token: every building's and
    place's Korean and English name first, then the aliases (the budget cuts the tail)."""
    primary = [s for e in kb.entries() for s in (e.name.ko, e.name.en)]
    return list(dict.fromkeys(primary + kb.names()))


def _logprob(segments) -> float:
    """Mean log-probability per token over all segments (-inf when nothing was decoded)."""
    n = sum(max(1, len(s.tokens)) for s in segments)
    return sum(s.avg_logprob * max(1, len(s.tokens)) for s in segments) / n if n else -math.inf


def _key(text: str) -> str:
    return re.sub(r"[\W_]+", "", text.lower())


@dataclass
class Transcript:
    text: str               # "" when nothing usable was said
    language: str           # "ko" | "en"
    confidence: float       # 0..1: exp(mean token log-prob) x ko/en detection probability
    duration_s: float       # length of the audio
    asr_s: float            # wall time of transcribe()

    @property
    def empty(self) -> bool:
        return not self.text


def _one_encode_model():
    """faster-whisper's WhisperModel, encoding a 30-s window once: language detection and the
    decoder share the encoder output of the same features (compared exactly, so a different
    window is always encoded afresh)."""
    from faster_whisper import WhisperModel

    class OneEncode(WhisperModel):
        _last: tuple | None = None

        def encode(self, features: np.ndarray):
            last = self._last
            if last is not None and last[0].shape == features.shape and np.array_equal(last[0], features):
                return last[1]
            out = super().encode(features)
            self._last = (np.array(features, copy=True), out)
            return out

    return OneEncode


class Transcriber:
    def __init__(self, cfg: Config, hotwords: Sequence[str] = ()):
        WhisperModel = _one_encode_model()

        a = cfg.asr
        path = cfg.asr_path()
        from_bundle = path != cfg.models_path(a.model)
        if from_bundle:
            try:                            # the bundle's Whisper, checked like its LLM
                verify_bundle(path.parent, part="asr")
            except BundleError as e:
                raise ModelError(f"the Whisper model in bundle {path.parent} does not match its "
                                 f"{MANIFEST_FILE}: {e}") from None
            log.info("asr: the bundle's own Whisper %s (instead of asr.model %s)", path, a.model)
        require(Path(path) / "model.bin", f"Whisper model '{a.model}' (CTranslate2 folder)", "asr.model")
        self.path = path
        self.name = f"{path.parent.name}/{path.name}" if from_bundle else path.name   # for reports
        device, compute_type = a.device, a.compute_type
        if device == "cuda" and _cuda_devices() == 0:
            log.warning("asr.device is cuda but CTranslate2 sees no CUDA device (a CPU-only build, or "
                        "no GPU visible): Whisper runs on the CPU in int8; see docs/appliance.md, "
                        "'ASR on the Orin's GPU'")
            device, compute_type = "cpu", "int8"
        self.device = device
        self.model = WhisperModel(str(path), device=device, compute_type=compute_type,
                                  cpu_threads=a.cpu_threads, num_workers=1)
        self.beam_size = a.beam_size
        self.language = a.language
        if not self.model.model.is_multilingual:
            if a.language == "ko":
                raise ConfigError(f"Whisper model {path} understands English only but asr.language "
                                  f"is 'ko'; use asr.model: whisper-base")
            self.language = "en"
        self._names = self._choose(hotwords if a.hotwords else ())
        self.hotwords = ", ".join(self._names) or None
        # On unintelligible audio Whisper may just repeat its prompt ("도서관, 공학관").
        self._echoes = {_key(", ".join(self._names[:k])) for k in range(2, len(self._names) + 1)}

    def _choose(self, names: Sequence[str]) -> list[str]:
        """Latin-script names (see the module docstring), deduplicated, within HOTWORD_TOKENS."""
        tok, chosen, used = self.model.hf_tokenizer, [], 0
        for name in dict.fromkeys(n.strip() for n in names if n and n.strip()):
            if has_hangul(name):
                continue
            cost = len(tok.encode(" " + name + ",", add_special_tokens=False).ids)
            if used + cost > HOTWORD_TOKENS:
                continue
            chosen.append(name)
            used += cost
        return chosen

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        """One utterance (float32 16 kHz) -> Transcript; empty text for silence or garbage."""
        t0 = time.perf_counter()
        audio = np.asarray(audio, np.float32).reshape(-1)
        duration = audio.size / SAMPLE_RATE
        lang = language or self.language
        fixed = lang if lang in LANGUAGES else None
        if audio.size < _MIN_SAMPLES or not np.any(np.abs(audio) > 1e-4):
            return Transcript("", fixed or "en", 0.0, duration, time.perf_counter() - t0)

        lang_p = 1.0
        if fixed is None:
            fixed, lang_p = self._detect(audio)
        segments, _ = self._decode(audio, fixed)

        text = " ".join(s.text.strip() for s in segments).strip()
        logprob = _logprob(segments)
        confidence = float(min(1.0, math.exp(logprob)) * lang_p) if segments else 0.0
        no_speech = max((s.no_speech_prob for s in segments), default=1.0)
        rms = float(np.sqrt(np.mean(audio ** 2)))
        if not re.search(r"\w", text):     # \w covers Hangul
            text = ""
        elif _key(text) in self._echoes:
            log.info("dropped a transcript that only repeats the hotword prompt: %r", text)
            text = ""
        elif _key(text) in _HALLUCINATIONS and (rms < _QUIET_RMS or no_speech > 0.5 or logprob < -1.0):
            log.info("dropped a likely Whisper hallucination: %r (rms %.4f, no_speech %.2f)",
                     text, rms, no_speech)
            text = ""
        return Transcript(text, fixed, confidence if text else 0.0, duration,
                          time.perf_counter() - t0)

    def _detect(self, audio: np.ndarray) -> tuple[str, float]:
        """The kiosk language Whisper's detector favours, and its share of the ko/en mass.

        Only Korean and English count: on robotic or accented speech Whisper's top guess is
        often Thai or Japanese (then it transcribes nonsense), yet its ko/en ratio still points
        the right way. Korean's probability is weighted by KOREAN_ODDS (see there). Deciding
        first and decoding once encodes the audio once (faster-whisper's own detection encodes
        it a second time: 0.8 s of a 1.7 s turn here)."""
        from faster_whisper.audio import pad_or_trim

        # The window the decoder will see (generate_segments drops the last feature frame), so
        # the encoder output computed here is the one _OneEncode hands the decoder.
        features = self.model.feature_extractor(audio)
        window = pad_or_trim(features[:, : features.shape[-1] - 1])
        ranked = [(token[2:-2], p) for token, p in
                  self.model.model.detect_language(self.model.encode(window))[0]]
        top, top_p = ranked[0]
        probs = dict(ranked)
        weight = {"ko": KOREAN_ODDS, "en": 1.0}
        mass = {c: probs.get(c, 0.0) * weight[c] for c in LANGUAGES}
        total = sum(mass.values())
        if total <= 0:                                  # nothing for either: Korean-first kiosk
            return "ko", 0.0
        lang = max(LANGUAGES, key=mass.get)
        if top != lang:
            log.debug("whisper's detector: %s p=%.2f (ko %.3f, en %.3f); decoding as %s",
                      top, top_p, probs.get("ko", 0.0), probs.get("en", 0.0), lang)
        return lang, mass[lang] / total

    def _decode(self, audio: np.ndarray, language: str | None):
        segments, info = self.model.transcribe(
            audio, language=language, beam_size=self.beam_size, vad_filter=False,
            without_timestamps=True, condition_on_previous_text=False,
            hotwords=None if language == "ko" else self.hotwords,
            temperature=0.0)   # greedy only: the same audio always gives the same transcript;
        # sampled fallbacks (0.4, 0.8) on unclear audio only traded one garbled guess for another
        return list(segments), info
