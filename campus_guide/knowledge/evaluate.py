"""Retrieval evaluation: recall@1/@3 on questions generated from the knowledge base, and the
false-accept rate on off-topic questions.

The questions are built from every entry's names and aliases with Korean and English templates,
then varied the way a visitor and Whisper vary them: misspellings (a dropped or swapped letter,
a Korean vowel or final consonant heard wrong), questions about a facility instead of a name,
building numbers, and routes between two places. The generator is seeded, so a figure is
comparable between runs and between campus files.
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

from tqdm import tqdm

from ..prompt import language_of
from ..korean import has_batchim, ro
from .noise import misspell
from .retrieval import Retriever
from .schema import Building, KnowledgeBase

EN_TEMPLATES = (
    "where is {n}?", "where's {n}", "can you tell me where {n} is?", "I'm looking for {n}",
    "how do I get to {n}?", "what time does {n} open?", "is {n} open now?", "which way to {n}?",
    "directions to {n} please", "where can I find {n}?", "{n}", "um where is {n} located",
)
KO_TEMPLATES = (
    "{n} 어디야?", "{n} 어디에 있어요?", "{n}{i} 어디죠?", "{n} 가는 길 알려줘", "{n} 위치 알려주세요",
    "{n} 몇 시까지 해?", "여기서 {n} 어떻게 가?", "{n}{eun} 어디 있나요?", "{n} 찾고 있는데요",
    "{n}{ro} 가려면 어떻게 해요?", "{n}", "혹시 {n} 어딘지 아세요?",
)
EN_FACILITY = ("where is the {f}?", "where can I find a {f}?", "is there a {f} on campus?")
KO_FACILITY = ("{f} 어디 있어요?", "{f}{eun} 어디에 있나요?", "{f} 있는 곳 알려주세요")
EN_ROUTE = ("how do I get from {a} to {b}?", "directions from {a} to {b}", "I'm at {a}, how do I walk to {b}?")
KO_ROUTE = ("{a}에서 {b}까지 어떻게 가요?", "{a}에서 {b} 가는 길 알려줘", "{a}에서 {b}{ro} 가려면?")

OFF_TOPIC = (
    "what's the weather like today?", "tell me a joke", "what is the bitcoin price?",
    "who won the football game last night?", "can you sing a song?", "what's two plus two?",
    "how old are you?", "recommend a good movie", "what is the capital of France?",
    "how do I cook pasta?", "translate hello into Japanese", "what's your favourite colour?",
    "is it going to rain tomorrow?", "who is the president of the United States?",
    "play some music", "set an alarm for seven", "what time is it in New York?",
    "오늘 날씨 어때?", "농담 하나 해줘", "비트코인 가격 알려줘", "어제 축구 누가 이겼어?",
    "노래 불러줘", "너 몇 살이야?", "영화 추천해줘", "프랑스 수도가 어디야?", "라면 맛있게 끓이는 법",
    "내일 비 와?", "주식 뭐 사야 돼?", "요즘 인기 있는 드라마 뭐야?", "사랑이 뭐라고 생각해?",
    "점심 메뉴 추천해줘", "일본어로 안녕이 뭐야?",
)

@dataclass(frozen=True)
class Item:
    question: str
    target: str
    kind: str           # name | misspelled | facility | number | route


@dataclass
class Report:
    n: int
    recall_at_1: float
    recall_at_3: float
    by_kind: dict[str, dict[str, float]]
    misses: list[dict]
    off_topic_n: int = 0
    false_accept_rate: float = 0.0
    min_score: float = 0.0
    false_accepts: list[dict] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=dict)  # best score per question

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"questions: {self.n}   recall@1 {self.recall_at_1:.3f}   recall@3 {self.recall_at_3:.3f}"]
        for kind, v in sorted(self.by_kind.items()):
            lines.append(f"  {kind:<11} n={int(v['n']):<4} recall@1 {v['recall@1']:.3f}  recall@3 {v['recall@3']:.3f}")
        lines.append(f"off-topic: {self.off_topic_n}   false accepts at min_score {self.min_score:.2f}: "
                     f"{self.false_accept_rate:.3f}")
        for f in self.false_accepts:
            lines.append(f"  accepted {f['question']!r} -> {f['id']} {f['score']:.2f} ({f['why']})")
        if self.misses:
            lines.append(f"misses ({len(self.misses)}):")
            for m in self.misses:
                lines.append(f"  [{m['kind']}] {m['question']!r}: want {m['target']}, got {m['got']}")
        return "\n".join(lines)


def _fill(template: str, **names: str) -> str:
    n = names.get("n") or names.get("f") or names.get("b", "")
    batchim = has_batchim(n)
    return template.format(i="이" if batchim else "가", eun="은" if batchim else "는", ro=ro(n), **names)


def generate_questions(kb: KnowledgeBase, seed: int = 0) -> list[Item]:
    """Paraphrased and misspelled ko/en questions with the id each one is about."""
    rng = random.Random(seed)
    items: list[Item] = []
    facility_owner: dict[str, list[str]] = defaultdict(list)
    for e in kb.entries():
        forms = list(dict.fromkeys([e.name.ko, e.name.en, *e.aliases]))
        for form in forms:
            templates = KO_TEMPLATES if language_of(form) == "ko" else EN_TEMPLATES
            items.append(Item(_fill(rng.choice(templates), n=form), e.id, "name"))
        for form in rng.sample(forms, min(3, len(forms))):
            slip = misspell(form, rng)
            if slip != form:
                templates = KO_TEMPLATES if language_of(form) == "ko" else EN_TEMPLATES
                items.append(Item(_fill(rng.choice(templates), n=slip), e.id, "misspelled"))
        if isinstance(e, Building):
            items.append(Item(rng.choice((f"where is building {e.number}?", f"{e.number}번 건물 어디야?",
                                          f"{e.number}동 어떻게 가요?")), e.id, "number"))
            for lang in ("ko", "en"):
                for f in e.facilities[lang]:
                    facility_owner[(lang, f.lower())].append(e.id)
    for (lang, f), owners in sorted(facility_owner.items()):
        if len(owners) == 1:  # a facility several buildings have has no single right answer
            templates = KO_FACILITY if lang == "ko" else EN_FACILITY
            items.append(Item(_fill(rng.choice(templates), f=f), owners[0], "facility"))
    entries = list(kb.entries())
    for _ in range(60):
        a, b = rng.sample(entries, 2)
        lang = rng.choice(("ko", "en"))
        templates = KO_ROUTE if lang == "ko" else EN_ROUTE
        items.append(Item(_fill(rng.choice(templates), a=a.name[lang], b=b.name[lang]), b.id, "route"))
    return items


def evaluate(retriever: Retriever, items: list[Item] | None = None, min_score: float = 0.5,
             k: int = 3, progress: bool = True) -> Report:
    """recall@1/@k over `items` (default: generated from the retriever's KB) and the share of
    OFF_TOPIC questions that would be answered (best score >= min_score)."""
    items = items if items is not None else generate_questions(retriever.kb)
    hits1, hitsk, misses = Counter(), Counter(), []
    scores: dict[str, list[float]] = {"on_topic": [], "off_topic": []}
    count = Counter(it.kind for it in items)
    for it in tqdm(items, desc="recall", disable=not progress, unit="q"):
        r = retriever.retrieve(it.question, k=k)
        ids = [h.id for h in r.results]
        if r.service is not None and it.target in r.service.at:
            ids = [it.target if i in r.service.at else i for i in ids]   # any place offering it is right
        scores["on_topic"].append(r.results[0].score if r.results else 0.0)
        hits1[it.kind] += ids[:1] == [it.target]
        hitsk[it.kind] += it.target in ids
        if it.target not in ids:
            misses.append({"question": it.question, "target": it.target, "kind": it.kind,
                           "got": [(h.id, round(h.score, 2), h.why) for h in r.results]})
    false_accepts = []
    for q in tqdm(OFF_TOPIC, desc="off-topic", disable=not progress, unit="q"):
        r = retriever.retrieve(q, k=1)
        scores["off_topic"].append(r.results[0].score if r.results else 0.0)
        if r.known(min_score):
            h = r.results[0]
            false_accepts.append({"question": q, "id": h.id, "score": h.score, "why": h.why})
    n = len(items)
    return Report(
        n=n,
        recall_at_1=sum(hits1.values()) / n,
        recall_at_3=sum(hitsk.values()) / n,
        by_kind={kd: {"n": c, "recall@1": hits1[kd] / c, "recall@3": hitsk[kd] / c} for kd, c in count.items()},
        misses=misses,
        off_topic_n=len(OFF_TOPIC),
        false_accept_rate=len(false_accepts) / len(OFF_TOPIC),
        min_score=min_score,
        false_accepts=false_accepts,
        scores=scores,
    )


def plot_scores(report: Report, path: str) -> None:
    """Histogram of the best retrieval score for campus and off-topic questions, with the
    threshold: where the two overlap is where min_score has to choose."""
    try:
        import matplotlib
    except ImportError:
        from ..errors import UserError
        raise UserError("--plot needs matplotlib: pip install 'campus-guide[training]' or matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    bins = [i / 40 for i in range(41)]
    ax.hist(report.scores["on_topic"], bins=bins, alpha=0.6, label=f"campus questions (n={report.n})")
    ax.hist(report.scores["off_topic"], bins=bins, alpha=0.8, label=f"off-topic (n={report.off_topic_n})")
    ax.axvline(report.min_score, color="k", linestyle="--", label=f"min_score {report.min_score:.2f}")
    ax.set_xlabel("best retrieval score")
    ax.set_ylabel("questions")
    ax.set_yscale("log")
    ax.set_title(f"recall@3 {report.recall_at_3:.3f}, false accepts {report.false_accept_rate:.3f}")
    ax.legend(loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
