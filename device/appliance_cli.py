"""`campus-guide run | status | budget | soak`: the appliance's commands (systemd runs `run`)."""
from __future__ import annotations

import json
import logging
import shutil
import sys
import subprocess
from pathlib import Path

from campus_guide.errors import UserError
from campus_guide.config import PACKAGE_DATA, load_config

UNIT = "campus-guide"


def _run(args) -> int:
    from .service import run_service

    return run_service(load_config(args.config))


def _systemd_state() -> str | None:
    """`systemctl is-active` of the kiosk unit, or None where there is no systemd."""
    if shutil.which("systemctl") is None:
        return None
    try:
        out = subprocess.run(["systemctl", "is-active", UNIT], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    state = out.stdout.strip()
    # systemctl without a running systemd (a container) says nothing useful.
    return state if state and state != "offline" and "System has not been booted" not in out.stderr else None


def _status(args) -> int:
    from .service import read_status

    cfg = load_config(args.config)
    status = read_status(cfg.runtime.state_dir)
    unit = _systemd_state()
    alive = bool(status) and Path(f"/proc/{status['pid']}").exists()
    up = unit == "active" if unit is not None else alive
    # Ready: serving visitors. With systemd, "active" already means READY=1 from the current
    # process; the file's state guards against a stale one from before a restart.
    ready = up and bool(status) and status.get("state") == "ready"
    if args.json:
        print(json.dumps({"ready": ready, "up": up, "systemd": unit, "status": status},
                         indent=2, ensure_ascii=False))
        return 0 if ready else 3
    starting = unit == "activating" or (unit is None and alive and status.get("state") == "starting")
    waiting = up and status.get("state") == "waiting"
    label = ("READY" if ready else "STARTING (loading models)" if starting
             else "WAITING for a microphone" if waiting else "UP, not ready" if up else "DOWN")
    print(f"kiosk:      {label}" + (f" (systemd: {unit})" if unit else ""))
    if status is None:
        print(f"status:     no {Path(cfg.runtime.state_dir) / 'status.json'} yet: the kiosk has not "
              f"run with this config (runtime.state_dir)")
        return 3
    model = status.get("model") or {}
    manifest = model.get("manifest") or {}
    last = status.get("last_turn") or {}
    error = status.get("last_error")
    print(f"state:      {status['state']} since {status['since']} (pid {status['pid']})")
    if status.get("waiting_for"):
        print(f"waiting:    {status['waiting_for']}")
    print(f"model:      {model.get('resolved') or model.get('path')}")
    print(f"sha256:     {model.get('sha256') or 'not recorded'}")
    if model.get("asr"):
        asr = model["asr"]
        print(f"asr:        {asr['path']}" + (f" (the bundle's own, sha256 {asr['sha256'][:12]}...)"
                                              if asr.get("from_bundle") else ""))
    if manifest:
        print("manifest:   " + ", ".join(f"{k}={v}" for k, v in manifest.items()
                                          if isinstance(v, (str, int, float)))[:300])
    print(f"turns:      {status['turns']}")
    if last:
        timings = "  ".join(f"{k} {v:.2f}s" for k, v in last.get("timings", {}).items())
        print(f"last turn:  {last['at']} [{last.get('kind')}, {last.get('language')}]  {timings}")
    print(f"memory:     {status['rss_mb']:.0f} MiB resident, peak {status['peak_rss_mb']:.0f} MiB "
          f"(at {status['updated']})")
    print("last error: " + (f"{error['at']} {error['type']}: {error['message']}" if error else "none"))
    return 0 if ready else 3


def _budget(args) -> int:
    from .budget import LONG_RUN, plan_for_config, production_plans

    cfg = load_config(args.config)
    plans = production_plans(cfg.budget.total_gb) if args.production else [plan_for_config(cfg)]
    measured = _measure(cfg, Path(args.measure)) if args.measure else None
    if args.json:
        out = [p.to_dict() for p in plans]
        if measured is not None:
            out[0]["measured_peak_rss_mib"] = round(measured, 1)
            out[0]["one_turn_plan_mib"] = round((plans[0].total_bytes - LONG_RUN) / 2**20, 1)
        print(json.dumps(out if args.production else out[0], indent=2))
    else:
        print("\n\n".join(p.table() for p in plans))
        if measured is not None:
            planned = (plans[0].total_bytes - LONG_RUN) / 2**20
            print(f"measured:   peak RSS {measured:.1f} MiB after loading every model, answering "
                  f"{args.measure} and speaking a {cfg.dialogue.max_sentence_chars}-character "
                  f"sentence: plan without the long-run row / measured = {planned / measured:.2f} "
                  f"(the long-run row is what a day adds; `campus-guide soak` measures it)")
    over = [p for p in plans if p.over]
    for p in over:
        print(f"campus-guide: over budget: {p.title or 'the plan'} needs {p.total_gb:.2f} GiB of "
              f"{p.budget_gb:.2f} GiB; use a smaller model or llm.n_ctx, or raise budget.total_gb",
              file=sys.stderr)
    return 1 if over else 0


def _measure(cfg, wav: Path) -> float:
    """Peak RSS (MiB) of this process after loading the real pipeline, answering `wav` and
    speaking the longest sentence the kiosk may say (dialogue.max_sentence_chars): piper's
    arena grows with it and the plan budgets for it, while a tuned model's answers are short.
    On the Jetson, CUDA allocations are not in RSS: compare the CPU-only parts there."""
    import tempfile

    from .audio import read_wav
    from .budget import peak_rss_mb
    from .pipeline import Pipeline
    from .tts import longest_sentence

    if not wav.is_file():
        raise UserError(f"{wav}: no such WAV file (give a spoken question, e.g. "
                        f"{PACKAGE_DATA / 'question_en.wav'})")
    with tempfile.TemporaryDirectory() as state:
        cfg.runtime.state_dir = state     # a measurement is not a visitor's turn: no turn log
        pipeline = Pipeline(cfg)
        try:
            pipeline.ask_audio(read_wav(wav))
            for _ in pipeline.tts.synthesize(longest_sentence(cfg.dialogue.max_sentence_chars), "en"):
                pass
        finally:
            pipeline.close()
    return peak_rss_mb()


def _soak(args) -> int:
    from .soak import FAULTS, format_report, run_soak

    faults: bool | list[str] = args.faults
    if args.only:
        unknown = sorted(set(args.only) - set(FAULTS))
        if unknown:
            raise UserError(f"--fault {', '.join(unknown)}: unknown; choose from {', '.join(FAULTS)}")
        faults = args.only
    report = run_soak(load_config(args.config), args.turns, args.out, faults=faults, seed=args.seed,
                      speed=args.speed, hung_turn_s=args.hung_turn, watchdog_s=args.watchdog)
    print(format_report(report))
    print(f"wrote {args.out}")
    return 0 if report["ok"] else 1


def register(sub) -> None:
    run = sub.add_parser("run", help="the kiosk under systemd (Type=notify, watchdog, status file)",
                         description="Checks the memory budget, loads every model, tells systemd "
                                     "it is ready and listens until SIGTERM.")
    run.set_defaults(func=_run)

    status = sub.add_parser("status", help="is the kiosk up; model, turns, memory, last error",
                            description="Reads runtime.state_dir/status.json (no network port) and "
                                        "asks systemd. Exit 0 when the kiosk is ready, 3 when not.")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(func=_status)

    budget = sub.add_parser("budget", help="memory plan from the model files; non-zero if over",
                            description="Plans memory from the actual model files and config; "
                                        "exits 1 above budget.total_gb.")
    budget.add_argument("--json", action="store_true", help="print JSON")
    what = budget.add_mutually_exclusive_group()
    what.add_argument("--production", action="store_true",
                      help="the plan for the Jetson target (Gemma-2 2B Q4_K_M) from known shapes")
    what.add_argument("--measure", metavar="WAV", nargs="?", const=str(PACKAGE_DATA / "question_en.wav"),
                      help="also load the real pipeline, answer WAV (default: the bundled "
                           "question) and compare the plan with the measured peak RSS")
    budget.set_defaults(func=_budget)

    soak = sub.add_parser("soak", help="many visitors and injected faults through the real kiosk; "
                                       "JSON report",
                          description="The real kiosk (run's service loop, `listen`, the real "
                                      "models) fed by a simulated microphone: a seeded, shuffled "
                                      "mix of spoken questions, silence, noise, coughs, a 60-s "
                                      "monologue, clipped, quiet, 8 kHz and stereo audio. With "
                                      "--faults every fault kind is injected at least once. Exit "
                                      "1 when a question was lost, a fault not recovered from or "
                                      "the watchdog missed outside an injected hang.")
    soak.add_argument("--turns", type=int, default=200, metavar="N", help="clips to play (default 200)")
    soak.add_argument("--faults", action="store_true", help="inject every fault kind at random turns")
    soak.add_argument("--fault", dest="only", action="append", metavar="KIND",
                      help="inject only this fault kind (repeatable)")
    soak.add_argument("--seed", type=int, default=0, help="seed of the mix and the fault turns")
    soak.add_argument("--out", required=True, metavar="F.json", help="write the report here")
    soak.add_argument("--speed", type=float, default=0.0, metavar="X",
                      help="microphone and speaker at X times real time (default 0: as fast as the "
                           "kiosk loop takes audio; the half-duplex deafness scales too)")
    soak.add_argument("--hung-turn", type=float, default=30.0, metavar="S",
                      help="the kiosk's hung-turn limit during the soak (HUNG_TURN_S, 120 s on duty)")
    soak.add_argument("--watchdog", type=float, default=5.0, metavar="S",
                      help="a gap in watchdog feeds longer than this counts as missed")
    soak.set_defaults(func=_soak, log_level=logging.WARNING)
