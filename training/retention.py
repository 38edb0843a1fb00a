"""`campus-guide train eval --retention`: what a campus fine-tune cost the model outside the campus.

Seed 002's lesson, measured. On general Korean and English text that is not campus text
(training/data/retention.yaml) and on a handful of general questions answered greedily:

  base                      the unquantized base (for a GGUF base: the GGUF dequantized, which is
                            what training saw); computed in float32 throughout
  campus, 16-bit merge      the adapter merged onto those weights (`train merge`, then export)
  base, 4-bit               the base's linear weights through NF4 (bitsandbytes, as QLoRA loads them)
  campus, 4-bit merge       the adapter merged onto the NF4 base, the sum stored in NF4 again:
                            what merging into a 4-bit model does (the ancestor's mistake)

and, through llama.cpp, what the kiosk itself runs: the GGUF alone and the GGUF with the adapter
applied at load. The adapter is a PEFT folder or a llama.cpp adapter GGUF (the shipped
campus-lora.gguf), read back into torch with gguf-py's own tensor-name table.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from campus_guide import prompt
from campus_guide.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_SET = Path(__file__).parent / "data" / "retention.yaml"
MAX_NEW_TOKENS = 48


@dataclass
class Question:
    lang: str
    q: str
    expect: list[str]


@dataclass
class RetentionSet:
    text: dict[str, list[str]]          # language -> paragraphs
    questions: list[Question]
    campus: list[tuple[str, str]] = field(default_factory=list)   # held-out (prompt, answer) pairs


CAMPUS = "campus"                       # the perplexity of held-out campus answers, beside the languages
CAMPUS_EXAMPLES = 24


def campus_pairs(kb_path: str | Path | None = None, data: str | Path | None = None,
                 n: int = CAMPUS_EXAMPLES) -> list[tuple[str, str]]:
    """`n` held-out (prompt, answer) pairs: from a `train dataset` test split (`data`), else
    built from the knowledge base (seed 0, the split the shipped adapter never trained on; ~1 min):
    the in-campus skill, for contrast."""
    from training.dataset import read_jsonl

    if data is not None:
        if not Path(data).is_file():
            raise UserError(f"--data {data} not found; build it with `campus-guide train dataset`")
        try:
            pairs = [(e["prompt"], e["target"]) for e in read_jsonl(data)]
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"--data {data}: not a split from `campus-guide train dataset` ({e})") from None
        if not pairs:
            raise UserError(f"--data {data} holds no examples")
        return pairs[:n]
    from campus_guide.config import Config
    from campus_guide.knowledge import load_kb
    from training.dataset import Builder, DatasetOptions

    splits = Builder(load_kb(kb_path), Config(), DatasetOptions()).build()
    held = [e for name, xs in sorted(splits.items()) if name.startswith("test") for e in xs]
    return [(e.prompt, e.target) for e in held[:n]]


def load_retention_set(path: str | Path = DEFAULT_SET) -> RetentionSet:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"retention set {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UserError(f"retention set {path} is not valid YAML: {e}") from None
    bad = f"retention set {path}: {{}} (see {DEFAULT_SET.name} for the layout)"
    if not isinstance(data, dict) or not isinstance(data.get("text"), dict) or not data["text"]:
        raise UserError(bad.format("needs `text:` with a list of paragraphs per language"))
    for lang, paras in data["text"].items():
        if not isinstance(paras, list) or not paras or not all(isinstance(x, str) and x.strip() for x in paras):
            raise UserError(bad.format(f"text.{lang} must be a non-empty list of paragraphs"))
    try:
        questions = [Question(str(q["lang"]), str(q["q"]), [str(x) for x in q["expect"]])
                     for q in data.get("questions") or []]
    except (TypeError, KeyError) as e:
        raise UserError(bad.format(f"each question needs lang, q and expect ({e})")) from None
    for q in questions:
        inside = [e for e in q.expect if e.casefold() in q.q.casefold()]
        if not q.expect or inside:
            raise UserError(bad.format(f"question {q.q!r}: expect words must be given and must not "
                                       f"occur in the question itself ({inside})"))
    return RetentionSet({k: list(v) for k, v in data["text"].items()}, questions)


@dataclass
class Row:
    name: str
    backend: str                        # torch | llama.cpp
    ppl: dict[str, float]               # language -> perplexity on the general text
    tokens: dict[str, int]
    answers: list[str] = field(default_factory=list)
    correct: int = 0


# --- the adapter as weight deltas -------------------------------------------------------------------

def adapter_deltas(adapter: str | Path, model) -> dict[str, "torch.Tensor"]:  # noqa: F821
    """Module name -> delta W (out x in, float32) of a PEFT adapter folder or an adapter GGUF."""
    adapter = Path(adapter)
    if adapter.suffix == ".gguf":
        return _gguf_deltas(adapter, model)
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"--lora {adapter}: neither an adapter .gguf nor a PEFT folder (no adapter_config.json)")
    import copy

    from peft import PeftModel

    peft = PeftModel.from_pretrained(copy.deepcopy(model), adapter)
    deltas = {}
    for name, mod in peft.named_modules():
        if hasattr(mod, "get_delta_weight") and "default" in getattr(mod, "lora_A", {}):
            deltas[name.removeprefix("base_model.model.")] = mod.get_delta_weight("default").float()
    return deltas


def _gguf_deltas(path: Path, model) -> dict[str, "torch.Tensor"]:  # noqa: F821
    import gguf
    import numpy as np
    import torch

    r = gguf.GGUFReader(str(path))

    def field_value(key):
        f = r.fields.get(key)
        return None if f is None else f.parts[f.data[0]]

    if field_value("adapter.type") is None or bytes(field_value("adapter.type")).decode() != "lora":
        raise UserError(f"--lora {path}: not a LoRA adapter GGUF (no adapter.type = lora)")
    arch = bytes(field_value("general.architecture")).decode()
    alpha = float(field_value("adapter.lora.alpha")[0])
    tensors = {t.name: np.asarray(t.data, dtype=np.float32) for t in r.tensors}
    n_layers = model.config.num_hidden_layers
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_layers)
    deltas = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        g = names.get_name(name + ".weight", try_suffixes=(".weight",))
        if g is None or f"{g}.lora_a" not in tensors:
            continue
        a, b = tensors.pop(f"{g}.lora_a"), tensors.pop(f"{g}.lora_b")   # (r, in), (out, r)
        d = torch.from_numpy(b @ a) * (alpha / a.shape[0])
        if tuple(d.shape) != tuple(mod.weight.shape):
            raise UserError(f"--lora {path}: {g} is {tuple(d.shape)} but the base's {name} is "
                            f"{tuple(mod.weight.shape)}: the adapter was made for another base model")
        deltas[name] = d
    left = sorted({k.rsplit(".", 2)[0] for k in tensors if k.endswith((".lora_a", ".lora_b"))})
    if left or not deltas:
        raise UserError(f"--lora {path}: {len(left)} adapter tensors match no layer of the base "
                        f"({', '.join(left[:3])} ...): the adapter was made for another base model")
    return deltas


# --- measuring one model -------------------------------------------------------------------------------

def _contains(answer: str, q: Question) -> bool:
    """An expected word in the answer, not counting an echo of the question (a base model that
    only repeats "일주일은 며칠인가요?" has not answered it)."""
    a = answer.replace(q.q, " ").casefold()
    return any(e.casefold() in a for e in q.expect)


def _row(name: str, backend: str, nll, answer, data: RetentionSet) -> Row:
    """One model's row. `nll(head, tail)`: (summed negative log-likelihood, tokens) of `tail`
    after `head` ("" = just <bos>); `answer(text)`: its greedy answer to a rendered prompt."""
    ppl, tokens = {}, {}
    groups = {lang: [("", t) for t in paras] for lang, paras in data.text.items()}
    if data.campus:
        groups[CAMPUS] = list(data.campus)
    for key, pairs in groups.items():
        sums = [nll(head, tail) for head, tail in pairs]
        total, n = sum(x for x, _ in sums), sum(k for _, k in sums)
        ppl[key], tokens[key] = math.exp(total / n), n
    answers = [answer(prompt.render_plain(q.q)) for q in data.questions]
    return Row(name, backend, ppl, tokens, answers, sum(_contains(a, q) for a, q in zip(answers, data.questions)))


def _torch_row(name: str, model, tok, data: RetentionSet) -> Row:
    import torch

    eos = [i for i in (tok.convert_tokens_to_ids(prompt.END_OF_TURN), tok.eos_token_id) if i is not None]

    def nll(head: str, tail: str) -> tuple[float, int]:
        h = tok(head, return_tensors="pt").input_ids                          # <bos> first
        t = tok(tail, return_tensors="pt", add_special_tokens=False).input_ids
        logits = model(torch.cat([h, t], dim=1)).logits[0, h.shape[1] - 1:-1].float()
        return torch.nn.functional.cross_entropy(logits, t[0], reduction="sum").item(), t.shape[1]

    def answer(text: str) -> str:
        ids = tok(text, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, eos_token_id=eos,
                             pad_token_id=eos[-1])
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    with torch.inference_mode():
        return _row(name, "torch", nll, answer, data)


def _llamacpp_row(name: str, gguf_path: Path, lora: Path | None, data: RetentionSet, threads: int) -> Row:
    import numpy as np

    from campus_guide.config import LLMConfig
    from device.llm import LLM

    llm = LLM(LLMConfig(model=str(gguf_path), lora=str(lora) if lora else None, n_ctx=1024,
                        max_tokens=MAX_NEW_TOKENS, n_threads=threads, n_threads_batch=threads),
              gguf_path.parent, logits_all=True)

    def nll(head: str, tail: str) -> tuple[float, int]:
        h, t = llm.tokenize(head), llm.tokenize(tail, bos=False)
        lp = llm.log_probs(h + t, len(h))
        return -float(lp[np.arange(len(t)), t].sum()), len(t)

    try:
        return _row(name, "llama.cpp", nll, lambda text: "".join(llm.stream(text)).strip(), data)
    finally:
        llm.close()


# --- the comparison ------------------------------------------------------------------------------------

@dataclass
class RetentionReport:
    base: str
    adapter: str
    text_set: str
    questions: list[str]
    rows: list[Row]

    def table(self) -> str:
        langs = list(self.rows[0].ppl)
        ref = self.rows[0]
        w = max(len(r.name) for r in self.rows)
        head = f"{'model':{w}s} {'backend':9s} " + " ".join(f"{'ppl ' + l:>10s} {'vs base':>8s}" for l in langs) \
            + f" {'general Qs':>10s}"
        lines = [head]
        for r in self.rows:
            cells = " ".join(f"{r.ppl[l]:10.2f} {100 * (r.ppl[l] / ref.ppl[l] - 1):+7.1f}%" for l in langs)
            lines.append(f"{r.name:{w}s} {r.backend:9s} {cells} {r.correct:>7d}/{len(self.questions)}")
        return "\n".join(lines)


def _restore(model, saved: dict) -> None:
    for name, w in saved.items():
        model.get_submodule(name).weight.data.copy_(w)


def retention(base: str | Path, adapter: str | Path, data_path: str | Path = DEFAULT_SET,
              threads: int | None = None, llamacpp: bool = True,
              campus: list[tuple[str, str]] = ()) -> RetentionReport:
    """`campus`: held-out (prompt, answer) pairs whose perplexity is reported beside the general
    text's (`campus_pairs`)."""
    import os

    import torch

    from training.merge import load_base, nf4_round_trip

    base, adapter = Path(base), Path(adapter)
    if not adapter.exists():
        raise UserError(f"--lora {adapter} not found (a PEFT folder from `train fit`, or an adapter .gguf)")
    data = load_retention_set(data_path)
    data.campus = list(campus)
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("the 4-bit rows need bitsandbytes: pip install 'campus-guide[qlora]'") from None

    model, tok, _ = load_base(base, "float32")
    model.eval()
    deltas = adapter_deltas(adapter, model)
    log.info("retention: %d adapted layers", len(deltas))
    saved = {n: model.get_submodule(n).weight.data.clone() for n in deltas}

    def merge_into():
        for n, d in deltas.items():
            model.get_submodule(n).weight.data += d

    from tqdm import tqdm

    steps = ["base", "campus, 16-bit merge", "base, 4-bit (NF4)", "campus, 4-bit merge (ancestor)"]
    use_cpp = llamacpp and base.suffix == ".gguf" and adapter.suffix == ".gguf"
    bar = tqdm(total=len(steps) + 2 * use_cpp, desc="retention", unit="model")
    rows = []

    def measure(name):
        bar.set_postfix_str(name)
        rows.append(_torch_row(name, model, tok, data))
        bar.update()

    measure(steps[0])
    merge_into()
    measure(steps[1])
    _restore(model, saved)
    nf4_round_trip(model)
    measure(steps[2])
    merge_into()
    nf4_round_trip(model)                      # what a merge into 4-bit weights stores
    measure(steps[3])
    del model
    if use_cpp:
        for name, lora in ((f"kiosk: {base.name}", None), (f"kiosk: {base.name} + adapter (as shipped)", adapter)):
            bar.set_postfix_str(name)
            rows.append(_llamacpp_row(name, base, lora, data, threads))
            bar.update()
    bar.close()
    return RetentionReport(str(base.name), str(adapter.name), str(Path(data_path).name),
                           [q.q for q in data.questions], rows)


def write_report(report: RetentionReport, out: str | Path) -> Path:
    """JSON, a Markdown table and a plot (perplexity per model and language) side by side."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(asdict(report), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text("```\n" + report.table() + "\n```\n", encoding="utf-8")
    _plot(report, out.with_suffix(".png"))
    return out


def _plot(report: RetentionReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    langs = list(report.rows[0].ppl)
    x = np.arange(len(report.rows))
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / len(langs)
    for i, lang in enumerate(langs):
        label = "held-out campus answers" if lang == CAMPUS else f"general {lang} text"
        ax.bar(x + i * width, [r.ppl[lang] for r in report.rows], width, label=label)
    ax.set_xticks(x + width * (len(langs) - 1) / 2,
                  [r.name.replace(" (", "\n(").replace(", ", ",\n", 1) for r in report.rows], fontsize=7)
    ax.set_ylabel("perplexity (lower is better, log scale)")
    ax.set_yscale("log")
    ax.set_title(f"What the campus fine-tune cost outside the campus: {report.adapter} on {report.base}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
