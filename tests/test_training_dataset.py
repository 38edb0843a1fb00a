"""The dataset: types, languages, splits without leakage, and prompts identical to the kiosk's."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from campus_guide.config import Config
from campus_guide.knowledge import Retriever, load_kb
from campus_guide.prompt import END_OF_TURN, UNKNOWN, Turn
from training.dataset import HELD_OUT_INTENTS, DatasetOptions, build_dataset, read_jsonl

MINI_KB = Path(__file__).parent / "data" / "mini_campus.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    card = build_dataset(MINI_KB, out, Config(), DatasetOptions(seed=3, test_per_intent=3))
    splits = {name: list(read_jsonl(out / f"{name}.jsonl")) for name in ("train", "val", "test")}
    return out, card, splits


def test_types_languages_noise_and_card(data):
    out, card, s = data
    train = s["train"]
    assert {r["type"] for r in train} == {"basic", "route", "location", "complex", "followup", "unknown"}
    assert {r["lang"] for r in train} == {"ko", "en"}
    assert {r["noise"] for r in train} >= {"none", "typo", "asr"}
    assert any(r["history"] for r in train)                     # follow-up turns exist
    assert all(r["target"] == r["answer"] + END_OF_TURN for r in train)
    assert all(r["answer"] == UNKNOWN[r["lang"]] for r in train if r["unknown"])
    assert card["splits"]["train"]["examples"] == len(train)
    assert "| train |" in (out / "README.md").read_text()
    assert s["val"] and {r["split"] for r in s["test"]} == {"test_paraphrase", "test_template"}


def test_held_out_templates_and_paraphrases_never_leak(data):
    _, _, s = data
    seen = s["train"] + s["val"]
    train_templates = {r["template"] for r in seen}
    assert not {r["intent"] for r in seen} & set(HELD_OUT_INTENTS)
    for r in s["test"]:
        assert r["template"] not in train_templates, r["template"]
        if r["split"] == "test_template":
            assert r["intent"] in HELD_OUT_INTENTS
    assert not {r["question"] for r in seen} & {r["question"] for r in s["test"]}


def test_targets_carry_their_facts(data):
    _, _, s = data
    for r in s["train"] + s["test"]:
        for fact in r["expect"]:
            assert fact in r["answer"], (r["question"], fact)
        if not r["unknown"]:                # grounded: every expected fact is in the prompt too
            assert all(f in r["prompt"] for f in r["expect"]), r["question"]


class RecordingLLM:
    """Stands in for llama.cpp: records the prompt the dialogue renders and answers with the
    dataset's target."""

    def __init__(self, answer: str):
        self.answer, self.prompts, self.last = answer, [], None

    def fits(self, prompt: str) -> bool:
        return True

    def stream(self, prompt: str):
        self.prompts.append(prompt)
        yield self.answer


def test_every_prompt_is_what_the_kiosk_renders(data):
    """Drive the device's real Dialogue with each question (and its history): the prompt it sends
    to the model must be byte-identical to the training prompt."""
    from device.dialogue import Dialogue

    _, _, s = data
    cfg = Config()
    kb = load_kb(MINI_KB)
    retriever = Retriever(kb, here=cfg.dialogue.kiosk_location)
    for r in s["train"] + s["val"] + s["test"]:
        llm = RecordingLLM(r["answer"])
        d = Dialogue(cfg, kb, retriever, llm)
        d.history = [Turn(q, a) for q, a in r["history"]]
        d.topics = list(r.get("context", []))
        list(d.ask(r["question"], lang=r["lang"]))
        assert llm.prompts == [r["prompt"]], r["question"]


def test_memorised_variant_has_no_facts_and_same_questions(data, tmp_path):
    _, _, s = data
    build_dataset(MINI_KB, tmp_path, Config(), DatasetOptions(seed=3, test_per_intent=3, memorised=True))
    mem = list(read_jsonl(tmp_path / "train.jsonl"))
    assert [r["question"] for r in mem] == [r["question"] for r in s["train"]]
    assert [r["target"] for r in mem] == [r["target"] for r in s["train"]]
    assert all(not r["facts"] and "Facts:" not in r["prompt"] for r in mem)
    assert json.loads((tmp_path / "card.json").read_text())["memorised"] is True
