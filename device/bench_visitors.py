"""`campus-guide bench visitors`: the questions visitors actually ask, through the kiosk's own
Dialogue (retrieval, follow-ups, clarification, social turns, the guard's fallback).

Four sets, both languages:
  needs       questions about a need, not a place ("I want to borrow a book."), written by hand
              with the places that really offer it: right = the first place named offers it
  follow-ups  a question about a place, then one that names none ("What number is it?"), also
              after a route and after the visitor-idle timeout (then it must NOT resolve)
  confusions  place names with an ASR-like confusion (a sound spelt as its neighbour, another
              first consonant, a dropped syllable, a jamo slip): right / clarified / wrong / unknown
  social      greetings, thanks, goodbyes, openers: a social reply, never the redirect

The model is left out (`NoModel`): every answer is the deterministic grounded one, so the figures
measure what the kiosk decides, not what a 270M model writes around it.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from campus_guide.config import Config
from campus_guide.knowledge import Retriever, load_kb
from campus_guide.knowledge.noise import CONFUSIONS, confuse

from .dialogue import Dialogue
from .llm import GenStats

# (question, places that offer what it asks for)
NEEDS: list[tuple[str, set[str]]] = [
    ("I want to borrow a book.", {"library"}),
    ("Where can I return a library book?", {"library"}),
    ("Is there an ATM on campus?", {"student_union", "dawn_bank"}),
    ("I need to get some cash.", {"student_union", "dawn_bank"}),
    ("I lost my wallet, where should I go?", {"visitor_center"}),
    ("I left my umbrella on the bus, is there a lost and found?", {"visitor_center"}),
    ("Where can I print my boarding pass?", {"learning_commons", "library", "copy_shop"}),
    ("I need to make some copies.", {"learning_commons", "library", "copy_shop"}),
    ("Where can I get lunch?", {"dining_hall", "student_union", "food_alley"}),
    ("I'm hungry, where can I eat?", {"dining_hall", "student_union", "food_alley"}),
    ("Where can I get a coffee?", {"cafe_ongi", "starlight_coffee", "library", "business"}),
    ("I feel sick, is there a doctor?", {"health_center", "hospital"}),
    ("Where can I swim?", {"pool"}),
    ("Where can I buy my textbooks?", {"student_union", "book_village"}),
    ("I need to send a parcel.", {"student_union", "post_office"}),
    ("Where do I register my car for parking?", {"visitor_center"}),
    ("Where can I do my laundry?", {"dorm1", "dorm2", "intl_dorm"}),
    ("I want to learn Korean.", {"global_center"}),
    ("Where can I buy tickets for the concert?", {"arts_center"}),
    ("Where can I study late at night?", {"library", "learning_commons"}),
    ("Where can I buy some medicine?", {"green_pharmacy"}),
    ("Where can I work out?", {"gym"}),
    ("I need a transcript, where do I get one?", {"admin"}),
    ("Where can I stay overnight on campus?", {"guest_house"}),
    ("책 빌리려면 어디로 가야 돼요?", {"library"}),
    ("책을 좀 빌리고 싶은데 어떻게 해야 되나요?", {"library"}),
    ("현금 인출기 있어요?", {"student_union", "dawn_bank"}),
    ("돈 좀 뽑으려고 하는데요.", {"student_union", "dawn_bank"}),
    ("지갑을 잃어버렸는데 어디로 가야 해요?", {"visitor_center"}),
    ("휴대폰을 두고 왔어요.", {"visitor_center"}),
    ("프린트할 수 있는 곳 있어요?", {"learning_commons", "library", "copy_shop"}),
    ("복사 어디서 해요?", {"learning_commons", "library", "copy_shop"}),
    ("배가 고픈데 밥 먹을 곳 있어요?", {"dining_hall", "student_union", "food_alley"}),
    ("점심 어디서 먹어요?", {"dining_hall", "student_union", "food_alley"}),
    ("커피 마실 데 있나요?", {"cafe_ongi", "starlight_coffee", "library", "business"}),
    ("머리가 아파요. 보건실 있어요?", {"health_center", "hospital"}),
    ("수영하고 싶어요.", {"pool"}),
    ("전공책은 어디서 사요?", {"student_union", "book_village"}),
    ("택배 보내려면 어디로 가요?", {"student_union", "post_office"}),
    ("주차 등록 어디서 해요?", {"visitor_center"}),
    ("빨래할 수 있는 곳 있어요?", {"dorm1", "dorm2", "intl_dorm"}),
    ("한국어 배우고 싶어요.", {"global_center"}),
    ("공연 티켓은 어디서 사요?", {"arts_center"}),
    ("밤에 공부할 곳 있어요?", {"library", "learning_commons"}),
    ("약 사려면 어디로 가요?", {"green_pharmacy"}),
    ("운동할 수 있는 곳 있어요?", {"gym"}),
    ("재학증명서 어디서 떼요?", {"admin"}),
    ("하룻밤 묵을 숙소 있어요?", {"guest_house"}),
]
FIRST = {"en": "Where is the {}?", "ko": "{} 어디 있어요?"}
ROUTE = {"en": "How do I get to the {}?", "ko": "여기서 {} 어떻게 가요?"}
FOLLOW = {"en": ["What number is it?", "When is it open?", "How long does it take to get there?",
                 "What's next to it?", "What are its hours?", "Which building number is that?"],
          "ko": ["거기 몇 번 건물이에요?", "거기 몇 시까지 해요?", "얼마나 걸려요?", "그 건물 옆에 뭐 있어요?",
                 "언제 열어요?", "거기 가는 길 알려주세요."]}
ROUTE_FOLLOW = {"en": ["How long does it take?", "How far is it?"], "ko": ["얼마나 걸려요?", "몇 분 걸려요?"]}
CONFUSED = {"en": "Where is the {}?", "ko": "{} 어디예요?"}
SOCIAL = [("hi", "greeting"), ("Hello!", "greeting"), ("thanks!", "thanks"), ("Thank you so much.", "thanks"),
          ("bye", "bye"), ("Excuse me.", "opener"), ("um", "opener"), ("안녕하세요", "greeting"),
          ("감사합니다", "thanks"), ("고마워요!", "thanks"), ("안녕히 계세요", "bye"), ("저기요", "opener"),
          ("실례합니다", "opener")]


class NoModel:
    """Stands in for the LLM: writes nothing, so the kiosk speaks its grounded answer."""
    last = GenStats()

    def fits(self, prompt: str) -> bool:
        return True

    def stream(self, prompt: str):
        return iter(())


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _place(result) -> str | None:
    """The place an answer is about: its first source (a route's destination comes first)."""
    return result.sources[0] if result.kind in ("llm", "fallback") and result.sources else None


def run_visitor_bench(cfg: Config, out: str | Path | None = None, seed: int = 0) -> dict:
    kb = load_kb(cfg.kb)
    clock = _Clock()
    dialogue = Dialogue(cfg, kb, Retriever(kb, here=cfg.dialogue.kiosk_location), NoModel(), clock=clock)
    rng = random.Random(seed)

    def ask(question: str):
        reply = dialogue.ask(question)
        list(reply)                 # spoken to the end, so the turn is remembered
        return reply.result

    def fresh() -> None:
        dialogue.reset()
        clock.t += 1

    needs = []
    for q, places in NEEDS:
        fresh()
        r = ask(q)
        needs.append({"question": q, "got": _place(r), "kind": r.kind, "right": _place(r) in places})

    follow = []
    buildings = [b for b in kb.buildings]
    for b in rng.sample(buildings, min(20, len(buildings))):
        for lang in ("en", "ko"):
            for first, templates in ((FIRST, FOLLOW), (ROUTE, ROUTE_FOLLOW)):
                fresh()
                ask(first[lang].format(b.name[lang]))
                q = rng.choice(templates[lang])
                r = ask(q)
                follow.append({"after": first[lang].format(b.name[lang]), "question": q, "want": b.id,
                               "got": _place(r), "kind": r.kind, "right": _place(r) == b.id})
    idle = []
    for b in rng.sample(buildings, 10):
        fresh()
        ask(FIRST["en"].format(b.name.en))
        clock.t += cfg.dialogue.session_timeout_s + 1
        r = ask(rng.choice(FOLLOW["en"]))
        idle.append({"want_not": b.id, "got": _place(r), "kind": r.kind, "right": _place(r) != b.id})

    confusions, outcomes = [], Counter()
    for e in kb.entries():
        for lang in ("en", "ko"):
            for kind in CONFUSIONS:
                heard = confuse(e.name[lang], kind, rng)
                if heard == e.name[lang]:
                    continue
                fresh()
                r = ask(CONFUSED[lang].format(heard))
                got = _place(r)
                outcome = ("clarified" if r.kind == "clarify" else "right" if got == e.id
                           else "wrong" if got else "unknown")
                outcomes[outcome] += 1
                confusions.append({"name": e.name[lang], "heard": heard, "kind": kind, "want": e.id,
                                   "got": got, "outcome": outcome})

    social = []
    for q, kind in SOCIAL:
        fresh()
        r = ask(q)
        social.append({"question": q, "kind": r.kind, "right": r.kind == "social"})

    rate = lambda rows: round(sum(x["right"] for x in rows) / len(rows), 3)  # noqa: E731
    n = sum(outcomes.values())
    report = {
        "needs": rate(needs), "needs_n": len(needs),
        "follow_ups": rate(follow), "follow_ups_n": len(follow),
        "idle_timeout_respected": rate(idle), "idle_n": len(idle),
        "confusions": {k: round(outcomes[k] / n, 3) for k in ("right", "clarified", "wrong", "unknown")},
        "confusions_n": n,
        "social": rate(social), "social_n": len(social),
        "rows": {"needs": needs, "follow_ups": follow, "idle": idle, "confusions": confusions,
                 "social": social},
    }
    if out:
        Path(out).write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return report


def format_report(report: dict) -> str:
    c = report["confusions"]
    lines = [
        f"needs answered with a right place   {report['needs']:.3f}  (n={report['needs_n']})",
        f"follow-ups resolved from memory     {report['follow_ups']:.3f}  (n={report['follow_ups_n']})",
        f"after the idle timeout, not resolved {report['idle_timeout_respected']:.3f}  (n={report['idle_n']})",
        f"confused names (n={report['confusions_n']}): right {c['right']:.3f}  clarified {c['clarified']:.3f}"
        f"  wrong {c['wrong']:.3f}  unknown {c['unknown']:.3f}",
        f"social turns answered socially      {report['social']:.3f}  (n={report['social_n']})",
    ]
    misses = [r for r in report["rows"]["needs"] + report["rows"]["follow_ups"] if not r["right"]]
    wrong = [r for r in report["rows"]["confusions"] if r["outcome"] == "wrong"]
    for r in misses[:10]:
        lines.append(f"  miss: {r['question']!r} -> {r['got']} ({r['kind']})")
    for r in wrong[:10]:
        lines.append(f"  wrong: {r['heard']!r} ({r['kind']}, want {r['want']}) -> {r['got']}")
    return "\n".join(lines)
