"""Which places a sentence names: the one detector behind the kiosk's grounding guard and the
evaluation's "invented entities", so the figure that is reported is measured with the rule
that protects visitors.

Two kinds of mention:
- knowledge-base names (entries, aliases), found longest first so that "공학관" claims its
  letters before the alias "학관" can;
- place-like phrases ("Quantum Research Tower", "미래융합관"), which is what an invented place
  looks like: a capitalised run ending in Hall/Building/..., or Hangul ending in 관/센터/....
A phrase is invented when no allowed text contains it (the retrieved facts for the guard, every
name the knowledge base knows for the evaluation).
"""
from __future__ import annotations

import re
from typing import Iterable, Iterator

from ..korean import SYLLABLE, has_hangul
from ..prompt import LANGUAGES
from .schema import KnowledgeBase

_EN_PLACE = re.compile(
    r"\b((?:[A-Z][\w'.-]*\s+)+(?:Hall|Building|Center|Centre|Library|Tower|Gym|Gymnasium|"
    r"Dormitory|Cafeteria|Stadium|Museum|Auditorium|Gate|Plaza|Pond|House|Station))\b")
_KO_PLACE = re.compile(SYLLABLE.pattern + r"+(?:관|센터|홀|기숙사|식당|광장|도서관|정문|후문|동문|서문)")
_ARTICLE = re.compile(r"^(?:The|A|An)\s+")


def known_names(kb: KnowledgeBase) -> set[str]:
    """Every name the knowledge base knows, lower-cased (entries, aliases, graph nodes, the
    campus, facilities, categories)."""
    names = {n.lower() for n in kb.names()}
    names |= {t[lang].lower() for t in kb.graph.nodes.values() for lang in LANGUAGES}
    names |= {kb.campus[lang].lower() for lang in LANGUAGES}
    names |= {f.lower() for b in kb.buildings for lang in LANGUAGES for f in b.facilities[lang]}
    names |= {c[lang].lower() for c in kb.categories.values() for lang in LANGUAGES}
    return names


class PlaceDetector:
    """Knowledge-base names and place-like phrases in a sentence."""

    def __init__(self, kb: KnowledgeBase):
        self.kb = kb
        self.id_of: dict[str, str] = {}      # lower-cased name -> entry or graph node id
        for e in kb.entries():
            for n in (e.name.ko, e.name.en, *e.aliases):
                self.id_of.setdefault(n.lower(), e.id)
        for node, t in kb.graph.nodes.items():
            for lang in LANGUAGES:
                self.id_of.setdefault(t[lang].lower(), node)
        self.names = sorted({n for n in self.id_of if len(n) >= 2}, key=len, reverse=True)
        self._patterns = [(n, re.compile(re.escape(n) if has_hangul(n)
                                         else rf"(?<![a-z0-9]){re.escape(n)}(?![a-z0-9])"))
                          for n in self.names]
        self.known = known_names(kb)

    def spans(self, text: str) -> list[tuple[int, str, str]]:
        """(position, name, id) of every place name in the text, in reading order; a name inside
        a longer one does not count ("공학관" inside "제2공학관")."""
        low, taken, out = text.lower(), [], []
        for name, pattern in self._patterns:
            for m in pattern.finditer(low):
                if not any(a < m.end() and m.start() < b for a, b in taken):
                    taken.append(m.span())
                    out.append((m.start(), name, self.id_of[name]))
        return sorted(out)

    def mentions(self, text: str) -> Iterator[str]:
        """Place names in the text (lower-cased), in reading order."""
        return (name for _, name, _ in self.spans(text))

    @staticmethod
    def place_like(text: str) -> list[str]:
        found = [_ARTICLE.sub("", m.group(0).strip()) for m in _EN_PLACE.finditer(text)]
        return found + [m.group(0) for m in _KO_PLACE.finditer(text)]

    def invented(self, text: str, allowed: Iterable[str] | None = None) -> list[str]:
        """Place-like phrases that no allowed text contains (a known name may differ from the
        phrase by a two-letter particle or plural); `allowed` defaults to every known name."""
        allowed = self.known if allowed is None else {a.lower() for a in allowed}
        return [p for p in self.place_like(text)
                if not any(p.lower() in a or a in p.lower() and len(a) >= len(p) - 2 for a in allowed)]
