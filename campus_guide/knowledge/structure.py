"""Whether an answer is right in structure, not only in its words: a sentence can use only
names and numbers from the facts and still walk the visitor past the library to the gate.
The kiosk's guard runs these on every sentence before it is spoken, and the training
evaluation scores answers with the same functions.

- a sentence that gives walking directions names the route's places in the route's order;
- a route answer names the route's destination;
- "X is building N" / "X은 N번 건물" gives X's own number.
"""
from __future__ import annotations

import re

from .answers import split_sentences_plain
from .places import PlaceDetector
from .routes import Route
from .schema import Building, KnowledgeBase

_DIRECTIONS = re.compile(
    r"\b(?:go|walk|follow|pass|past|turn|continue|cross|take|head|until|then)\b|"
    r"지나|가세요|따라|걸어|건너|돌아|간 뒤|까지", re.IGNORECASE)
_BUILDING_NUMBER = re.compile(r"\bbuilding (\d+)\b|(\d+)\s*번\s*건물|(\d+)\s*동\b", re.IGNORECASE)


def route_order_problem(sentence: str, route: Route, places: PlaceDetector) -> str | None:
    """A directions sentence must name the route's places in walking order (the destination may
    also open the sentence as its topic: "To get to the library, ...")."""
    if not _DIRECTIONS.search(sentence):
        return None
    order = {node: i for i, node in enumerate(route.nodes)}
    seen = [order[i] for _, _, i in places.spans(sentence) if i in order]
    if seen and seen[0] == order[route.destination] and len(seen) > 1:
        seen = seen[1:]
    # a landmark may be named again inside a step ("... along the lawn"), but places first come
    # up in walking order and the sentence ends at the farthest one
    firsts = list(dict.fromkeys(seen))
    if any(b < a for a, b in zip(firsts, firsts[1:])) or (seen and seen[-1] != max(seen)):
        return "the route's places out of order"
    return None


def destination_problem(answer: str, route: Route, places: PlaceDetector) -> str | None:
    """A route answer names where the route ends."""
    if route.steps and route.destination not in {i for _, _, i in places.spans(answer)}:
        return "the route's destination is not named"
    return None


def number_problem(sentence: str, kb: KnowledgeBase, places: PlaceDetector) -> str | None:
    """Each building number belongs to the building named last before it."""
    named = places.spans(sentence)
    for m in _BUILDING_NUMBER.finditer(sentence):
        if any(pos <= m.start() < pos + len(name) for pos, name, _ in named):
            continue        # "Engineering Building 1" is a name, not a number claim
        number = next(g for g in m.groups() if g)
        before = [i for pos, _, i in named if pos < m.start() and isinstance(_entry(kb, i), Building)]
        if before and kb.get(before[-1]).number != number:
            return f"building {number} is not {kb.get(before[-1]).name.en}'s number"
    return None


def structure_problem(answer: str, kb: KnowledgeBase, places: PlaceDetector,
                      route: Route | None) -> str | None:
    """All three checks over a whole answer (the evaluation's view of what the guard does
    sentence by sentence)."""
    for sentence in split_sentences_plain(answer):
        problem = number_problem(sentence, kb, places) or (
            route_order_problem(sentence, route, places) if route is not None else None)
        if problem:
            return problem
    return destination_problem(answer, route, places) if route is not None else None


def _entry(kb: KnowledgeBase, id: str):
    return kb.get(id) if id in {e.id for e in kb.entries()} else None
