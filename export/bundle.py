"""A model bundle: the GGUF the board runs plus a manifest that says what it is and proves it.

DIR/model.gguf + DIR/manifest.json (sha256, size, quant type, base model, training config hash,
chat format and stop tokens, context length, memory estimate, evaluation figures, creation time).
The device loads a model only through `verify_bundle`, so a half-copied or swapped file is refused
instead of answering visitors with whatever it happens to contain. This module stays light (no
llama.cpp, no torch): the device imports it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from campus_guide import prompt

# Bundle names become folder names on the board and words in its shell: no spaces, no "..".
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
from export import ExportError

SCHEMA_VERSION = 1
MODEL_FILE = "model.gguf"
MANIFEST_FILE = "manifest.json"
_CHUNK = 1 << 20


class BundleError(ExportError):
    """A bundle is missing, garbled or does not match its checksum."""


@dataclass
class Manifest:
    schema_version: int
    name: str                        # the bundle's folder name on the board: <model>-<sha8>
    model_file: str
    sha256: str
    size: int
    quant_type: str
    architecture: str
    base_model: str
    training_config_sha256: str | None
    chat_format: str
    stop_strings: list[str]
    stop_token_ids: list[int]        # in THIS vocabulary (Gemma-3's end-of-turn is 106, Gemma's 107)
    context_length: int              # what the model was trained for
    n_ctx: int                       # what the memory estimate assumes (llm.n_ctx)
    memory_bytes: int                # weights + KV cache at n_ctx
    eval: dict[str, Any] | None
    created: str


def sha256_file(path: str | Path, progress: str | None = None) -> str:
    h = hashlib.sha256()
    size = Path(path).stat().st_size
    with open(path, "rb") as f, _bar(size, progress) as bar:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def _bar(total: int, desc: str | None):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=desc is None, leave=False)


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
    h = hashlib.sha256()
    with open(gguf, "rb") as src, open(out / MODEL_FILE, "wb") as dst, _bar(info.size, "bundling") as bar:
        while chunk := src.read(_CHUNK):
            h.update(chunk)
            dst.write(chunk)
            bar.update(len(chunk))
    digest = h.hexdigest()
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


def read_manifest(folder: str | Path) -> Manifest:
    """The manifest of a bundle folder, validated field by field (no checksum)."""
    f = Path(folder) / MANIFEST_FILE
    if not f.is_file():
        raise BundleError(f"{folder} is not a model bundle (no {MANIFEST_FILE}); "
                          f"re-export it with `campus-guide export bundle` or re-flash the board")
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{f} is garbled ({e}); re-flash or re-export the bundle") from None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        got = data.get("schema_version") if isinstance(data, dict) else None
        raise BundleError(f"{f}: schema_version {got!r}, this device reads {SCHEMA_VERSION}; "
                          f"re-export the bundle with this version of campus-guide")
    fields = {fl.name: fl for fl in dataclasses.fields(Manifest)}
    missing = sorted(set(fields) - set(data))
    if missing:
        raise BundleError(f"{f} lacks {', '.join(missing)}; re-flash or re-export the bundle")
    for key, want in (("sha256", str), ("size", int), ("model_file", str), ("name", str)):
        if not isinstance(data[key], want):
            raise BundleError(f"{f}: {key} must be {want.__name__}; re-flash or re-export the bundle")
    if not NAME_RE.fullmatch(data["name"]) or ".." in data["name"]:
        raise BundleError(f"{f}: name {data['name']!r} is not a safe folder name; re-export the bundle")
    if Path(data["model_file"]).name != data["model_file"]:
        raise BundleError(f"{f}: model_file must be a file name inside the bundle, got {data['model_file']!r}")
    return Manifest(**{k: data[k] for k in fields})


def verify_bundle(folder: str | Path, progress: str | None = None) -> Manifest:
    """The manifest, after proving the model file is the one it describes; raises BundleError
    (saying "re-flash or re-export") on any mismatch."""
    folder = Path(folder)
    m = read_manifest(folder)
    model = folder / m.model_file
    if not model.is_file():
        raise BundleError(f"{model} is missing; re-flash or re-export the bundle")
    size = model.stat().st_size
    if size != m.size:
        raise BundleError(f"{model} has {size} bytes, the manifest says {m.size} (incomplete copy?); "
                          f"re-flash or re-export the bundle")
    digest = sha256_file(model, progress)
    if digest != m.sha256:
        raise BundleError(f"{model} checksum {digest[:12]}... does not match the manifest's "
                          f"{m.sha256[:12]}... (corrupted); re-flash or re-export the bundle")
    return m
