"""`campus-guide bench`: what a visitor waits, from the last sound of the question to the first
sound of the answer, against the ancestor's way.

1. Replay (voice-to-voice): spoken questions - the two bundled ones, questions with a pause
   inside (after "Excuse me." / "Hi.", in the middle of a sentence) and a route question -
   played at 1x speed through a simulated microphone into the real kiosk loop (`listen`), with a
   simulated speaker that stamps the first sample out (device/replay.py). Once with the kiosk's
   turn-taking (device/turns.py: speculative ASR in the pause, streamed answers), once as the
   baseline: a fixed vad.end_silence_s, ASR after it, the whole answer before any speech.
   A question is *miscut* when a turn ended before the visitor had finished.
2. Time to first audio from the end of the turn, streamed vs sequential, interleaved on the same
   loaded models, for one-sentence answers (the bundled questions) and for route answers of three
   or more sentences, with the KV cache and the conversation cleared before every turn.
3. Each stage alone ("floors"), and decode speed inside the pipeline against llama.cpp alone.
"""
from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from campus_guide.errors import UserError
from campus_guide.config import PACKAGE_DATA, Config
from campus_guide.prompt import render_prompt

from .audio import SAMPLE_RATE, read_wav, resample
from .budget import peak_rss_mb
from .kiosk import listen
from .pipeline import VAD_MODEL, Collector, Pipeline
from .replay import SimMic, SimSpeaker
from .turns import TurnTaker

log = logging.getLogger(__name__)

QUESTIONS = (PACKAGE_DATA / "question_en.wav", PACKAGE_DATA / "question_ko.wav")
# espeak-ng's robotic Korean defeats whisper-base's language detection (device/asr.py), so the
# Korean question is decoded as Korean, as a Korean-first kiosk (asr.language: ko) would.
LANGUAGES = (None, "ko")
# Route questions (answers of three or more sentences), and spoken questions with a pause inside:
# (name, language, parts); a number between parts is a pause in seconds.
ROUTES = (("route_engineering_en", "en", ["How do I walk to the engineering building from here?"]),
          ("route_pool_en", "en", ["How do I get to the swimming pool from here?"]))
# Only English: espeak-ng's Korean is unintelligible to Whisper ("저기요." comes back as "Talk to
# you.", "도서관 어디예요?" as "the Sakura no Di-Eyo."), so a paused Korean question spoken by it
# would test nothing. Korean end-of-turn decisions are measured on real speech (`bench turns`).
PAUSED = (("opener_en", "en", ["Excuse me.", 0.7, "Where is the library?"]),
          ("midsentence_en", "en", ["How do I get to", 0.6, "the student union?"]),
          ("need_en", "en", ["I'm looking for", 0.6, "a place to print."]),
          ("greeting_en", "en", ["Hi.", 0.8, "Where can I get a coffee?"]))
STAGES = ("asr_s", "first_token_s", "first_sentence_s", "first_audio_s", "total_s")


def _spoken(p: Pipeline, lang: str, parts: list) -> np.ndarray:
    """A question spoken by the kiosk's own voices (piper, espeak-ng for Korean), 16 kHz."""
    audio = []
    for part in parts:
        if isinstance(part, (int, float)):
            audio.append(np.zeros(int(part * SAMPLE_RATE), np.float32))
        else:
            speech = np.concatenate(list(p.tts.synthesize(part, lang)))
            audio.append(resample(speech, p.tts.sample_rate, SAMPLE_RATE))
    return np.concatenate(audio)


def _floors(p: Pipeline, audio, language: str | None) -> tuple[dict, list[int]]:
    """Each stage alone on one question; returns the floors and the prompt's tokens."""
    u = p.utterance(audio)
    t = time.perf_counter()
    tr = p.asr.transcribe(u.audio, language)
    asr_s = time.perf_counter() - t
    t = time.perf_counter()
    r = p.dialogue.retriever.retrieve(tr.text, k=p.cfg.dialogue.retrieval_k)
    retrieval_s = time.perf_counter() - t
    prompt = render_prompt(tr.text, r.facts(), [], tr.language)
    prefill_s = p.llm.prefill(prompt)

    p.llm.reset()
    pieces = p.llm.stream(prompt)
    first = next(iter(p.dialogue.split(pieces)), "")
    pieces.close()
    decode_s = p.llm.last.decode_s   # generation time after the first token, up to the sentence
    t = time.perf_counter()
    for _ in p.tts.synthesize(first, tr.language):
        break
    tts_s = time.perf_counter() - t
    floors = {"asr_s": asr_s, "retrieval_s": retrieval_s, "prefill_s": prefill_s,
              "first_sentence_decode_s": decode_s, "tts_first_sentence_s": tts_s}
    return floors, p.llm.tokenize(prompt)


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def _ttfa(p: Pipeline, questions: list[tuple[str, np.ndarray, str | None]], runs: int,
          label: str) -> dict[str, list]:
    """Every question `runs` times in both modes, interleaved so load hits both alike."""
    turns: dict[str, list] = {"streamed": [], "sequential": []}
    jobs = [(i, q) for i in range(runs) for q in questions]
    for n, (_, (name, audio, lang)) in enumerate(tqdm(jobs, desc=label, unit="question")):
        for mode in (("streamed", "sequential") if n % 2 == 0 else ("sequential", "streamed")):
            p.reset()
            r = p.ask_audio(audio, Collector(), sequential=mode == "sequential", language=lang)
            if not r.answer:
                raise UserError(f"{name} got no answer (transcript {r.transcript!r}); check the "
                                f"models with `campus-guide ask`")
            sentences = len(list(p.dialogue.split([r.answer])))     # as the kiosk speaks it
            turns[mode].append({"question": name, "sentences": sentences, **r.to_dict()})
    return turns


def _replay(p: Pipeline, questions: list[tuple[str, np.ndarray]], baseline: bool) -> list[dict]:
    """The questions into the real kiosk loop at 1x speed; one row per question."""
    cfg = p.cfg
    turns = None
    if baseline:
        cfg = replace(cfg, turn=replace(cfg.turn, mode="silence"))
        turns = TurnTaker(cfg, Path(cfg.models_dir) / VAD_MODEL, p.asr.transcribe)
    speaker = SimSpeaker(p.tts.sample_rate)
    mic = SimMic(questions, speaker)
    results = []
    p.reset()
    try:
        listen(p, mic, speaker, on_turn=results.append, on_heard=mic.heard, sequential=baseline,
               turns=turns)
    finally:
        if turns is not None:
            turns.close()
    rows = []
    for q in mic.played:
        waits = [t.wait_s for _, t in q.heard]
        rows.append({"question": q.name, "v2v_s": None if q.v2v_s is None else round(q.v2v_s, 4),
                     "miscut": q.miscut, "turns": len(q.heard),
                     "end_of_turn_s": round(waits[-1], 4) if waits else None,
                     "heard": [t.transcript.text if t.transcript else None for _, t in q.heard]})
    return rows


def run_bench(cfg: Config, out: str | Path, runs: int = 3) -> dict:
    if runs < 1:
        raise UserError("--runs must be at least 1")
    out = Path(out)
    if out.suffix != ".json":
        raise UserError(f"--out {out}: give a .json file name (the plot goes beside it as .png)")
    missing = [q for q in QUESTIONS if not q.is_file()]
    if missing:
        raise UserError(f"bundled question {missing[0]} is missing; reinstall campus-guide")
    print("loading models ...", flush=True)
    p = Pipeline(cfg)
    try:
        bundled = [(q.name, read_wav(q), lang) for q, lang in zip(QUESTIONS, LANGUAGES)]
        routes = [(name, _spoken(p, lang, parts), lang) for name, lang, parts in ROUTES]
        paused = [(name, _spoken(p, lang, parts)) for name, lang, parts in PAUSED]
        replayed = [(n, a) for n, a, _ in bundled] + paused + [(n, a) for n, a, _ in routes[:1]]

        print(f"replaying {len(replayed)} questions at 1x speed, kiosk then baseline ...", flush=True)
        v2v = {"kiosk": _replay(p, replayed, baseline=False),
               "baseline": _replay(p, replayed, baseline=True)}
        one = _ttfa(p, bundled, runs, "one-sentence answers")
        route = _ttfa(p, routes, runs, "route answers")
        floors, raw = [], []
        for name, audio, lang in bundled:
            p.reset()
            f, tokens = _floors(p, audio, lang)
            floors.append(f)
            n_tok = max(2, next(t["llm_tokens"] for t in one["streamed"] if t["question"] == name))
            raw.append(p.llm.raw_decode_tok_s(tokens, n_tok))
    finally:
        p.close()
    return _report(cfg, p, out, runs, v2v, one, route, floors, raw)


def _report(cfg, p, out: Path, runs, v2v, one, route, floors, raw) -> dict:
    ttfa = {m: _median(t["timings"]["first_audio_s"] for t in one[m]) for m in one}
    ttfa_route = {m: _median(t["timings"]["first_audio_s"] for t in route[m]) for m in route}
    floor = {k: _median(f[k] for f in floors) for k in floors[0]}
    floor["end_of_turn_s"] = _median(r["end_of_turn_s"] for r in v2v["kiosk"] if not r["miscut"])
    floor_sum = round(sum(v for k, v in floor.items() if v is not None and k != "end_of_turn_s"), 4)
    # Voice-to-voice on the questions that both ways heard whole (a miscut baseline answered
    # something else); all of the kiosk's beside it.
    whole = {r["question"] for r in v2v["baseline"] if not r["miscut"] and r["v2v_s"] is not None}
    mine = {r["question"]: r["v2v_s"] for r in v2v["kiosk"]}
    # Token-weighted tokens/s. The sequential pipeline runs the same detokenizer and guard with no
    # speech synthesis beside the model: on 2 cores it separates their cost from CPU contention.
    pipe_tok = {m: [(t["llm_tokens"], t["decode_tok_s"]) for t in one[m] + route[m]
                    if t["llm_tokens"] > 1 and t["decode_tok_s"]] for m in one}
    tok = {m: round(sum(n for n, _ in v) / sum(n / s for n, s in v), 2) if v else None
           for m, v in pipe_tok.items()}
    tok_raw = _median(raw)
    report = {
        "runs": runs, "questions": [q.name for q in QUESTIONS],
        "models": {"asr": p.asr.name, "llm": str(p.llm.model_path.name),
                   "lora": p.llm.adapter_path.name if p.llm.adapter_path else None,
                   "tts": cfg.tts.voices, "smart_turn": cfg.turn.smart_turn},
        "turn": {"mode": cfg.turn.mode, "pause_s": cfg.turn.pause_s,
                 "baseline_end_silence_s": cfg.vad.end_silence_s},
        "v2v_s": _median(mine[q] for q in whole),
        "v2v_baseline_s": _median(r["v2v_s"] for r in v2v["baseline"] if r["question"] in whole),
        "v2v_s_all": _median(mine.values()),
        "v2v_miscut": sum(r["miscut"] for r in v2v["kiosk"]),
        "v2v_baseline_miscut": sum(r["miscut"] for r in v2v["baseline"]),
        "v2v_questions": len(v2v["kiosk"]),
        "ttfa_streamed_s": ttfa["streamed"], "ttfa_sequential_s": ttfa["sequential"],
        "ttfa_ratio": round(ttfa["streamed"] / ttfa["sequential"], 3),
        "ttfa_streamed_route_s": ttfa_route["streamed"],
        "ttfa_sequential_route_s": ttfa_route["sequential"],
        "ttfa_route_ratio": round(ttfa_route["streamed"] / ttfa_route["sequential"], 3),
        "route_sentences": _median(t["sentences"] for t in route["streamed"]),
        "floors": floor, "floors_sum_s": floor_sum,
        "ttfa_over_floors": round(ttfa["streamed"] / floor_sum, 3),
        "decode_tok_s_pipeline": tok["streamed"],
        "decode_tok_s_pipeline_no_tts": tok["sequential"],
        "decode_tok_s_raw": tok_raw,
        "decode_ratio": round(tok["streamed"] / tok_raw, 3) if tok["streamed"] and tok_raw else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "stages": {m: {s: _median(t["timings"][s] for t in one[m]) for s in STAGES} for m in one},
        "replay": v2v,
        "turns": one, "route_turns": route,
    }
    v, b = report["v2v_s"], report["v2v_baseline_s"]
    report["v2v_ratio"] = round(v / b, 3) if v and b else None
    report["goals"] = {
        "v2v_s <= 0.6 x v2v_baseline_s": bool(report["v2v_ratio"] and report["v2v_ratio"] <= 0.6),
        "v2v_miscut == 0": report["v2v_miscut"] == 0,
        "ttfa_streamed_s <= ttfa_sequential_s": report["ttfa_ratio"] <= 1.0,
        "ttfa_streamed_route_s <= 0.6 x ttfa_sequential_route_s": report["ttfa_route_ratio"] <= 0.6,
        "ttfa_over_floors <= 1.15": report["ttfa_over_floors"] <= 1.15,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    try:
        png = plot(report, out.with_suffix(".png"))
    except ImportError:
        png = "no plot (install matplotlib for it)"
    print(json.dumps({k: v for k, v in report.items()
                      if k not in ("turns", "route_turns", "stages", "replay")},
                     ensure_ascii=False, indent=2))
    print(f"wrote {out} and {png}")
    return report


def plot(report: dict, path: Path) -> Path:
    """Left: voice-to-voice per replayed question, the kiosk beside the baseline (a miscut
    marked). Middle: median seconds from the end of the turn to each stage, streamed beside
    sequential. Right: the floors stacked, the lower bound of streamed time to first audio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (vx, ax, fx) = plt.subplots(1, 3, figsize=(16, 4.5), gridspec_kw={"width_ratios": [3, 3, 1]})
    width = 0.38
    names = [r["question"].removesuffix(".wav") for r in report["replay"]["kiosk"]]
    for k, (mode, color) in enumerate((("kiosk", "tab:blue"), ("baseline", "tab:orange"))):
        rows = report["replay"][mode]
        xs = [i + (k - 0.5) * width for i in range(len(rows))]
        bars = vx.bar(xs, [r["v2v_s"] or 0 for r in rows], width, color=color,
                      label=mode if mode == "kiosk" else "baseline (fixed silence, sequential)")
        vx.bar_label(bars, labels=["miscut" if r["miscut"] else f"{r['v2v_s'] or 0:.2f}" for r in rows],
                     fontsize=7)
    vx.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    vx.set_ylabel("seconds, last sound of question -> first sound of answer")
    vx.set_title(f"voice to voice (median, questions both heard whole): {report['v2v_s'] or 0:.2f} s "
                 f"vs baseline {report['v2v_baseline_s'] or 0:.2f} s; miscut {report['v2v_miscut']} vs "
                 f"{report['v2v_baseline_miscut']} of {report['v2v_questions']}", fontsize=9)
    vx.legend(fontsize=8)
    xs = range(len(STAGES))
    for k, (mode, color) in enumerate((("streamed", "tab:blue"), ("sequential", "tab:orange"))):
        vals = [report["stages"][mode][s] or 0 for s in STAGES]
        bars = ax.bar([x + (k - 0.5) * width for x in xs], vals, width, label=mode, color=color)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(list(xs), [s.removesuffix("_s").replace("_", " ") for s in STAGES])
    ax.set_ylabel("seconds from the end of the turn (median)")
    ax.set_title(f"first audio: streamed {report['ttfa_streamed_s']:.2f} s vs sequential "
                 f"{report['ttfa_sequential_s']:.2f} s; routes {report['ttfa_streamed_route_s']:.2f} "
                 f"vs {report['ttfa_sequential_route_s']:.2f} s", fontsize=9)
    ax.legend()
    bottom = 0.0
    for (name, v), color in zip(report["floors"].items(), plt.cm.tab10.colors):
        fx.bar(0, v or 0, bottom=bottom, color=color, label=f"{name.removesuffix('_s')} {v or 0:.2f}")
        bottom += v or 0
    fx.axhline(report["ttfa_streamed_s"], color="tab:blue", ls="--", label="streamed first audio")
    fx.set_xticks([0], ["floors"])
    fx.set_title(f"sum {report['floors_sum_s']:.2f} s\n(+ end of turn)", fontsize=9)
    fx.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
