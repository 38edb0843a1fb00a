"""`campus-guide bench asr --corpus DIR`: the kiosk's own speech recognition on a folder of clips.

DIR holds WAV files and `transcripts.tsv`: tab-separated, the first two columns `path` (relative
to DIR) and `text` (what was said); a header line `path<TAB>text...` is optional and further
columns are ignored (the reader, campus_guide/corpus.py, is shared with `train asr`). Each clip
goes whole through `device.asr.Transcriber` with the config's `asr.*` settings (or `--lang` /
`--beam`), exactly as the kiosk would hear one utterance, and is scored with
`campus_guide.scoring`: character error rate for Korean references, word error rate for English
ones (the expected language is the reference's script, `prompt.language_of`), plus language-ID
accuracy and the seconds Whisper took per clip.
"""
from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path

import numpy as np

from campus_guide.config import Config
from campus_guide.corpus import TRANSCRIPTS, Clip, CorpusError, load_corpus  # noqa: F401 (re-exported)
from campus_guide.errors import UserError
from campus_guide.prompt import language_of
from campus_guide.scoring import char_score, corpus_rate, word_score

log = logging.getLogger(__name__)

def _settings(cfg: Config, corpus: Path, n: int) -> dict:
    a = cfg.asr
    return {"corpus": str(corpus), "model": a.model, "language": a.language,
            "beam_size": a.beam_size, "compute_type": a.compute_type, "device": a.device,
            "cpu_threads": a.cpu_threads, "hotwords": a.hotwords, "clips": n,
            "machine": platform.machine(), "cpus": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def _round(x, nd=4):
    return None if x is None else round(float(x), nd)


def _row(asr, clip: Clip, audio, chars: list, words: list) -> dict:
    """Transcribe and score one clip; its score goes to `chars` (Korean) or `words` (English)."""
    t = asr.transcribe(audio)
    expected = language_of(clip.text)
    score = (char_score if expected == "ko" else word_score)(t.text, clip.text)
    (chars if expected == "ko" else words).append(score)
    return {"path": clip.name, "ref": clip.text, "hyp": t.text,
            "expected_language": expected, "language": t.language,
            "metric": "cer" if expected == "ko" else "wer",
            "error_rate": _round(score.rate), "edits": score.edits,
            "ref_length": score.length, "asr_s": _round(t.asr_s, 3),
            "duration_s": _round(t.duration_s, 3), "confidence": _round(t.confidence, 3)}


def run_asr_bench(cfg: Config, corpus: str | os.PathLike, out: str | os.PathLike | None = None,
                  *, language: str | None = None, beam_size: int | None = None,
                  progress: bool = True) -> dict:
    """Transcribe and score every clip; returns the report (and writes it to `out` as JSON)."""
    clips = load_corpus(corpus)              # a broken corpus fails before a model loads

    from tqdm import tqdm

    from campus_guide.knowledge import load_kb

    from .asr import Transcriber, kb_hotwords
    from .audio import read_wav

    if language is not None:
        cfg.asr.language = language
    if beam_size is not None:
        if beam_size < 1:
            raise UserError(f"--beam must be at least 1, got {beam_size}")
        cfg.asr.beam_size = beam_size
    asr = Transcriber(cfg, kb_hotwords(load_kb(cfg.kb)) if cfg.asr.hotwords else [])

    rows, chars, words = [], [], []
    quiet = logging.getLogger("faster_whisper")      # one INFO line per clip would bury the bar
    level = quiet.level
    quiet.setLevel(max(level, logging.WARNING))
    try:
        for clip in tqdm(clips, desc="bench asr", unit="clip", disable=not progress):
            rows.append(_row(asr, clip, read_wav(clip.path, 16000), chars, words))
    finally:
        quiet.setLevel(level)

    secs = np.array([r["asr_s"] for r in rows], float)
    report = {
        "clips": len(rows),
        "cer": _round(corpus_rate(chars)),
        "wer": _round(corpus_rate(words)),
        "lang_id_accuracy": _round(np.mean([r["language"] == r["expected_language"]
                                            for r in rows])),
        "asr_s_mean": _round(secs.mean(), 3),
        "asr_s_p95": _round(np.percentile(secs, 95), 3),
        "audio_s_total": _round(sum(r["duration_s"] for r in rows), 1),
        "settings": _settings(cfg, Path(corpus), len(rows)),
        "rows": rows,
    }
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def format_report(report: dict, worst: int = 5) -> str:
    """The short table `bench asr` prints, with the worst clips under it."""
    s = report["settings"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"   # noqa: E731
    ko = sum(r["expected_language"] == "ko" for r in report["rows"])
    lines = [
        f"{report['clips']} clips ({ko} ko, {report['clips'] - ko} en), {s['model']}, "
        f"language {s['language']}, beam {s['beam_size']}, {s['compute_type']} on {s['device']}",
        f"  {'CER (ko)':<18}{fmt(report['cer'])}",
        f"  {'WER (en)':<18}{fmt(report['wer'])}",
        f"  {'language ID':<18}{fmt(report['lang_id_accuracy'])}",
        f"  {'ASR s/clip':<18}{fmt(report['asr_s_mean'])} mean, {fmt(report['asr_s_p95'])} p95",
    ]
    bad = sorted(report["rows"], key=lambda r: -r["error_rate"])[:worst]
    bad = [r for r in bad if r["error_rate"] > 0 or r["language"] != r["expected_language"]]
    if bad:
        lines.append("worst clips:")
        for r in bad:
            lang = "" if r["language"] == r["expected_language"] else f" [heard as {r['language']}]"
            lines.append(f"  {r['metric']} {r['error_rate']:.2f}{lang} {r['path']}: {r['hyp']!r}")
    return "\n".join(lines)
