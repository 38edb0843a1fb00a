"""Walking routes: Dijkstra by minutes over the campus path graph, rendered as numbered,
landmark-based steps.

Edge instructions are direction-neutral ("Follow the stone wall"), so one edge serves both
directions; each step names where it ends ("... to the Central Library"), which is what a
visitor checks against what they see. Off-campus places hang off a gate: the route goes to that
gate and finishes with the place's recorded directions (and public transport for long walks).
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from .schema import KBError, KnowledgeBase, Place, Text


@dataclass(frozen=True)
class Step:
    text: Text          # the full instruction, ending at `to`
    to: str             # node or place id reached by this step
    to_name: Text
    metres: float
    minutes: float


@dataclass(frozen=True)
class Route:
    origin: str
    destination: str
    origin_name: Text
    destination_name: Text
    steps: tuple[Step, ...]
    transit: Text | None = None   # public transport alternative for a long walk

    @property
    def nodes(self) -> list[str]:
        """Every place the walk passes, in order, origin and destination included."""
        return [self.origin, *(s.to for s in self.steps[:-1]), self.destination]

    @property
    def metres(self) -> int:
        return int(round(sum(s.metres for s in self.steps)))

    @property
    def minutes(self) -> int:
        return int(math.ceil(sum(s.minutes for s in self.steps) - 1e-9))

    def lines(self, lang: str) -> list[str]:
        """The steps as sentences, without numbers."""
        if not self.steps:
            return ["이미 도착했습니다." if lang == "ko" else "You are already there."]
        return [s.text[lang] for s in self.steps]

    def total(self, lang: str) -> str:
        return (f"총 {self.metres}m, 도보 약 {self.minutes}분." if lang == "ko"
                else f"Total: {self.metres} m, about {self.minutes} min on foot.")

    def render(self, lang: str) -> str:
        """Numbered steps, the total and the transit alternative, one per line."""
        out = [f"{i}. {line}" for i, line in enumerate(self.lines(lang), 1)]
        out.append(self.total(lang))
        if self.transit:
            out.append(("걷기에는 멀어요: " if lang == "ko" else "It is a long walk; alternatively: ")
                       + self.transit[lang])
        return "\n".join(out)

    def fact(self, lang: str) -> str:
        """The route as one compact grounding line (landmarks in order, totals)."""
        names = [self.origin_name[lang]] + [s.to_name[lang] for s in self.steps]
        if lang == "ko":
            line = f"{self.origin_name.ko}에서 {self.destination_name.ko}까지 경로: " \
                   f"{' → '.join(names)}, {self.metres}m, 도보 약 {self.minutes}분."
        else:
            line = f"Route from {self.origin_name.en} to {self.destination_name.en}: " \
                   f"{' → '.join(names)}, {self.metres} m, about {self.minutes} min on foot."
        if self.transit:
            line += (" 대중교통: " if lang == "ko" else " By transit: ") + self.transit[lang]
        return line

    def to_json(self, lang: str) -> dict:
        return {"from": self.origin, "to": self.destination, "steps": self.lines(lang),
                "metres": self.metres, "minutes": self.minutes,
                "transit": self.transit[lang] if self.transit else None}



def _walk(instruction: str | Text, to: Text) -> Text:
    """One step sentence: the way to walk, ending at a named place."""
    ko, en = (instruction.ko, instruction.en) if isinstance(instruction, Text) else instruction
    return Text(f"{ko} {to.ko}까지 가세요.", f"{en} to {to.en}.")


def _node_of(kb: KnowledgeBase, id: str) -> tuple[str, Place | None]:
    """The graph node for an id, and the off-campus place when the id is one."""
    if id in kb.graph.nodes:
        return id, None
    if kb.has(id):
        place = kb.get(id)
        if isinstance(place, Place) and place.off_campus:
            return place.gate, place
    raise KBError([f"{kb.path}: unknown place {id!r} (use a building, place or graph node id)"])


def shortest_path(kb: KnowledgeBase, start: str, goal: str) -> list[tuple[str, object]]:
    """[(node, edge used to reach it)] from start (edge None) to goal, by minutes then metres."""
    best: dict[str, tuple[float, float]] = {start: (0.0, 0.0)}
    prev: dict[str, tuple[str, object]] = {}
    queue = [(0.0, 0.0, start)]
    while queue:
        minutes, metres, node = heapq.heappop(queue)
        if node == goal:
            break
        if (minutes, metres) > best[node]:
            continue
        for e in kb.graph.adjacency[node]:
            nxt, cost = e.other(node), (minutes + e.minutes, metres + e.metres)
            if nxt not in best or cost < best[nxt]:
                best[nxt] = cost
                prev[nxt] = (node, e)
                heapq.heappush(queue, (*cost, nxt))
    if goal not in best:
        raise KBError([f"{kb.path}: no path from {start!r} to {goal!r} (graph not connected)"])
    path, node = [], goal
    while node != start:
        before, edge = prev[node]
        path.append((node, edge))
        node = before
    return [(start, None)] + path[::-1]


def find_route(kb: KnowledgeBase, from_id: str, to_id: str) -> Route:
    """Shortest walk between any two buildings, places or graph nodes (KBError if unknown)."""
    start, origin_place = _node_of(kb, from_id)
    goal, dest_place = _node_of(kb, to_id)
    steps: list[Step] = []
    if origin_place and from_id != to_id:
        gate = kb.graph.nodes[start]
        steps.append(Step(Text(f"{gate.ko}까지 걸어가세요.", f"Walk to {gate.en}."),
                          start, gate, origin_place.metres, origin_place.minutes))
    if from_id != to_id:
        for node, edge in shortest_path(kb, start, goal)[1:]:
            to = kb.graph.nodes[node]
            steps.append(Step(_walk(edge.text, to), node, to, edge.metres, edge.minutes))
    if dest_place and from_id != to_id:
        steps.append(Step(_walk(dest_place.directions, dest_place.name), dest_place.id,
                          dest_place.name, dest_place.metres, dest_place.minutes))
    return Route(from_id, to_id, _name(kb, from_id), _name(kb, to_id), tuple(steps),
                 dest_place.transit if dest_place else None)


def _name(kb: KnowledgeBase, id: str) -> Text:
    return Text(kb.name(id, "ko"), kb.name(id, "en"))
