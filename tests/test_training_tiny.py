"""The tiny random Gemma models every training and export test is built on."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from campus_guide import prompt  # noqa: E402
from training.tiny import make_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("g3") / "m", arch="gemma3")


def test_tokenizer_has_gemma_ids_and_encodes_hangul(gemma3):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gemma3)
    ids = {t: tok.convert_tokens_to_ids(t) for t in
           ("<pad>", "<eos>", "<bos>", "<unk>", prompt.START_OF_TURN, prompt.END_OF_TURN)}
    assert ids == {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3,
                   prompt.START_OF_TURN: 106, prompt.END_OF_TURN: 107}
    text = prompt.render_prompt("도서관은 어디에 있나요?", ["중앙도서관: 10번 건물."])
    enc = tok(text)["input_ids"]
    assert enc[0] == 2 and enc.count(2) == 1                    # exactly one <bos>
    assert enc.count(106) == 2 and enc.count(107) == 1          # turn markers are single tokens
    assert tok.decode(enc[1:]) == text                          # Hangul round-trips, nothing lost
    assert 3 not in enc                                         # and never falls back to <unk>


def test_files_llama_cpp_needs(gemma3):
    cfg = json.loads((gemma3 / "tokenizer_config.json").read_text())
    special = {v["content"]: int(k) for k, v in cfg["added_tokens_decoder"].items() if v["special"]}
    assert special[prompt.START_OF_TURN] == 106 and special[prompt.END_OF_TURN] == 107
    assert "vocab_file" not in cfg                               # no machine-specific paths
    assert (gemma3 / "tokenizer.model").stat().st_size > 0
    gen = json.loads((gemma3 / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [1, 107]
    model_cfg = json.loads((gemma3 / "config.json").read_text())
    assert model_cfg["layer_types"] == ["sliding_attention"] * 5 + ["full_attention"]
    assert model_cfg["hidden_size"] % 256 == 0 and model_cfg["intermediate_size"] % 256 == 0


def test_deterministic_and_other_archs(gemma3, tmp_path):
    again = make_tiny_model(tmp_path / "again", arch="gemma3")
    for name in ("model.safetensors", "tokenizer.model", "tokenizer_config.json", "config.json"):
        assert (again / name).read_bytes() == (gemma3 / name).read_bytes(), name
    g2 = make_tiny_model(tmp_path / "g2", arch="gemma2")
    assert json.loads((g2 / "config.json").read_text())["architectures"] == ["Gemma2ForCausalLM"]
    with pytest.raises(ValueError, match="multiple of 256"):
        make_tiny_model(tmp_path / "bad", hidden=192)
    with pytest.raises(ValueError, match="unknown arch"):
        make_tiny_model(tmp_path / "bad", arch="llama")
