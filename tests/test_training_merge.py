"""Merge: a LoRA adapter into the 16-bit tiny Gemma-3, with what export needs; never into 4-bit."""
from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")

from campus_guide.errors import UserError  # noqa: E402
from training.merge import merge  # noqa: E402
from training.runs import TRAIN_RECORD  # noqa: E402
from training.tiny import make_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "gemma3", arch="gemma3")


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory):
    """A LoRA adapter with non-zero B matrices (an untrained one would change nothing)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    (out / TRAIN_RECORD).write_text(json.dumps({"method": "lora"}))
    return out


def test_merge_equals_the_adapter_and_writes_export_files(tiny, adapter, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    r = merge(tiny, adapter, tmp_path / "merged", dtype="float32")
    out = r.out_dir
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [1, 107]
    assert (out / "tokenizer.model").read_bytes() == (tiny / "tokenizer.model").read_bytes()
    decoder = json.loads((out / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert decoder["106"]["content"] == "<start_of_turn>" and decoder["107"]["special"]
    ids = torch.tensor([[2, 106, 300, 301, 302, 107]])
    with torch.no_grad():
        want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), adapter)(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny)(ids).logits
        got = AutoModelForCausalLM.from_pretrained(out)(ids).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, base, atol=1e-3)          # the adapter really is in there


def test_refuses_a_4bit_base(tiny, adapter, tmp_path):
    q = tmp_path / "q4"
    shutil.copytree(tiny, q)
    cfg = json.loads((q / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                  "bnb_4bit_quant_type": "nf4"}
    (q / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="4-bit"):
        merge(q, adapter, tmp_path / "out")
    with pytest.raises(UserError, match="never 4-bit"):
        merge(tiny, adapter, tmp_path / "out", dtype="int4")
    with pytest.raises(UserError, match="adapter_config.json"):
        merge(tiny, tmp_path, tmp_path / "out")


def test_qlora_adapter_merges_onto_the_nf4_dequantized_base(tiny, adapter, tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes not installed (pip install '.[qlora]')")
    q = tmp_path / "qlora-adapter"
    shutil.copytree(adapter, q)
    (q / TRAIN_RECORD).write_text(json.dumps({"method": "qlora"}))
    r = merge(tiny, q, tmp_path / "merged", dtype="float32")
    assert r.method == "qlora" and r.dequantized_layers == 6 * 7     # every Linear but lm_head
    cfg = json.loads((r.out_dir / "config.json").read_text())
    assert "quantization_config" not in cfg                             # 16/32-bit weights saved
