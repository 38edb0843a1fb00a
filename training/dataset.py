"""Knowledge base -> grounded question/answer examples, rendered exactly as the kiosk renders them.

Every question goes through the device's own Retriever (same kiosk location, same k, same
min_score) and the prompt is `render_prompt(question, retrieval.facts(), history, lang)`: training
and the kiosk see the same text. A question the retriever would not answer with the model
(below min_score, or about the wrong entry) is dropped and counted in the dataset card, because the
kiosk never shows such a prompt to the model.

Targets are short and say only what the facts in the prompt say; every answer about a building
names its number and every route answer its minutes (the device's grounding guard asks for both).
Route targets name the landmarks of the route fact, not the per-edge walking instructions, which
the prompt does not contain.

Splits (what generalisation each measures):
  train / val       the training phrasings of the training intents (val: random 8 %)
  test_paraphrase   one held-out phrasing of every training intent (same facts, new wording)
  test_template     whole intents never trained on (`HELD_OUT_INTENTS`)
test.jsonl holds both test splits (field `split`).
"""
from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from campus_guide.config import Config
from campus_guide.knowledge import Building, KnowledgeBase, Place, Retriever, load_kb
from campus_guide.knowledge import answers as A
from campus_guide.intents import asks_about_a_place, points_back
from campus_guide.knowledge.noise import add_noise
from campus_guide.korean import has_hangul, obj, subject, topic, wa
from campus_guide.prompt import UNKNOWN, Turn, render_prompt, render_target

log = logging.getLogger(__name__)

TYPES = ("basic", "route", "location", "complex", "need", "followup", "unknown")
HELD_OUT_INTENTS = ("route_time", "basic_facilities")
NOISE_RATE = 0.25           # share of training questions with a typo or an ASR-like slip
VAL_RATE = 0.08


def ko_forms(name: str) -> dict[str, str]:
    """`{n}` and its particle forms for Korean templates."""
    return {"n": name, "n_topic": topic(name), "n_subj": subject(name), "n_obj": obj(name)}


# --- question templates: intent -> language -> phrasings ---------------------------------------------
# The last phrasing of every intent is held out (test_paraphrase); HELD_OUT_INTENTS entirely.

Q = {
    "basic_number": {
        "en": ["What number is the {n}?", "Which building number is the {n}?",
               "What's the building number of the {n}?", "Tell me the building number of the {n}.",
               "The {n} is which building number?"],
        "ko": ["{n_topic} 몇 번 건물이에요?", "{n} 건물 번호가 뭐예요?", "{n_subj} 몇 번 건물인가요?",
               "{n} 건물 번호 알려주세요.", "{n_topic} 몇 동이에요?"],
    },
    "basic_hours": {
        "en": ["When is the {n} open?", "What are the opening hours of the {n}?",
               "What time does the {n} open?", "Until when is the {n} open?",
               "What are the {n}'s hours?"],
        "ko": ["{n_topic} 언제 열어요?", "{n} 운영 시간이 어떻게 돼요?", "{n_topic} 몇 시에 문을 열어요?",
               "{n} 몇 시까지 해요?", "{n} 이용 시간 알려주세요."],
    },
    "basic_facilities": {
        "en": ["What is in the {n}?", "What can I find in the {n}?", "What facilities does the {n} have?"],
        "ko": ["{n}에는 뭐가 있어요?", "{n}에 어떤 시설이 있나요?", "{n} 안에 뭐가 있어요?"],
    },
    "location_where": {
        "en": ["Where is the {n}?", "Where can I find the {n}?", "Where's the {n} located?",
               "I'm looking for the {n}.", "Do you know where the {n} is?"],
        "ko": ["{n_topic} 어디에 있어요?", "{n} 어디예요?", "{n_subj} 어디 있나요?",
               "{n_obj} 찾고 있어요.", "{n} 위치 알려주세요."],
    },
    "location_near": {
        "en": ["What is next to the {n}?", "What's near the {n}?", "What is the {n} close to?",
               "What's around the {n}?"],
        "ko": ["{n} 옆에는 뭐가 있어요?", "{n} 근처에 뭐가 있어요?", "{n_topic} 어디 근처예요?",
               "{n} 주변에 뭐가 있나요?"],
    },
    "route_here": {
        "en": ["How do I get to the {n}?", "How can I get to the {n} from here?",
               "Can you give me directions to the {n}?", "What's the way to the {n}?",
               "Please guide me to the {n}."],
        "ko": ["{n} 어떻게 가요?", "여기서 {n}까지 어떻게 가나요?", "{n} 가는 길 알려주세요.",
               "{n}에 가려면 어떻게 해야 돼요?", "{n}까지 길 좀 안내해 주세요."],
    },
    "route_time": {
        "en": ["How long does it take to walk to the {n}?", "How many minutes is it to walk to the {n}?"],
        "ko": ["{n}까지 걸어서 얼마나 걸려요?", "{n}까지 가는 길은 몇 분 걸려요?"],
    },
    "route_between": {
        "en": ["How do I get from the {a} to the {b}?", "What's the way from the {a} to the {b}?",
               "Directions from the {a} to the {b}, please.", "How can I walk from the {a} to the {b}?"],
        "ko": ["{a}에서 {b}까지 어떻게 가요?", "{a}에서 {b} 가는 길 알려주세요.",
               "{a}에서 {b}까지 가는 방법 알려주세요.", "{a}에서 {b}까지 경로 좀 알려주세요."],
    },
    "complex_two_facts": {
        "en": ["What number is the {n} and when is it open?",
               "Which building is the {n}, and what are its hours?",
               "Tell me the building number and opening hours of the {n}."],
        "ko": ["{n_topic} 몇 번 건물이고 언제 열어요?", "{n} 건물 번호랑 운영 시간 알려주세요.",
               "{n_topic} 몇 번 건물이고 몇 시까지 해요?"],
    },
    "complex_two_buildings": {
        "en": ["What are the building numbers of the {a} and the {b}?",
               "Which building numbers are the {a} and the {b}?",
               "Tell me the numbers of the {a} and the {b}."],
        "ko": ["{a_wa} {b} 몇 번 건물이에요?", "{a_wa} {b} 건물 번호 알려주세요.",
               "{a_wa} {b_topic} 각각 몇 번 건물인가요?"],
    },
    "complex_followup": {   # a second turn about another building, asked the way the first was
        "en": ["And what about the {n}?", "What about the {n}?", "And the {n}?"],
        "ko": ["{n_topic}요?", "그럼 {n_topic}요?", "{n}도 알려주세요."],
    },
    "need_where": {         # a need, not a place: {w} is what the service is (answers.service_answer)
        "en": ["Where can I {w}?", "I want to {w}.", "Is there somewhere I can {w}?", "Where do I go to {w}?"],
        "ko": ["{w_topic} 어디서 할 수 있어요?", "{w} 어디서 해요?", "{w} 할 수 있는 곳 있어요?",
               "{w_topic} 어디로 가면 돼요?"],
    },
    "followup_number": {    # after "Where is the {n}?": a question that names no place
        "en": ["What number is it?", "Which building number is that?", "What's its building number?",
               "And its number?"],
        "ko": ["거기 몇 번 건물이에요?", "그 건물 번호가 뭐예요?", "거기 건물 번호 알려주세요.", "그럼 거기는 몇 번이에요?"],
    },
    "followup_route": {
        "en": ["How do I get there?", "How long does it take to get there?", "Can you tell me the way there?",
               "How far is it?"],
        "ko": ["거기 어떻게 가요?", "거기까지 얼마나 걸려요?", "거기 가는 길 알려주세요.", "그럼 거기는 어떻게 가요?"],
    },
    "unknown_missing": {    # about a real entry, asking what the knowledge base does not say
        "en": ["What is the phone number of the {n}?", "Who is in charge of the {n}?",
               "When was the {n} built?", "How many floors does the {n} have?",
               "What's the email address of the {n}?"],
        "ko": ["{n} 전화번호가 뭐예요?", "{n} 책임자가 누구예요?", "{n_topic} 언제 지어졌어요?",
               "{n_topic} 몇 층까지 있어요?", "{n} 이메일 주소 알려주세요."],
    },
}

INTENT_TYPE = {i: i.split("_", 1)[0] for i in Q}


# --- answers: campus_guide.knowledge.answers writes every sentence ---------------------------------------

def answer_for(kb: KnowledgeBase, intent: str, ids: list[str], lang: str, r) -> str:
    """The grounded target for an intent about `ids`: the kiosk's own answer writer, so the
    model learns exactly what the kiosk says without it. Routes name only the landmarks of the
    route fact (the per-step instructions are not in the prompt)."""
    if intent.startswith("unknown"):
        return UNKNOWN[lang]
    if intent in ("basic_number", "complex_followup", "followup_number"):
        return A.number_answer(kb, ids[0], lang)
    if intent == "need_where":
        return A.compose_answer(r)
    if intent == "basic_hours":
        return A.hours_answer(kb, ids[0], lang)
    if intent == "basic_facilities":
        return A.facilities_answer(kb, ids[0], lang)
    if intent in ("location_where", "location_near"):
        return A.where_answer(kb, ids[0], lang)
    if intent.startswith("route") or intent == "followup_route":
        return A.route_answer(kb, r.route, lang, steps=False)
    if intent == "complex_two_facts":
        return A.number_and_hours_answer(kb, ids[0], lang)
    if intent == "complex_two_buildings":
        return A.numbers_answer(kb, ids[0], ids[1], lang)
    raise ValueError(f"no answer rule for intent {intent!r}")


def expected_facts(kb: KnowledgeBase, intent: str, ids: list[str], lang: str, r) -> list[str]:
    """Strings a correct answer must contain (fact accuracy): numbers, minutes, a named
    neighbour or an hour."""
    if intent.startswith("unknown"):
        return []
    if intent.startswith("route") or intent == "followup_route":
        return [str(r.route.minutes)]
    if intent == "need_where":
        first = next(h.id for h in r.results if h.why == "service")
        e = kb.get(first)
        return [e.number if isinstance(e, Building) else e.name[lang], str(r.minutes[first])]
    out = []
    for i in ids:
        e = kb.get(i)
        if isinstance(e, Building):
            out.append(e.number)
        if intent in ("basic_hours", "complex_two_facts") and e.hours:
            out.append(re.findall(r"\d{1,2}:\d{2}", e.hours[lang])[0])
        if intent == "basic_facilities" and isinstance(e, Building):
            out.append(e.facilities[lang][0])
        if intent in ("location_where", "location_near") and not isinstance(e, Building):
            if isinstance(e, Place) and e.off_campus:
                out.append(f"{e.minutes:g}")
            elif e.location:
                near = [n for n in _all_names(kb, lang) if n in e.location[lang]]
                out.append(max(near, key=len) if near else e.location[lang].split(",")[0])
    return out


def _all_names(kb: KnowledgeBase, lang: str) -> list[str]:
    return [e.name[lang] for e in kb.entries()] + [t[lang] for t in kb.graph.nodes.values()]


# --- generation ---------------------------------------------------------------------------------------

@dataclass
class Example:
    id: str
    split: str
    type: str
    intent: str
    lang: str
    template: str            # intent/lang/phrasing index
    noise: str               # none | typo | asr
    entities: list[str]
    question: str
    history: list[list[str]]
    facts: list[str]
    prompt: str
    target: str
    answer: str
    expect: list[str]
    unknown: bool
    retrieved: list[str] = field(default_factory=list)
    route: list[str] | None = None     # [origin, destination] of a route answer (structure check)
    context: list[str] = field(default_factory=list)   # places the conversation was about


@dataclass
class DatasetOptions:
    seed: int = 0
    phrasings_per_item: int = 2      # training phrasings sampled per (intent, entity, language)
    test_per_intent: int = 6         # test questions per (intent, language, test split)
    memorised: bool = False          # no facts in the prompt (grounded-vs-memorised comparison)
    noise_rate: float = NOISE_RATE
    languages: tuple[str, ...] = ("ko", "en")


def _surface(e, lang: str, rng: random.Random) -> str:
    """The entry's name, or sometimes one of its aliases in the same script (visitors use both)."""
    aliases = [a for a in e.aliases if has_hangul(a) == (lang == "ko") and len(a) > 2]
    return rng.choice(aliases) if aliases and rng.random() < 0.3 else e.name[lang]


def _subjects(kb: KnowledgeBase, intent: str, rng: random.Random) -> list[list[str]]:
    """Which entries each intent asks about."""
    b = [x for x in kb.buildings]
    places = [p for p in kb.places]
    if intent in ("basic_number", "complex_followup", "basic_facilities", "unknown_missing",
                  "followup_number", "followup_route"):
        return [[x.id] for x in b]
    if intent == "need_where":
        return [[sv.id] for sv in kb.services]
    if intent in ("basic_hours", "complex_two_facts"):
        return [[x.id] for x in kb.entries() if x.hours and (isinstance(x, Building) or intent == "basic_hours")]
    if intent.startswith("location"):
        return [[x.id] for x in kb.entries() if x.location or isinstance(x, Place) and x.off_campus]
    if intent in ("route_here", "route_time"):
        return [[x.id] for x in b + places if x.id != "main_gate"]
    pairs = []
    pool = b if intent == "complex_two_buildings" else b + [p for p in places if not p.off_campus]
    for x in pool:
        y = rng.choice([z for z in pool if z.id != x.id])
        pairs.append([x.id, y.id])
    return pairs


def _fill(template: str, lang: str, names: list[str]) -> str:
    if len(names) == 1:
        kw = ko_forms(names[0]) if lang == "ko" else {"n": names[0]}
        kw |= {"w": names[0], "w_topic": kw.get("n_topic", names[0])}
    else:
        kw = {"a": names[0], "b": names[1], "a_wa": wa(names[0]),
              "b_topic": topic(names[1])}
    q = template.format(**kw)
    return re.sub(r"the The ", "the ", q[0].upper() + q[1:])


class Builder:
    """Turns a knowledge base into examples through the kiosk's own retrieval."""

    def __init__(self, kb: KnowledgeBase, cfg: Config, opts: DatasetOptions):
        self.kb, self.cfg, self.opts = kb, cfg, opts
        self.retriever = Retriever(kb, here=cfg.dialogue.kiosk_location)
        self.rng = random.Random(opts.seed)
        self.dropped: Counter = Counter()

    def retrieve(self, question: str, lang: str, context: list[str] = ()):
        """What the kiosk's Dialogue retrieves: the conversation's places count only for a
        question that points back at them or asks about a place without naming one."""
        follow_up = points_back(question) or asks_about_a_place(question)
        r = self.retriever.retrieve(question, k=self.cfg.dialogue.retrieval_k,
                                    context=tuple(context) if follow_up else ())
        r.lang = lang
        return r

    def make(self, intent: str, lang: str, k: int, ids: list[str], split: str,
             noisy: bool) -> Example | None:
        """One example, or None when the kiosk would not show this prompt to the model."""
        kb, rng = self.kb, self.rng
        service = next((sv for sv in kb.services if [sv.id] == ids), None) if intent == "need_where" else None
        names = [service.what[lang]] if service else [_surface(kb.get(i), lang, rng) for i in ids]
        history: list[Turn] = []
        context: list[str] = []
        if intent.startswith("followup"):      # the visitor first asked where the place is
            q0 = _fill(rng.choice(Q["location_where"][lang][:-1]), lang, [kb.get(ids[0]).name[lang]])
            history, context = [Turn(q0, A.where_answer(kb, ids[0], lang))], [ids[0]]
        if intent == "complex_followup":
            first = self.rng.choice([b for b in kb.buildings if b.id != ids[0]])
            q0 = _fill(rng.choice(Q["basic_number"][lang][:-1]), lang, [first.name[lang]])
            r0 = self.retrieve(q0, lang)
            history = [Turn(q0, answer_for(kb, "basic_number", [first.id], lang, r0))]
        question = _fill(Q[intent][lang][k], lang, names)
        noise = "none"
        if noisy:
            noise, question = add_noise(question, lang, rng)
        r = self.retrieve(question, lang, context)
        if not r.known(self.cfg.dialogue.min_score):
            self.dropped[f"{intent}: below min_score"] += 1
            return None
        if r.unsure(self.cfg.dialogue.min_score):
            self.dropped[f"{intent}: the kiosk asks \"did you mean\" instead"] += 1
            return None
        top = [h.id for h in r.results]
        if service is not None:
            if r.service is None or r.service.id != service.id:
                self.dropped[f"{intent}: retrieval found another need"] += 1
                return None
        elif intent.startswith("route") or intent == "followup_route":
            want_from = ids[0] if intent == "route_between" else self.cfg.dialogue.kiosk_location
            if r.route is None or r.route.destination != ids[-1] or r.route.origin != want_from:
                self.dropped[f"{intent}: retrieval found another route"] += 1
                return None
        elif set(top[:len(ids)]) != set(ids):
            self.dropped[f"{intent}: retrieval ranked another entry first"] += 1
            return None
        facts = r.facts()
        if len(ids) > 1 and not intent.startswith("route") and \
                not all(kb.fact(i, lang) in facts for i in ids):
            self.dropped[f"{intent}: a needed fact was not retrieved"] += 1
            return None
        if self.opts.memorised:     # same questions, same answers, nothing to copy from
            facts = []
        answer = answer_for(kb, intent, ids, lang, r)
        return Example(
            id="", split=split, type=INTENT_TYPE[intent], intent=intent, lang=lang,
            template=f"{intent}/{lang}/{k}", noise=noise, entities=ids, question=question,
            history=[[t.question, t.answer] for t in history], facts=facts,
            prompt=render_prompt(question, facts, history, lang), target=render_target(answer),
            answer=answer, expect=expected_facts(kb, intent, ids, lang, r),
            unknown=intent.startswith("unknown"), retrieved=top, context=context,
            route=[r.route.origin, r.route.destination] if r.route is not None else None)

    def build(self) -> dict[str, list[Example]]:
        o, rng = self.opts, self.rng
        pool: list[Example] = []
        tests: dict[str, list[Example]] = {"test_paraphrase": [], "test_template": []}
        for intent in Q:
            subjects = _subjects(self.kb, intent, rng)
            for lang in o.languages:
                n = len(Q[intent][lang])
                if intent in HELD_OUT_INTENTS:
                    self._sample_tests(tests["test_template"], intent, lang, subjects, range(n))
                    continue
                for ids in subjects:
                    for k in rng.sample(range(n - 1), min(o.phrasings_per_item, n - 1)):
                        ex = self.make(intent, lang, k, ids, "train", rng.random() < o.noise_rate)
                        if ex:
                            pool.append(ex)
                self._sample_tests(tests["test_paraphrase"], intent, lang, subjects, [n - 1])
        rng.shuffle(pool)
        n_val = max(1, int(len(pool) * VAL_RATE))
        splits = {"train": pool[n_val:], "val": pool[:n_val], **tests}
        for name, rows in splits.items():
            for i, ex in enumerate(rows):
                ex.split, ex.id = name, f"{name}-{i:05d}"
        return splits

    def _sample_tests(self, out: list[Example], intent: str, lang: str, subjects, phrasings) -> None:
        got = 0
        for ids in self.rng.sample(subjects, len(subjects)):
            if got >= self.opts.test_per_intent:
                break
            ex = self.make(intent, lang, self.rng.choice(list(phrasings)), ids, "test", False)
            if ex:
                out.append(ex)
                got += 1


# --- files --------------------------------------------------------------------------------------------

def write_dataset(splits: dict[str, list[Example]], out_dir: Path, meta: dict) -> dict:
    """JSONL files (train, val, test = both test splits) and the dataset card (JSON + Markdown)."""
    out_dir.mkdir(parents=True, exist_ok=True)

    def dump(path: Path, rows: list[Example]) -> None:
        path.write_text("".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in rows),
                        encoding="utf-8")

    dump(out_dir / "train.jsonl", splits["train"])
    dump(out_dir / "val.jsonl", splits["val"])
    dump(out_dir / "test.jsonl", splits["test_paraphrase"] + splits["test_template"])
    card = {**meta, "splits": {}}
    for name, rows in splits.items():
        card["splits"][name] = {
            "examples": len(rows),
            "by_type": dict(sorted(Counter(r.type for r in rows).items())),
            "by_language": dict(sorted(Counter(r.lang for r in rows).items())),
            "by_noise": dict(sorted(Counter(r.noise for r in rows).items())),
            "templates": len({r.template for r in rows}),
        }
    (out_dir / "card.json").write_text(json.dumps(card, ensure_ascii=False, indent=2), encoding="utf-8")
    (out_dir / "README.md").write_text(_card_markdown(card), encoding="utf-8")
    return card


def _card_markdown(card: dict) -> str:
    lines = [f"# Campus guide dataset ({'memorised: no facts in prompts' if card['memorised'] else 'grounded'})",
             "", f"Knowledge base `{card['kb']}` (sha256 {card['kb_sha256'][:12]}), seed {card['seed']}, "
             f"kiosk location `{card['here']}`, retrieval k={card['k']}, min_score={card['min_score']}.",
             "", "| split | examples | basic | route | location | complex | unknown | ko | en | noisy |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in card["splits"].items():
        t, lang, noise = s["by_type"], s["by_language"], s["by_noise"]
        lines.append(f"| {name} | {s['examples']} | " + " | ".join(str(t.get(x, 0)) for x in TYPES)
                     + f" | {lang.get('ko', 0)} | {lang.get('en', 0)} | "
                     f"{s['examples'] - noise.get('none', 0)} |")
    lines += ["", "test_paraphrase: a held-out phrasing of each trained intent; test_template: intents "
              f"never trained on ({', '.join(HELD_OUT_INTENTS)}).", "",
              "Dropped because the kiosk would not send them to the model (retrieval below min_score "
              "or about another entry):", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(card["dropped"].items())] or ["- none"]
    return "\n".join(lines) + "\n"


def build_dataset(kb_path: str | Path, out_dir: str | Path, cfg: Config | None = None,
                  opts: DatasetOptions | None = None) -> dict:
    """`campus-guide train dataset`: returns the dataset card."""
    cfg, opts = cfg or Config(), opts or DatasetOptions()
    kb = load_kb(kb_path)
    b = Builder(kb, cfg, opts)
    splits = b.build()
    meta = {"kb": str(kb_path), "kb_sha256": kb.sha256, "seed": opts.seed, "memorised": opts.memorised,
            **_retrieval(cfg), "held_out_intents": list(HELD_OUT_INTENTS),
            "options": asdict(opts), "dropped": dict(b.dropped)}
    return write_dataset(splits, Path(out_dir), meta)


def is_built(out_dir: str | Path, kb_sha256: str, opts: DatasetOptions, cfg: Config) -> bool:
    """A dataset already in `out_dir` from the same knowledge base, options and retrieval settings
    (so a long recipe that is run again does not rebuild it, and an edit to any of them does)."""
    card = Path(out_dir) / "card.json"
    if not card.is_file():
        return False
    c = json.loads(card.read_text(encoding="utf-8"))
    want = {"kb_sha256": kb_sha256, "options": json.loads(json.dumps(asdict(opts))), **_retrieval(cfg)}
    return all(c.get(k) == v for k, v in want.items())


def _retrieval(cfg: Config) -> dict:
    """The kiosk settings that decide which prompts the dataset holds (recorded in the card)."""
    d = cfg.dialogue
    return {"here": d.kiosk_location, "k": d.retrieval_k, "min_score": d.min_score}


def read_jsonl(path: str | Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)

