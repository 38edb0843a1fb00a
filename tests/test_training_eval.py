"""Evaluation metrics on hand-made answers (no model): each must be able to fail."""
from __future__ import annotations

import pytest

from campus_guide.config import SAMPLE_KB
from campus_guide.knowledge import load_kb
from campus_guide.prompt import UNKNOWN
from campus_guide.knowledge.places import PlaceDetector
from training.evaluate import Report, bleu, chrf, evaluate, has_fact, plot_reports, rouge_l, score

KO_REF = "중앙도서관은 10번 건물로, 중앙잔디광장 북쪽에 있습니다."
EN_REF = "Central Library is building 10, north of the Central Lawn."


@pytest.fixture(scope="module")
def known():
    return PlaceDetector(load_kb(SAMPLE_KB))


def row(lang="ko", answer=KO_REF, expect=("10",), unknown=False):
    return {"id": "t-1", "split": "test_paraphrase", "type": "basic", "lang": lang,
            "question": "q", "answer": answer, "expect": list(expect), "unknown": unknown,
            "prompt": "p"}


def test_korean_overlap_scores_are_not_zero():
    close = "중앙도서관은 10번 건물이고 잔디광장 북쪽에 있어요."
    assert rouge_l(close, KO_REF) > 0.5          # rouge-score's own tokenizer would give 0 here
    assert bleu(close, KO_REF) > 0.1
    assert chrf(close, KO_REF) > 0.3
    assert rouge_l(KO_REF, KO_REF) == pytest.approx(1.0)
    assert rouge_l("체육관은 60번 건물입니다.", KO_REF) < rouge_l(close, KO_REF)


def test_fact_accuracy_needs_the_exact_number():
    assert has_fact("It is building 10.", "10")
    assert not has_fact("It is building 100.", "10")
    assert not has_fact("It is building 1.", "10")
    assert has_fact("Hanbit Pond is nearby", "hanbit pond")


def test_invented_entity_detected(known):
    assert known.invented("Central Library is next to the Student Union.") == []
    assert known.invented("Go past the Quantum Research Tower.") == ["Quantum Research Tower"]
    assert known.invented("미래융합관 옆에 있습니다.") == ["미래융합관"]
    assert known.invented("중앙도서관은 분수광장 북쪽에 있습니다.") == []


def test_wrong_language_scores_zero_and_unknown_is_checked(known):
    right = score(row(), KO_REF, True, known)
    assert right["lang_match"] == 1 and right["fact"] == 1 and right["stop"] == 1
    wrong = score(row(), EN_REF, False, known)           # right fact, wrong language
    assert wrong["lang_match"] == 0 and wrong["stop"] == 0
    assert score(row(), "", True, known)["lang_match"] == 0     # silence is no language
    unk = row(lang="en", answer=UNKNOWN["en"], expect=(), unknown=True)
    assert score(unk, UNKNOWN["en"], True, known)["fact"] == 1
    assert score(unk, "It is building 7.", True, known)["fact"] == 0


def test_report_groups_and_plot(known, tmp_path):
    kb = load_kb(SAMPLE_KB)
    rows = [row(), row(lang="en", answer=EN_REF)]
    answers = iter([(KO_REF, True), ("Go to the Quantum Research Tower.", False)])
    rep = evaluate(rows, lambda p: next(answers), kb, "hand-made", progress=False)
    assert isinstance(rep, Report) and rep.examples == 2
    assert rep.by_language["ko"]["fact"] == 1 and rep.by_language["en"]["fact"] == 0
    assert rep.overall["invented"] == 0.5 and rep.overall["stop"] == 0.5
    png = plot_reports([rep], tmp_path / "eval.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_shipped_adapter_provenance():
    import json

    from campus_guide.config import PACKAGE_DATA

    gguf, record = PACKAGE_DATA / "campus-lora.gguf", PACKAGE_DATA / "campus-lora.json"
    assert gguf.stat().st_size < 10 * 2**20
    rec = json.loads(record.read_text())
    assert rec["command"].startswith("campus-guide train default") and rec["seed"] == 0
    assert len(rec["config_hash"]) == 16 and rec["adapter_bytes"] == gguf.stat().st_size
    held = rec["heldout"]
    tuned = next(v["overall"] for k, v in held.items() if k.endswith("+ campus LoRA"))
    base = next(v["overall"] for k, v in held.items() if k.endswith("(untuned)"))
    assert tuned["fact"] > base["fact"] and tuned["stop"] > base["stop"]
    previous = [v["overall"] for k, v in held.items() if "previous" in k]
    assert all(tuned["fact"] >= p["fact"] for p in previous)   # a retrain never ships worse
    assert all("by_type" in v for v in held.values())


@pytest.mark.models
def test_shipped_adapter_answers_from_the_facts(models_dir):
    """The packaged 270M base + the shipped adapter, through the kiosk's own llama.cpp path."""
    from campus_guide.config import PACKAGE_DATA
    from campus_guide.knowledge import Retriever
    from campus_guide.prompt import render_prompt
    from training.evaluate import LlamaCppGenerator

    kb = load_kb(SAMPLE_KB)
    q = "What number is the Central Library?"
    r = Retriever(kb).retrieve(q)
    gen = LlamaCppGenerator(models_dir / "gemma3-270m-q4_k_m.gguf", PACKAGE_DATA / "campus-lora.gguf",
                            max_tokens=48)
    try:
        answer, stopped = gen(render_prompt(q, r.facts(), lang="en"))
    finally:
        gen.close()
    number = kb.get("library").number
    assert stopped and has_fact(answer, number), answer
    assert PlaceDetector(kb).invented(answer) == []
