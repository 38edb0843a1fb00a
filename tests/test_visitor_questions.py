"""What visitors actually ask, through the real Dialogue and retriever on the sample campus:
needs instead of names, follow-ups, misheard names and the "Did you mean ...?" round trip,
social turns, and a guard that checks the structure of an answer. The model is a scripted
stand-in where a test needs it to say something wrong on cue; elsewhere it writes nothing and
the kiosk speaks its grounded answer."""
from __future__ import annotations

import pytest
import yaml

from campus_guide.config import SAMPLE_KB, Config
from campus_guide.knowledge import KBError, load_kb
from campus_guide.knowledge.answers import minutes_text, service_answer
from device.bench_visitors import NEEDS, NoModel, run_visitor_bench
from device.dialogue import Dialogue
from device.llm import GenStats


class Scripted:
    """Says one fixed answer, in small pieces."""

    def __init__(self, text: str):
        self.text, self.last = text, GenStats()

    def fits(self, prompt):
        return True

    def stream(self, prompt):
        for i in range(0, len(self.text), 4):
            yield self.text[i:i + 4]


class Clock:
    t = 100.0

    def __call__(self):
        return self.t


@pytest.fixture
def kiosk(kb, retriever):
    clock = Clock()
    return Dialogue(Config(), kb, retriever, NoModel(), clock=clock), clock


def say(d, question):
    reply = d.ask(question)
    return " ".join(reply), reply.result


@pytest.mark.parametrize("question, places", [n for n in NEEDS if n[0] in (
    "I want to borrow a book.", "Is there an ATM on campus?", "I lost my wallet, where should I go?",
    "책 빌리려면 어디로 가야 돼요?", "배가 고픈데 밥 먹을 곳 있어요?", "책을 좀 빌리고 싶은데 어떻게 해야 되나요?")])
def test_a_need_is_answered_with_a_place_that_offers_it(kiosk, kb, question, places):
    d, _ = kiosk
    text, r = say(d, question)
    assert r.kind == "fallback" and r.sources[0] in places, (text, r.sources)
    assert kb.get(r.sources[0]).name[r.lang] in text
    assert ("분" if r.lang == "ko" else "minute") in text       # how far, from here
    assert "Sorry" not in text and "죄송" not in text            # no refusal before the fact


def test_several_places_nearest_first_with_one_alternative(kb, retriever):
    r = retriever.retrieve("Where can I print?")
    places = [h.id for h in r.results if h.why == "service"]
    minutes = [r.minutes[p] for p in places]
    assert r.service.id == "print" and minutes == sorted(minutes)
    text = service_answer(kb, r.service, places, r.minutes, "en")
    assert text.startswith(f"You can print and copy at {kb.get(places[0]).name.en}")
    assert kb.get(places[1]).name.en in text and kb.get(places[2]).name.en not in text


def test_a_place_named_beats_a_need(retriever):
    r = retriever.retrieve("Can I borrow books at the Student Union?")
    assert r.service is None and r.results[0].id == "student_union"


@pytest.mark.parametrize("first, follow, want", [
    ("Where is the swimming pool?", "What number is it?", "pool"),
    ("여기서 도서관 어떻게 가?", "How long does it take?", "library"),
    ("학술정보관 어디 있어요?", "거기 몇 번 건물이에요?", "learning_commons"),
    ("Where is the gym?", "When does it open?", "gym"),
])
def test_a_follow_up_resolves_against_the_last_place(kiosk, first, follow, want):
    d, _ = kiosk
    say(d, first)
    text, r = say(d, follow)
    assert r.kind == "fallback" and r.sources[0] == want, text


def test_a_follow_up_after_a_route_keeps_the_route(kiosk):
    d, _ = kiosk
    say(d, "여기서 도서관 어떻게 가?")
    text, r = say(d, "얼마나 걸려요?")
    assert r.sources[0] == "library" and "6분" in text and "440m" in text


def test_a_new_place_in_a_follow_up_wins(kiosk):
    d, _ = kiosk
    say(d, "Where is the gym?")
    _, r = say(d, "그럼 도서관은요?")
    assert r.sources[0] == "library"


def test_after_the_idle_timeout_a_follow_up_no_longer_resolves(kiosk):
    d, clock = kiosk
    say(d, "Where is the swimming pool?")
    clock.t += Config().dialogue.session_timeout_s + 1
    text, r = say(d, "What number is it?")
    assert r.kind in ("unknown", "redirect") and "61" not in text


@pytest.mark.parametrize("question", ["which building number is it?", "What number is it?", "몇 번 건물이에요?"])
def test_generic_words_never_pick_a_building(kiosk, question):
    d, _ = kiosk
    text, r = say(d, question)                 # no earlier turn to point back to
    assert r.kind in ("unknown", "redirect") and not r.sources, text


def test_misheard_name_is_asked_about_then_yes_answers_the_question(kiosk):
    d, _ = kiosk
    text, r = say(d, "where is the Law Scoop")
    assert r.kind == "clarify" and text == "Did you mean the Central Lawn?"
    text, r = say(d, "yes")
    assert r.kind == "fallback" and r.sources == ["central_lawn"]


def test_clarification_no_then_a_name(kiosk):
    d, _ = kiosk
    say(d, "where is the Law Scoop")
    text, r = say(d, "no, the law school")
    assert r.sources[0] == "law" and "building 23" in text
    d2 = Dialogue(Config(), d.kb, d.retriever, NoModel(), clock=Clock())
    say(d2, "where is the Law Scoop")
    text, r = say(d2, "아니요")
    assert r.kind == "clarify" and "어느 곳" in text


def test_clarification_then_another_question_or_silence(kiosk):
    d, clock = kiosk
    say(d, "where is the Law Scoop")
    _, r = say(d, "Where is the gym?")          # a different question: the pending one is dropped
    assert r.sources[0] == "gym" and d.pending is None
    say(d, "실내쑤영장 어디예요?")
    assert d.pending is not None
    clock.t += Config().dialogue.session_timeout_s + 1
    text, r = say(d, "yes")                     # a new visitor's "yes" confirms nothing
    assert r.kind != "fallback" and d.pending is None


def test_korean_clarification_question(kiosk):
    d, _ = kiosk
    text, r = say(d, "실내쑤영장 어디예요?")
    assert r.kind == "clarify" and text == "실내수영장 말씀이세요?"
    text, r = say(d, "네")
    assert r.sources == ["pool"] and "61번 건물" in text


@pytest.mark.parametrize("said, kind, reply", [
    ("hi", "greeting", "Ask me where a building is"),
    ("thanks!", "thanks", "You're welcome"),
    ("Goodbye!", "bye", "Goodbye"),
    ("Excuse me.", "opener", "How can I help"),
    ("안녕하세요", "greeting", "물어보세요"),
    ("감사합니다", "thanks", "천만에요"),
    ("저기요", "opener", "무엇을 도와드릴까요"),
])
def test_social_turns_get_a_social_reply(kiosk, said, kind, reply):
    d, _ = kiosk
    text, r = say(d, said)
    assert r.kind == "social" and reply in text


def test_an_opener_before_a_question_is_not_the_question(kiosk):
    d, _ = kiosk
    text, r = say(d, "Excuse me, where is the library?")
    assert r.sources[0] == "library" and "building 10" in text
    _, r = say(d, "실례합니다, 체육관 어디예요?")
    assert r.sources[0] == "gym"


def test_off_topic_is_still_redirected(kiosk):
    d, _ = kiosk
    _, r = say(d, "What's the weather like today?")
    assert r.kind == "redirect"


# --- a guard that checks structure -----------------------------------------------------------

def guarded(kb, retriever, question, model_says):
    d = Dialogue(Config(), kb, retriever, Scripted(model_says), clock=Clock())
    return say(d, question)


def test_a_route_that_walks_past_the_destination_is_never_spoken(kb, retriever):
    wrong = "정문에서 분수광장, 시계탑, 중앙잔디광장, 중앙도서관을 지나 정문(440m)까지 가세요. 6분 걸립니다."
    text, r = guarded(kb, retriever, "여기서 도서관 어떻게 가?", wrong)
    assert r.kind == "fallback" and "out of order" in r.guard
    assert "정문(440m)까지" not in text and text.startswith("정문에서 중앙도서관(10번 건물)까지 걸어서 약 6분")


def test_a_route_answer_in_order_passes(kb, retriever):
    right = "From Main Gate, go past Fountain Plaza, Clock Tower and Central Lawn to Central Library. It takes about 6 minutes."
    text, r = guarded(kb, retriever, "How do I get to the library?", right)
    assert r.kind == "llm" and r.guard is None and text == right


def test_a_route_answer_that_never_names_the_destination_is_completed(kb, retriever):
    vague = "Go past Fountain Plaza and the Clock Tower. It takes about 6 minutes."
    text, r = guarded(kb, retriever, "How do I get to the library?", vague)
    assert r.kind == "fallback" and "destination" in r.guard and "Central Library" in text


def test_a_building_given_another_buildings_number_is_refused(kb, retriever):
    text, r = guarded(kb, retriever, "Where are the library and the gym?",
                      "Central Library is building 60. The Gymnasium is building 10.")
    assert r.kind == "fallback" and "not Central Library's number" in r.guard
    assert "Central Library is building 60" not in text


# --- sentences ---------------------------------------------------------------------------------

def test_number_agreement_and_particles(kb, retriever):
    assert minutes_text(1, "en") == "1 minute" and minutes_text(4, "en") == "4 minutes"
    r = retriever.retrieve("I lost my wallet, where should I go?")
    text = service_answer(kb, r.service, ["visitor_center"], r.minutes, "en")
    assert "about 1 minute from here" in text
    r = retriever.retrieve("배가 고픈데 밥 먹을 곳 있어요?")
    assert service_answer(kb, r.service, ["dining_hall"], r.minutes, "ko").startswith("식사는 ")
    r = retriever.retrieve("현금 인출기 있어요?")
    assert service_answer(kb, r.service, ["student_union"], r.minutes, "ko").startswith("현금 인출은 ")


# --- the knowledge base's service list ----------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (lambda s: s[0].update(at=["no_such_place"]), r"services\[0\] \(id=borrow_books\): at: 'no_such_place' is not"),
    (lambda s: s[1].update(words={"ko": ["공부"], "en": []}), r"services\[1\] \(id=study\): words.en: give at least one"),
    (lambda s: s[2].pop("what"), r"services\[2\] \(id=print\): what: missing"),
    (lambda s: s[3].update(id="Cash!"), r"services\[3\]( \(id=Cash!\))?: id: 'Cash!' must be lowercase"),
    (lambda s: s[4].update(colour="red"), r"services\[4\] \(id=lost_property\): colour: unknown key"),
])
def test_a_malformed_service_names_the_entry_and_field(tmp_path, change, message):
    data = yaml.safe_load(SAMPLE_KB.read_text(encoding="utf-8"))
    change(data["services"])
    bad = tmp_path / "campus.yaml"
    bad.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(KBError, match=message):
        load_kb(bad)


def test_visitor_benchmark_meets_its_goals(tmp_path):
    """The generated sets of `campus-guide bench visitors` (the figures in docs/knowledge.md)."""
    report = run_visitor_bench(Config(), tmp_path / "visitors.json")
    assert report["needs"] >= 0.95 and report["follow_ups"] >= 0.95
    assert report["idle_timeout_respected"] == 1.0 and report["social"] == 1.0
    assert report["confusions"]["wrong"] <= 0.01
    assert (tmp_path / "visitors.json").is_file()
