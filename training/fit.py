"""LoRA / QLoRA / full fine-tuning from one YAML file.

A plain loop on `accelerate` (nanoGPT-sized, no Trainer subclassing): the same code runs on the CPU
for the tiny test models, on one GPU, and under `accelerate launch` on several.

Two details matter more than any hyper-parameter:
- the loss covers only the answer tokens and the final `<end_of_turn>` (a masked end token is why
  the earlier fine-tunes never stopped talking);
- sequences are left-padded so every answer ends at the same position, and logits are computed
  only for the last answer-length positions (`logits_to_keep`): Gemma's 262k-way output layer is
  most of a CPU step otherwise (NOTES: 3.4 s vs 4.9 s per step on the 270M).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import yaml

from campus_guide import prompt
from campus_guide.cli import UserError
from campus_guide.config import ConfigError, _build

log = logging.getLogger(__name__)

METHODS = ("lora", "qlora", "full")
IGNORE = -100


@dataclass
class LoraOptions:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class TrainConfig:
    base: str = ""                  # HF model folder, or a .gguf file (dequantized on load)
    data: str = ""                  # folder with train.jsonl and val.jsonl (`train dataset`)
    out: str = "runs/campus"
    method: str = "lora"            # lora | qlora (bitsandbytes NF4) | full
    lora: LoraOptions = field(default_factory=LoraOptions)
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    epochs: float = 1.0
    max_steps: int = 0              # > 0 overrides epochs
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 256           # longer examples are dropped (never truncated), and counted
    eval_steps: int = 25
    eval_examples: int = 64         # a fixed subset of val.jsonl keeps each evaluation cheap
    save_steps: int = 0             # > 0: also keep step-N adapters (for accuracy-per-step curves)
    patience: int = 4               # evaluations without improvement before stopping
    min_delta: float = 0.0
    seed: int = 0
    dtype: str = "auto"             # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16
    gradient_checkpointing: bool = False
    threads: int = 0                # torch CPU threads; 0 = torch's default. On shared cores 1 is
                                    # faster: 8.8 s vs 23 s per 270M step measured with 2 threads
    source: str | None = None


_CHECKS = {
    "method": (f"one of {', '.join(METHODS)}", lambda c: c.method in METHODS),
    "lora.rank": ("at least 1", lambda c: c.lora.rank >= 1),
    "lora.alpha": ("at least 1", lambda c: c.lora.alpha >= 1),
    "lora.dropout": ("within 0..1", lambda c: 0 <= c.lora.dropout < 1),
    "lora.target_modules": ("a non-empty list of module names",
                            lambda c: bool(c.lora.target_modules)
                            and all(isinstance(m, str) for m in c.lora.target_modules)),
    "lr": ("within 0..1", lambda c: 0 < c.lr < 1),
    "epochs": ("positive", lambda c: c.epochs > 0),
    "max_steps": ("0 or more", lambda c: c.max_steps >= 0),
    "batch_size": ("at least 1", lambda c: c.batch_size >= 1),
    "grad_accum": ("at least 1", lambda c: c.grad_accum >= 1),
    "max_length": ("at least 16", lambda c: c.max_length >= 16),
    "eval_steps": ("at least 1", lambda c: c.eval_steps >= 1),
    "eval_examples": ("at least 1", lambda c: c.eval_examples >= 1),
    "patience": ("at least 1", lambda c: c.patience >= 1),
    "dtype": ("one of auto, float32, bfloat16", lambda c: c.dtype in ("auto", "float32", "bfloat16")),
    "threads": ("0 or more", lambda c: c.threads >= 0),
}


def load_train_config(path: str | Path, **overrides) -> TrainConfig:
    """Read and validate a training YAML; relative paths are taken from the file's folder."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: training config not found (examples: training/configs/*.yaml)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of training options")
    data.update({k: v for k, v in overrides.items() if v is not None})
    # campus_guide.config's validator knows scalars and mappings; the one list is checked here.
    modules = (data.get("lora") or {}).pop("target_modules", None) if isinstance(data.get("lora"), dict) else None
    cfg = _build(TrainConfig, data, "", str(p))
    if modules is not None:
        cfg.lora.target_modules = modules if isinstance(modules, list) else [modules]
    for key, (what, ok) in _CHECKS.items():
        if not ok(cfg):
            raise ConfigError(f"{p}: '{key}' must be {what}")
    for key in ("base", "data"):
        if not getattr(cfg, key):
            raise ConfigError(f"{p}: '{key}' is required")
    for key in ("base", "data", "out"):
        v = Path(getattr(cfg, key)).expanduser()
        setattr(cfg, key, str(v if v.is_absolute() else p.resolve().parent / v))
    if cfg.method == "qlora" and cfg.base.endswith(".gguf"):
        raise ConfigError(f"{p}: method 'qlora' needs a 16-bit HF model folder as base; a GGUF is "
                          "already quantized (use method: lora on it)")
    cfg.source = str(p)
    return cfg


DONE = "done.json"   # written last: a run without it was interrupted


def data_sha256(cfg: TrainConfig) -> str:
    """The training split's checksum: same options on another dataset is another run."""
    return hashlib.sha256((Path(cfg.data) / "train.jsonl").read_bytes()).hexdigest()


def config_hash(cfg: TrainConfig) -> str:
    """Of every option, with paths reduced to their last component so the hash is the same on
    another machine."""
    d = dataclasses.asdict(cfg)
    d.pop("source")
    d.update({k: Path(d[k]).name for k in ("base", "data", "out")})
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# --- data ---------------------------------------------------------------------------------------------

@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]               # IGNORE on the prompt, token ids on the answer + <end_of_turn>


def encode(tok, prompt_text: str, target: str) -> Example:
    """Prompt and target tokenized apart, exactly as at inference: the device tokenizes the prompt
    (one <bos> added) and the model continues it."""
    p = tok(prompt_text, add_special_tokens=True)["input_ids"]
    t = tok(target, add_special_tokens=False)["input_ids"]
    eot = tok.convert_tokens_to_ids(prompt.END_OF_TURN)
    if not t or t[-1] != eot:
        raise UserError(f"target {target[-40:]!r} does not end in {prompt.END_OF_TURN} "
                        "(render it with campus_guide.prompt.render_target)")
    if p.count(tok.bos_token_id) != 1:
        raise UserError(f"prompt tokenizes with {p.count(tok.bos_token_id)} <bos>; "
                        "render_prompt's text must not contain one")
    return Example(p + t, [IGNORE] * len(p) + t)


def load_examples(path: Path, tok, max_length: int) -> list[Example]:
    if not path.is_file():
        raise UserError(f"{path} not found; build the data with `campus-guide train dataset`")
    out, dropped = [], 0
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ex = encode(tok, row["prompt"], row["target"])
        except (json.JSONDecodeError, KeyError) as e:
            raise UserError(f"{path}:{i + 1}: not a dataset row ({e}); rows need 'prompt' and "
                            "'target'") from None
        if len(ex.input_ids) > max_length:
            dropped += 1
        else:
            out.append(ex)
    if dropped:
        log.warning("%s: %d examples longer than max_length=%d dropped", path, dropped, max_length)
    if not out:
        raise UserError(f"{path}: no usable examples (all longer than max_length={max_length}?)")
    return out


def collate(batch: list[Example], pad_id: int):
    """Left-pad to a common length: every answer then ends at the last position, so the answer
    span is the last `n_answer` positions for all rows."""
    import torch

    n = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), n), pad_id)
    labels = torch.full((len(batch), n), IGNORE)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for row, e in enumerate(batch):
        k = len(e.input_ids)
        ids[row, n - k:] = torch.tensor(e.input_ids)
        labels[row, n - k:] = torch.tensor(e.labels)
        mask[row, n - k:] = 1
    n_answer = max(sum(1 for x in e.labels if x != IGNORE) for e in batch)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "n_answer": n_answer}


def batches(data: list[Example], size: int, seed: int, pad_id: int) -> Iterator[dict]:
    """Endless shuffled batches, reshuffled each epoch with a seeded generator."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(data)))
        rng.shuffle(order)
        for i in range(0, max(1, len(order) - size + 1), size):   # full batches only
            yield collate([data[j] for j in order[i:i + size]], pad_id)


def answer_loss(model, batch) -> "torch.Tensor":
    """Cross-entropy on the answer tokens only, with logits for those positions only."""
    import torch.nn.functional as F

    mask = batch["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)       # positions as if unpadded, as at inference
    k = batch["n_answer"]
    logits = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=pos,
                   logits_to_keep=k + 1).logits[:, :-1]
    labels = batch["labels"][:, -k:]
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                           ignore_index=IGNORE)


# --- model --------------------------------------------------------------------------------------------

def load_model(cfg: TrainConfig, dtype):
    """(model, tokenizer, sp_bytes) with the method's trainable parameters set up."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from training.merge import load_base

    if cfg.method == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise UserError("method qlora needs bitsandbytes: pip install 'campus-guide[qlora]'") from None
        from peft import prepare_model_for_kbit_training
        from transformers import AutoTokenizer

        base = Path(cfg.base)
        model = AutoModelForCausalLM.from_pretrained(
            base, dtype=dtype, quantization_config=BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype))
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        tok = AutoTokenizer.from_pretrained(base)
        sp = (base / "tokenizer.model").read_bytes() if (base / "tokenizer.model").is_file() else None
    else:
        model, tok, sp = load_base(cfg.base, str(dtype).removeprefix("torch."))
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
    if cfg.method == "full":
        model.requires_grad_(True)
        return model, tok, sp
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in cfg.lora.target_modules if m not in names]
    if missing:
        raise UserError(f"lora.target_modules {missing} are not modules of this model "
                        f"(Gemma has q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)")
    model = get_peft_model(model, LoraConfig(
        r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules, bias="none", task_type="CAUSAL_LM"))
    return model, tok, sp


# --- the loop -----------------------------------------------------------------------------------------

@dataclass
class FitResult:
    out_dir: Path
    best_dir: Path
    best_step: int
    best_eval_loss: float
    first_eval_loss: float
    steps: int
    stopped_early: bool
    seconds: float
    log_file: Path
    plot_file: Path | None
    config_hash: str = ""
    train_sha256: str = ""            # of the train.jsonl it was trained on


def fit(cfg: TrainConfig, progress: bool = True) -> FitResult:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    acc = Accelerator(gradient_accumulation_steps=cfg.grad_accum)
    set_seed(cfg.seed)
    dtype = (torch.bfloat16 if acc.device.type == "cuda" else torch.float32) \
        if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
    model, tok, sp = load_model(cfg, dtype)
    data = Path(cfg.data)
    train = load_examples(data / "train.jsonl", tok, cfg.max_length)
    val = load_examples(data / "val.jsonl", tok, cfg.max_length)
    val = random.Random(cfg.seed).sample(val, min(cfg.eval_examples, len(val)))

    per_epoch = max(1, len(train) // (cfg.batch_size * cfg.grad_accum * acc.num_processes))
    total = cfg.max_steps or math.ceil(cfg.epochs * per_epoch)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    warm = max(1, cfg.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then linear decay to 0
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, 1 - s / total))
    # The schedule counts optimizer steps; accelerate's prepared scheduler would step once per
    # process, decaying the LR N times too fast under `accelerate launch` on N GPUs.
    model, opt = acc.prepare(model, opt)
    stream = batches(train, cfg.batch_size, cfg.seed + acc.process_index, tok.pad_token_id)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / DONE).unlink(missing_ok=True)      # until this run finishes, the folder holds no finished run
    for old in out.glob("step-*"):            # an earlier run's checkpoints would pose as this one's
        shutil.rmtree(old)
    log_file = out / "log.jsonl"
    log_file.write_text("")
    record = {"method": cfg.method, "base": cfg.base, "config_hash": config_hash(cfg),
              "seed": cfg.seed, "train_examples": len(train), "val_examples": len(val)}

    def evaluate() -> float:
        model.eval()
        losses = []
        with torch.no_grad():
            for i in range(0, len(val), cfg.batch_size):
                b = {k: v.to(acc.device) if hasattr(v, "to") else v
                     for k, v in collate(val[i:i + cfg.batch_size], tok.pad_token_id).items()}
                losses.append(acc.gather(answer_loss(model, b).reshape(1)).mean().item())
        model.train()
        return sum(losses) / len(losses)

    def save(dirname: str, extra: dict) -> Path:
        d = out / dirname
        if acc.is_main_process:
            acc.unwrap_model(model).save_pretrained(d)
            if cfg.method == "full":
                from training.merge import write_generation_config, write_tokenizer_files
                tok.save_pretrained(d)
                write_generation_config(d, tok)
                if sp is not None:
                    write_tokenizer_files(d, sp)
            (d / "campus_train.json").write_text(json.dumps({**record, **extra}, indent=2))
        acc.wait_for_everyone()
        return d

    def write(row: dict) -> None:
        if acc.is_main_process:
            with log_file.open("a") as f:
                f.write(json.dumps(row) + "\n")

    t0, c0 = time.time(), time.process_time()   # CPU time: what a training budget is spent in
    first = best = evaluate()
    best_step, bad, stopped = 0, 0, False
    write({"step": 0, "eval_loss": first, "elapsed_s": 0.0, "cpu_s": 0.0})
    best_dir = save("best", {"step": 0, "eval_loss": first})
    model.train()
    bar = tqdm(range(1, total + 1), desc=f"{cfg.method} fit", disable=not (progress and acc.is_main_process))
    for step in bar:
        for _ in range(cfg.grad_accum):
            batch = {k: v.to(acc.device) if hasattr(v, "to") else v for k, v in next(stream).items()}
            with acc.accumulate(model):
                loss = answer_loss(model, batch)
                acc.backward(loss)
                opt.step()
                opt.zero_grad()
        sched.step()
        row = {"step": step, "loss": loss.item(), "lr": sched.get_last_lr()[0],
               "elapsed_s": round(time.time() - t0, 2), "cpu_s": round(time.process_time() - c0, 2)}
        bar.set_postfix(loss=f"{row['loss']:.3f}", best=f"{best:.3f}")
        if step % cfg.eval_steps == 0 or step == total:
            row["eval_loss"] = ev = evaluate()
            if ev < best - cfg.min_delta:
                best, best_step, bad = ev, step, 0
                best_dir = save("best", {"step": step, "eval_loss": ev})
            else:
                bad += 1
        if cfg.save_steps and step % cfg.save_steps == 0:
            save(f"step-{step}", {"step": step})
        write(row)
        if bad >= cfg.patience:
            stopped = True
            log.info("early stop at step %d: eval loss has not improved for %d evaluations "
                     "(best %.4f at step %d)", step, bad, best, best_step)
            break
    bar.close()
    seconds = time.time() - t0
    plot = plot_log(log_file, out / "loss.png") if acc.is_main_process else None
    done = {"config_hash": config_hash(cfg), "steps": step, "stopped_early": stopped,
            "train_sha256": data_sha256(cfg)}
    if acc.is_main_process:
        (out / DONE).write_text(json.dumps(done))
    return FitResult(out, best_dir, best_step, best, first, step, stopped, seconds, log_file, plot,
                     done["config_hash"], done["train_sha256"])


def read_run(out_dir: str | Path) -> FitResult | None:
    """A finished run's result, read back from its files; None if it was interrupted or is not
    a run folder."""
    from training.merge import TRAIN_RECORD

    out = Path(out_dir)
    record, log_file, done = out / "best" / TRAIN_RECORD, out / "log.jsonl", out / DONE
    if not (record.is_file() and log_file.is_file() and done.is_file()):
        return None
    rec, fin = json.loads(record.read_text()), json.loads(done.read_text())
    rows = [json.loads(x) for x in log_file.read_text().splitlines() if x.strip()]
    evals = [x["eval_loss"] for x in rows if "eval_loss" in x]
    if len(evals) < 2:
        return None
    return FitResult(out, out / "best", rec["step"], rec["eval_loss"], evals[0], rows[-1]["step"],
                     fin.get("stopped_early", False), rows[-1]["elapsed_s"], log_file, out / "loss.png",
                     fin.get("config_hash", ""), fin.get("train_sha256", ""))


def finished_run(cfg: TrainConfig) -> FitResult | None:
    """The result of a run that finished with the same config on the same training data, so that
    a recipe that failed after training (conversion, evaluation) resumes without training again,
    while a knowledge-base edit, a config change or an interrupted run trains afresh."""
    r = read_run(cfg.out)
    ok = r is not None and (r.config_hash, r.train_sha256) == (config_hash(cfg), data_sha256(cfg))
    return r if ok else None


def plot_log(log_file: Path, png: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in log_file.read_text().splitlines() if x.strip()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    tr = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    ev = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if tr:
        ax.plot(*zip(*tr), label="train (answer tokens)", alpha=0.6)
    ax.plot(*zip(*ev), "o-", label="eval")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(log_file.parent.name)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
