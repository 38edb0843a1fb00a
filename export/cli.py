"""`campus-guide export gguf | quantize | bundle` and `campus-guide flash`.

Heavy imports (torch via the converter, llama.cpp) happen inside the handlers."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path


def _gguf(args) -> int:
    from .gguf import convert, describe

    path, info = convert(args.merged_dir, args.out, args.outtype)
    print(describe(info))
    print(f"checks passed; next: campus-guide export quantize {path} --out {Path(args.out) / 'quant'}")
    return 0


def _quantize(args) -> int:
    from campus_guide.config import load_config

    from .quantize import DEFAULT_TYPES, default_eval_items, load_eval_items, run

    cfg = load_config(args.config)
    items = (load_eval_items(args.eval) if args.eval
             else default_eval_items(cfg.kb, cfg.dialogue.kiosk_location))
    if args.limit:
        items = items[:args.limit]
    types = [t.strip() for t in (args.types or ",".join(DEFAULT_TYPES)).split(",") if t.strip()]
    report = run(args.f16, types, args.out, items, n_ctx=args.n_ctx or cfg.llm.n_ctx,
                 max_kl=args.max_kl, max_fact_drop=args.max_fact_drop, n_threads=args.threads,
                 max_tokens=args.max_tokens)
    print(report.text())
    print(f"table: {args.out}/quant_report.md, figures: {args.out}/quant_report.json, "
          f"plot: {args.out}/quant_report.png")
    return 0


def _bundle(args) -> int:
    from campus_guide.config import load_config

    from .bundle import make_bundle

    m = make_bundle(args.gguf, args.out, eval_report=args.eval_report, train_config=args.train_config,
                    base_model=args.base_model, n_ctx=args.n_ctx or load_config(args.config).llm.n_ctx,
                    asr=args.asr, asr_report=args.asr_report)
    print(json.dumps(asdict(m), indent=2, ensure_ascii=False))
    print(f"bundle {m.name} in {args.out}; next: campus-guide flash {args.out} --host user@board")
    return 0


def _flash(args) -> int:
    from .flash import FlashOptions, flash, rollback, table

    opts = FlashOptions(root=args.root, venv=args.venv, config=args.board_config, port=args.port,
                        identity=args.identity, ssh_options=args.ssh_option or [], keep=args.keep,
                        health_timeout_s=args.health_timeout)
    for name in ("question", "budget_cmd", "smoke_cmd", "asr_smoke_cmd", "stop_cmd", "restart_cmd", "health_cmd"):
        if getattr(args, name):
            setattr(opts, name, getattr(args, name))
    if args.rollback:
        if args.bundle:
            print("campus-guide: --rollback takes no BUNDLE_DIR", file=sys.stderr)
            return 2
        results = rollback(args.host or [], opts)
    else:
        if not args.bundle:
            print("campus-guide: give BUNDLE_DIR (or --rollback)", file=sys.stderr)
            return 2
        results = flash(args.bundle, args.host or [], opts)
    print(table(results))
    return 0 if all(r.ok for r in results) else 1


def register(sub) -> None:
    from .flash import FlashOptions

    ex = sub.add_parser("export", help="merged model -> GGUF -> quantized + measured -> bundle")
    esub = ex.add_subparsers(dest="export_command", required=True, metavar="ACTION")

    g = esub.add_parser("gguf", help="convert a merged HF model to GGUF and check its metadata")
    g.add_argument("merged_dir", metavar="MERGED_DIR")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--outtype", default="f16", choices=("f16", "bf16", "f32"))
    g.set_defaults(func=_gguf)

    q = esub.add_parser("quantize", help="quantize and measure each type against the 16-bit GGUF")
    q.add_argument("f16", metavar="F16.gguf")
    q.add_argument("--types", help="comma-separated llama.cpp types (default Q8_0,Q4_K_M,Q4_K_S,Q4_0)")
    q.add_argument("--out", required=True, help="output folder (GGUFs, quant_report.{json,md,png})")
    q.add_argument("--eval", metavar="PROMPTS", help="held-out JSONL (default: questions about every "
                   "building of the configured campus)")
    q.add_argument("--limit", type=int, help="use only the first N prompts")
    q.add_argument("--n-ctx", type=int, help="context for the memory estimate (default llm.n_ctx)")
    q.add_argument("--max-tokens", type=int, default=64, help="greedy answer length")
    q.add_argument("--max-kl", type=float, default=0.1, help="recommendation limit on mean KL (nats)")
    q.add_argument("--max-fact-drop", type=float, default=0.03,
                   help="recommendation limit on fact-accuracy loss vs 16-bit")
    q.add_argument("--threads", type=int, default=1,
                   help="llama.cpp threads (1 keeps timings stable on a shared machine)")
    q.set_defaults(func=_quantize)

    b = esub.add_parser("bundle", help="model.gguf (+ a Whisper in asr/) + manifest.json for the board")
    b.add_argument("gguf", metavar="GGUF")
    b.add_argument("--out", required=True, help="new bundle folder")
    b.add_argument("--eval-report", help="quant_report.json from `export quantize`")
    b.add_argument("--train-config", help="training YAML (its sha256 goes into the manifest)")
    b.add_argument("--base-model", help="base model name (default: the GGUF's general.name)")
    b.add_argument("--n-ctx", type=int, help="context for the memory estimate (default llm.n_ctx)")
    b.add_argument("--asr", metavar="CT2_DIR", help="a CTranslate2 Whisper to ship with the LLM (the ct2/ "
                   "folder of `train asr`); the board then transcribes with it instead of asr.model")
    b.add_argument("--asr-report", metavar="REPORT", help="asr_report.json of that `train asr` run (CER figures)")
    b.set_defaults(func=_bundle)

    d = FlashOptions()
    f = sub.add_parser("flash", help="put a bundle on boards over SSH (verify, smoke test, switch, rollback)")
    f.add_argument("bundle", metavar="BUNDLE_DIR", nargs="?")
    f.add_argument("--host", action="append", metavar="USER@BOARD", help="repeat for several boards")
    f.add_argument("--rollback", action="store_true", help="go back to the previously active bundle")
    f.add_argument("--port", type=int)
    f.add_argument("--identity", help="ssh private key")
    f.add_argument("--ssh-option", action="append", metavar="KEY=VALUE", help="extra ssh -o option")
    f.add_argument("--root", default=d.root, help=f"board folder (default {d.root})")
    f.add_argument("--venv", default=d.venv, help=f"board venv (default {d.venv})")
    f.add_argument("--board-config", default=d.config, help=f"board config (default {d.config})")
    f.add_argument("--keep", type=int, default=d.keep, help=f"bundles kept on the board (default {d.keep})")
    f.add_argument("--question", help=f"smoke-test question (default {d.question!r})")
    f.add_argument("--budget-cmd", help=f"default: {d.budget_cmd}")
    f.add_argument("--smoke-cmd", help=f"default: {d.smoke_cmd}")
    f.add_argument("--asr-smoke-cmd", help=f"for a bundle with its own Whisper; default: {d.asr_smoke_cmd}")
    f.add_argument("--stop-cmd", help=f"run before the budget check and smoke test; default: {d.stop_cmd}")
    f.add_argument("--restart-cmd", help=f"default: {d.restart_cmd}")
    f.add_argument("--health-cmd", help=f"default: {d.health_cmd}")
    f.add_argument("--health-timeout", type=float, default=d.health_timeout_s, help="seconds")
    f.set_defaults(func=_flash)
