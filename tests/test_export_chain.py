"""The whole export chain on a tiny random Gemma-3: convert with the pinned llama.cpp converter,
check the metadata, quantize, measure against the 16-bit GGUF, bundle, and refuse a corrupted
bundle. Real transformers, real llama.cpp; only the model is small."""
from __future__ import annotations

import json

import pytest

from campus_guide import prompt
from campus_guide.bundle import BundleError, verify_bundle
from campus_guide.ggufmeta import read_gguf
from export.bundle import make_bundle
from export.gguf import check_gguf, convert
from export.quantize import EvalItem, run
from training.tiny import make_tiny_model

ITEMS = [
    EvalItem(prompt.render_prompt("Where is the library?", ["Library: building 5, north of the main gate."], lang="en"),
             "The library is building 5, north of the main gate.", ("library", "5")),
    EvalItem(prompt.render_prompt("도서관은 어디에 있나요?", ["도서관: 5번 건물, 정문 북쪽."], lang="ko"),
             "도서관은 5번 건물로, 정문 북쪽에 있습니다.", ("도서관", "5")),
]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chain")
    merged = make_tiny_model(tmp / "merged", "gemma3")
    f16, info = convert(merged, tmp / "gguf", "f16")
    report = run(f16, ["Q8_0", "Q4_K_M"], tmp / "quant", ITEMS, n_ctx=1024, max_tokens=16)
    return tmp, f16, info, report


def test_gguf_metadata_matches_the_model(chain):
    _, f16, info, _ = chain
    assert info.architecture == "gemma3" and info.file_type == "F16"
    assert info.end_of_turn_id == 107 and info.end_of_turn_type == "CONTROL"
    assert info.start_of_turn_id == 106
    assert info.bos_id == prompt.BOS_ID and info.add_bos
    assert info.context_length == 2048 and info.block_count == 6
    assert info.kv_cache_bytes(1024) == 6 * 1024 * 1 * (64 + 64) * 2


def test_quant_report_measures_each_type(chain):
    tmp, _, _, report = chain
    r = {x.name: x for x in report.results}
    assert list(r) == ["F16", "Q8_0", "Q4_K_M"]                   # largest first
    assert r["F16"].kl == pytest.approx(0, abs=1e-9) and r["F16"].top1 == 1.0
    assert 0 <= r["Q8_0"].kl < r["Q4_K_M"].kl                      # coarser quant, more drift
    assert r["Q8_0"].top1 >= r["Q4_K_M"].top1
    assert r["Q4_K_M"].size < r["Q8_0"].size < r["F16"].size
    assert "Q4_K" in r["Q4_K_M"].tensor_types                      # real K-quants, no fallback
    assert all(x.tok_s > 0 and x.memory_bytes > x.size for x in report.results)
    assert report.recommended in r
    saved = json.loads((tmp / "quant" / "quant_report.json").read_text())
    assert saved["recommended"] == report.recommended and len(saved["results"]) == 3
    assert "| Q8_0 |" in (tmp / "quant" / "quant_report.md").read_text()
    assert (tmp / "quant" / "quant_report.png").read_bytes()[:4] == b"\x89PNG"


def test_bundle_records_and_refuses_corruption(chain, tmp_path):
    tmp, _, _, report = chain
    q = next(x for x in report.results if x.name == "Q4_K_M")
    m = make_bundle(q.path, tmp_path / "b", eval_report=tmp / "quant" / "quant_report.json")
    assert m.quant_type == "Q4_K_M" and m.architecture == "gemma3"
    assert m.stop_token_ids == [prompt.EOS_ID, 107]
    assert m.eval["kl"] == q.kl and m.chat_format == prompt.CHAT_FORMAT
    assert verify_bundle(tmp_path / "b").sha256 == m.sha256
    check_gguf(read_gguf(tmp_path / "b" / "model.gguf"))
    with open(tmp_path / "b" / "model.gguf", "r+b") as f:          # one flipped byte
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(BundleError, match="checksum .* re-flash or re-export"):
        verify_bundle(tmp_path / "b")


def test_lora_adapter_converts_and_loads_in_llama_cpp(chain, tmp_path):
    """convert_lora: the route the shipped campus adapter takes (PEFT folder -> GGUF adapter)."""
    import torch
    from llama_cpp import Llama
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from export.llamacpp import convert_lora

    tmp, f16, _, _ = chain
    model = AutoModelForCausalLM.from_pretrained(tmp / "merged")
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    peft.save_pretrained(tmp_path / "adapter")
    out = convert_lora(tmp_path / "adapter", tmp / "merged" / "config.json", tmp_path / "lora.gguf")
    assert read_gguf(out).architecture == "gemma3"
    ids = [prompt.BOS_ID, 106, 200, 300]
    logits = []
    for lora in (None, str(out)):
        llm = Llama(model_path=str(f16), lora_path=lora, n_ctx=64, logits_all=True, n_threads=1, verbose=False)
        llm.eval(ids)
        logits.append(torch.tensor(llm.scores[len(ids) - 1]))
        llm.close()
    assert not torch.allclose(logits[0], logits[1])        # the adapter really changes the model


def test_cli_refuses_a_broken_folder_and_bundles(chain, tmp_path, capsys):
    from campus_guide.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["export", "gguf", str(tmp_path / "empty"), "--out", str(tmp_path / "g")]) == 2
    assert "no config.json" in capsys.readouterr().err
    tmp, _, _, report = chain
    q8 = next(x for x in report.results if x.name == "Q8_0")
    assert main(["export", "bundle", q8.path, "--out", str(tmp_path / "b"),
                 "--eval-report", str(tmp / "quant" / "quant_report.json")]) == 0
    assert '"quant_type": "Q8_0"' in capsys.readouterr().out
    assert verify_bundle(tmp_path / "b").eval["top1"] == q8.top1
    assert main(["export", "bundle", q8.path, "--out", str(tmp_path / "b")]) == 2   # not empty
    assert "not empty" in capsys.readouterr().err
