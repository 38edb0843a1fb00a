"""Training's plots: a run's loss curve (`loss.png` beside its log.jsonl), and the two helpers
every plot here starts and ends with (a headless backend; save and close)."""
from __future__ import annotations

from pathlib import Path

from training.runs import read_log


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (no display on a build machine)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, png: Path) -> Path:
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    pyplot().close(fig)
    return png


def plot_log(log_file: Path, png: Path) -> Path:
    rows = read_log(log_file)
    fig, ax = pyplot().subplots(figsize=(6, 3.5))
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
    return save(fig, png)
