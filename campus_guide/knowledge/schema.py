"""The campus knowledge base: a YAML file loaded into dataclasses and validated as a whole.

Validation collects every problem before raising, each one naming the file, the entry and the
field ("campus.yaml: buildings[3] (id=lib): number: duplicate of buildings[0] (id=admin)"), so
whoever maintains a campus file fixes it in one pass instead of one error per run.
The schema is documented in docs/knowledge.md.
"""
from __future__ import annotations

import hashlib
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Union

import yaml

from ..errors import UserError

LANGS = ("ko", "en")
_ID = re.compile(r"^[a-z0-9_]+$")
# Off-campus places farther than this on foot must record a public-transport route.
MAX_WALK_WITHOUT_TRANSIT_MIN = 15


class KBError(UserError):
    """A knowledge-base file is missing or invalid; `errors` lists every problem found."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors) if len(errors) < 2 else
                         f"{len(errors)} problems in the knowledge base:\n  " + "\n  ".join(errors))


@dataclass(frozen=True)
class Text:
    """The same thing said in Korean and English."""
    ko: str
    en: str

    def __getitem__(self, lang: str) -> str:
        return self.en if lang == "en" else self.ko


@dataclass(frozen=True)
class Building:
    id: str
    number: str
    name: Text
    aliases: tuple[str, ...]
    category: str
    location: Text
    hours: Text | None = None
    facilities: dict[str, tuple[str, ...]] = field(default_factory=lambda: {"ko": (), "en": ()})


@dataclass(frozen=True)
class Place:
    """An outdoor place or gate on campus (a graph node), or an off-campus place reached from
    the graph node `gate` (`from` in YAML)."""
    id: str
    name: Text
    category: str
    aliases: tuple[str, ...] = ()
    location: Text | None = None
    hours: Text | None = None
    gate: str | None = None
    metres: float = 0
    minutes: float = 0
    directions: Text | None = None
    transit: Text | None = None

    @property
    def off_campus(self) -> bool:
        return self.gate is not None


@dataclass(frozen=True)
class Edge:
    a: str
    b: str
    metres: float
    minutes: float
    text: Text          # how to walk it, direction-neutral

    def other(self, node: str) -> str:
        return self.b if node == self.a else self.a


@dataclass
class Graph:
    nodes: dict[str, Text]                      # every node id -> display name
    edges: list[Edge]
    adjacency: dict[str, list[Edge]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.adjacency = {n: [] for n in self.nodes}
        for e in self.edges:
            if e.a in self.adjacency and e.b in self.adjacency:
                self.adjacency[e.a].append(e)
                self.adjacency[e.b].append(e)

    def component(self, start: str) -> set[str]:
        seen, todo = {start}, deque([start])
        while todo:
            node = todo.popleft()
            for e in self.adjacency[node]:
                nxt = e.other(node)
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen


Entry = Union[Building, Place]


@dataclass(frozen=True)
class Service:
    """Something a visitor needs rather than a place they name ("where can I print?"): what it
    is, the words people use for it, and the entries that offer it."""
    id: str
    what: Text                      # en: follows "You can ..."; ko: a noun that takes 은/는
    words: dict[str, tuple[str, ...]]   # per language; matched as word starts / Hangul runs
    at: tuple[str, ...]             # entry ids


@dataclass
class KnowledgeBase:
    path: Path
    sha256: str
    campus: Text
    categories: dict[str, Text]
    buildings: list[Building]
    places: list[Place]
    graph: Graph
    services: list[Service] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_id: dict[str, Entry] = {e.id: e for e in self.entries()}

    def entries(self) -> Iterator[Entry]:
        yield from self.buildings
        yield from self.places

    def get(self, id: str) -> Entry:
        try:
            return self._by_id[id]
        except KeyError:
            raise KBError([f"{self.path}: unknown id {id!r}"]) from None

    def has(self, id: str) -> bool:
        return id in self._by_id or id in self.graph.nodes

    def name(self, id: str, lang: str) -> str:
        if id in self._by_id:
            return self._by_id[id].name[lang]
        if id in self.graph.nodes:
            return self.graph.nodes[id][lang]
        raise KBError([f"{self.path}: unknown id {id!r}"])

    def names(self) -> list[str]:
        """Every ko/en name and alias, deduplicated (Whisper hotwords, fuzzy matching)."""
        out: dict[str, None] = {}
        for e in self.entries():
            for s in (e.name.ko, e.name.en, *e.aliases):
                out.setdefault(s, None)
        return list(out)

    def category(self, entry: Entry, lang: str) -> str:
        return self.categories[entry.category][lang]

    def fact(self, id: str, lang: str) -> str:
        """One short grounding line for a prompt to a small model, in `lang`."""
        e = self.get(id)
        ko = lang == "ko"
        if isinstance(e, Building):
            parts = [f"{e.number}번 건물, {e.location.ko}" if ko else f"building {e.number}, {e.location.en}"]
        elif e.off_campus:
            gate = self.name(e.gate, lang)
            parts = [f"{self.category(e, lang)}, {gate}에서 {e.metres:g}m (도보 {e.minutes:g}분)" if ko else
                     f"{self.category(e, lang)}, {e.metres:g} m ({e.minutes:g} min walk) from the {gate}",
                     f"{e.directions.ko} 가세요" if ko else e.directions.en]
            if e.transit:
                parts.append(e.transit[lang])
        else:
            parts = [f"{self.category(e, lang)}, {e.location[lang]}"]
        if e.hours:
            parts.append(("운영 " if ko else "open ") + e.hours[lang])
        if isinstance(e, Building) and e.facilities[lang]:
            parts.append(("시설: " if ko else "has ") + ", ".join(e.facilities[lang]))
        return f"{e.name[lang]}: " + "; ".join(p.rstrip(".") for p in parts) + "."


    def service_fact(self, service: "Service", places: list[str], minutes: dict[str, int],
                     lang: str) -> str:
        """The grounding line for a need: where it is offered, nearest first, with the walk."""
        def place(i: str) -> str:
            e = self.get(i)
            tag = (f"({e.number}번 건물)" if lang == "ko" else f" (building {e.number})") \
                if isinstance(e, Building) else ""
            return e.name[lang] + tag
        if lang == "ko":
            parts = [f"{place(i)}, 여기서 도보 {minutes[i]}분" for i in places]
            return f"{service.what.ko}: " + "; 또는 ".join(parts) + "."
        parts = [f"{place(i)}, {minutes[i]} min walk from here" for i in places]
        return f"{service.what.en[:1].upper()}{service.what.en[1:]}: at " + "; also at ".join(parts) + "."


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- loading and validation --------------------------------------------------------------

_TOP = {"campus", "categories", "buildings", "places", "graph", "services"}
_SERVICE = {"id", "what", "words", "at"}
_BUILDING = {"id", "number", "name", "aliases", "category", "location", "hours", "facilities"}
_PLACE = {"id", "name", "category", "aliases", "location", "hours",
          "from", "metres", "minutes", "directions", "transit"}
_OFF_CAMPUS = ("from", "metres", "minutes", "directions")
_NODE = {"id", "name"}
_EDGE = {"from", "to", "metres", "minutes", "ko", "en"}


class _Checker:
    """Accumulates errors with their location while entries are converted."""

    def __init__(self, path: Path):
        self.path = path
        self.errors: list[str] = []

    def error(self, where: str, fld: str | None, problem: str) -> None:
        self.errors.append(f"{self.path}: {where}: {fld}: {problem}" if fld else f"{self.path}: {where}: {problem}")

    def mapping(self, raw: Any, where: str, allowed: set[str], required: tuple[str, ...]) -> dict | None:
        if not isinstance(raw, dict):
            self.error(where, None, f"must be a mapping, got {type(raw).__name__}")
            return None
        for k in raw:
            if k not in allowed:
                self.error(where, str(k), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        for k in required:
            if raw.get(k) in (None, ""):
                self.error(where, k, "missing")
        return raw

    def text(self, raw: Any, where: str, fld: str, required: bool = True) -> Text | None:
        if raw is None:
            if required:
                self.error(where, fld, "missing (give {ko: ..., en: ...})")
            return None
        if not isinstance(raw, dict):
            self.error(where, fld, f"must be a mapping {{ko: ..., en: ...}}, got {raw!r}")
            return None
        ok = True
        for k in raw:
            if k not in LANGS:
                self.error(where, f"{fld}.{k}", "unknown language (use ko and en)")
                ok = False
        for lang in LANGS:
            v = raw.get(lang)
            if not isinstance(v, str) or not v.strip():
                self.error(where, f"{fld}.{lang}", "missing or empty")
                ok = False
        return Text(raw["ko"].strip(), raw["en"].strip()) if ok else None

    def strings(self, raw: Any, where: str, fld: str) -> tuple[str, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list) or not all(isinstance(s, str) and s.strip() for s in raw):
            self.error(where, fld, "must be a list of non-empty strings")
            return ()
        return tuple(s.strip() for s in raw)

    def positive(self, raw: Any, where: str, fld: str) -> float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            self.error(where, fld, f"must be a number, got {raw!r}")
            return 0
        if raw <= 0:
            self.error(where, fld, f"must be positive, got {raw!r}")
        return raw


def _where(section: str, i: int, raw: Any) -> str:
    rid = raw.get("id") if isinstance(raw, dict) else None
    return f"{section}[{i}]" + (f" (id={rid})" if rid else "")


def load_kb(path: str | Path) -> KnowledgeBase:
    """Load and validate a campus file; raises KBError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise KBError([f"{path}: knowledge base not found (pass --kb FILE or set `kb:` in the config)"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise KBError([f"{path}: not valid YAML: {e}"]) from None
    c = _Checker(path)
    if not isinstance(data, dict):
        raise KBError([f"{path}: top level must be a mapping with buildings, places and graph"])
    top = c.mapping(data, "top level", _TOP, ("buildings", "places", "graph", "categories"))
    if c.errors:
        raise KBError(c.errors)
    campus = c.text(data.get("campus", {}).get("name") if isinstance(data.get("campus"), dict) else None,
                    "campus", "name", required=False) or Text(path.stem, path.stem)
    categories = _categories(c, top["categories"])
    ids: dict[str, str] = {}

    def claim(raw: dict, where: str) -> str | None:
        rid = raw.get("id")
        if not isinstance(rid, str) or not _ID.match(rid):
            if rid is not None:
                c.error(where, "id", f"{rid!r} must be lowercase letters, digits and _")
            return None
        if rid in ids:
            c.error(where, "id", f"duplicate of {ids[rid]}")
            return None
        ids[rid] = where
        return rid

    buildings = _buildings(c, top["buildings"], categories, claim)
    places = _places(c, top["places"], categories, claim)
    graph = _graph(c, top["graph"], buildings, places, claim)
    _check_names_unique(c, buildings, places)
    services = _services(c, top.get("services"), {e.id for e in (*buildings, *places)})
    if not c.errors:
        _check_connected(c, graph, buildings, places)
    if c.errors:
        raise KBError(c.errors)
    return KnowledgeBase(path, file_sha256(path), campus, categories, buildings, places, graph, services)


def _services(c: _Checker, raw: Any, entry_ids: set[str]) -> list[Service]:
    """`services:` (optional): each names what it is, the words for it in both languages, and
    the buildings or places (`at`) that offer it."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        c.error("services", None, f"must be a list, got {type(raw).__name__}")
        return []
    out, seen = [], set()
    for i, r in enumerate(raw):
        where = _where("services", i, r)
        r = c.mapping(r, where, _SERVICE, ("id", "what", "words", "at"))
        if r is None:
            continue
        sid = r.get("id")
        if not isinstance(sid, str) or not _ID.match(sid):
            if sid is not None:
                c.error(where, "id", f"{sid!r} must be lowercase letters, digits and _")
            continue
        if sid in seen:
            c.error(where, "id", "duplicate service id")
        seen.add(sid)
        what = c.text(r.get("what"), where, "what")
        words: dict[str, tuple[str, ...]] = {}
        raw_words = r.get("words")
        if not isinstance(raw_words, dict):
            c.error(where, "words", "must be a mapping {ko: [...], en: [...]}")
        else:
            for k in raw_words:
                if k not in LANGS:
                    c.error(where, f"words.{k}", "unknown language (use ko and en)")
            for lang in LANGS:
                words[lang] = c.strings(raw_words.get(lang), where, f"words.{lang}")
                if not words[lang]:
                    c.error(where, f"words.{lang}", "give at least one word a visitor would say")
        at = c.strings(r.get("at"), where, "at")
        for a in at:
            if a not in entry_ids:
                c.error(where, "at", f"{a!r} is not a building or place id")
        if what and len(words) == len(LANGS) and at:
            out.append(Service(sid, what, words, at))
    return out


def _categories(c: _Checker, raw: Any) -> dict[str, Text]:
    if not isinstance(raw, dict):
        c.error("categories", None, "must map each category id to {ko: label, en: label}")
        return {}
    return {str(k): t for k, v in raw.items() if (t := c.text(v, "categories", str(k)))}


def _list(c: _Checker, raw: Any, section: str) -> list:
    if not isinstance(raw, list):
        c.error(section, None, "must be a list")
        return []
    return raw


def _category(c: _Checker, raw: dict, where: str, categories: dict[str, Text]) -> str:
    cat = raw.get("category")
    if cat is not None and cat not in categories:
        c.error(where, "category", f"{cat!r} is not defined under `categories` "
                                   f"(known: {', '.join(sorted(categories))})")
    return str(cat)


def _buildings(c: _Checker, raw: Any, categories: dict[str, Text], claim) -> list[Building]:
    out, numbers = [], {}
    for i, b in enumerate(_list(c, raw, "buildings")):
        where = _where("buildings", i, b)
        if c.mapping(b, where, _BUILDING, ("id", "number", "name", "category", "location")) is None:
            continue
        bid = claim(b, where)
        number = b.get("number")
        if number is not None:
            number = str(number).strip()
            if number in numbers:
                c.error(where, "number", f"{number!r} duplicate of {numbers[number]}")
            numbers[number] = where
        name = c.text(b.get("name"), where, "name")
        location = c.text(b.get("location"), where, "location")
        hours = c.text(b.get("hours"), where, "hours", required=False)
        facilities = {"ko": (), "en": ()}
        if b.get("facilities") is not None:
            f = b["facilities"]
            if not isinstance(f, dict) or set(f) != set(LANGS):
                c.error(where, "facilities", "must be {ko: [...], en: [...]}")
            else:
                facilities = {lang: c.strings(f[lang], where, f"facilities.{lang}") for lang in LANGS}
        category = _category(c, b, where, categories)
        aliases = c.strings(b.get("aliases"), where, "aliases")
        if bid and number and name and location:
            out.append(Building(bid, number, name, aliases, category, location, hours, facilities))
    return out


def _places(c: _Checker, raw: Any, categories: dict[str, Text], claim) -> list[Place]:
    out = []
    for i, p in enumerate(_list(c, raw, "places")):
        where = _where("places", i, p)
        if c.mapping(p, where, _PLACE, ("id", "name", "category")) is None:
            continue
        pid = claim(p, where)
        name = c.text(p.get("name"), where, "name")
        category = _category(c, p, where, categories)
        aliases = c.strings(p.get("aliases"), where, "aliases")
        hours = c.text(p.get("hours"), where, "hours", required=False)
        if "from" in p:
            for k in _OFF_CAMPUS:
                if p.get(k) is None:
                    c.error(where, k, "missing (an off-campus place needs from, metres, minutes, directions)")
            metres = c.positive(p.get("metres"), where, "metres") if "metres" in p else 0
            minutes = c.positive(p.get("minutes"), where, "minutes") if "minutes" in p else 0
            directions = c.text(p.get("directions"), where, "directions", required=False)
            transit = c.text(p.get("transit"), where, "transit", required=False)
            if minutes > MAX_WALK_WITHOUT_TRANSIT_MIN and transit is None and "transit" not in p:
                c.error(where, "transit", f"missing: a {minutes:g}-minute walk needs a public-transport "
                                          f"route (walks over {MAX_WALK_WITHOUT_TRANSIT_MIN} min)")
            location = c.text(p.get("location"), where, "location", required=False)
            place = Place(pid, name, category, aliases, location, hours, str(p["from"]),
                          metres, minutes, directions, transit) if pid and name else None
        else:
            for k in ("metres", "minutes", "directions", "transit"):
                if k in p:
                    c.error(where, k, "only for off-campus places (add `from: <gate>` or remove it)")
            location = c.text(p.get("location"), where, "location")
            place = Place(pid, name, category, aliases, location, hours) if pid and name and location else None
        if place:
            out.append(place)
    return out


def _graph(c: _Checker, raw: Any, buildings: list[Building], places: list[Place], claim) -> Graph:
    nodes: dict[str, Text] = {b.id: b.name for b in buildings}
    nodes.update({p.id: p.name for p in places if not p.off_campus})
    off_campus = {p.id for p in places if p.off_campus}
    edges: list[Edge] = []
    if c.mapping(raw, "graph", {"nodes", "edges"}, ("edges",)) is None:
        return Graph(nodes, edges)
    for i, n in enumerate(_list(c, raw.get("nodes") or [], "graph.nodes")):
        where = _where("graph.nodes", i, n)
        if c.mapping(n, where, _NODE, ("id", "name")) is None:
            continue
        nid, name = claim(n, where), c.text(n.get("name"), where, "name")
        if nid and name:
            nodes[nid] = name
    seen: dict[frozenset, str] = {}
    for i, e in enumerate(_list(c, raw.get("edges"), "graph.edges")):
        where = f"graph.edges[{i}]" + (f" ({e.get('from')}–{e.get('to')})" if isinstance(e, dict) else "")
        if c.mapping(e, where, _EDGE, ("from", "to", "metres", "minutes", "ko", "en")) is None:
            continue
        ends = []
        for k in ("from", "to"):
            v = e.get(k)
            if v is None:
                continue
            if v in off_campus:
                c.error(where, k, f"{v!r} is an off-campus place; connect its gate (`from`) instead")
            elif v not in nodes:
                c.error(where, k, f"unknown neighbour {v!r} (not a building, on-campus place or graph node)")
            else:
                ends.append(v)
        metres = c.positive(e.get("metres"), where, "metres") if "metres" in e else 0
        minutes = c.positive(e.get("minutes"), where, "minutes") if "minutes" in e else 0
        text = c.text({k: e.get(k) for k in LANGS}, where, "ko/en instruction")
        if len(ends) == 2 and ends[0] == ends[1]:
            c.error(where, "to", "an edge must join two different nodes")
        elif len(ends) == 2:
            key = frozenset(ends)
            if key in seen:
                c.error(where, None, f"duplicate of {seen[key]}")
            seen[key] = where
            if text and metres > 0 and minutes > 0:
                edges.append(Edge(ends[0], ends[1], metres, minutes, text))
    for p in places:
        if p.off_campus and p.gate not in nodes:
            c.error(f"places (id={p.id})", "from", f"unknown gate or graph node {p.gate!r}")
    return Graph(nodes, edges)


def _check_names_unique(c: _Checker, buildings: list[Building], places: list[Place]) -> None:
    """A name or alias that means two entries makes "where is X?" a coin toss."""
    owner: dict[str, str] = {}
    for section, items in (("buildings", buildings), ("places", places)):
        for e in items:
            for text in dict.fromkeys((e.name.ko, e.name.en, *e.aliases)):
                key = "".join(text.lower().split())
                if owner.setdefault(key, e.id) != e.id:
                    c.error(f"{section} (id={e.id})", "aliases", f"{text!r} also names {owner[key]!r}; "
                                                                  f"keep each name and alias unique")


def _check_connected(c: _Checker, graph: Graph, buildings: list[Building], places: list[Place]) -> None:
    if not graph.nodes:
        c.error("graph", None, "no nodes: add buildings, places or graph.nodes")
        return
    # The main component is the largest one; everything else is reported as disconnected.
    remaining, main = set(graph.nodes), set()
    while remaining:
        comp = graph.component(next(iter(sorted(remaining))))
        remaining -= comp
        if len(comp) > len(main):
            main = comp
    for section, items in (("buildings", buildings), ("places", places)):
        for i, e in enumerate(items):
            if isinstance(e, Place) and e.off_campus:
                continue
            if e.id not in main:
                c.error(f"{section}[{i}] (id={e.id})", None, "disconnected: no path from the rest of the "
                                                         "campus (add a graph edge to it)")
    wp = set(graph.nodes) - {b.id for b in buildings} - {p.id for p in places}
    for nid in sorted(wp - main):
        c.error(f"graph.nodes (id={nid})", None, "disconnected: no path from the rest of the campus")
