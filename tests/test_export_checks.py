"""What export refuses, and why: fast checks on hand-made folders and files, plus the real packaged
Gemma-3 GGUF (its end-of-turn is 106, not Gemma-1/2's 107)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import pytest

from campus_guide import prompt
from export import ExportError
from campus_guide.bundle import MANIFEST_FILE, MODEL_FILE, SCHEMA_VERSION, BundleError, Manifest, verify_bundle
from campus_guide.config import ENV_CACHE
from campus_guide.ggufmeta import GGUFError, read_gguf
from export.gguf import check_chat_format, check_gguf, preflight
from export.quantize import QuantResult, ftype, load_eval_items, quantize, recommend


def hf_folder(tmp_path, arch="Gemma3ForCausalLM", sp=True, turn_tokens=True):
    d = tmp_path / "merged"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": [arch], "max_position_embeddings": 2048}))
    (d / "model.safetensors").write_bytes(b"\0" * 8)
    (d / "tokenizer.json").write_text("{}")
    if sp:
        (d / "tokenizer.model").write_bytes(b"sp")
    dec = {"106": {"content": prompt.START_OF_TURN}, "107": {"content": prompt.END_OF_TURN}} if turn_tokens else {}
    (d / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": dec}))
    return d


def test_preflight_accepts_a_complete_folder(tmp_path):
    p = preflight(hf_folder(tmp_path))
    assert (p.architecture, p.start_of_turn_id, p.end_of_turn_id, p.context_length) == ("gemma3", 106, 107, 2048)


def test_preflight_explains_missing_tokenizer_model(tmp_path):
    with pytest.raises(ExportError, match="(?s)no tokenizer.model.*ko-gemma-2b-v1.*Copy tokenizer.model"):
        preflight(hf_folder(tmp_path, sp=False))


def test_preflight_reports_every_problem_at_once(tmp_path):
    with pytest.raises(ExportError) as e:
        preflight(hf_folder(tmp_path, arch="LlamaForCausalLM", turn_tokens=False))
    msg = str(e.value)
    assert "LlamaForCausalLM is not supported" in msg
    assert msg.count("added_tokens_decoder") == 2 and "answers '?'" in msg


def test_junk_is_not_a_gguf(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(GGUFError, match="cannot read this GGUF"):
        read_gguf(tmp_path / "x.gguf")


@pytest.mark.models
def test_packaged_gemma3_passes_the_checks(models_dir):
    info = read_gguf(models_dir / "gemma3-270m-q4_k_m.gguf")
    assert (info.architecture, info.file_type, info.end_of_turn_id, info.end_of_turn_type) == \
           ("gemma3", "Q4_K_M", 106, "CONTROL")
    assert info.context_length == 32768 and info.vocab_size == 262144
    check_gguf(info)
    ids = check_chat_format(info.path)
    assert ids[0] == prompt.BOS_ID and 105 in ids and 106 in ids     # Gemma-3's turn tokens
    # ~10 MB of KV per 1k tokens on 18 layers x 1 KV head x 256+256 dims in f16
    assert info.kv_cache_bytes(2048) == 18 * 2048 * 512 * 2
    with pytest.raises(ExportError, match="already Q4_K_M"):
        quantize(info.path, models_dir / "never.gguf", "Q4_0")


def test_quant_types_by_name():
    assert (ftype("Q4_0"), ftype("q8_0"), ftype("Q4_K_S"), ftype("q4_k_m")) == (2, 7, 14, 15)
    assert ftype("IQ4_XS") > 0
    with pytest.raises(ExportError, match="unknown quant type 'Q9'.*Q4_K_M"):
        ftype("Q9")


def test_eval_items_from_the_training_test_split(tmp_path):
    f = tmp_path / "test.jsonl"
    rows = [{"prompt": "P1", "answer": "It is building 12, 4 minutes away.", "expect": ["12"]},
            {"question": "Where is the library?", "facts": ["Library: building 5."], "lang": "en",
             "answer": "Building 5, 3 minutes."},
            {"prompt": "P3", "answer": prompt.UNKNOWN["en"], "expect": []}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    items = load_eval_items(f)
    assert [i.expect for i in items] == [("12",), ("5", "3"), (prompt.UNKNOWN["en"],)]
    assert items[1].prompt == prompt.render_prompt("Where is the library?", ["Library: building 5."], lang="en")
    f.write_text('{"prompt": "P"}\n')
    with pytest.raises(ExportError, match="test.jsonl:1: need"):
        load_eval_items(f)


def _r(name, size, kl, acc):
    return QuantResult(name, name, size, kl, 1.0, acc, 1.0, size)


def test_recommendation_is_the_smallest_within_limits():
    rs = [_r("F16", 500, 0, 0.80), _r("Q8_0", 270, 0.01, 0.80), _r("Q4_K_M", 170, 0.06, 0.78),
          _r("Q4_0", 150, 0.2, 0.70)]
    assert recommend(rs, "F16", max_kl=0.1, max_fact_drop=0.03)[0] == "Q4_K_M"
    assert recommend(rs, "F16", max_kl=0.05, max_fact_drop=0.03)[0] == "Q8_0"
    name, why = recommend(rs, "F16", max_kl=0.001, max_fact_drop=0.0)
    assert name == "F16" and "No quant met" in why


def bundle_folder(tmp_path, **change):
    d = tmp_path / "bundle"
    d.mkdir()
    data = b"GGUF" + b"\1" * 1000
    (d / MODEL_FILE).write_bytes(data)
    m = asdict(Manifest(SCHEMA_VERSION, "x", MODEL_FILE, hashlib.sha256(data).hexdigest(), len(data), "Q4_K_M",
                        "gemma3", "b", None, "gemma", list(prompt.STOP_STRINGS), [1, 106], 2048, 2048, 1, None, "t"))
    m.update(change)
    (d / MANIFEST_FILE).write_text(json.dumps(m))
    return d


def test_verify_bundle_accepts_a_good_bundle(tmp_path):
    assert verify_bundle(bundle_folder(tmp_path)).name == "x"


@pytest.mark.parametrize("change, match", [
    ({"size": 5}, "manifest says 5"),
    ({"sha256": "0" * 64}, "checksum"),
    ({"schema_version": 99}, "schema_version 99"),
    ({"model_file": "../etc/passwd"}, "file name inside the bundle"),
    ({"model_file": "other.gguf"}, "missing"),
])
def test_verify_bundle_refuses_mismatches(tmp_path, change, match):
    with pytest.raises(BundleError, match=match):
        verify_bundle(bundle_folder(tmp_path, **change))


def test_verify_bundle_refuses_missing_or_garbled_manifest(tmp_path):
    d = bundle_folder(tmp_path)
    (d / MANIFEST_FILE).write_text('{"schema_version": 1, "sha256": ')
    with pytest.raises(BundleError, match="garbled.*re-flash or re-export"):
        verify_bundle(d)
    (d / MANIFEST_FILE).write_text(json.dumps({"schema_version": 1, "sha256": "x"}))
    with pytest.raises(BundleError, match="lacks .*re-flash or re-export"):
        verify_bundle(d)
    (d / MANIFEST_FILE).unlink()
    with pytest.raises(BundleError, match="not a model bundle"):
        verify_bundle(d)


def test_converter_unpacks_only_what_it_needs(tmp_path, monkeypatch):
    from export import llamacpp

    llamacpp.llama_cpp_dir()                                    # the real cache (downloads once)
    tarball = llamacpp.cache_dir() / llamacpp.SDIST
    monkeypatch.setenv(ENV_CACHE, str(tmp_path))
    (tmp_path / llamacpp.SDIST).symlink_to(tarball)
    d = llamacpp.llama_cpp_dir()
    assert d == tmp_path / f"llama.cpp-{llamacpp.LLAMA_CPP_VERSION}"
    assert sorted(p.name for p in d.iterdir()) == ["LICENSE", "conversion", "convert_hf_to_gguf.py",
                                                   "convert_lora_to_gguf.py", "gguf-py"]
    assert (d / "gguf-py" / "gguf" / "constants.py").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [d.name, llamacpp.SDIST]   # no temp left
