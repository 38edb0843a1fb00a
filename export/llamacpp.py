"""llama.cpp's own converters, pinned to the llama.cpp the device runs.

The board loads GGUFs with llama-cpp-python; a GGUF written by a newer or older converter can carry
metadata that build misreads. So the converters come from the llama-cpp-python *sdist* at exactly
the device's version (its `vendor/llama.cpp`), fetched once from PyPI and unpacked into a cache.
They are run as a tool in a subprocess with their own bundled gguf-py first on the path: PyPI's
`gguf` is a different release and the converter fails with it (AttributeError: DFLASH).
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from campus_guide.config import cache_dir
from export import ExportError

log = logging.getLogger(__name__)

LLAMA_CPP_VERSION = "0.3.36"   # = llama-cpp-python in pyproject's `device` extra
SDIST = f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz"
# The only parts of the sdist the converters need.
_MEMBERS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


def check_installed_version() -> None:
    """The quantizer is the installed llama-cpp-python; it must be the device's version too."""
    try:
        have = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        raise ExportError(
            f"llama-cpp-python is not installed; run `pip install llama-cpp-python=={LLAMA_CPP_VERSION}`"
        ) from None
    if have != LLAMA_CPP_VERSION:
        raise ExportError(
            f"llama-cpp-python {have} is installed but the device runs {LLAMA_CPP_VERSION}; "
            f"run `pip install llama-cpp-python=={LLAMA_CPP_VERSION}` so the files match the board"
        )


def _download_sdist(dest: Path) -> Path:
    tarball = dest / SDIST
    if tarball.is_file():
        return tarball
    log.info("fetching the llama-cpp-python %s sdist from PyPI (once, ~75 MB)", LLAMA_CPP_VERSION)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"llama-cpp-python=={LLAMA_CPP_VERSION}", "-d", str(dest)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 or not tarball.is_file():
        raise ExportError(
            f"could not download the llama-cpp-python {LLAMA_CPP_VERSION} sdist ({r.stderr.strip()[-400:]}); "
            f"check PyPI access, or put {SDIST} into {dest} by hand"
        )
    return tarball


def llama_cpp_dir() -> Path:
    """The unpacked `vendor/llama.cpp` of the pinned sdist, fetched on first use."""
    root = cache_dir()
    final = root / f"llama.cpp-{LLAMA_CPP_VERSION}"
    if (final / "convert_hf_to_gguf.py").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tarball = _download_sdist(root)
    prefix = f"llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp/"
    with tempfile.TemporaryDirectory(dir=root) as tmp, tarfile.open(tarball) as tar:
        members = []
        for m in tar.getmembers():
            rel = m.name[len(prefix):] if m.name.startswith(prefix) else ""
            if rel and any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in _MEMBERS):
                m.name = rel
                members.append(m)
        if not members:
            raise ExportError(f"{tarball} has no vendor/llama.cpp converter; delete it and retry")
        tar.extractall(tmp, members=members, filter="data")
        try:
            os.rename(tmp, final)            # atomic: a parallel run either wins or finds it done
            os.mkdir(tmp)                    # for TemporaryDirectory's cleanup
        except OSError:
            if not (final / "convert_hf_to_gguf.py").is_file():
                raise
    return final


def run_converter(script: str, args: list[str], what: str) -> None:
    """Run one of llama.cpp's converter scripts; its own gguf-py comes first on the path."""
    base = llama_cpp_dir()
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(base / "gguf-py"), str(base)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cmd = [sys.executable, str(base / script), *args]
    log.info("converting %s: %s", what, " ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-12:])
        hint = (" (the converter needs torch, transformers, sentencepiece and protobuf: "
                "pip install -e '.[export]')" if "ModuleNotFoundError" in tail else "")
        raise ExportError(f"llama.cpp's {script} failed on {what}{hint}:\n{tail}")


def convert_hf(model_dir: str | Path, out: str | Path, outtype: str = "f16") -> Path:
    """A Hugging Face model folder -> one GGUF file (no checks; see export.gguf.convert)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    run_converter("convert_hf_to_gguf.py",
                  [str(model_dir), "--outfile", str(out), "--outtype", outtype], str(model_dir))
    return out


def convert_lora(adapter_dir: str | Path, base_dir_or_config: str | Path, out: str | Path,
                 outtype: str = "f16") -> Path:
    """A PEFT LoRA adapter -> a GGUF adapter for `Llama(lora_path=...)`. `base_dir_or_config` is
    the base model folder, or a folder holding only its config.json (the converter then needs no
    base weights)."""
    adapter_dir, base = Path(adapter_dir), Path(base_dir_or_config)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ExportError(f"{adapter_dir} has no adapter_config.json; pass the folder PEFT saved")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cg-base-") as tmp:
        if base.is_file():                  # a bare config.json: give the converter a folder
            shutil.copy(base, Path(tmp) / "config.json")
            base = Path(tmp)
        if not (base / "config.json").is_file():
            raise ExportError(f"{base} has no config.json; pass the base model folder or its config.json")
        run_converter("convert_lora_to_gguf.py",
                      [str(adapter_dir), "--base", str(base), "--outfile", str(out), "--outtype", outtype],
                      str(adapter_dir))
    return out
