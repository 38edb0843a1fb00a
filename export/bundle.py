"""`campus-guide export bundle`: a checked GGUF (and optionally a checked CTranslate2 Whisper)
copied into a bundle folder with its manifest.

The format itself (manifest schema, reading, checksum verification) is `campus_guide.bundle`,
which the board reads; this module only writes bundles.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from campus_guide import prompt
from campus_guide.bundle import (ASR_DIR, MANIFEST_FILE, MODEL_FILE, SCHEMA_VERSION, AsrModel, BundleError,
                                 BundleFile, Manifest, copy_with_sha256, sha256_file)

# What faster-whisper reads from a CTranslate2 Whisper folder; without tokenizer.json it would
# fetch one from the model hub, which a kiosk cannot reach.
ASR_REQUIRED = ("model.bin", "config.json", "tokenizer.json")
ASR_OPTIONAL = ("preprocessor_config.json", "vocabulary.json", "vocabulary.txt")


def _eval_figures(report_file: Path, quant: str) -> dict[str, Any]:
    try:
        report = json.loads(report_file.read_text(encoding="utf-8"))
        results = {r["name"]: r for r in report["results"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BundleError(f"{report_file}: not a quant report from `campus-guide export quantize` ({e})") from None
    if quant not in results:
        raise BundleError(f"{report_file} has no figures for {quant} (it measured {', '.join(results)}); "
                          f"bundle a GGUF that report measured, or measure this one")
    r = results[quant]
    return {"kl": r["kl"], "top1": r["top1"], "fact_accuracy": r["fact_accuracy"], "tok_s": r["tok_s"],
            "n_items": report["n_items"], "reference": Path(report["reference"]).name,
            "reference_fact_accuracy": next((x["fact_accuracy"] for x in report["results"]
                                             if x["path"] == report["reference"]), None),
            "recommended": report["recommended"]}


def _asr_figures(report_file: Path) -> dict[str, Any]:
    """CER/WER before, after and as converted, from `campus-guide train asr`'s report."""
    try:
        r = json.loads(report_file.read_text(encoding="utf-8"))
        return {"before": r["before"], "after": r["after"], "ct2": {k: r["ct2"][k] for k in ("cer", "wer")},
                "ct2_within_tolerance": r["ct2_within_tolerance"], "val_clips": r["clips"]["val"],
                "base": Path(r["base"]).name, "quantization": r["quantization"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BundleError(f"{report_file}: not a report from `campus-guide train asr` ({e})") from None


def check_asr(folder: Path) -> bool:
    """Whether a CTranslate2 Whisper folder is multilingual, after loading it the way the kiosk
    will; refuses anything faster-whisper could not run offline."""
    if not folder.is_dir():
        raise BundleError(f"--asr {folder}: no such folder (give the ct2/ folder `campus-guide train asr` wrote)")
    missing = [f for f in ASR_REQUIRED if not (folder / f).is_file()]
    if missing:
        raise BundleError(f"--asr {folder} lacks {', '.join(missing)}: it is not a CTranslate2 Whisper "
                          f"folder (convert with `campus-guide train asr`, which writes ct2/)")
    try:
        import ctranslate2
    except ImportError:
        raise BundleError("checking a Whisper model needs ctranslate2: pip install .[device]") from None
    try:
        model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="default")
        multilingual = bool(model.is_multilingual)
        del model
    except (RuntimeError, ValueError) as e:
        raise BundleError(f"--asr {folder}: CTranslate2 cannot load it as Whisper ({e}); re-convert it") from None
    return multilingual


def make_bundle(gguf: str | Path, out: str | Path, eval_report: str | Path | None = None,
                train_config: str | Path | None = None, base_model: str | None = None,
                n_ctx: int = 2048, asr: str | Path | None = None,
                asr_report: str | Path | None = None) -> Manifest:
    """Check `gguf` (and the Whisper folder `asr`), copy them to OUT/model.gguf (and OUT/asr/)
    and write OUT/manifest.json (last, atomically: a folder without a manifest is not a bundle)."""
    from export.gguf import check_chat_format, check_gguf, read_gguf

    gguf, out = Path(gguf), Path(out)
    info = read_gguf(gguf)
    check_gguf(info)
    check_chat_format(gguf)
    if train_config is not None and not Path(train_config).is_file():
        raise BundleError(f"--train-config {train_config}: no such file")
    if asr_report is not None and asr is None:
        raise BundleError("--asr-report describes a Whisper model: give it with --asr CT2_DIR")
    evaluation = _eval_figures(Path(eval_report), info.file_type) if eval_report else None
    asr_eval = _asr_figures(Path(asr_report)) if asr_report else None
    multilingual = check_asr(Path(asr)) if asr is not None else None
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"{out} exists and is not empty; choose a new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    digest = copy_with_sha256(gguf, out / MODEL_FILE, "bundling")
    asr_model = None
    if asr is not None:
        asr, files = Path(asr), []
        (out / ASR_DIR).mkdir()
        for name in ASR_REQUIRED + ASR_OPTIONAL:
            if (asr / name).is_file():
                sha = copy_with_sha256(asr / name, out / ASR_DIR / name, f"bundling {name}")
                files.append(BundleFile(f"{ASR_DIR}/{name}", sha, (asr / name).stat().st_size))
        asr_eval = asr_eval or {}
        asr_model = AsrModel(files, asr_eval.pop("base", None) or asr.resolve().parent.name,
                             asr_eval.pop("quantization", None) or "unknown (no --asr-report)",
                             multilingual, asr_eval or None)
        # The name identifies the pair: the same GGUF with another Whisper is another bundle.
        digest_name = hashlib.sha256((digest + "".join(f.sha256 for f in files)).encode()).hexdigest()
    else:
        digest_name = digest
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", gguf.stem).strip("-.") or "model"
    if stem.lower().endswith(f"-{info.file_type.lower()}"):
        stem = stem[:-len(info.file_type) - 1]
    stop_ids = [i for i in (info.eos_id, info.end_of_turn_id) if i is not None]
    m = Manifest(
        schema_version=SCHEMA_VERSION, name=f"{stem}-{info.file_type}{'-asr' if asr_model else ''}-{digest_name[:8]}",
        model_file=MODEL_FILE,
        sha256=digest, size=info.size, quant_type=info.file_type, architecture=info.architecture,
        base_model=base_model or info.name,
        training_config_sha256=sha256_file(train_config) if train_config else None,
        chat_format=prompt.CHAT_FORMAT, stop_strings=list(prompt.STOP_STRINGS), stop_token_ids=stop_ids,
        context_length=info.context_length, n_ctx=n_ctx, memory_bytes=info.memory_bytes(n_ctx),
        eval=evaluation, created=datetime.now(timezone.utc).isoformat(timespec="seconds"), asr=asr_model,
    )
    tmp = out / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(m), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST_FILE)
    return m
