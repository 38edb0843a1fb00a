"""The deterministic grounded answer: what the kiosk says when the model's answer fails the
grounding check, and the basis of the training targets. Every fact in it comes from the
knowledge base, in the asker's language, in one to three sentences."""
from __future__ import annotations

import re

from ..prompt import UNKNOWN
from .retrieval import Retrieval
from .routes import Route
from .schema import Building, KnowledgeBase, Place

NAMED = ("alias", "fuzzy")    # hits where the question itself named the entry

# Sino-Korean digit readings that end in a consonant (영 일 삼 육 칠 팔), for particle choice.
_DIGIT_BATCHIM = set("013678")


def has_fact(answer: str, fact: str) -> bool:
    """Whether an answer states a fact: numbers as whole numbers ("1" is not in "10", nor "10" in
    "100"), other facts as case-insensitive text. The one test of fact accuracy (training, export)."""
    if fact.isdigit():
        return re.search(rf"(?<!\d){re.escape(fact)}(?!\d)", answer) is not None
    return fact.lower() in answer.lower()


def has_batchim(word: str) -> bool:
    """Whether the last sound of `word` is a consonant (picks 은/는, 이/가, 으로/로)."""
    for ch in reversed(word.strip()):
        code = ord(ch) - 0xAC00
        if 0 <= code < 11172:
            return code % 28 != 0
        if ch.isdigit():
            return ch in _DIGIT_BATCHIM
        if ch.isalpha():
            return ch.lower() in "lmnr"
    return False


def topic(word: str) -> str:
    return word + ("은" if has_batchim(word) else "는")


def ro(word: str) -> str:
    """The particle 으로/로 for `word` (로 after a vowel or ㄹ)."""
    last = word.strip()[-1:]
    rieul = last and 0 <= ord(last) - 0xAC00 < 11172 and (ord(last) - 0xAC00) % 28 == 8
    return "으로" if has_batchim(word) and not rieul else "로"


def _article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def compose_answer(r: Retrieval, min_score: float | None = None) -> str:
    """The answer for a retrieval: the route when one was asked for, else the best entry.
    With `min_score`, a retrieval below it gets prompt.UNKNOWN."""
    if not r.results or (min_score is not None and not r.known(min_score)):
        return UNKNOWN[r.lang]
    if r.route is not None:
        return route_answer(r.kb, r.route, r.lang)
    top = r.results[0]
    named = [h for h in r.results[1:2] if h.why in NAMED and top.why in NAMED and h.score >= top.score - 0.05]
    if named:  # "도서관이랑 체육관 어디야?": both, without hours, to stay within three sentences
        return " ".join(entry_answer(r.kb, h.id, r.lang, hours=False) for h in [top, *named])
    return entry_answer(r.kb, top.id, r.lang)


def entry_answer(kb: KnowledgeBase, id: str, lang: str, hours: bool = True) -> str:
    """Where an entry is (building number, location or the way from its gate) and its hours."""
    e = kb.get(id)
    name, ko = e.name[lang], lang == "ko"
    if isinstance(e, Building):
        s = (f"{topic(name)} {e.number}번 건물로, {e.location.ko}에 있습니다." if ko
             else f"{name} is building {e.number}, {e.location.en}.")
    elif isinstance(e, Place) and e.off_campus:
        gate, cat = kb.name(e.gate, lang), kb.category(e, lang)
        if ko:
            s = (f"{topic(name)} {gate}에서 {e.metres:g}m 떨어진 {cat}{ro(cat)}, "
                 f"걸어서 약 {e.minutes:g}분 걸립니다. {e.directions.ko} 가세요.")
        else:
            s = (f"{name} is {_article(cat)} {e.metres:g} m from the {gate}, about {e.minutes:g} "
                 f"minutes on foot. {e.directions.en}.")
        if e.transit:
            s += (" 걷기에는 멀어서 대중교통을 추천합니다: " if ko else " It is a long walk, so consider transit: ") \
                 + e.transit[lang]
    else:
        s = f"{topic(name)} {e.location.ko}에 있습니다." if ko else f"{name} is {e.location.en}."
    if e.hours and hours:
        s += f" 운영 시간은 {e.hours.ko}입니다." if ko else f" It is open {e.hours.en}."
    return s


def route_answer(kb: KnowledgeBase, route: Route, lang: str) -> str:
    """The route as one flowing sentence of landmark steps plus the totals."""
    ko = lang == "ko"
    dest = route.destination_name[lang]
    entry = kb.get(route.destination) if route.destination in {e.id for e in kb.entries()} else None
    if isinstance(entry, Building):
        dest += f"({entry.number}번 건물)" if ko else f" (building {entry.number})"
    if not route.steps:
        return f"이미 {dest}에 있습니다." if ko else f"You are already at {dest}."
    origin = route.origin_name[lang]
    first, middle, last = route.steps[0], route.steps[1:-1], route.steps[-1]
    if ko:
        parts = [_then_ko(s) for s in route.steps[:-1]]
        if len(middle) >= 2:  # the landmarks in between, so the sentence stays speakable
            past = [s.to_name.ko for s in middle[:-1]]
            parts = [_then_ko(first), f"{', '.join(past)}{'을' if has_batchim(past[-1]) else '를'} 지나 "
                                      f"{middle[-1].to_name.ko}까지 간 뒤"]
        body = ", ".join(parts + [last.text.ko]) if len(route.steps) > 1 else last.text.ko
        s = f"{origin}에서 {dest}까지는 {body} 약 {route.metres}m, 걸어서 {route.minutes}분 정도입니다."
    else:
        parts = [_lower_first(s.text.en.rstrip(".")) for s in route.steps]
        if len(middle) >= 2:
            past = [s.to_name.en for s in middle[:-1]]
            listed = past[0] if len(past) == 1 else ", ".join(past[:-1]) + " and " + past[-1]
            parts = [parts[0], f"continue past {listed} to {middle[-1].to_name.en}", parts[-1]]
        walk = ", then ".join(parts)
        s = f"From {origin} to {dest}, {walk}. It is about {route.metres} m, {route.minutes} minutes on foot."
    if route.transit:
        s += (" 걷기에는 멀어서 대중교통을 추천합니다: " if ko else " It is a long walk, so consider transit: ") \
             + route.transit[lang]
    return s


def _then_ko(step) -> str:
    """'... 분수광장까지 가세요.' -> '... 분수광장까지 간 뒤' (joins steps into one sentence)."""
    return step.text.ko.removesuffix("가세요.") + "간 뒤"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text
