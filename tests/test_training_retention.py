"""`train eval --retention` on the tiny random Gemma-3 (the chain's model, as a real f16 GGUF)
with a real PEFT adapter and its real llama.cpp conversion: the adapter GGUF reads back as the
adapter's own deltas, the four torch rows and the two llama.cpp rows measure what they say, and
bad input is refused with what to do."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")

from campus_guide.cli import main  # noqa: E402
from campus_guide.errors import UserError  # noqa: E402
from training import retention as ret  # noqa: E402

SET = """
text:
  en:
    - The library opens early. Students read there every day.
    - Where is the gym? It is near the main gate.
  ko:
    - 도서관은 아침 일찍 문을 엽니다.
questions:
  - {lang: en, q: "What is 2 plus 2?", expect: ["4", four]}
  - {lang: ko, q: "2 더하기 2는 얼마인가요?", expect: ["4", 사]}
"""


@pytest.fixture(scope="module")
def adapter(tiny_gguf, tmp_path_factory):
    """A random (non-zero) LoRA on the GGUF's own weights, as a PEFT folder and as llama.cpp's
    adapter GGUF (the route the shipped campus-lora.gguf took)."""
    from peft import LoraConfig, get_peft_model

    from export.llamacpp import convert_lora
    from training.merge import load_base

    tmp = tmp_path_factory.mktemp("retention")
    model, _, _ = load_base(tiny_gguf, "float32")
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))
    peft.save_pretrained(tmp / "peft")
    merged_config = tiny_gguf.parent.parent / "merged" / "config.json"
    return tmp / "peft", convert_lora(tmp / "peft", merged_config, tmp / "lora.gguf"), tmp


def test_an_adapter_gguf_reads_back_as_the_adapters_deltas(tiny_gguf, adapter):
    import torch

    from training.merge import load_base

    peft_dir, gguf, _ = adapter
    model, _, _ = load_base(tiny_gguf, "float32")
    want = ret.adapter_deltas(peft_dir, model)
    got = ret.adapter_deltas(gguf, model)
    assert set(got) == set(want) and len(want) == 3 * model.config.num_hidden_layers
    for name, d in want.items():
        assert d.abs().max() > 0
        assert torch.allclose(got[name], d, atol=2e-3 * d.abs().max().item()), name   # f16 in the GGUF


def test_retention_rows_measure_what_they_say(tiny_gguf, adapter, tmp_path):
    """The mechanics on the tiny model (its near-uniform logits make perplexities of ~2000 that
    numerics move by percents: the agreement of the two backends is checked on the real model)."""
    from campus_guide import prompt

    _, gguf, _ = adapter
    (tmp_path / "set.yaml").write_text(SET)
    split = tmp_path / "test.jsonl"
    split.write_text("".join(json.dumps({"prompt": prompt.render_prompt(q, [f], lang="en"), "target": a}) + "\n"
                             for q, f, a in [("Where is the gym?", "Gym: building 9.", "The gym is building 9."),
                                             ("Where is the library?", "Library: building 5.", "It is building 5.")]))
    report = ret.retention(tiny_gguf, gguf, tmp_path / "set.yaml", threads=1, campus=ret.campus_pairs(data=split))
    rows = {r.name: r for r in report.rows}
    names = [r.name for r in report.rows]
    assert names[:4] == ["base", "campus, 16-bit merge", "base, 4-bit (NF4)", "campus, 4-bit merge (ancestor)"]
    assert [r.backend for r in report.rows] == ["torch"] * 4 + ["llama.cpp"] * 2
    for r in report.rows:
        assert set(r.ppl) == {"en", "ko", ret.CAMPUS} and all(p > 1 for p in r.ppl.values()), r
        assert len(r.answers) == 2 and r.tokens == report.rows[0].tokens    # one tokenizer, both backends
    assert 8 < report.rows[0].tokens[ret.CAMPUS] < 30                     # the two answers' tokens only
    base = rows["base"]
    assert rows["campus, 16-bit merge"].ppl != base.ppl                 # the adapter is really applied
    assert rows["base, 4-bit (NF4)"].ppl != base.ppl                    # and NF4 really quantizes
    out = ret.write_report(report, tmp_path / "r" / "retention.json")
    assert json.loads(out.read_text())["rows"][0]["name"] == "base"
    assert out.with_suffix(".png").stat().st_size > 0 and "vs base" in out.with_suffix(".md").read_text()


@pytest.mark.models
def test_the_shipped_adapter_read_back_is_what_the_kiosk_runs(models_dir, tmp_path):
    """On the real Gemma-3 270M and the shipped campus-lora.gguf: torch on the dequantized GGUF
    and llama.cpp on the GGUF agree on perplexity (within 3 %), and torch with the adapter read
    back from its GGUF agrees with llama.cpp applying it at load, while the adapter itself moves
    perplexity far more than that: so the retention table's torch rows are the kiosk's model."""
    import torch

    from training.merge import load_base

    data = ret.load_retention_set()
    data.text = {lang: paras[:4] for lang, paras in data.text.items()}
    data.questions = data.questions[:1]
    base, lora = models_dir / "gemma3-270m-q4_k_m.gguf", models_dir / "campus-lora.gguf"
    torch.set_num_threads(2)
    model, tok, _ = load_base(base, "float32")
    model.eval()
    t_base = ret._torch_row("base", model, tok, data)
    for name, d in ret.adapter_deltas(lora, model).items():
        model.get_submodule(name).weight.data += d
    t_lora = ret._torch_row("merged", model, tok, data)
    del model
    c_base = ret._llamacpp_row("gguf", base, None, data, 2)
    c_lora = ret._llamacpp_row("gguf + adapter", base, lora, data, 2)
    for lang in ("en", "ko"):
        assert c_base.ppl[lang] == pytest.approx(t_base.ppl[lang], rel=0.03), (c_base, t_base)
        assert c_lora.ppl[lang] == pytest.approx(t_lora.ppl[lang], rel=0.03), (c_lora, t_lora)
        assert abs(t_lora.ppl[lang] / t_base.ppl[lang] - 1) > 0.2, (t_lora, t_base)


def test_an_echo_of_the_question_is_no_answer():
    q = ret.Question("ko", "일주일은 며칠인가요?", ["칠일", "7"])
    assert not ret._contains("일주일은 며칠인가요? 일주일은 며칠인가요?", q)
    assert ret._contains("일주일은 며칠인가요? 7일입니다.", q)


def test_bad_retention_input_says_what_to_do(tiny_gguf, adapter, tmp_path, capsys):
    peft_dir, gguf, tmp = adapter
    (tmp_path / "bad.yaml").write_text("text:\n  en: []\n")
    with pytest.raises(UserError, match="text.en must be a non-empty list"):
        ret.load_retention_set(tmp_path / "bad.yaml")
    with pytest.raises(UserError, match="not valid YAML"):
        (tmp_path / "worse.yaml").write_text("text: [\n")
        ret.load_retention_set(tmp_path / "worse.yaml")
    (tmp_path / "echo.yaml").write_text("text: {en: [Some text.]}\nquestions:\n"
                                        "  - {lang: en, q: \"Where is the library?\", expect: [library]}\n")
    with pytest.raises(UserError, match="must not occur in the question"):
        ret.load_retention_set(tmp_path / "echo.yaml")
    assert main(["train", "eval", "--retention", "--model", str(tiny_gguf), "--lora", str(tmp_path / "nope")]) != 0
    assert "--lora" in capsys.readouterr().err
    assert main(["train", "eval", "--retention", "--data", str(tmp_path / "x.jsonl")]) != 0
    assert "build it with `campus-guide train dataset`" in capsys.readouterr().err
    assert main(["train", "eval", "--model", str(tiny_gguf)]) != 0
    assert "--data" in capsys.readouterr().err
    # an adapter made for another model: a Gemma-3 LoRA on the packaged SmolLM2 is refused
    from training.merge import load_base

    other = tmp / "other"
    from training.tiny import make_tiny_model

    model, _, _ = load_base(make_tiny_model(other, "gemma3", hidden=512), "float32")
    with pytest.raises(UserError, match="made for another base model"):
        ret.adapter_deltas(gguf, model)
