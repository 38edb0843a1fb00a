"""`campus-guide train ...`: dataset, fit, eval, merge, and `default` (the campus-tuned model
shipped in campus_guide/data/). Heavy imports stay inside the handlers."""
from __future__ import annotations

import sys
from pathlib import Path

from campus_guide.errors import UserError
from campus_guide.config import PACKAGED_ADAPTER, SAMPLE_KB, load_config
from training.steps import DEFAULT_TRAIN_CONFIG


def register(sub) -> None:
    p = sub.add_parser("train", help="dataset / fit / eval / merge / default (the campus-tuned model) / asr (Whisper)")
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

    e = t.add_parser("eval", help="greedy answers on a held-out split: ROUGE-L, chrF, BLEU, facts, ...; "
                                  "--retention: what the fine-tune cost outside the campus")
    e.add_argument("--model", help="GGUF file (llama.cpp) or HF folder (transformers); with --retention "
                   "the 16-bit base (default: the config's llm.model)")
    e.add_argument("--lora", help="adapter: a .gguf (llama.cpp) or a PEFT folder (transformers); with "
                   "--retention default: the config's adapter (the shipped campus-lora.gguf)")
    e.add_argument("--data", help="test.jsonl from `train dataset`; with --retention, the held-out campus "
                   "answers (default: built from the knowledge base)")
    e.add_argument("--retention", action="store_true",
                   help="perplexity on general ko/en text and general questions: base, 16-bit merge, "
                        "4-bit base, 4-bit merge (the ancestor's), and the kiosk's GGUF with and without the adapter")
    e.add_argument("--retention-set", metavar="YAML", help="general text and questions "
                   "(default: training/data/retention.yaml)")
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

    a = t.add_parser("asr", help="fine-tune Whisper (LoRA / full) on a corpus + campus names; CER before/after; "
                                 "merged -> CTranslate2 -> checked in faster-whisper")
    a.add_argument("--config", dest="train_config", required=True, metavar="YAML",
                   help="ASR training config (example: training/configs/asr-whisper.yaml)")
    a.add_argument("--max-steps", type=int, help="override max_steps")
    a.add_argument("--out", help="override out")
    a.set_defaults(func=cmd_asr)

    g = t.add_parser("default", help=f"rebuild campus_guide/data/{PACKAGED_ADAPTER.name}: dataset, LoRA on "
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
    p.add_argument("--train-config", default=str(DEFAULT_TRAIN_CONFIG))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, help="override the config's max_steps")
    p.add_argument("--test-per-intent", type=int, default=2, help="held-out questions per intent and language")
    p.add_argument("--eval-limit", type=int, help="evaluate on the first N held-out questions only")
    p.add_argument("--max-tokens", type=int, default=96, help="answer token limit in the evaluation")


def _cfg(args):
    return load_config(getattr(args, "config", None))


def _recipe(args, cfg) -> dict:
    """The options both recipes take, from `_recipe_options`."""
    return dict(work=Path(args.work), train_config=Path(args.train_config), kb=Path(cfg.kb), seed=args.seed,
                max_steps=args.max_steps, test_per_intent=args.test_per_intent, eval_limit=args.eval_limit,
                max_tokens=args.max_tokens)


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
    from training.config import load_train_config
    from training.fit import fit

    out = str(Path(args.out).resolve()) if args.out else None   # from here, not from the YAML's folder
    cfg = load_train_config(args.train_config, max_steps=args.max_steps, out=out)
    r = fit(cfg)
    print(f"best eval loss {r.best_eval_loss:.4f} at step {r.best_step} (from {r.first_eval_loss:.4f}), "
          f"{r.steps} steps in {r.seconds / 60:.1f} min{' (early stop)' if r.stopped_early else ''}")
    print(f"best checkpoint: {r.best_dir}\nloss log: {r.log_file}\nloss plot: {r.plot_file}")
    return 0


def cmd_asr(args) -> int:
    from training.asr import REPORT, train_asr
    from training.asr_config import load_asr_config

    out = str(Path(args.out).resolve()) if args.out else None   # from here, not from the YAML's folder
    cfg = load_asr_config(args.train_config, max_steps=args.max_steps, out=out)
    r = train_asr(cfg, _cfg(args))
    rep, fmt = r.report, lambda v: "-" if v is None else f"{v:.3f}"   # noqa: E731
    print(f"{rep['clips']['train']} training / {rep['clips']['val']} validation clips "
          f"({rep['clips']['val_sentences']} held-out sentences); best step {r.best_step} of {r.steps}"
          f"{' (early stop)' if r.stopped_early else ''}")
    print(f"{'':32s}{'CER':>8s}{'WER':>8s}")
    for name, key in (("before", "before"), ("after (merged, HF)", "after"),
                      (f"after ({cfg.quantization}, faster-whisper)", "ct2")):
        print(f"{name:32s}{fmt(rep[key]['cer']):>8s}{fmt(rep[key]['wer']):>8s}")
    print(f"CTranslate2 model for the kiosk (asr.model): {r.ct2_dir}\nreport: {r.out_dir / REPORT}")
    if not rep["ct2_within_tolerance"]:
        print(f"conversion changed CER by {rep['ct2_cer_delta']:+.4f} (tolerance {cfg.ct2_tolerance}): "
              "do not ship this conversion", file=sys.stderr)
        return 1
    return 0


def cmd_eval(args) -> int:
    if args.retention:
        return _retention(args)
    from campus_guide.knowledge import load_kb
    from training.dataset import read_jsonl
    from training.evaluate import plot_reports, write_report
    from training.steps import evaluate_model

    if not args.model or not args.data:
        raise UserError("train eval needs --model and --data (or --retention)")
    if not Path(args.data).is_file():
        raise UserError(f"{args.data} not found; build it with `campus-guide train dataset`")
    kb = load_kb(args.kb or _cfg(args).kb)
    rep = evaluate_model(read_jsonl(args.data), args.model, args.lora, kb, args.data, args.max_tokens,
                         args.backend, args.limit)
    out = write_report(rep, Path(args.out))
    plot_reports([rep], out.with_suffix(".png"))
    _print_table([rep])
    print(f"report: {out}")
    return 0


def _retention(args) -> int:
    from campus_guide.config import resolve_adapter, resolve_model
    from training import retention as ret

    cfg = _cfg(args)
    base = Path(args.model) if args.model else resolve_model(cfg.llm.model, cfg.models_dir)
    lora = Path(args.lora) if args.lora else resolve_adapter(cfg.llm.lora, cfg.models_dir)
    if lora is None:
        raise UserError("no adapter to measure: give --lora (the config's llm.lora is null)")
    campus = ret.campus_pairs(args.kb or cfg.kb, args.data)
    report = ret.retention(base, lora, args.retention_set or ret.DEFAULT_SET, campus=campus)
    out = ret.write_report(report, Path(args.out if args.out != "eval.json" else "retention.json"))
    print(report.table())
    print(f"report: {out}, table: {out.with_suffix('.md')}, plot: {out.with_suffix('.png')}")
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
    from training.steps import base_gguf

    if args.every < 1 or not 0 < args.target <= 1:
        raise UserError("--every must be at least 1 and --target within (0, 1]")
    cfg = _cfg(args)
    base = Path(args.base) if args.base and Path(args.base).is_dir() else base_gguf(args.base)
    compare(CompareOptions(base=base.resolve(), every=args.every, target=args.target, **_recipe(args, cfg)), cfg)
    report = Path(args.work) / "compare.md"
    print(report.read_text(encoding="utf-8") + f"\nreport: {report} (+ .json, .png)")
    return 0


def cmd_default(args) -> int:
    """The campus-tuned default model, end to end and seeded."""
    from training.default import DefaultOptions, default
    from training.steps import base_gguf

    cfg = _cfg(args)
    argv = sys.argv[sys.argv.index("default") + 1:] if "default" in sys.argv else []
    r = default(DefaultOptions(base=base_gguf(args.base).resolve(), run=args.run, install=not args.no_install,
                               command=" ".join(["campus-guide train default", *argv]), **_recipe(args, cfg)),
                cfg)
    _print_table(r.reports)
    if r.installed:
        print(f"installed {r.installed} ({r.adapter_bytes / 2**20:.1f} MiB) and its provenance "
              f"{r.record.name}")
    return 0
