"""Greedy answers on a held-out split, scored the way a visitor would judge them.

Metrics per example, averaged by split, type and language:
  rouge_l, bleu, chrf  overlap with the reference; Korean is tokenised into syllables and English
                       into words (rouge-score's tokenizer drops Hangul and scores Korean 0)
  fact                 the answer contains every knowledge-base fact it should (building number,
                       minutes, hour, neighbour); for unanswerable questions: it says it does not know
  invented             it names a building/place that is not in the knowledge base (the guard's
                       PlaceDetector rule)
  structure            routes name their places in walking order and end at the destination; a
                       building's number is its own (the guard's campus_guide.knowledge.structure)
  lang_match           answer language = question language (an answer in the wrong language is 0)
  stop                 the model ended its turn itself before the token limit

Generation runs through llama.cpp with the device's own LLM class (GGUF base + optional GGUF
adapter: exactly what the kiosk runs), or through transformers (HF folder or GGUF, + optional
PEFT adapter) for checkpoints that have not been converted.
"""
from __future__ import annotations

import json
import logging
import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol

from campus_guide import prompt
from campus_guide.errors import UserError
from campus_guide.knowledge.answers import has_fact
from campus_guide.korean import SYLLABLE
from campus_guide.knowledge.places import PlaceDetector
from campus_guide.knowledge.routes import find_route
from campus_guide.knowledge.structure import structure_problem

log = logging.getLogger(__name__)

METRICS = ("fact", "rouge_l", "bleu", "chrf", "lang_match", "stop", "invented", "structure")

_TOKEN = re.compile(SYLLABLE.pattern + r"|[a-z]+|\d+")
_UNKNOWN_MARKERS = ("don't know", "do not know", "not sure", "모르", "알 수 없")


def tokens(text: str) -> list[str]:
    """Hangul syllables, lower-case Latin words and numbers: one tokenisation for both languages."""
    return _TOKEN.findall(text.lower())


def rouge_l(hyp: str, ref: str) -> float:
    """ROUGE-L F1 on `tokens` (longest common subsequence)."""
    h, r = tokens(hyp), tokens(ref)
    if not h or not r:
        return 0.0
    prev = [0] * (len(r) + 1)
    for a in h:
        cur = [0]
        for j, b in enumerate(r, 1):
            cur.append(prev[j - 1] + 1 if a == b else max(prev[j], cur[j - 1]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(h), lcs / len(r)
    return 2 * p * rec / (p + rec)


def bleu(hyp: str, ref: str) -> float:
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize="none", effective_order=True).sentence_score(
        " ".join(tokens(hyp)), [" ".join(tokens(ref))]).score / 100


def chrf(hyp: str, ref: str) -> float:
    from sacrebleu.metrics import CHRF

    return CHRF().sentence_score(hyp, [ref]).score / 100


def says_unknown(answer: str) -> bool:
    return any(m in answer.lower() for m in _UNKNOWN_MARKERS)


def score(row: dict, answer: str, stopped: bool, places: PlaceDetector) -> dict:
    """All metrics of one answer against its dataset row."""
    ref = row["answer"]
    if row.get("unknown"):
        fact = float(says_unknown(answer))
    else:
        fact = float(bool(answer) and all(has_fact(answer, f) for f in row["expect"]))
    invented = places.invented(answer)     # the rules the kiosk's guard applies
    route = find_route(places.kb, *row["route"]) if row.get("route") else None
    wrong = structure_problem(answer, places.kb, places, route) if answer else None
    return {"structure": float(wrong is None), "structure_problem": wrong,
            "fact": fact, "rouge_l": rouge_l(answer, ref), "bleu": bleu(answer, ref),
            "chrf": chrf(answer, ref),
            "lang_match": float(bool(answer) and prompt.language_of(answer, "") == row["lang"]),
            "stop": float(stopped), "invented": float(bool(invented)), "invented_names": invented}


# --- generators ---------------------------------------------------------------------------------------

class Generator(Protocol):
    name: str

    def __call__(self, prompt_text: str) -> tuple[str, bool]:
        """(answer text, ended its turn itself)"""


class LlamaCppGenerator:
    """The kiosk's own llama.cpp path (device.llm.LLM), greedy."""

    def __init__(self, model: str | Path, lora: str | Path | None = None, max_tokens: int = 160,
                 n_ctx: int = 2048, threads: int = 1):
        from campus_guide.config import LLMConfig
        from device.llm import LLM

        self.name = Path(model).name + (f" + {Path(lora).name}" if lora else "")
        cfg = LLMConfig(model=str(Path(model).resolve()), lora=str(Path(lora).resolve()) if lora else None,
                        n_ctx=n_ctx, n_threads=threads, max_tokens=max_tokens, temperature=0.0)
        self.llm = LLM(cfg, models_dir=Path(model).parent)

    def __call__(self, prompt_text: str) -> tuple[str, bool]:
        self.llm.reset()
        text = "".join(self.llm.stream(prompt_text))
        st = self.llm.last
        raw = self.llm.llama.detokenize(st.ids, special=True).decode("utf-8", "replace")
        return prompt.clean_answer(text), st.stopped == "stop" and prompt.START_OF_TURN not in raw

    def close(self) -> None:
        self.llm.close()


class HFGenerator:
    """transformers greedy generation (HF folder or GGUF, + optional PEFT adapter folder)."""

    def __init__(self, model: str | Path, adapter: str | Path | None = None, max_tokens: int = 160):
        import torch

        from training.merge import load_base, stop_ids

        self.name = Path(model).name + (f" + {Path(adapter).name}" if adapter else "")
        model_obj, tokenizer, _ = load_base(model, "float32")
        if adapter:
            from peft import PeftModel
            model_obj = PeftModel.from_pretrained(model_obj, adapter)
        self.model, self.tok, self.max_tokens = model_obj.eval(), tokenizer, max_tokens
        self.stops = stop_ids(tokenizer)
        self._torch = torch

    def __call__(self, prompt_text: str) -> tuple[str, bool]:
        ids = self.tok(prompt_text, return_tensors="pt", add_special_tokens=True)
        with self._torch.no_grad():
            out = self.model.generate(**ids, max_new_tokens=self.max_tokens, do_sample=False,
                                      eos_token_id=self.stops, pad_token_id=self.tok.pad_token_id)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        stopped = bool(new) and new[-1] in self.stops
        text = self.tok.decode(new, skip_special_tokens=False)
        return prompt.clean_answer(text), stopped

    def close(self) -> None:
        pass


# --- the evaluation -----------------------------------------------------------------------------------

@dataclass
class Report:
    model: str
    data: str
    examples: int
    seconds: float
    overall: dict
    by_split: dict
    by_type: dict
    by_language: dict
    rows: list

    def to_json(self) -> dict:
        return asdict(self)


def _mean(rows: list[dict]) -> dict:
    return {m: round(sum(r[m] for r in rows) / len(rows), 4) for m in METRICS} | {"n": len(rows)}


def _group(rows: list[dict], key: str) -> dict:
    groups = defaultdict(list)
    for r in rows:
        groups[r[key]].append(r)
    return {k: _mean(v) for k, v in sorted(groups.items())}


def evaluate(rows: Iterable[dict], generate: Generator | Callable, kb, data_name: str = "",
             limit: int | None = None, progress: bool = True) -> Report:
    from tqdm import tqdm

    rows = list(rows)[:limit] if limit else list(rows)
    if not rows:
        raise UserError(f"{data_name}: no examples to evaluate")
    places = PlaceDetector(kb)
    scored, t0 = [], time.time()
    for row in tqdm(rows, desc=f"eval {getattr(generate, 'name', '')}", disable=not progress):
        answer, stopped = generate(row["prompt"])
        s = score(row, answer, stopped, places)
        scored.append({"id": row["id"], "split": row.get("split", "test"), "type": row["type"],
                       "lang": row["lang"], "question": row["question"], "reference": row["answer"],
                       "answer": answer, **s})
    return Report(getattr(generate, "name", "model"), data_name, len(scored), round(time.time() - t0, 1),
                  _mean(scored), _group(scored, "split"), _group(scored, "type"),
                  _group(scored, "lang"), scored)


def write_report(report: Report, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.to_json(), ensure_ascii=False, indent=2), encoding="utf-8")
    return out


def plot_reports(reports: list[Report], png: Path) -> Path:
    """One group of bars per metric, one bar per model: the tuned-vs-base picture."""
    from training.plots import pyplot, save

    fig, ax = pyplot().subplots(figsize=(7.5, 3.5))
    width = 0.8 / len(reports)
    for i, rep in enumerate(reports):
        xs = [j + i * width for j in range(len(METRICS))]
        bars = ax.bar(xs, [rep.overall[m] for m in METRICS], width, label=rep.model)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks([j + width * (len(reports) - 1) / 2 for j in range(len(METRICS))], METRICS)
    ax.set_ylim(0, 1.1)
    ax.set_title(f"held-out: {reports[0].data} ({reports[0].examples} questions; invented: lower is better)",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    return save(fig, png)
