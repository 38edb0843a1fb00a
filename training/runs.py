"""A run folder, what `train fit` leaves in it, and how a recipe finds a finished one again.

    OUT/log.jsonl           one row per step (loss, lr, elapsed_s, cpu_s; eval_loss when evaluated)
    OUT/best/               the best adapter (or full model) by eval loss, with TRAIN_RECORD
    OUT/step-N/             with save_steps > 0: every N steps, with TRAIN_RECORD
    OUT/loss.png
    OUT/done.json           written last: a run without it was interrupted

A recipe that failed after training (conversion, evaluation) resumes without training again,
while a knowledge-base edit, a config change or an interrupted run trains afresh.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from training.config import TrainConfig, config_hash, data_sha256

TRAIN_RECORD = "campus_train.json"   # beside every saved adapter: method, config hash, seed, step, eval loss
DONE = "done.json"
LOG = "log.jsonl"


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


def start(out: Path) -> Path:
    """Make `out` ready for a new run; returns its empty log file."""
    out.mkdir(parents=True, exist_ok=True)
    (out / DONE).unlink(missing_ok=True)      # until this run finishes, the folder holds no finished run
    for old in out.glob("step-*"):            # an earlier run's checkpoints would pose as this one's
        shutil.rmtree(old)
    log_file = out / LOG
    log_file.write_text("")
    return log_file


def mark_done(out: Path, done: dict) -> None:
    (out / DONE).write_text(json.dumps(done))


def read_log(log_file: Path) -> list[dict]:
    return [json.loads(x) for x in Path(log_file).read_text().splitlines() if x.strip()]


def read_run(out_dir: str | Path) -> FitResult | None:
    """A finished run's result, read back from its files; None if it was interrupted or is not
    a run folder."""
    out = Path(out_dir)
    record, log_file, done = out / "best" / TRAIN_RECORD, out / LOG, out / DONE
    if not (record.is_file() and log_file.is_file() and done.is_file()):
        return None
    rec, fin = json.loads(record.read_text()), json.loads(done.read_text())
    rows = read_log(log_file)
    evals = [x["eval_loss"] for x in rows if "eval_loss" in x]
    if len(evals) < 2:
        return None
    return FitResult(out, out / "best", rec["step"], rec["eval_loss"], evals[0], rows[-1]["step"],
                     fin.get("stopped_early", False), rows[-1]["elapsed_s"], log_file, out / "loss.png",
                     fin.get("config_hash", ""), fin.get("train_sha256", ""))


def finished_run(cfg: TrainConfig) -> FitResult | None:
    """The result of a run that finished with the same config on the same training data."""
    r = read_run(cfg.out)
    ok = r is not None and (r.config_hash, r.train_sha256) == (config_hash(cfg), data_sha256(cfg))
    return r if ok else None
