"""Quantize a 16-bit GGUF with llama.cpp's quantizer, and measure what each quant costs.

The ancestor picked a quant by looking at three screenshots. Here every candidate is measured
against the 16-bit model on the same held-out prompts (rendered with the one chat format):
- KL divergence and top-1 agreement of the next-token distributions, teacher-forced over
  prompt + reference answer (how far the quant drifts, before sampling hides it);
- fact accuracy of its greedy answers (what a visitor notices);
- decode tokens/s on this machine, file size, and the memory the board needs (weights + KV cache).
The recommendation is the smallest file whose KL and fact-accuracy loss stay under stated limits.
"""
from __future__ import annotations

import ctypes
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from campus_guide import prompt
from campus_guide.knowledge.answers import has_fact
from export import ExportError
from export.gguf import GGUFInfo, read_gguf
from export.llamacpp import check_installed_version

log = logging.getLogger(__name__)

DEFAULT_TYPES = ("Q8_0", "Q4_K_M", "Q4_K_S", "Q4_0")
K_QUANT_ROW = 256   # K-quants need rows that are multiples of this, else llama.cpp falls back


def ftype(name: str) -> int:
    """A llama.cpp file type by name (Q4_K_M, q8_0, IQ4_XS, ...), from its LLAMA_FTYPE_ enum."""
    import llama_cpp

    key = name.upper()
    for prefix in ("LLAMA_FTYPE_MOSTLY_", "LLAMA_FTYPE_ALL_"):
        if hasattr(llama_cpp, prefix + key):
            return int(getattr(llama_cpp, prefix + key))
    known = sorted(n.removeprefix("LLAMA_FTYPE_MOSTLY_") for n in dir(llama_cpp) if n.startswith("LLAMA_FTYPE_MOSTLY_"))
    raise ExportError(f"unknown quant type {name!r}; llama.cpp knows: {', '.join(known)}")


def quantize(src: str | Path, out: str | Path, qtype: str, nthread: int = 0) -> Path:
    """One quantized copy of `src` (a 16/32-bit GGUF) of llama.cpp type `qtype`."""
    import llama_cpp

    check_installed_version()
    src, out = Path(src), Path(out)
    info = read_gguf(src)
    if info.file_type not in ("F16", "BF16", "ALL_F32", "F32"):
        raise ExportError(f"{src} is already {info.file_type}; quantize from the 16-bit GGUF "
                          f"(`campus-guide export gguf`), re-quantizing loses more")
    if "_K" in qtype.upper() and info.embedding_length % K_QUANT_ROW:
        log.warning("%s: hidden size %d is not a multiple of %d; llama.cpp falls back to other types "
                    "for %s", src, info.embedding_length, K_QUANT_ROW, qtype)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype(qtype)
    params.nthread = nthread
    out.parent.mkdir(parents=True, exist_ok=True)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0 or not out.is_file():
        raise ExportError(f"llama.cpp could not quantize {src} to {qtype} (code {rc}); see its log above")
    return out


# --- evaluation prompts -------------------------------------------------------------------------------

@dataclass
class EvalItem:
    """One held-out prompt, its reference answer and the facts a correct answer must state."""
    prompt: str
    reference: str
    expect: tuple[str, ...] = ()


def _numbers(text: str) -> tuple[str, ...]:
    """Building numbers, minutes and metres: the facts a drifting quant gets wrong first."""
    return tuple(dict.fromkeys(re.findall(r"\d+", text)))


def load_eval_items(path: str | Path) -> list[EvalItem]:
    """JSONL, one item a line: either `prompt` (already rendered) or `question` [+ `facts`,
    `lang`], then `answer` (or `reference`), and optional `expect` (strings a correct answer
    contains; default: the numbers in the answer, or the whole fixed "don't know" answer).
    The training dataset's test.jsonl fits as is."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: evaluation prompts not found (JSONL, one item a line)")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            text = d.get("prompt") or prompt.render_prompt(d["question"], d.get("facts", ()), lang=d.get("lang"))
            ref = d.get("answer", d.get("reference"))
            if not isinstance(ref, str):
                raise KeyError("answer")
        except (json.JSONDecodeError, KeyError, ValueError) as e:
            raise ExportError(f"{path}:{n}: need 'prompt' or 'question', and 'answer' ({e})") from None
        fixed = ref in (*prompt.UNKNOWN.values(), *prompt.REDIRECT.values())   # must be said as taught
        items.append(EvalItem(text, ref, tuple(d.get("expect") or ((ref,) if fixed else _numbers(ref)))))
    if not items:
        raise ExportError(f"{path}: no evaluation items")
    return items


def default_eval_items(kb_path: str | Path | None = None, here: str | None = None) -> list[EvalItem]:
    """Questions about every building of the (sample) campus in both languages, answered by the
    deterministic grounded composer: the answers the fine-tune was taught to give."""
    from campus_guide.config import SAMPLE_KB, DialogueConfig
    from campus_guide.knowledge import Retriever, compose_answer, load_kb

    kb = load_kb(kb_path or SAMPLE_KB)
    retriever = Retriever(kb, here=here or DialogueConfig().kiosk_location)
    questions = {"en": "Where is {}?", "ko": "{} 어디에 있어요?"}
    items = []
    for b in kb.buildings:
        for lang, q in questions.items():
            question = q.format(kb.name(b.id, lang))
            r = retriever.retrieve(question)
            answer = compose_answer(r)
            # the name and the building number (the first number of the answer) must be right
            items.append(EvalItem(prompt.render_prompt(question, r.facts(), lang=lang), answer,
                                  (kb.name(b.id, lang),) + _numbers(answer)[:1]))
    return items


def fact_correct(answer: str, expect: tuple[str, ...]) -> bool:
    return all(has_fact(answer, e) for e in expect)


# --- measuring ----------------------------------------------------------------------------------------

@dataclass
class QuantResult:
    name: str                      # F16, Q8_0, ...
    path: str
    size: int
    kl: float                      # mean KL(16-bit || quant) per answer token, nats
    top1: float                    # share of answer positions with the same argmax
    fact_accuracy: float
    tok_s: float                   # decode tokens/s on the machine that measured
    memory_bytes: int              # weights + KV cache at n_ctx
    tensor_types: dict[str, int] = field(default_factory=dict)


@dataclass
class Report:
    reference: str
    n_ctx: int
    n_items: int
    max_kl: float
    max_fact_drop: float
    results: list[QuantResult]
    recommended: str
    why: str

    def table(self) -> list[list[str]]:
        rows = [["quant", "size MB", "KL", "top-1", "fact acc", "tok/s", f"board MB @{self.n_ctx}", ""]]
        for r in self.results:
            rows.append([r.name, f"{r.size / 1e6:.1f}", f"{r.kl:.4f}", f"{r.top1:.3f}",
                         f"{r.fact_accuracy:.3f}", f"{r.tok_s:.1f}", f"{r.memory_bytes / 1e6:.0f}",
                         "<- recommended" if r.name == self.recommended else ""])
        return rows

    def text(self) -> str:
        rows = self.table()
        w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows]
        return "\n".join(lines) + f"\n{self.why}"

    def markdown(self) -> str:
        rows = self.table()
        out = ["| " + " | ".join(rows[0][:-1]) + " |", "|" + "---|" * (len(rows[0]) - 1)]
        out += ["| " + " | ".join([f"**{r[0]}**" if r[-1] else r[0]] + r[1:-1]) + " |" for r in rows[1:]]
        return "\n".join(out) + (f"\n\n{self.n_items} held-out prompts, teacher-forced KL against "
                                 f"{Path(self.reference).name}. {self.why}\n")


class _Model:
    """One GGUF loaded for measuring through the kiosk's own LLM class: all-position logits, and
    greedy answers generated exactly as the kiosk generates them."""

    def __init__(self, path: Path, n_ctx: int, n_threads: int | None, max_tokens: int = 64):
        from campus_guide.config import LLMConfig
        from device.llm import LLM

        cfg = LLMConfig(model=str(path.resolve()), lora=None, n_ctx=n_ctx, n_threads=n_threads or 0,
                        max_tokens=max_tokens)
        self.llm = LLM(cfg, path.parent, logits_all=True)
        self.decode_s = self.tokens_out = 0.0

    def tokens(self, item: EvalItem) -> tuple[list[int], int]:
        """Prompt + reference answer (with its end-of-turn), and where the answer starts."""
        p = self.llm.tokenize(item.prompt)
        return p + self.llm.tokenize(prompt.render_target(item.reference), bos=False), len(p)

    def log_probs(self, ids: list[int], start: int) -> np.ndarray:
        return self.llm.log_probs(ids, start)

    def answer(self, item: EvalItem) -> str:
        # the prompt is still in the KV cache from `log_probs`: llama.cpp reuses the common
        # prefix, so only the answer is decoded
        text = "".join(self.llm.stream(item.prompt))
        self.decode_s += self.llm.last.decode_s
        self.tokens_out += max(self.llm.last.tokens - 1, 0)
        return prompt.clean_answer(text)

    def close(self):
        self.llm.close()


def measure(reference: str | Path, quants: dict[str, Path], items: list[EvalItem], n_ctx: int = 2048,
            max_tokens: int = 64, max_kl: float = 0.1, max_fact_drop: float = 0.03,
            n_threads: int | None = None) -> Report:
    """Every quant against the 16-bit `reference` on `items`; see the module docstring."""
    from tqdm import tqdm

    reference = Path(reference)
    ref_info = read_gguf(reference)
    infos: dict[str, GGUFInfo] = {ref_info.file_type: ref_info, **{n: read_gguf(p) for n, p in quants.items()}}
    probe = _Model(reference, 256, n_threads)
    lengths = [len(probe.tokens(it)[0]) for it in items]
    probe.close()
    eval_ctx = max(lengths) + max_tokens + 8
    models = {name: _Model(Path(info.path), eval_ctx, n_threads, max_tokens) for name, info in infos.items()}
    kl = {n: [] for n in models}
    agree = {n: [] for n in models}
    correct = {n: 0 for n in models}
    try:
        for item in tqdm(items, desc="measuring quants", unit="prompt"):
            ids, start = models[ref_info.file_type].tokens(item)
            ref_lp = models[ref_info.file_type].log_probs(ids, start)
            for name, m in models.items():
                lp = ref_lp if name == ref_info.file_type else m.log_probs(ids, start)
                kl[name].extend((np.exp(ref_lp) * (ref_lp - lp)).sum(axis=-1))
                agree[name].extend(ref_lp.argmax(-1) == lp.argmax(-1))
                correct[name] += fact_correct(m.answer(item), item.expect)
        results = [QuantResult(
            name=name, path=infos[name].path, size=infos[name].size,
            kl=float(np.mean(kl[name])), top1=float(np.mean(agree[name])),
            fact_accuracy=correct[name] / len(items),
            tok_s=m.tokens_out / m.decode_s if m.decode_s else 0.0,
            memory_bytes=infos[name].memory_bytes(n_ctx), tensor_types=infos[name].tensor_types,
        ) for name, m in models.items()]
    finally:
        for m in models.values():
            m.close()
    results.sort(key=lambda r: -r.size)
    best, why = recommend(results, ref_info.file_type, max_kl, max_fact_drop)
    return Report(str(reference), n_ctx, len(items), max_kl, max_fact_drop, results, best, why)


def recommend(results: list[QuantResult], reference: str, max_kl: float, max_fact_drop: float) -> tuple[str, str]:
    """The smallest quant with KL <= max_kl and fact accuracy within max_fact_drop of the 16-bit."""
    ref = next(r for r in results if r.name == reference)
    ok = [r for r in results if r.name != reference and r.kl <= max_kl
          and ref.fact_accuracy - r.fact_accuracy <= max_fact_drop]
    rule = f"rule: smallest with KL <= {max_kl} and fact accuracy at most {max_fact_drop:.0%} below {reference}"
    if ok:
        best = min(ok, key=lambda r: r.size)
        return best.name, f"Recommended {best.name} ({rule})."
    return reference, f"No quant met the limits ({rule}); keep {reference} or train/measure more."


def plot(report: Report, out: str | Path) -> Path:
    """Size against KL and fact accuracy: the trade-off at a glance."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = report.results
    size = [r.size / 1e6 for r in rs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.scatter(size, [r.kl for r in rs])
    a.axhline(report.max_kl, ls="--", c="gray", lw=1, label=f"KL limit {report.max_kl}")
    a.set(xlabel="file size (MB)", ylabel="mean KL vs 16-bit (nats)", title="drift")
    b.scatter(size, [r.fact_accuracy for r in rs], c="tab:green")
    b.set(xlabel="file size (MB)", ylabel="fact accuracy", title="answers", ylim=(-0.05, 1.05))
    for ax, ys in ((a, [r.kl for r in rs]), (b, [r.fact_accuracy for r in rs])):
        for r, x, y in zip(rs, size, ys):
            ax.annotate(r.name + (" *" if r.name == report.recommended else ""), (x, y),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
    a.legend(fontsize=8)
    fig.suptitle(f"{Path(report.reference).name}: {report.n_items} prompts, * = recommended")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def run(src: str | Path, types: list[str], out_dir: str | Path, items: list[EvalItem], n_ctx: int,
        **measure_options) -> Report:
    """Quantize `src` to each type into `out_dir`, measure (options as for `measure`), and write
    quant_report.{json,md,png}."""
    from tqdm import tqdm

    src, out_dir = Path(src), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = src.stem.removesuffix("-f16").removesuffix("-bf16").removesuffix("-f32")
    quants = {}
    for t in tqdm(types, desc="quantizing", unit="type"):
        t0 = time.perf_counter()
        quants[t.upper()] = quantize(src, out_dir / f"{stem}-{t.upper()}.gguf", t)
        log.info("%s in %.1f s", t.upper(), time.perf_counter() - t0)
    report = measure(src, quants, items, n_ctx=n_ctx, **measure_options)
    (out_dir / "quant_report.json").write_text(json.dumps(asdict(report), indent=2), encoding="utf-8")
    (out_dir / "quant_report.md").write_text(report.markdown(), encoding="utf-8")
    plot(report, out_dir / "quant_report.png")
    return report
