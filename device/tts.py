"""Text to speech: a piper voice per language, espeak-ng for languages without one.

No Korean piper voice is published (docs/appliance.md, "Korean voices"), so Korean is spoken by
Debian's espeak-ng (robotic but offline) until one is configured in tts.voices.ko; the kiosk says
so once in the log. All audio leaves at one `sample_rate` (the first piper voice's, 22050 Hz for
joe-medium), so the speaker stream never has to be reopened between languages. Text is normalised
for speech first (device/normalize.py: numbers, times, codes and units written as they are read).
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

from campus_guide.errors import UserError
from campus_guide.config import Config, DialogueConfig, TTSConfig, resolve_model
from device.audio import resample
from device.models import onnx_session, require
from device.normalize import normalize_for_speech
from device.splitter import split_sentences

log = logging.getLogger(__name__)

DEFAULT_RATE = 22050
_ESPEAK_WPM = 165
_warned: set[str] = set()   # languages whose espeak fallback has been announced (once per process)


def longest_sentence(max_chars: int) -> str:
    """A sentence of the longest length the kiosk speaks (dialogue.max_sentence_chars): what a
    warm-up or a measurement synthesises so that piper's transient peak is its largest (no digits:
    read out, they would lengthen it past the cut)."""
    clause = "the Central Library is north of the Central Lawn, past the clock tower, "
    return (clause * (max_chars // len(clause) + 1))[:max_chars - 1].rstrip(", ") + "."


class TTSError(UserError):
    """No way to speak a language, or the synthesizer failed."""


class Synthesizer:
    """`synthesize(text, lang)` -> float32 chunks at `.sample_rate`, one per sentence.

    Piper never gets more than `max_chars` at once (dialogue.max_sentence_chars): its memory
    while it speaks grows with the sentence (numbers read out make text longer; one 311-char
    route sentence needed ~150 MB more), so cut to the limit the memory plan's piper row is a
    bound, not a guess. Its session gives that memory back after each sentence (onnx_session,
    `varying`)."""

    def __init__(self, cfg: Config | TTSConfig, models_dir: str | Path | None = None):
        full = isinstance(cfg, Config)
        self.max_chars = (cfg.dialogue if full else DialogueConfig()).max_sentence_chars
        if full:
            cfg, models_dir = cfg.tts, models_dir or cfg.models_dir
        self.cfg = cfg
        models_dir = Path(models_dir or "models")
        self.voices = {}
        for lang, name in cfg.voices.items():
            if name:
                self.voices[lang] = self._load(resolve_model(name, models_dir), lang)
        self.sample_rate = next((v.config.sample_rate for v in self.voices.values()), DEFAULT_RATE)

    def _load(self, path: Path, lang: str):
        import json

        from piper import PiperConfig, PiperVoice

        require(path, f"piper voice for '{lang}'", f"tts.voices.{lang}")
        config = require(Path(f"{path}.json"), f"piper voice config for '{lang}'", f"tts.voices.{lang}")
        # PiperVoice.load would give onnxruntime every core; the thread budget decides here.
        session = onnx_session(path, f"cannot load the piper voice for '{lang}'; run `campus-guide "
                                     f"models fetch --force`, or fix tts.voices.{lang}",
                               self.cfg.threads, TTSError, varying=True)
        return PiperVoice(session=session,
                          config=PiperConfig.from_dict(json.loads(config.read_text(encoding="utf-8"))))

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
        for sentence in split_sentences([text], self.max_chars):
            for chunk in voice.synthesize(sentence, syn):
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
