"""Fine-tuning on a tiny random Gemma-3: labels, the answer-only loss, a real LoRA fit, configs."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from campus_guide.config import ConfigError  # noqa: E402
from campus_guide.prompt import END_OF_TURN, render_prompt, render_target  # noqa: E402
from training.config import TrainConfig, load_train_config  # noqa: E402
from training.fit import fit  # noqa: E402
from training.loss import IGNORE, answer_loss, collate, encode  # noqa: E402
from training.runs import finished_run  # noqa: E402
from training.tiny import make_tiny_model  # noqa: E402

BUILDINGS = [("Central Library", "중앙도서관", 10), ("Student Union", "학생회관", 2),
             ("Gymnasium", "체육관", 60), ("Museum", "박물관", 6), ("Visitor Center", "방문자센터", 3),
             ("Law School", "법학관", 24)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Six test runs share two cores: one thread each avoids thrashing."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "gemma3", arch="gemma3")


@pytest.fixture(scope="module")
def tok(tiny):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny)


def rows(lang: str = "en"):
    out = []
    for en, ko, n in BUILDINGS:
        q, a = ((f"What number is the {en}?", f"{en} is building {n}.") if lang == "en"
                else (f"{ko}은 몇 번 건물이에요?", f"{ko}은 {n}번 건물입니다."))
        out.append({"prompt": render_prompt(q, [a]), "target": render_target(a)})
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    train = rows("en") + rows("ko")
    (d / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train * 2))
    (d / "val.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train[::3]))
    return d


def write_cfg(path: Path, **kw) -> Path:
    import yaml
    path.write_text(yaml.safe_dump(kw, allow_unicode=True))
    return path


def test_labels_mask_the_prompt_and_train_end_of_turn(tok):
    r = rows("ko")[0]
    ex = encode(tok, r["prompt"], r["target"])
    n_prompt = len(tok(r["prompt"])["input_ids"])
    assert ex.input_ids.count(tok.bos_token_id) == 1
    assert ex.labels[:n_prompt] == [IGNORE] * n_prompt
    answer = ex.labels[n_prompt:]
    assert IGNORE not in answer and answer == ex.input_ids[n_prompt:]
    assert answer[-1] == tok.convert_tokens_to_ids(END_OF_TURN) == 107   # the model learns to stop
    with pytest.raises(Exception, match="end_of_turn"):
        encode(tok, r["prompt"], "no end token")


def test_answer_position_logits_give_the_full_loss(tiny, tok):
    """Left padding + logits only for the answer span == per-example loss on full logits."""
    from transformers import AutoModelForCausalLM
    import torch.nn.functional as F

    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    exs = [encode(tok, r["prompt"], r["target"]) for r in (rows("en")[0], rows("ko")[2], rows("en")[5])]
    assert len({len(e.input_ids) for e in exs}) > 1                 # padding really happens
    with torch.no_grad():
        fast = answer_loss(model, collate(exs, tok.pad_token_id)).item()
        total, count = 0.0, 0
        for e in exs:
            logits = model(torch.tensor([e.input_ids])).logits[0, :-1]
            labels = torch.tensor(e.labels[1:])
            total += F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum").item()
            count += int((labels != IGNORE).sum())
    assert fast == pytest.approx(total / count, rel=1e-4)


def test_lora_fit_lowers_eval_loss_and_keeps_the_best(tiny, tok, data, tmp_path):
    cfg = load_train_config(write_cfg(
        tmp_path / "t.yaml", base=str(tiny), data=str(data), out="run", max_steps=12, batch_size=4,
        lr=5e-3, warmup_steps=2, eval_steps=4, eval_examples=4, max_length=400,
        lora={"rank": 8, "alpha": 16, "dropout": 0.0}))
    r = fit(cfg, progress=False)
    assert r.best_eval_loss < r.first_eval_loss * 0.8
    assert (r.best_dir / "adapter_config.json").is_file() and (r.best_dir / "adapter_model.safetensors").is_file()
    record = json.loads((r.best_dir / "campus_train.json").read_text())
    assert record["method"] == "lora" and record["step"] == r.best_step > 0
    log = [json.loads(x) for x in r.log_file.read_text().splitlines()]
    assert [x["step"] for x in log] == list(range(r.steps + 1))
    assert min(x["eval_loss"] for x in log if "eval_loss" in x) == pytest.approx(r.best_eval_loss)
    assert r.plot_file.read_bytes()[:4] == b"\x89PNG"

    # The eval path for PEFT checkpoints answers with the tuned model's own greedy continuation
    # of the prompt (new tokens only, cleaned), and says whether it ended its turn itself.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from campus_guide.prompt import clean_answer
    from training.evaluate import HFGenerator
    question = rows("en")[0]["prompt"]
    gen = HFGenerator(tiny, r.best_dir, max_tokens=6)
    text, stopped = gen(question)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), r.best_dir).eval()
    ids, new = tok(question)["input_ids"], []
    with torch.no_grad():
        while len(new) < 6 and not (new and new[-1] in gen.stops):
            new.append(int(tuned(torch.tensor([ids + new])).logits[0, -1].argmax()))
    assert text == clean_answer(tok.decode(new))
    assert stopped == (new[-1] in gen.stops)
    base = AutoModelForCausalLM.from_pretrained(tiny).eval()
    with torch.no_grad():                                          # the adapter is applied
        assert not torch.allclose(tuned(torch.tensor([ids])).logits, base(torch.tensor([ids])).logits)

    # `train default` reuses a run only if it finished, on the same training data.
    import shutil
    assert finished_run(cfg).best_step == r.best_step
    edited = tmp_path / "edited" / Path(cfg.data).name           # same name, other content
    shutil.copytree(cfg.data, edited)
    (edited / "train.jsonl").write_text((edited / "train.jsonl").read_text() + "\n")
    assert finished_run(dataclasses.replace(cfg, data=str(edited))) is None
    (r.out_dir / "done.json").unlink()                            # as if interrupted
    assert finished_run(cfg) is None


def test_evaluating_and_saving_more_often_trains_the_same_weights(tiny, data, tmp_path):
    """`train compare` checkpoints and evaluates every N steps; its grounded run is the default's
    training only if evaluation takes nothing from the random streams dropout draws on."""
    runs = []
    for name, kw in (("a", dict(eval_steps=1, save_steps=2, patience=100)), ("b", dict(eval_steps=4, save_steps=4))):
        cfg = load_train_config(write_cfg(
            tmp_path / f"{name}.yaml", base=str(tiny), data=str(data), out=name, max_steps=4, batch_size=4,
            lr=5e-3, warmup_steps=1, eval_examples=4, max_length=400,
            lora={"rank": 4, "alpha": 8, "dropout": 0.2}, **kw))
        runs.append(fit(cfg, progress=False))
    a, b = (r.out_dir / "step-4" / "adapter_model.safetensors" for r in runs)
    assert a.read_bytes() == b.read_bytes()
    assert runs[0].config_hash != runs[1].config_hash


@pytest.mark.parametrize("kw, message", [
    ({"methd": "lora"}, "unknown key 'methd' (did you mean 'method'?)"),
    ({"method": "dora"}, "'method' must be one of lora, qlora, full"),
    ({"lora": {"rank": 0}}, "'lora.rank' must be at least 1"),
    ({"lr": "fast"}, "'lr' must be float"),
    ({"base": ""}, "'base' is required"),
    ({"method": "qlora", "base": "m.gguf"}, "needs a 16-bit HF model folder"),
])
def test_config_errors_say_what_to_fix(tmp_path, kw, message):
    good = {"base": "model", "data": "data"}
    with pytest.raises(ConfigError, match=__import__("re").escape(message)):
        load_train_config(write_cfg(tmp_path / "c.yaml", **{**good, **kw}))
    with pytest.raises(ConfigError, match="not found"):
        load_train_config(tmp_path / "missing.yaml")


def test_shipped_configs_validate():
    for name in ("tiny", "campus-270m", "qlora-2b", "full"):
        cfg = load_train_config(Path(__file__).parents[1] / "training" / "configs" / f"{name}.yaml")
        assert isinstance(cfg, TrainConfig) and Path(cfg.base).is_absolute()


def test_qlora_runs_on_cpu(tiny, data, tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes not installed (pip install '.[qlora]')")
    cfg = load_train_config(write_cfg(
        tmp_path / "q.yaml", base=str(tiny), data=str(data), out="run", method="qlora", max_steps=2,
        batch_size=2, eval_steps=2, eval_examples=2, max_length=400, dtype="float32"))
    r = fit(cfg, progress=False)
    assert json.loads((r.best_dir / "campus_train.json").read_text())["method"] == "qlora"
    assert (r.best_dir / "adapter_model.safetensors").is_file()


def test_cli_prints_config_errors_without_traceback(tmp_path, capsys):
    from campus_guide.cli import main

    bad = write_cfg(tmp_path / "bad.yaml", base="m", data="d", lora={"rnak": 4})
    assert main(["train", "fit", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'lora.rnak' (did you mean 'rank'?)" in err and "Traceback" not in err
