"""Text to speech: a piper voice per language, espeak-ng for languages without one.

No Korean piper voice exists anywhere, so Korean is spoken by Debian's espeak-ng (robotic but
offline) until one is configured in tts.voices.ko; the kiosk says so once in the log. All
audio leaves at one `sample_rate` (the first piper voice's, 22050 Hz for joe-medium), so the
speaker stream never has to be reopened between languages.
"""
from __future__ import annotations

import io
import logging
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import numpy as np

from campus_guide.cli import UserError
from campus_guide.config import Config, TTSConfig, resolve_model
from device.audio import resample
from device.models import require

log = logging.getLogger(__name__)

DEFAULT_RATE = 22050
_ESPEAK_WPM = 165
_warned: set[str] = set()   # languages whose espeak fallback has been announced (once per process)


class TTSError(UserError):
    """No way to speak a language, or the synthesizer failed."""


# Latin letters as Korean speakers name them, for building codes like "B12" in Korean answers.
_KO_LETTERS = dict(zip(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "에이 비 씨 디 이 에프 지 에이치 아이 제이 케이 엘 엠 엔 오 피 큐 알 에스 티 유 브이 더블유 엑스 와이 제트".split(),
))
_UNITS = {
    "en": {"km": "kilometres", "m": "metres", "min": "minutes", "mins": "minutes", "h": "hours"},
    "ko": {"km": "킬로미터", "m": "미터", "min": "분", "mins": "분", "h": "시간"},
}
_THEN = {"en": ", then ", "ko": ", 그다음 "}
_CODE = re.compile(r"\b([A-Za-z]{1,3})-?(\d+)(?:-(\d+))?\b")
_UNIT = re.compile(r"(\d)\s*(km|mins?|m|h)\b")
_MARKUP = re.compile(r"[*_#`|<>\[\]{}]+")
_TIME = re.compile(r"(?<![\d:])([01]?\d|2[0-4]):([0-5]\d)(?![\d:])")
_RANGE = re.compile(r"(\d[\d:]*)\s*[–~]\s*(\d[\d:]*)")
_RANGE_WORDS = {"en": r"\1 to \2", "ko": r"\1부터 \2까지"}


def _say_time(m: re.Match, lang: str) -> str:
    """24-hour clock times as people say them: "08:30" -> "8 30 a.m." / "8시 30분"."""
    h, mm = int(m.group(1)), int(m.group(2))
    if lang == "ko":
        return f"{h}시" + (f" {mm}분" if mm else "")
    if h in (0, 24) and not mm:
        return "midnight"
    if h == 12 and not mm:
        return "noon"
    h12 = h % 12 or 12
    return f"{h12}" + (f" {mm:02d}" if mm else "") + (" a.m." if h < 12 or h == 24 else " p.m.")


def normalize_for_speech(text: str, lang: str) -> str:
    """Written answer -> what a voice should read: building codes letter by letter
    ("B12" -> "B 12", in Korean "비 12"), clock times and ranges as spoken, units spelt out,
    arrows and markup removed."""
    lang = lang if lang in _UNITS else "en"

    def code(m: re.Match) -> str:
        letters = m.group(1).upper()
        spoken = " ".join(_KO_LETTERS[c] for c in letters) if lang == "ko" else " ".join(letters)
        return f"{spoken} {m.group(2)}" + (f" {m.group(3)}" if m.group(3) else "")

    text = _MARKUP.sub(" ", text)
    text = re.sub(r"\s*(?:→|->|=>)\s*", _THEN[lang], text)
    text = _RANGE.sub(_RANGE_WORDS[lang], text)
    text = _TIME.sub(lambda m: _say_time(m, lang), text)
    text = _UNIT.sub(lambda m: f"{m.group(1)} {_UNITS[lang][m.group(2)]}", text)
    text = _CODE.sub(code, text)
    return re.sub(r"\s+", " ", text).strip()


class Synthesizer:
    """`synthesize(text, lang)` -> float32 chunks at `.sample_rate`, one per sentence."""

    def __init__(self, cfg: Config | TTSConfig, models_dir: str | Path | None = None):
        if isinstance(cfg, Config):
            cfg, models_dir = cfg.tts, models_dir or cfg.models_dir
        self.cfg = cfg
        models_dir = Path(models_dir or "models")
        self.voices = {}
        for lang, name in cfg.voices.items():
            if name:
                self.voices[lang] = self._load(resolve_model(name, models_dir), lang)
        self.sample_rate = next((v.config.sample_rate for v in self.voices.values()), DEFAULT_RATE)

    @staticmethod
    def _load(path: Path, lang: str):
        from piper import PiperVoice

        require(path, f"piper voice for '{lang}'", f"tts.voices.{lang}")
        require(Path(f"{path}.json"), f"piper voice config for '{lang}'", f"tts.voices.{lang}")
        return PiperVoice.load(path)

    def synthesize(self, text: str, lang: str = "en") -> Iterator[np.ndarray]:
        """Stream speech for `text`; piper yields sentence by sentence, espeak all at once."""
        text = normalize_for_speech(text, lang)
        if not re.search(r"\w", text):
            return
        voice = self.voices.get(lang)
        if voice is None:
            yield self._espeak(text, lang)
            return
        from piper import SynthesisConfig

        syn = SynthesisConfig(length_scale=self.cfg.length_scale, volume=0.9)
        for chunk in voice.synthesize(text, syn):
            yield resample(chunk.audio_float_array, chunk.sample_rate, self.sample_rate)

    def _espeak(self, text: str, lang: str) -> np.ndarray:
        exe = shutil.which("espeak-ng")
        if not self.cfg.espeak_fallback or exe is None:
            why = ("tts.espeak_fallback is off" if not self.cfg.espeak_fallback
                   else "espeak-ng is not installed (`apt-get install espeak-ng`)")
            raise TTSError(f"no voice for language '{lang}': set tts.voices.{lang} to a piper "
                           f".onnx voice in the models folder ({why})")
        if lang not in _warned:
            _warned.add(lang)
            log.warning("no piper voice for '%s' (tts.voices.%s); speaking it with espeak-ng's "
                        "robotic voice until one is configured", lang, lang)
        import soundfile as sf

        wpm = round(_ESPEAK_WPM / self.cfg.length_scale)
        try:
            out = subprocess.run([exe, "-v", lang, "-s", str(wpm), "--stdout"], input=text.encode(),
                                 capture_output=True, check=True, timeout=60)
            audio, rate = sf.read(io.BytesIO(out.stdout), dtype="float32")
        except (subprocess.SubprocessError, sf.LibsndfileError) as e:
            raise TTSError(f"espeak-ng failed for '{lang}' ({e}); check `espeak-ng --voices={lang}`") \
                from None
        return resample(audio.reshape(len(audio), -1).mean(axis=1), rate, self.sample_rate)
