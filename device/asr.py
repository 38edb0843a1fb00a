"""Speech to text with faster-whisper (CTranslate2, int8 on CPU by default).

The VAD has already cut one utterance, so Whisper's own VAD is off and timestamps are not
asked for. Campus names in Latin script go in as `hotwords` (a short prompt prefix) so "Haedong"
is not heard as "had on". Korean names do not: on unclear Korean speech whisper-base copied names
from the list instead of listening ("도서관은 어디에 있나요?" came out as "동아리관, 대학원,";
without Korean hotwords, "도서관은 오디에인 하요", which retrieval gets right). Automatic language detection is restricted to the kiosk's languages: on robotic or
accented speech Whisper sometimes guesses Thai or Japanese, and then transcribes nonsense.
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

from campus_guide.config import Config, ConfigError
from campus_guide.prompt import LANGUAGES, language_of
from device.models import require

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
HOTWORD_TOKENS = 96        # prompt budget (Whisper allows 223): the main names, still fast
_MIN_SAMPLES = SAMPLE_RATE // 10
_QUIET_RMS = 0.01          # -40 dBFS: nobody is speaking to the kiosk this softly
_WORDY = re.compile(r"[\w\uac00-\ud7a3]")
# What Whisper says over silence or noise (learned from subtitled videos), normalised by _key.
_HALLUCINATIONS = {
    "thankyou", "thankyouverymuch", "thanksforwatching", "thankyouforwatching", "you", "bye",
    "pleasesubscribe", "subtitlesbytheamaraorgcommunity", "ohm", "so",
    "시청해주셔서감사합니다", "감사합니다", "구독과좋아요부탁드립니다", "시청해주셔서고맙습니다",
    "다음영상에서만나요", "mbc뉴스이덕영입니다",
}


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


class Transcriber:
    def __init__(self, cfg: Config, hotwords: Sequence[str] = ()):
        from faster_whisper import WhisperModel

        a = cfg.asr
        path = cfg.models_path(a.model)
        require(Path(path) / "model.bin", f"Whisper model '{a.model}' (CTranslate2 folder)", "asr.model")
        self.model = WhisperModel(str(path), device=a.device, compute_type=a.compute_type,
                                  cpu_threads=a.cpu_threads, num_workers=1)
        self.beam_size = a.beam_size
        self.language = a.language
        if not self.model.model.is_multilingual:
            if a.language == "ko":
                raise ConfigError(f"asr.model '{a.model}' understands English only but asr.language "
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
            if re.search(r"[\uac00-\ud7a3]", name):
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

        segments, info = self._decode(audio, fixed)
        lang_p = 1.0
        if fixed is None:
            probs = dict(info.all_language_probs or [(info.language, info.language_probability)])
            if info.language in LANGUAGES:
                fixed = info.language
                lang_p = probs[fixed] / (sum(probs.get(c, 0.0) for c in LANGUAGES) or 1.0)
            else:
                # Robotic or accented speech: Whisper guesses Thai or Japanese, yet its draft
                # usually shows the right script ("도서관の電音"); decode again in that language.
                draft = " ".join(s.text for s in segments)
                fixed = language_of(draft, default=max(LANGUAGES, key=lambda c: probs.get(c, 0.0)))
                log.debug("whisper heard %s (p=%.2f) %r; decoding as %s", info.language,
                          info.language_probability, draft, fixed)
                segments, info = self._decode(audio, fixed)   # the script is the evidence

        text = " ".join(s.text.strip() for s in segments).strip()
        logprob = _logprob(segments)
        confidence = float(min(1.0, math.exp(logprob)) * lang_p) if segments else 0.0
        no_speech = max((s.no_speech_prob for s in segments), default=1.0)
        rms = float(np.sqrt(np.mean(audio ** 2)))
        if not _WORDY.search(text):
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

    def _decode(self, audio: np.ndarray, language: str | None):
        segments, info = self.model.transcribe(
            audio, language=language, beam_size=self.beam_size, vad_filter=False,
            without_timestamps=True, condition_on_previous_text=False,
            hotwords=None if language == "ko" else self.hotwords,
            temperature=0.0)   # greedy only: the same audio always gives the same transcript;
        # sampled fallbacks (0.4, 0.8) on unclear audio only traded one garbled guess for another
        return list(segments), info
