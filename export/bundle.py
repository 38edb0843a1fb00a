"""`campus-guide export bundle`: a checked GGUF copied into a bundle folder with its manifest.

The format itself (manifest schema, reading, checksum verification) is `campus_guide.bundle`,
which the board reads; this module only writes bundles.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from campus_guide import prompt
from campus_guide.bundle import (MANIFEST_FILE, MODEL_FILE, SCHEMA_VERSION, BundleError, Manifest,
                                 copy_with_sha256, sha256_file)


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


def make_bundle(gguf: str | Path, out: str | Path, eval_report: str | Path | None = None,
                train_config: str | Path | None = None, base_model: str | None = None,
                n_ctx: int = 2048) -> Manifest:
    """Check `gguf`, copy it to OUT/model.gguf and write OUT/manifest.json (last, atomically: a
    folder without a manifest is not a bundle)."""
    from export.gguf import check_chat_format, check_gguf, read_gguf

    gguf, out = Path(gguf), Path(out)
    info = read_gguf(gguf)
    check_gguf(info)
    check_chat_format(gguf)
    if train_config is not None and not Path(train_config).is_file():
        raise BundleError(f"--train-config {train_config}: no such file")
    evaluation = _eval_figures(Path(eval_report), info.file_type) if eval_report else None
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"{out} exists and is not empty; choose a new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    digest = copy_with_sha256(gguf, out / MODEL_FILE, "bundling")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", gguf.stem).strip("-.") or "model"
    if stem.lower().endswith(f"-{info.file_type.lower()}"):
        stem = stem[:-len(info.file_type) - 1]
    stop_ids = [i for i in (info.eos_id, info.end_of_turn_id) if i is not None]
    m = Manifest(
        schema_version=SCHEMA_VERSION, name=f"{stem}-{info.file_type}-{digest[:8]}", model_file=MODEL_FILE,
        sha256=digest, size=info.size, quant_type=info.file_type, architecture=info.architecture,
        base_model=base_model or info.name,
        training_config_sha256=sha256_file(train_config) if train_config else None,
        chat_format=prompt.CHAT_FORMAT, stop_strings=list(prompt.STOP_STRINGS), stop_token_ids=stop_ids,
        context_length=info.context_length, n_ctx=n_ctx, memory_bytes=info.memory_bytes(n_ctx),
        eval=evaluation, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    tmp = out / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(m), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST_FILE)
    return m
