"""A bundle that carries a Whisper beside the LLM: `export bundle --asr` checks and records both,
and the kiosk transcribes with the bundle's Whisper (checked like its LLM), on the real tiny GGUF
and the real packaged CTranslate2 Whispers. Flashing such a bundle: tests/test_flash.py."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict

import pytest

from campus_guide.bundle import ASR_DIR, MANIFEST_FILE, BundleError, bundle_asr, read_manifest, verify_bundle
from campus_guide.cli import main
from campus_guide.config import Config
from export.bundle import make_bundle

pytestmark = pytest.mark.models


@pytest.fixture
def two(tmp_path, tiny_gguf, models_dir):
    """The tiny GGUF with the packaged multilingual whisper-base as the bundle's Whisper."""
    return two_model_bundle(tiny_gguf, models_dir, tmp_path / "two")


def two_model_bundle(gguf, models_dir, out):
    return make_bundle(gguf, out, asr=models_dir / "whisper-base"), out


def test_manifest_lists_both_models_with_their_checksums(two, models_dir):
    m, folder = two
    paths = [f.path for f in m.files()]
    assert paths[0] == "model.gguf" and f"{ASR_DIR}/model.bin" in paths and f"{ASR_DIR}/tokenizer.json" in paths
    assert m.asr.multilingual and m.asr.size == sum(f.size for f in m.asr.files)
    assert (folder / ASR_DIR / "model.bin").read_bytes() == (models_dir / "whisper-base" / "model.bin").read_bytes()
    assert "-asr-" in m.name
    again = read_manifest(folder)
    assert again == m and verify_bundle(folder) == m
    # Each loader checks its own files: a flipped byte in the Whisper fails "asr" and the whole
    # bundle, not the LLM's own check.
    with open(folder / ASR_DIR / "model.bin", "r+b") as f:
        f.seek(4096)
        b = f.read(1)
        f.seek(4096)
        f.write(bytes([b[0] ^ 1]))
    verify_bundle(folder, part="llm")
    for part in ("asr", None):
        with pytest.raises(BundleError, match=r"asr/model.bin checksum .* re-flash or re-export"):
            verify_bundle(folder, part=part)


def test_the_kiosk_transcribes_with_the_bundles_whisper(two, models_dir, say):
    from device.asr import Transcriber
    from device.budget import plan_for_config
    from device.models import ModelError
    from device.service import model_info

    m, folder = two
    cfg = Config(models_dir=str(models_dir))
    cfg.asr.model = "whisper-tiny.en"                      # what the config says ...
    cfg.llm.model = str(folder / "model.gguf")
    assert cfg.asr_path() == folder / ASR_DIR == bundle_asr(cfg.llm.model)
    asr = Transcriber(cfg)                                 # ... the bundle's multilingual one runs
    assert asr.model.model.is_multilingual and asr.name == f"two/{ASR_DIR}"
    assert "library" in asr.transcribe(say("Where is the library?")).text.lower()
    info = model_info(cfg)["asr"]
    assert info["from_bundle"] and info["sha256"] == next(f.sha256 for f in m.asr.files if f.path.endswith("model.bin"))
    [weights] = [i for i in plan_for_config(cfg).items if i.name == "Whisper weights"]
    assert str(folder / ASR_DIR / "model.bin") in weights.note         # the plan counts the bundle's
    # A damaged bundle Whisper is refused with what to do, never silently replaced by asr.model.
    (folder / ASR_DIR / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelError, match="does not match its manifest.json.*re-flash or re-export"):
        Transcriber(cfg)


def test_bundle_refuses_what_is_no_whisper(tmp_path, tiny_gguf, models_dir, capsys):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "model.bin").write_bytes(b"not a model")
    with pytest.raises(BundleError, match="lacks config.json, tokenizer.json"):
        make_bundle(tiny_gguf, tmp_path / "b1", asr=junk)
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(models_dir / "whisper-base" / name, junk / name)
    with pytest.raises(BundleError, match="CTranslate2 cannot load it as Whisper"):
        make_bundle(tiny_gguf, tmp_path / "b2", asr=junk)
    assert main(["export", "bundle", str(tiny_gguf), "--out", str(tmp_path / "b3"),
                 "--asr-report", str(tmp_path / "r.json")]) != 0
    assert "give it with --asr" in capsys.readouterr().err
    assert not (tmp_path / "b1").exists() and not (tmp_path / "b3").exists()


def test_a_bundle_without_whisper_reads_as_before(tmp_path, tiny_gguf, models_dir):
    m = make_bundle(tiny_gguf, tmp_path / "one")
    data = json.loads((tmp_path / "one" / MANIFEST_FILE).read_text())
    del data["asr"]                                        # as an older toolchain wrote it
    (tmp_path / "one" / MANIFEST_FILE).write_text(json.dumps(data))
    assert read_manifest(tmp_path / "one").asr is None and m.files()[0].path == "model.gguf"
    cfg = Config(models_dir=str(models_dir))
    cfg.llm.model = str(tmp_path / "one" / "model.gguf")
    assert cfg.asr_path() == models_dir / "whisper-base"
