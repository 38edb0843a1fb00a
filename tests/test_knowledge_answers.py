"""The deterministic answers: Korean particles, every kind of entry, routes (no embeddings needed)."""
from __future__ import annotations

import re

import pytest

from campus_guide.config import SAMPLE_KB
from campus_guide.knowledge import find_route, load_kb
from campus_guide.knowledge.answers import entry_answer, has_batchim, ro, route_answer, topic
from campus_guide.prompt import language_of


@pytest.fixture(scope="module")
def kb():
    return load_kb(SAMPLE_KB)


@pytest.mark.parametrize("word, batchim, topic_form, ro_form", [
    ("도서관", True, "도서관은", "도서관으로"),
    ("학생회관", True, "학생회관은", "학생회관으로"),
    ("본부", False, "본부는", "본부로"),
    ("카페", False, "카페는", "카페로"),
    ("한빛식당", True, "한빛식당은", "한빛식당으로"),
    ("서울", True, "서울은", "서울로"),            # ㄹ takes 로
    ("IT관", True, "IT관은", "IT관으로"),
    ("2번 출구", False, "2번 출구는", "2번 출구로"),
    ("Exit 3", True, "Exit 3은", "Exit 3으로"),     # 삼
    ("Exit 2", False, "Exit 2는", "Exit 2로"),      # 이
])
def test_korean_particles(word, batchim, topic_form, ro_form):
    assert has_batchim(word) is batchim
    assert topic(word) == topic_form and word + ro(word) == ro_form


def test_every_entry_has_an_answer_in_both_languages(kb):
    for e in kb.entries():
        for lang in ("ko", "en"):
            text = entry_answer(kb, e.id, lang)
            assert e.name[lang] in text and "\n" not in text
            assert language_of(text) == lang or lang == "en", text
            sentences = [x for x in re.split(r"(?<=[.?!])\s+", text.replace("Univ.", "Univ")) if x]
            assert 1 <= len(sentences) <= 3, text
            if getattr(e, "number", None):
                assert e.number in text


def test_answer_forms(kb):
    assert entry_answer(kb, "main_gate", "en") == "Main Gate is at the south end of campus, on Hanbit-ro."
    assert entry_answer(kb, "stadium", "ko") == \
        "대운동장은 체육관 북쪽, 매표소 뒤에 있습니다. 운영 시간은 매일 06:00–22:00입니다."
    assert entry_answer(kb, "cafe_ongi", "ko").startswith("카페 온기는 후문에서 120m 떨어진 카페로, 걸어서 약 2분")
    assert entry_answer(kb, "hospital", "en").startswith("Hanbit University Hospital is a hospital 200 m from the West Gate")
    assert "an administration building" not in entry_answer(kb, "admin", "en")  # buildings say their number


def test_route_answers(kb):
    short = route_answer(kb, find_route(kb, "main_gate", "admin"), "en")
    assert short == ("It is about 3 minutes on foot (210 m) from Main Gate to Administration Building "
                     "(building 1). Follow the wide main avenue to Fountain Plaza, then walk past the "
                     "flagpoles to Administration Building.")           # the total first, then step 1
    long = route_answer(kb, find_route(kb, "main_gate", "it_building"), "ko")
    assert "국제관, 제1공학관, 공학로 사거리를 지나 제2공학관까지 간 뒤" in long   # middle landmarks collapsed
    assert long.startswith("정문에서 IT관(33번 건물)까지 걸어서 약 7분(540m) 걸립니다.")
    one = route_answer(kb, find_route(kb, "main_gate", "visitor_center"), "en")
    assert "about 1 minute on foot" in one                              # not "1 minutes"
    landmarks = route_answer(kb, find_route(kb, "main_gate", "library"), "ko", steps=False)
    assert landmarks.endswith("분수광장, 시계탑, 중앙잔디광장을 지나 중앙도서관(10번 건물)까지 가세요.")
    assert route_answer(kb, find_route(kb, "library", "library"), "en") == \
        "You are already at Central Library (building 10)."
