"""`campus-guide bench turns [--corpus DIR]`: the kiosk's end-of-turn decision (device/turns.py)
on whole questions and on the same questions cut off before their end, per language.

Each clip is trimmed to its speech as a WAV file is (`Pipeline.utterance`), then judged twice:
whole, and cut at CUT (60 %) of its speech, from the first to the last voiced VAD window. The cut
clip ends, as the whole one does and as every segment the kiosk judges does, with CUT_TAIL_S of
non-speech after it (the VAD's soft tail): the clip's own audio after its last voiced window,
padded with silence. Without it Smart Turn would hear an abrupt end, which it scores lower than
the same words followed by a pause (0.02 -> 0.83 on one piper fragment). Both go through the
kiosk's own Whisper (`asr.*` settings, so automatic language on the defaults) and Smart Turn,
and three methods judge them:

  model     Smart Turn alone: P(complete) >= turn.threshold is complete
  rules     the words alone, `turns.ending`: "final" complete, "open" incomplete, None undecided
            (counted apart: an undecided clip is neither judged complete nor incomplete)
  combined  what the kiosk does, `turns.decide`: complete or opener counts as complete,
            incomplete or empty as incomplete (each row keeps decide's own verdict: on a cut
            clip an opener also makes the kiosk wait, turn.opener_wait_s)

Per source and language: n, the share of whole clips judged complete, the share of cut clips
judged incomplete, and the rules' undecided share, all over n. Sources: (a) `--corpus DIR` in
`bench asr`'s format (real recordings; the report names each clip by its file name and holds no
words from it, neither the reference nor what Whisper heard); (b) always, English campus
questions spoken by the kiosk's piper voice; (c) always, Korean questions spoken by espeak-ng, the
kiosk's Korean fallback: robotic speech, not a stand-in for a visitor.
"""
from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from campus_guide.config import Config
from campus_guide.errors import UserError
from campus_guide.prompt import language_of

from .audio import SAMPLE_RATE
from .bench_asr import load_corpus
from .vad import WINDOW

log = logging.getLogger(__name__)

CUT = 0.6                       # the cut clip keeps this share of the speech
CUT_TAIL_S = 0.2                # then this much non-speech, as the VAD hands over a pause (vad._TAIL_S)
METHODS = ("model", "rules", "combined")

# (b) English, piper's joe voice: where / how / when / need questions, some after "excuse me".
EN_QUESTIONS = (
    "Where is the library?",
    "Excuse me, how do I get to the gym from here?",
    "When does the library close tonight?",
    "I need to print something, where can I do that?",
    "Excuse me, where is the student union?",
    "How do I get to the swimming pool?",
    "Where can I get a coffee near here?",
    "Is there a pharmacy on campus?",
    "What time does the dining hall open for lunch?",
    "Can you tell me where the visitor center is?",
    "Excuse me, I'm looking for the health center.",
    "How far is the arts center from the main gate?",
    "I need to send a parcel, is there a post office?",
    "Where do I register my car for parking?",
    "Which building is the engineering department in?",
    "Excuse me, where is the nearest restroom?",
)
# (c) Korean, espeak-ng (robotic): the same kinds of question, polite and formal endings.
KO_QUESTIONS = (
    "도서관은 어디에 있나요?",
    "저기요, 학생회관 어디예요?",
    "체육관에 어떻게 가요?",
    "도서관은 몇 시에 문을 닫아요?",
    "프린트할 수 있는 곳 있어요?",
    "정문에서 공학관까지 얼마나 걸려요?",
    "커피 마실 데 있나요?",
    "보건소는 어디에 있습니까?",
    "식당은 언제 열어요?",
    "주차는 어디에 하면 돼요?",
    "수영장에 가려면 어느 쪽으로 가야 해요?",
    "화장실이 어디예요?",
)
SPEECH = {"corpus": "recordings (--corpus)", "piper": "piper, the kiosk's English voice",
          "espeak": "espeak-ng, robotic (the kiosk's Korean fallback)"}


@dataclass(frozen=True)
class _Job:
    source: str                   # corpus | piper | espeak
    language: str                 # the language spoken: ko | en
    name: str                     # the clip's file name, or piper_en/03
    load: Callable[[], np.ndarray]
    question: str | None = None   # the text we wrote (synthetic sources only; never the corpus's)


def _check_out(out) -> Path | None:
    if out is None:
        return None
    out = Path(out)
    if out.suffix.lower() != ".json":
        raise UserError(f"--out {out}: the report is JSON; give a file name ending in .json")
    return out


def _smart_turn(p, cfg: Config):
    """The pipeline's Smart Turn if it loaded one (turn.mode smart), else the configured file."""
    if p.turns.model is not None:
        return p.turns.model
    from .turns import SmartTurn

    return SmartTurn(Path(cfg.models_dir) / cfg.turn.smart_turn)


def _cut(vad, audio: np.ndarray, threshold: float) -> tuple[float, int, np.ndarray]:
    """(seconds of speech, the sample CUT of the way through it, the cut clip): speech runs from
    the first to the last VAD window at or above the threshold; the cut clip is the audio up to
    the cut point and CUT_TAIL_S of the clip's own non-speech after its speech (zeros if short)."""
    probs = vad.probabilities(audio)
    voiced = np.flatnonzero(probs >= threshold)
    if voiced.size == 0:                      # cannot happen after utterance(); be safe
        first, last = 0, audio.size
    else:
        first, last = int(voiced[0]) * WINDOW, min(audio.size, (int(voiced[-1]) + 1) * WINDOW)
    at = first + int(round(CUT * (last - first)))
    n = int(CUT_TAIL_S * SAMPLE_RATE)
    tail = audio[last:last + n]
    tail = np.pad(tail, (0, n - tail.size))
    return (last - first) / SAMPLE_RATE, at, np.concatenate([audio[:at], tail]).astype(np.float32)


def _judge(p, smart, audio: np.ndarray, threshold: float, with_text: bool) -> dict:
    from .turns import decide, ending

    tr = p.asr.transcribe(audio)
    prob = float(smart(audio))
    e = ending(tr.text)
    d = decide(tr.text, prob, threshold)
    out = {"heard_language": tr.language, "p_complete": round(prob, 4), "ending": e,
           "decision": d.verdict, "why": d.why,
           "model": "complete" if prob >= threshold else "incomplete",
           "rules": {"final": "complete", "open": "incomplete"}.get(e),
           "combined": "complete" if d.verdict in ("complete", "opener") else "incomplete"}
    if with_text:
        out["heard"] = tr.text
    return out


def _row(p, smart, job: _Job, threshold: float) -> dict:
    row = {"source": job.source, "clip": job.name, "language": job.language}
    if job.question is not None:
        row["question"] = job.question
    u = p.utterance(job.load())
    if u is None:
        row["no_speech"] = True
        return row
    speech_s, at, cut = _cut(p.vad, u.audio, p.cfg.vad.threshold)
    row.update(speech_s=round(speech_s, 3), cut_at_s=round(at / SAMPLE_RATE, 3),
               whole=_judge(p, smart, u.audio, threshold, job.question is not None),
               cut=_judge(p, smart, cut, threshold, job.question is not None))
    return row


def _summary(rows: list[dict]) -> dict:
    judged = [r for r in rows if not r.get("no_speech")]
    n = len(judged)

    def share(part: str, method: str, verdict) -> float | None:
        return round(sum(r[part][method] == verdict for r in judged) / n, 4) if n else None

    return {"n": n,
            "whole_complete": {m: share("whole", m, "complete") for m in METHODS},
            "cut_incomplete": {m: share("cut", m, "incomplete") for m in METHODS},
            "rules_undecided": {"whole": share("whole", "rules", None),
                                "cut": share("cut", "rules", None)},
            "no_speech": len(rows) - n}


def _jobs(p, corpus, limit: int | None) -> list[_Job]:
    from .audio import read_wav, resample

    def spoken(text: str, lang: str) -> Callable[[], np.ndarray]:
        def load():
            audio = np.concatenate(list(p.tts.synthesize(text, lang)))
            pad = np.zeros(SAMPLE_RATE // 4, np.float32)      # a recording's lead-in and tail
            return np.concatenate([pad, resample(audio, p.tts.sample_rate, SAMPLE_RATE), pad])
        return load

    jobs: list[_Job] = []
    for clip in (corpus or [])[:limit]:
        jobs.append(_Job("corpus", language_of(clip.text), clip.name,
                         lambda c=clip: read_wav(c.path, SAMPLE_RATE)))
    for i, q in enumerate(EN_QUESTIONS[:limit]):
        jobs.append(_Job("piper", "en", f"piper_en/{i:02d}", spoken(q, "en"), q))
    for i, q in enumerate(KO_QUESTIONS[:limit]):
        jobs.append(_Job("espeak", "ko", f"espeak_ko/{i:02d}", spoken(q, "ko"), q))
    return jobs


def run_turn_bench(cfg: Config, corpus: str | os.PathLike | None = None,
                   out: str | os.PathLike | None = None, *, limit: int | None = None,
                   progress: bool = True) -> dict:
    """Judge every clip whole and cut; returns the report (and writes it to `out` as JSON)."""
    out = _check_out(out)
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    if not cfg.turn.smart_turn:
        raise UserError("bench turns measures Smart Turn too, but turn.smart_turn is null; set it "
                        "to the model file (default smart-turn-v3.2-cpu.onnx)")
    clips = load_corpus(corpus) if corpus is not None else None   # fails before a model loads

    from tqdm import tqdm

    from .pipeline import Pipeline

    p = Pipeline(cfg)
    quiet = logging.getLogger("faster_whisper")      # one INFO line per clip would bury the bar
    level = quiet.level
    quiet.setLevel(max(level, logging.WARNING))
    try:
        smart = _smart_turn(p, p.cfg)
        threshold = p.cfg.turn.threshold
        jobs = _jobs(p, clips, limit)
        rows = [_row(p, smart, job, threshold)
                for job in tqdm(jobs, desc="bench turns", unit="clip", disable=not progress)]
    finally:
        quiet.setLevel(level)
        p.close()

    sources: dict[str, dict] = {}
    for source in ("corpus", "piper", "espeak"):
        for lang in ("ko", "en"):
            group = [r for r in rows if r["source"] == source and r["language"] == lang]
            if group:
                sources[f"{source}_{lang}"] = {"speech": SPEECH[source], "language": lang,
                                               **_summary(group)}
    a = p.cfg.asr
    report = {
        "settings": {"corpus": None if corpus is None else str(corpus), "limit": limit,
                     "cut_fraction": CUT, "cut_tail_s": CUT_TAIL_S, "threshold": threshold,
                     "smart_turn": str(p.cfg.turn.smart_turn), "asr_model": p.asr.name,
                     "asr_language": a.language, "beam_size": a.beam_size,
                     "compute_type": a.compute_type, "device": p.asr.device,
                     "machine": platform.machine(), "cpus": os.cpu_count(),
                     "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "sources": sources,
        "rows": rows,
    }
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def format_report(report: dict) -> str:
    """The compact table `bench turns` prints: % of n per method."""
    s = report["settings"]
    pct = lambda v: "-" if v is None else f"{100 * v:.0f}"   # noqa: E731
    cols = lambda g: [pct(g[m]) for m in METHODS]            # noqa: E731
    row = "{:<13}{:>4}   {:>5} {:>5} {:>8}   {:>5} {:>5} {:>8}   {:>5} {:>5}"
    lines = [f"end of turn: threshold {s['threshold']}, cut at {100 * s['cut_fraction']:.0f} % of "
             f"the speech (+{s['cut_tail_s']} s of pause), {s['asr_model']} (language "
             f"{s['asr_language']})",
             f"{'':<20}{'whole: % complete':^20}   {'cut: % incomplete':^20}   {'rules undecided %'}",
             row.format("source", "n", "model", "rules", "combined", "model", "rules", "combined",
                        "whole", "cut")]
    for name, g in report["sources"].items():
        mark = " *" if name.startswith("espeak") else ""
        lines.append(row.format(name + mark, g["n"], *cols(g["whole_complete"]),
                                *cols(g["cut_incomplete"]), pct(g["rules_undecided"]["whole"]),
                                pct(g["rules_undecided"]["cut"])))
        if g["no_speech"]:
            lines.append(f"{'':<13}({g['no_speech']} clip(s) with no speech in them left out)")
    if any(k.startswith("espeak") for k in report["sources"]):
        lines.append("* espeak-ng: robotic speech, not a visitor's")
    return "\n".join(lines)
