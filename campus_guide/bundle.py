"""The model bundle format, which the board reads and the export toolchain writes.

DIR/model.gguf + DIR/manifest.json (sha256, size, quant type, base model, training config hash,
chat format and stop tokens, context length, memory estimate, evaluation figures, creation time),
and optionally DIR/asr/ (a CTranslate2 Whisper folder, each file with its sha256 in the manifest's
`asr`): a campus-tuned Whisper travels with the LLM, so one flash, one `current` switch and one
rollback move both models together. The device loads a model only after it is verified, so a
half-copied or swapped file is refused instead of answering visitors with whatever it happens to
contain. This module is light (no llama.cpp, no torch): the kiosk imports it at start.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError

# Bundle names become folder names on the board and words in its shell: no spaces, no "..".
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SCHEMA_VERSION = 1
MODEL_FILE = "model.gguf"
MANIFEST_FILE = "manifest.json"
ASR_DIR = "asr"                      # the bundle's Whisper folder, when it carries one
_CHUNK = 1 << 20


class BundleError(UserError):
    """A bundle is missing, garbled or does not match its checksum."""


@dataclass
class BundleFile:
    path: str                        # relative to the bundle folder, e.g. "asr/model.bin"
    sha256: str
    size: int


@dataclass
class AsrModel:
    """The bundle's Whisper: what the kiosk transcribes with instead of `asr.model`."""
    files: list[BundleFile]
    base_model: str                  # the checkpoint it was fine-tuned from
    quantization: str                # CTranslate2 weights (int8, float16 ...)
    multilingual: bool
    eval: dict[str, Any] | None      # CER/WER before / after / converted (`train asr` report)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


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
    asr: AsrModel | None = None      # absent in bundles that carry the LLM only

    def files(self) -> list[BundleFile]:
        """Every file the bundle holds besides its manifest, the LLM first."""
        return [BundleFile(self.model_file, self.sha256, self.size)] + (self.asr.files if self.asr else [])


def sha256_file(path: str | Path, progress: str | None = None) -> str:
    """The file's sha256, streamed (GGUFs are hundreds of MB); `progress` shows a bar."""
    h = hashlib.sha256()
    size = Path(path).stat().st_size
    with open(path, "rb") as f, _bar(size, progress) as bar:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def copy_with_sha256(src: str | Path, dst: str | Path, progress: str | None = None) -> str:
    """Copy `src` to `dst` and return its sha256 from the same single read."""
    h = hashlib.sha256()
    with open(src, "rb") as f, open(dst, "wb") as out, _bar(Path(src).stat().st_size, progress) as bar:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            out.write(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def _bar(total: int, desc: str | None):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=desc is None, leave=False)


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
    missing = sorted(k for k, fl in fields.items() if k not in data and fl.default is dataclasses.MISSING)
    if missing:
        raise BundleError(f"{f} lacks {', '.join(missing)}; re-flash or re-export the bundle")
    for key, want in (("sha256", str), ("size", int), ("model_file", str), ("name", str)):
        if not isinstance(data[key], want):
            raise BundleError(f"{f}: {key} must be {want.__name__}; re-flash or re-export the bundle")
    if not NAME_RE.fullmatch(data["name"]) or ".." in data["name"]:
        raise BundleError(f"{f}: name {data['name']!r} is not a safe folder name; re-export the bundle")
    if Path(data["model_file"]).name != data["model_file"]:
        raise BundleError(f"{f}: model_file must be a file name inside the bundle, got {data['model_file']!r}")
    values = {k: data[k] for k in fields if k in data}
    values["asr"] = _read_asr(f, data.get("asr"))
    return Manifest(**values)


def _read_asr(f: Path, asr: Any) -> AsrModel | None:
    if asr is None:
        return None
    bad = f"{f}: the asr entry is garbled ({{}}); re-flash or re-export the bundle"
    try:
        files = [BundleFile(**x) for x in asr["files"]]
        model = AsrModel(files, str(asr["base_model"]), str(asr["quantization"]), bool(asr["multilingual"]),
                         asr.get("eval"))
    except (TypeError, KeyError) as e:
        raise BundleError(bad.format(e)) from None
    for x in files:
        parts = Path(x.path).parts
        if len(parts) != 2 or parts[0] != ASR_DIR or not isinstance(x.sha256, str) or not isinstance(x.size, int):
            raise BundleError(bad.format(f"file {x.path!r} is not {ASR_DIR}/<name> with a sha256 and a size"))
    if "model.bin" not in {Path(x.path).name for x in files}:
        raise BundleError(bad.format(f"no {ASR_DIR}/model.bin"))
    return model


def verify_bundle(folder: str | Path, progress: str | None = None, part: str | None = None) -> Manifest:
    """The manifest, after proving the files are the ones it describes; raises BundleError
    (saying "re-flash or re-export") on any mismatch. `part` "llm" or "asr" checks only the files
    that model loads (each loader checks its own, so a start hashes every file once)."""
    folder = Path(folder)
    m = read_manifest(folder)
    files = m.files()
    if part == "llm":
        files = files[:1]
    elif part == "asr":
        files = m.asr.files if m.asr else []
    for entry in files:
        _verify_file(folder / entry.path, entry, progress)
    return m


def _verify_file(path: Path, entry: BundleFile, progress: str | None) -> None:
    if not path.is_file():
        raise BundleError(f"{path} is missing; re-flash or re-export the bundle")
    size = path.stat().st_size
    if size != entry.size:
        raise BundleError(f"{path} has {size} bytes, the manifest says {entry.size} (incomplete copy?); "
                          f"re-flash or re-export the bundle")
    digest = sha256_file(path, progress)
    if digest != entry.sha256:
        raise BundleError(f"{path} checksum {digest[:12]}... does not match the manifest's "
                          f"{entry.sha256[:12]}... (corrupted); re-flash or re-export the bundle")


def bundle_asr(llm_model: str | Path) -> Path | None:
    """The Whisper folder of the bundle the LLM file sits in, if that bundle carries one: the
    one rule by which the ASR loader, the budget and `status` agree on which Whisper runs."""
    folder = Path(llm_model).resolve().parent
    if not (folder / MANIFEST_FILE).is_file():
        return None
    return folder / ASR_DIR if read_manifest(folder).asr else None
