"""Grounded vs memorised: is it cheaper to teach the guide to answer from the facts retrieval puts
in its prompt, or to teach it the campus by heart?

One recipe, two variants that differ in one thing only. Both datasets come from the same knowledge
base and seed, so they hold the same questions, answers and held-out split; the grounded prompts
carry the facts the kiosk's retrieval finds (as on the device), the memorised ones none. Both are
trained with the same config, an adapter saved every `every` steps and no early stopping. Each
checkpoint then answers the same held-out questions greedily, and its fact accuracy is set against
the CPU minutes training had spent to reach it: the curve, and the minutes to `target`.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from campus_guide.errors import UserError
from campus_guide.config import Config
from training import steps
from training.steps import RecipeOptions

log = logging.getLogger(__name__)

VARIANTS = ("grounded", "memorised")


@dataclass
class CompareOptions(RecipeOptions):
    """`work` holds one folder per variant: data/, run/, gguf/, eval/."""
    every: int = 50                  # checkpoint (and evaluation) interval in steps
    target: float = 0.95             # fact accuracy whose cost is reported


@dataclass
class Point:
    step: int
    cpu_minutes: float               # training CPU time up to this step (the process, all threads)
    wall_minutes: float
    fact: float
    fact_by_split: dict[str, float]
    fact_by_type: dict[str, float]
    stop: float


@dataclass
class Curve:
    variant: str
    points: list[Point] = field(default_factory=list)

    def first_reaching(self, target: float, split: str | None = None) -> Point | None:
        fact = (lambda p: p.fact) if split is None else (lambda p: p.fact_by_split.get(split, 0.0))
        return next((p for p in self.points if fact(p) >= target), None)

    def best(self) -> Point:
        return max(self.points, key=lambda p: (p.fact, -p.step))


def compare(opts: CompareOptions, cfg: Config | None = None) -> list[Curve]:
    """Train and evaluate both variants (resuming whatever an earlier call finished); writes
    compare.json, compare.md and compare.png into `opts.work` after each variant."""
    from campus_guide.knowledge import load_kb
    from training.dataset import read_jsonl
    from training.fit import fit
    from training.runs import finished_run

    cfg = cfg or Config()
    kb = load_kb(opts.kb)
    work = Path(opts.work)
    tests: dict[str, list[dict]] = {}
    for variant in VARIANTS:        # both datasets first: a mismatch is found before an hour of training
        data = work / variant / "data"
        steps.dataset(opts, kb, data, cfg, f"{variant}:", memorised=variant == "memorised")
        tests[variant] = list(read_jsonl(data / "test.jsonl"))[:opts.eval_limit]
    _check_same_questions(tests)

    curves: list[Curve] = []
    for variant in VARIANTS:
        root = work / variant
        tcfg = opts.train_config_for(root / "data", root / "run", save_steps=opts.every, eval_steps=opts.every,
                                     patience=10**9)   # the whole curve: no early stop
        if finished_run(tcfg):
            log.info("%s: reusing the finished run in %s", variant, tcfg.out)
        else:
            log.info("%s: %s fine-tune, %s steps, checkpoint every %d", variant, tcfg.method,
                     tcfg.max_steps or "config", opts.every)
            for old in ("run", "gguf", "eval"):     # an older run's checkpoints, conversions and scores
                shutil.rmtree(root / old, ignore_errors=True)
            fit(tcfg)
        curves.append(_curve(variant, root, tests[variant], opts, kb))
        write_outputs(curves, opts, tcfg, len(tests[variant]))
    return curves


def _check_same_questions(tests: dict[str, list[dict]]) -> None:
    """The comparison is only fair on the same held-out questions."""
    qs = {v: [(r["question"], r["expect"]) for r in rows] for v, rows in tests.items()}
    if len({json.dumps(q, ensure_ascii=False) for q in qs.values()}) > 1:
        raise UserError("the grounded and memorised held-out splits differ; rebuild both datasets "
                        "with the same knowledge base and seed (delete WORK/*/data)")


def _checkpoints(run: Path) -> list[tuple[int, Path | None]]:
    """(step, adapter folder) for the untuned base (step 0) and every saved step."""
    saved = sorted(int(p.name.removeprefix("step-")) for p in run.glob("step-*")
                   if p.name.removeprefix("step-").isdigit())
    return [(0, None)] + [(s, run / f"step-{s}") for s in saved]


def _adapter(opts: CompareOptions, root: Path, step: int, adapter: Path | None) -> Path | None:
    """What the evaluation loads on top of the base: for a GGUF base the checkpoint converted to
    GGUF (once), for an HF base the PEFT folder itself."""
    if adapter is None or Path(opts.base).suffix != ".gguf":
        return adapter
    lora = root / "gguf" / f"step-{step}.gguf"
    if not lora.is_file():
        steps.adapter_to_gguf(adapter, Path(opts.base), lora, root / "gguf" / "base-config")
    return lora


def _curve(variant: str, root: Path, rows: list[dict], opts: CompareOptions, kb) -> Curve:
    from training.evaluate import Report, write_report
    from training.runs import LOG, read_log

    run = root / "run"
    log_rows = {r["step"]: r for r in read_log(run / LOG)}
    curve = Curve(variant)
    for step, adapter in _checkpoints(run):
        out = root / "eval" / f"step-{step}.json"
        rep = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else None
        if rep is None or rep["examples"] != len(rows):      # not scored yet, or on another --eval-limit
            r: Report = steps.evaluate_model(rows, opts.base, _adapter(opts, root, step, adapter), kb,
                                             f"{variant} test.jsonl", opts.max_tokens)
            r.model = f"{variant} step {step}"
            write_report(r, out)
            rep = r.to_json()
        row = log_rows.get(step, {})
        curve.points.append(Point(
            step, round(row.get("cpu_s", row.get("elapsed_s", 0.0)) / 60, 2),
            round(row.get("elapsed_s", 0.0) / 60, 2), rep["overall"]["fact"],
            {k: v["fact"] for k, v in rep["by_split"].items()},
            {k: v["fact"] for k, v in rep["by_type"].items()}, rep["overall"]["stop"]))
        log.info("%s step %d: fact %.3f after %.1f CPU min", variant, step, curve.points[-1].fact,
                 curve.points[-1].cpu_minutes)
    return curve


# --- outputs ------------------------------------------------------------------------------------------

def summary(curve: Curve, target: float) -> dict:
    """Where the curve first reaches the target, overall and on each held-out split (paraphrases
    of trained questions and never-trained question templates tell different stories)."""
    at = lambda p: {"step": p.step, "cpu_minutes": p.cpu_minutes} if p else None  # noqa: E731
    best = curve.best()
    splits = sorted({k for p in curve.points for k in p.fact_by_split})
    return {"reached": at(curve.first_reaching(target)),
            "reached_by_split": {s: at(curve.first_reaching(target, s)) for s in splits},
            "best": {"step": best.step, "fact": best.fact, "cpu_minutes": best.cpu_minutes},
            "trained_cpu_minutes": curve.points[-1].cpu_minutes}


def write_outputs(curves: list[Curve], opts: CompareOptions, tcfg, n: int) -> None:
    from training.config import config_hash

    work = Path(opts.work)
    report = {
        "target": opts.target, "train_config": Path(opts.train_config).name,
        "config_hash": config_hash(tcfg), "base": Path(opts.base).name, "seed": opts.seed,
        "held_out_questions": n,
        "variants": {c.variant: {"summary": summary(c, opts.target),
                                 "points": [asdict(p) for p in c.points]} for c in curves},
    }
    (work / "compare.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    (work / "compare.md").write_text(markdown(curves, opts.target, n),
                                     encoding="utf-8")
    plot(curves, opts.target, work / "compare.png")


def markdown(curves: list[Curve], target: float, n: int) -> str:
    splits = sorted({k for c in curves for p in c.points for k in p.fact_by_split})
    lines = [f"Fact accuracy on the same {n} held-out questions, by training step and the CPU minutes "
             f"spent to reach it (by split: {', '.join(splits)}).", "",
             "| step | " + " | ".join(f"{c.variant} CPU min | {c.variant} fact | by split" for c in curves) + " |",
             "|---|" + "---|---|---|" * len(curves)]
    steps = sorted({p.step for c in curves for p in c.points})
    for s in steps:
        cells = []
        for c in curves:
            p = next((p for p in c.points if p.step == s), None)
            cells += ([f"{p.cpu_minutes:.1f}", f"{p.fact:.2f}",
                       " / ".join(f"{p.fact_by_split.get(k, 0):.2f}" for k in splits)] if p else ["", "", ""])
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines.append("")
    for c in curves:
        s = summary(c, target)
        if s["reached"]:
            lines.append(f"- **{c.variant}**: {target:.0%} at step {s['reached']['step']}, after "
                         f"{s['reached']['cpu_minutes']:.1f} CPU minutes.")
        else:
            lines.append(f"- **{c.variant}**: {target:.0%} not reached in {s['trained_cpu_minutes']:.1f} "
                         f"CPU minutes; best {s['best']['fact']:.2f} at step {s['best']['step']}.")
        for split, hit in s["reached_by_split"].items():
            lines.append(f"  - {split}: " + (f"{target:.0%} at step {hit['step']}, after {hit['cpu_minutes']:.1f} "
                                             "CPU minutes" if hit else "not reached"))
    return "\n".join(lines) + "\n"


def plot(curves: list[Curve], target: float, png: Path) -> Path:
    from training.plots import pyplot, save

    fig, ax = pyplot().subplots(figsize=(6.5, 3.8))
    for c in curves:
        x = [p.cpu_minutes for p in c.points]
        line, = ax.plot(x, [p.fact for p in c.points], "o-", label=f"{c.variant}: all held-out")
        if any("test_paraphrase" in p.fact_by_split for p in c.points):
            ax.plot(x, [p.fact_by_split.get("test_paraphrase", 0) for p in c.points], ":", color=line.get_color(),
                    label=f"{c.variant}: held-out paraphrases")
        for p in c.points:
            ax.annotate(str(p.step), (p.cpu_minutes, p.fact), fontsize=6, xytext=(2, 3),
                        textcoords="offset points")
    ax.axhline(target, ls="--", color="grey", lw=1, label=f"target {target:.0%}")
    ax.set_xlabel("training CPU minutes (labels: step)")
    ax.set_ylabel("held-out fact accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title("grounded vs memorised training", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return save(fig, png)
