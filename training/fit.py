"""`train fit`: LoRA / QLoRA / full fine-tuning from one YAML file, the loop.

A plain loop on `accelerate` (nanoGPT-sized, no Trainer subclassing): the same code runs on the CPU
for the tiny test models, on one GPU, and under `accelerate launch` on several. What it trains on
and what the loss covers is in `training.loss`, the model per method in `training.models`, the
run folder it writes in `training.runs`.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path

from training.config import TrainConfig, config_hash, data_sha256
from training.loss import answer_loss, batches, collate, load_examples
from training.models import load_model, save_checkpoint, torch_dtype
from training.plots import plot_log
from training import runs
from training.runs import TRAIN_RECORD, FitResult

log = logging.getLogger(__name__)


def fit(cfg: TrainConfig, progress: bool = True) -> FitResult:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    acc = Accelerator(gradient_accumulation_steps=cfg.grad_accum)
    set_seed(cfg.seed)
    model, tok, sp = load_model(cfg, torch_dtype(cfg.dtype, acc.device.type))
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
    log_file = runs.start(out)
    record = {"method": cfg.method, "base": cfg.base, "config_hash": config_hash(cfg),
              "seed": cfg.seed, "train_examples": len(train), "val_examples": len(val)}

    def to_device(batch: dict) -> dict:
        return {k: v.to(acc.device) if hasattr(v, "to") else v for k, v in batch.items()}

    def evaluate() -> float:
        model.eval()
        losses = []
        with torch.no_grad():
            for i in range(0, len(val), cfg.batch_size):
                b = to_device(collate(val[i:i + cfg.batch_size], tok.pad_token_id))
                losses.append(acc.gather(answer_loss(model, b).reshape(1)).mean().item())
        model.train()
        return sum(losses) / len(losses)

    def save(dirname: str, extra: dict) -> Path:
        d = out / dirname
        if acc.is_main_process:
            save_checkpoint(acc.unwrap_model(model), tok, sp, cfg.method, d)
            (d / TRAIN_RECORD).write_text(json.dumps({**record, **extra}, indent=2))
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
            batch = to_device(next(stream))
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
        runs.mark_done(out, done)
    return FitResult(out, best_dir, best_step, best, first, step, stopped, seconds, log_file, plot,
                     done["config_hash"], done["train_sha256"])
