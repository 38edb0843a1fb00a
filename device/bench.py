"""`campus-guide bench`: time to first audio, streamed vs the ancestor's sequential way.

Both modes answer the same bundled spoken questions with the same loaded models, interleaved
(streamed, sequential, sequential, streamed, ...) so that load on the machine hits both alike.
The KV cache and the conversation memory are cleared before every turn, so no run profits from
the one before. Each stage is also timed alone ("floors"): a streamed pipeline cannot start
speaking before ASR + retrieval + prefill + decoding the first sentence + synthesising it.
Decode speed inside the pipeline is compared with llama.cpp alone on the same GGUF and prompt,
which shows what the Python around the model (detokenization, guard, threads) costs.
"""
from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path

from tqdm import tqdm

from campus_guide.errors import UserError
from campus_guide.config import PACKAGE_DATA, Config
from campus_guide.prompt import render_prompt

from .audio import read_wav
from .budget import peak_rss_mb
from .pipeline import Collector, Pipeline

log = logging.getLogger(__name__)

QUESTIONS = (PACKAGE_DATA / "question_en.wav", PACKAGE_DATA / "question_ko.wav")
# espeak-ng's robotic Korean defeats whisper-base's language detection (device/asr.py), so the
# Korean question is decoded as Korean, as a Korean-first kiosk (asr.language: ko) would.
LANGUAGES = (None, "ko")
STAGES = ("asr_s", "first_token_s", "first_sentence_s", "first_audio_s", "total_s")


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
    audios = [read_wav(q) for q in QUESTIONS]
    turns: dict[str, list] = {"streamed": [], "sequential": []}
    floors, raw = [], []
    pipe_tok: dict[str, list] = {"streamed": [], "sequential": []}
    try:
        jobs = [(i, q) for i in range(runs) for q in range(len(audios))]
        for n, (i, q) in enumerate(tqdm(jobs, desc="bench", unit="question")):
            order = ("streamed", "sequential") if n % 2 == 0 else ("sequential", "streamed")
            for mode in order:
                p.reset()
                r = p.ask_audio(audios[q], Collector(), sequential=mode == "sequential",
                                language=LANGUAGES[q])
                if not r.answer:
                    raise UserError(f"{QUESTIONS[q].name} got no answer (transcript "
                                    f"{r.transcript!r}); check the models with `campus-guide ask`")
                turns[mode].append({"question": QUESTIONS[q].name, **r.to_dict()})
                if r.llm_tokens > 1:
                    pipe_tok[mode].append((r.llm_tokens, r.decode_tok_s))
            p.reset()
            f, tokens = _floors(p, audios[q], LANGUAGES[q])
            floors.append(f)
            n_tok = max(2, turns["streamed"][-1]["llm_tokens"])
            raw.append(p.llm.raw_decode_tok_s(tokens, n_tok))
    finally:
        p.close()

    ttfa = {m: _median(t["timings"]["first_audio_s"] for t in turns[m]) for m in turns}
    floor = {k: _median(f[k] for f in floors) for k in floors[0]}
    floor_sum = round(sum(v for v in floor.values() if v is not None), 4)
    # Token-weighted tokens/s. The sequential pipeline runs the same detokenizer and guard with no
    # speech synthesis beside the model: on 2 cores it separates their cost from CPU contention.
    tok = {m: (sum(n for n, _ in v) / sum(n / s for n, s in v)) if v else None
           for m, v in pipe_tok.items()}
    tok_pipe, tok_raw = tok["streamed"], _median(raw)
    report = {
        "runs": runs, "questions": [q.name for q in QUESTIONS],
        "models": {"asr": cfg.asr.model, "llm": str(p.llm.model_path.name),
                   "lora": p.llm.adapter_path.name if p.llm.adapter_path else None,
                   "tts": cfg.tts.voices},
        "ttfa_streamed_s": ttfa["streamed"], "ttfa_sequential_s": ttfa["sequential"],
        "ttfa_ratio": round(ttfa["streamed"] / ttfa["sequential"], 3),
        "floors": floor, "floors_sum_s": floor_sum,
        "ttfa_over_floors": round(ttfa["streamed"] / floor_sum, 3),
        "decode_tok_s_pipeline": round(tok_pipe, 2) if tok_pipe else None,
        "decode_tok_s_pipeline_no_tts": round(tok["sequential"], 2) if tok["sequential"] else None,
        "decode_tok_s_raw": tok_raw,
        "decode_ratio": round(tok_pipe / tok_raw, 3) if tok_pipe and tok_raw else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "stages": {m: {s: _median(t["timings"][s] for t in turns[m]) for s in STAGES} for m in turns},
        "turns": turns,
    }
    report["goals"] = {
        "ttfa_ratio <= 0.35": report["ttfa_ratio"] <= 0.35,
        "ttfa_over_floors <= 1.15": report["ttfa_over_floors"] <= 1.15,
        "decode_ratio >= 0.95": bool(report["decode_ratio"] and report["decode_ratio"] >= 0.95),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    try:
        png = plot(report, out.with_suffix(".png"))
    except ImportError:
        png = "no plot (install matplotlib for it)"
    print(json.dumps({k: v for k, v in report.items() if k not in ("turns", "stages")},
                     ensure_ascii=False, indent=2))
    print(f"wrote {out} and {png}")
    return report


def plot(report: dict, path: Path) -> Path:
    """Median seconds from the end of speech to each stage, streamed beside sequential, with
    the floors stacked as the lower bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, fx) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.38
    xs = range(len(STAGES))
    for k, (mode, color) in enumerate((("streamed", "tab:blue"), ("sequential", "tab:orange"))):
        vals = [report["stages"][mode][s] or 0 for s in STAGES]
        bars = ax.bar([x + (k - 0.5) * width for x in xs], vals, width, label=mode, color=color)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(list(xs), [s.removesuffix("_s").replace("_", " ") for s in STAGES])
    ax.set_ylabel("seconds from end of speech (median)")
    ax.set_title(f"time to first audio: streamed {report['ttfa_streamed_s']:.2f} s vs "
                 f"sequential {report['ttfa_sequential_s']:.2f} s (x{report['ttfa_ratio']:.2f})")
    ax.legend()
    bottom = 0.0
    for (name, v), color in zip(report["floors"].items(), plt.cm.tab10.colors):
        fx.bar(0, v or 0, bottom=bottom, color=color, label=f"{name.removesuffix('_s')} {v:.2f}")
        bottom += v or 0
    fx.axhline(report["ttfa_streamed_s"], color="tab:blue", ls="--", label="streamed TTFA")
    fx.set_xticks([0], ["floors"])
    fx.set_title(f"sum {report['floors_sum_s']:.2f} s")
    fx.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
