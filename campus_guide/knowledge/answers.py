"""Every sentence the kiosk composes about the campus, in one place: the deterministic grounded
answer it speaks when the model's answer fails the guard, and the training targets the model
learns from (`training/dataset.py` calls these writers). One writer per kind of sentence, so the
fallback and the fine-tune can never drift apart. Every fact comes from the knowledge base, in
the asker's language, in one to three sentences."""
from __future__ import annotations

import re

from ..korean import has_batchim, obj, ro, topic
from ..prompt import UNKNOWN
from .retrieval import Retrieval
from .routes import Route
from .schema import Building, KnowledgeBase, Place

NAMED = ("alias", "fuzzy")    # hits where the question itself named the entry


def has_fact(answer: str, fact: str) -> bool:
    """Whether an answer states a fact: numbers as whole numbers ("1" is not in "10", nor "10" in
    "100"), other facts as case-insensitive text. The one test of fact accuracy (training, export)."""
    if fact.isdigit():
        return re.search(rf"(?<!\d){re.escape(fact)}(?!\d)", answer) is not None
    return fact.lower() in answer.lower()


def split_sentences_plain(text: str) -> list[str]:
    """Sentences of a finished answer (the streaming splitter is the device's)."""
    return [x for x in re.split(r"(?<=[.?!])\s+", text.strip()) if x]


def _article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def and_list(items) -> str:
    """'A', 'A and B', 'A, B and C'."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def building_tag(e, lang: str) -> str:
    """' (building 10)' / '(10번 건물)' after a building's name; nothing for other entries."""
    if not isinstance(e, Building):
        return ""
    return f"({e.number}번 건물)" if lang == "ko" else f" (building {e.number})"


def transit(text: str, lang: str) -> str:
    """The one transit sentence, appended to answers about far places."""
    return (" 걷기에는 멀어서 대중교통을 추천합니다: " if lang == "ko"
            else " It is a long walk, so consider transit: ") + text


def compose_answer(r: Retrieval, min_score: float | None = None) -> str:
    """The answer for a retrieval: the route when one was asked for, else the best entry.
    With `min_score`, a retrieval below it gets prompt.UNKNOWN."""
    if not r.results or (min_score is not None and not r.known(min_score)):
        return UNKNOWN[r.lang]
    if r.service is not None:
        places = [h.id for h in r.results if h.why == "service"]
        return service_answer(r.kb, r.service, places, r.minutes, r.lang)
    if r.route is not None:
        return route_answer(r.kb, r.route, r.lang)
    top = r.results[0]
    named = [h for h in r.results[1:2] if h.why in NAMED and top.why in NAMED and h.score >= top.score - 0.05]
    if named:  # "도서관이랑 체육관 어디야?": both, without hours, to stay within three sentences
        return " ".join(entry_answer(r.kb, h.id, r.lang, hours=False) for h in [top, *named])
    return entry_answer(r.kb, top.id, r.lang)


# --- one entry ------------------------------------------------------------------------------------

def where_answer(kb: KnowledgeBase, id: str, lang: str) -> str:
    """Where an entry is: building number and location, or the way from its gate."""
    e = kb.get(id)
    name, ko = e.name[lang], lang == "ko"
    if isinstance(e, Building):
        return (f"{topic(name)} {e.number}번 건물로, {e.location.ko}에 있습니다." if ko
                else f"{name} is building {e.number}, {e.location.en}.")
    if isinstance(e, Place) and e.off_campus:
        gate, cat = kb.name(e.gate, lang), kb.category(e, lang)
        if ko:
            s = (f"{topic(name)} {gate}에서 {e.metres:g}m 떨어진 {cat}{ro(cat)}, "
                 f"걸어서 약 {e.minutes:g}분 걸립니다. {e.directions.ko} 가세요.")
        else:
            s = (f"{name} is {_article(cat)} {e.metres:g} m from the {gate}, about "
                 f"{minutes_text(e.minutes, 'en')} on foot. {e.directions.en}.")
        return s + (transit(e.transit[lang], lang) if e.transit else "")
    return f"{topic(name)} {e.location.ko}에 있습니다." if ko else f"{name} is {e.location.en}."


def entry_answer(kb: KnowledgeBase, id: str, lang: str, hours: bool = True) -> str:
    """Where an entry is and, with `hours`, when it is open."""
    e = kb.get(id)
    s = where_answer(kb, id, lang)
    if e.hours and hours:
        s += f" 운영 시간은 {e.hours.ko}입니다." if lang == "ko" else f" It is open {e.hours.en}."
    return s


def number_answer(kb: KnowledgeBase, id: str, lang: str) -> str:
    e = kb.get(id)
    return (f"{topic(e.name.ko)} {e.number}번 건물입니다." if lang == "ko"
            else f"{e.name.en} is building {e.number}.")


def hours_answer(kb: KnowledgeBase, id: str, lang: str) -> str:
    e = kb.get(id)
    name = e.name[lang] + building_tag(e, lang)
    return f"{name}의 운영 시간은 {e.hours.ko}입니다." if lang == "ko" else f"{name} is open {e.hours.en}."


def facilities_answer(kb: KnowledgeBase, id: str, lang: str) -> str:
    e = kb.get(id)
    name = e.name[lang] + building_tag(e, lang)
    if lang == "ko":
        items = ", ".join(e.facilities["ko"])
        return f"{name}에는 {items}{'이' if has_batchim(items) else '가'} 있습니다."
    return f"{name} has {and_list(e.facilities['en'])}."


def number_and_hours_answer(kb: KnowledgeBase, id: str, lang: str) -> str:
    e = kb.get(id)
    return (f"{topic(e.name.ko)} {e.number}번 건물이고, 운영 시간은 {e.hours.ko}입니다." if lang == "ko"
            else f"{e.name.en} is building {e.number}, and it is open {e.hours.en}.")


def numbers_answer(kb: KnowledgeBase, a: str, b: str, lang: str) -> str:
    """Two buildings' numbers in one sentence."""
    x, y = kb.get(a), kb.get(b)
    return (f"{topic(x.name.ko)} {x.number}번 건물이고, {topic(y.name.ko)} {y.number}번 건물입니다."
            if lang == "ko" else f"{x.name.en} is building {x.number}, and {y.name.en} is building {y.number}.")


def minutes_text(n: float, lang: str) -> str:
    """'1 minute' / '4 minutes' / '4분'."""
    if lang == "ko":
        return f"{n:g}분"
    return f"{n:g} minute" + ("" if n == 1 else "s")


def _place(kb: KnowledgeBase, id: str, lang: str) -> str:
    return kb.get(id).name[lang] + building_tag(kb.get(id), lang)


def service_answer(kb: KnowledgeBase, service, places: list[str], minutes: dict[str, int],
                   lang: str) -> str:
    """What, where and how far, nearest place first, and one alternative:
    "You can borrow books at Central Library (building 10), about 6 minutes from here." """
    first, *rest = places
    if lang == "ko":
        s = (f"{topic(service.what.ko)} {_place(kb, first, 'ko')}에서 할 수 있어요. "
             f"여기서 걸어서 약 {minutes_text(minutes[first], 'ko')} 걸립니다.")
        if rest:
            s += f" {_place(kb, rest[0], 'ko')}에서도 할 수 있어요(걸어서 약 {minutes_text(minutes[rest[0]], 'ko')})."
        return s
    s = (f"You can {service.what.en} at {_place(kb, first, 'en')}, about "
         f"{minutes_text(minutes[first], 'en')} from here.")
    if rest:
        s += f" {_place(kb, rest[0], 'en')} has it too, about {minutes_text(minutes[rest[0]], 'en')} away."
    return s


def clarify_question(kb: KnowledgeBase, id: str, lang: str) -> str:
    """The kiosk's question when it is not sure which place was meant."""
    name = kb.get(id).name[lang]
    if lang == "ko":
        return f"{name} 말씀이세요?"
    the = "" if name.startswith(("Hanbit", "The ")) or "'" in name else "the "
    return f"Did you mean {the}{name}?"


# What the kiosk says to social words; a greeting invites the question.
SOCIAL_REPLIES = {
    "greeting": {"en": "Hello! I'm the campus guide. Ask me where a building is or how to get there.",
                 "ko": "안녕하세요! 캠퍼스 안내원입니다. 건물 위치나 가는 길을 물어보세요."},
    "thanks": {"en": "You're welcome! Anything else?", "ko": "천만에요. 더 궁금한 게 있으세요?"},
    "bye": {"en": "Goodbye, have a nice day!", "ko": "안녕히 가세요. 좋은 하루 보내세요!"},
    "opener": {"en": "Yes? How can I help you?", "ko": "네, 무엇을 도와드릴까요?"},
}
WHICH_PLACE = {"en": "Sorry about that. Which place are you looking for?",
               "ko": "죄송해요. 어느 곳을 찾으세요?"}


def social_reply(kind: str, lang: str) -> str:
    return SOCIAL_REPLIES[kind][lang]


# --- routes ---------------------------------------------------------------------------------------

def route_answer(kb: KnowledgeBase, route: Route, lang: str, steps: bool = True) -> str:
    """A route: the total walk first (what a visitor decides on), then the way, first step first.

    `steps`: every walking instruction (the kiosk's own answer: it knows the whole path);
    otherwise only the landmarks of the route's grounding fact, which is all the model's prompt
    holds (its training target)."""
    ko = lang == "ko"
    dest = route.destination_name[lang]
    entry = kb.get(route.destination) if route.destination in {e.id for e in kb.entries()} else None
    dest += building_tag(entry, lang)
    if not route.steps:
        return f"이미 {dest}에 있습니다." if ko else f"You are already at {dest}."
    origin, m, mins = route.origin_name[lang], route.metres, route.minutes
    if ko:
        walk = _walk_steps(route, lang) if steps else _walk_landmarks(route, lang, dest)
        s = f"{origin}에서 {dest}까지 걸어서 약 {minutes_text(mins, lang)}({m}m) 걸립니다. {walk}"
    else:
        walk = _walk_steps(route, lang) if steps else _walk_landmarks(route, lang, dest)
        s = (f"It is about {minutes_text(mins, lang)} on foot ({m} m) from {origin} to {dest}. "
             f"{walk[:1].upper()}{walk[1:]}.")
    return s + (transit(route.transit[lang], lang) if route.transit else "")


def _walk_steps(route: Route, lang: str) -> str:
    first, middle, last = route.steps[0], route.steps[1:-1], route.steps[-1]
    if lang == "ko":
        parts = [_then_ko(s) for s in route.steps[:-1]]
        if len(middle) >= 2:  # the landmarks in between, so the sentence stays speakable
            past = [s.to_name.ko for s in middle[:-1]]
            parts = [_then_ko(first), f"{obj(', '.join(past))} 지나 {middle[-1].to_name.ko}까지 간 뒤"]
        return ", ".join(parts + [last.text.ko]) if len(route.steps) > 1 else last.text.ko
    parts = [_lower_first(s.text.en.rstrip(".")) for s in route.steps]
    if len(middle) >= 2:
        past = [s.to_name.en for s in middle[:-1]]
        parts = [parts[0], f"continue past {and_list(past)} to {middle[-1].to_name.en}", parts[-1]]
    return ", then ".join(parts)


def _walk_landmarks(route: Route, lang: str, dest: str) -> str:
    via = [s.to_name[lang] for s in route.steps[:-1]]
    if lang == "ko":
        return f"{obj(', '.join(via))} 지나 {dest}까지 가세요." if via else f"{dest}까지 바로 가세요."
    return f"go past {and_list(via)} to {dest}" if via else f"go straight to {dest}"


def _then_ko(step) -> str:
    """'... 분수광장까지 가세요.' -> '... 분수광장까지 간 뒤' (joins steps into one sentence)."""
    return step.text.ko.removesuffix("가세요.") + "간 뒤"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text
