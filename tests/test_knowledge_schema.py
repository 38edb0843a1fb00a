"""The campus file schema: the shipped sample validates, broken files say exactly what is wrong."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from campus_guide.config import SAMPLE_KB, Config
from campus_guide.knowledge import Building, KBError, Place, load_kb
from campus_guide.prompt import language_of

TINY = {
    "categories": {"lecture": {"ko": "강의동", "en": "lecture building"},
                   "gate": {"ko": "출입문", "en": "campus gate"},
                   "cafe": {"ko": "카페", "en": "cafe"}},
    "buildings": [
        {"id": "hall_a", "number": 1, "name": {"ko": "가동", "en": "Hall A"}, "aliases": ["에이동"],
         "category": "lecture", "location": {"ko": "정문 북쪽", "en": "north of the gate"}},
        {"id": "hall_b", "number": 2, "name": {"ko": "나동", "en": "Hall B"}, "aliases": [],
         "category": "lecture", "location": {"ko": "가동 옆", "en": "next to Hall A"}},
    ],
    "places": [
        {"id": "main_gate", "name": {"ko": "정문", "en": "Main Gate"}, "category": "gate",
         "location": {"ko": "남쪽 끝", "en": "at the south end"}},
        {"id": "cafe_x", "name": {"ko": "카페 엑스", "en": "Cafe X"}, "category": "cafe", "from": "main_gate",
         "metres": 100, "minutes": 2, "directions": {"ko": "길을 건너", "en": "Cross the street"}},
    ],
    "graph": {
        "nodes": [{"id": "junction", "name": {"ko": "삼거리", "en": "the junction"}}],
        "edges": [
            {"from": "main_gate", "to": "junction", "metres": 100, "minutes": 2, "ko": "큰길을 따라", "en": "Follow the road"},
            {"from": "junction", "to": "hall_a", "metres": 50, "minutes": 1, "ko": "계단을 올라", "en": "Climb the steps"},
            {"from": "hall_a", "to": "hall_b", "metres": 40, "minutes": 1, "ko": "복도를 지나", "en": "Go through the corridor"},
        ],
    },
}


def write(tmp_path: Path, data: dict, name: str = "campus.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def errors_of(tmp_path: Path, data: dict) -> list[str]:
    path = write(tmp_path, data)
    with pytest.raises(KBError) as exc:
        load_kb(path)
    assert all(e.startswith(str(path)) for e in exc.value.errors), "every error names the file"
    return exc.value.errors


@pytest.fixture(scope="module")
def kb():
    return load_kb(SAMPLE_KB)


def test_sample_campus_validates_and_has_the_promised_size(kb):
    assert Config().kb == str(SAMPLE_KB)
    assert 38 <= len(kb.buildings) <= 45
    off = [p for p in kb.places if p.off_campus]
    assert len(off) >= 20
    assert {p.category for p in kb.places} >= {"gate", "outdoor", "subway", "bus_stop", "cafe", "hospital"}
    assert "main_gate" in kb.graph.nodes  # the kiosk's default location
    assert "invented" in SAMPLE_KB.read_text(encoding="utf-8").splitlines()[0].lower()
    numbers = [b.number for b in kb.buildings]
    assert len(set(numbers)) == len(numbers)
    # long walks always come with public transport
    assert all(p.transit for p in off if p.minutes > 15) and any(p.transit for p in off)


def test_lookup_names_and_facts(kb):
    lib = kb.get("library")
    assert isinstance(lib, Building) and lib.number == "10"
    assert kb.name("library", "ko") == "중앙도서관" and kb.name("library", "en") == "Central Library"
    assert kb.name("east_crossroads", "en") == "Engineering Road Crossroads"   # a graph waypoint
    assert isinstance(kb.get("cafe_ongi"), Place) and kb.get("cafe_ongi").off_campus
    names = kb.names()
    assert {"도서관", "공대", "학관", "Eng Bldg 1", "Central Library"} <= set(names)
    assert len(names) == len(set(names))
    with pytest.raises(KBError, match="unknown id 'nope'"):
        kb.get("nope")
    for e in kb.entries():
        for lang in ("ko", "en"):
            fact = kb.fact(e.id, lang)
            assert "\n" not in fact and len(fact) < 300, fact
            assert fact.startswith(e.name[lang])
            assert language_of(fact) == lang or lang == "en", fact
    assert "building 10" in kb.fact("library", "en") and "10번 건물" in kb.fact("library", "ko")
    assert "bus 7" in kb.fact("district_office", "en")


def test_tiny_campus_is_valid(tmp_path):
    kb = load_kb(write(tmp_path, TINY))
    assert [b.id for b in kb.buildings] == ["hall_a", "hall_b"]
    assert kb.get("hall_a").number == "1"          # numbers are kept as text
    assert set(kb.graph.nodes) == {"hall_a", "hall_b", "main_gate", "junction"}


def broken(**changes) -> dict:
    data = copy.deepcopy(TINY)
    for path, value in changes.items():
        *keys, last = path.split("__")
        node = data
        for k in keys:
            node = node[int(k)] if k.isdigit() else node[k]
        if value is DELETE:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return data


DELETE = object()


@pytest.mark.parametrize("changes, expected", [
    ({"graph__edges__2__to": "hall_z"},
     "graph.edges[2] (hall_a–hall_z): to: unknown neighbour 'hall_z'"),
    ({"graph__edges__1__metres": -50},
     "graph.edges[1] (junction–hall_a): metres: must be positive, got -50"),
    ({"buildings__1__number": 1},
     "buildings[1] (id=hall_b): number: '1' duplicate of buildings[0] (id=hall_a)"),
    ({"buildings__1__id": "hall_a"},
     "buildings[1] (id=hall_a): id: duplicate of buildings[0] (id=hall_a)"),
    ({"buildings__0__name": {"en": "Hall A"}},
     "buildings[0] (id=hall_a): name.ko: missing or empty"),
    ({"buildings__0__colour": "red"},
     "buildings[0] (id=hall_a): colour: unknown key"),
    ({"buildings__1__category": "dorm"},
     "buildings[1] (id=hall_b): category: 'dorm' is not defined under `categories`"),
    ({"graph__edges__2": DELETE},
     "buildings[1] (id=hall_b): disconnected"),
    ({"places__1__from": "side_gate"},
     "places (id=cafe_x): from: unknown gate or graph node 'side_gate'"),
    ({"places__1__minutes": 40},
     "places[1] (id=cafe_x): transit: missing: a 40-minute walk needs a public-transport route"),
    ({"graph__edges__0__to": "cafe_x"},
     "graph.edges[0] (main_gate–cafe_x): to: 'cafe_x' is an off-campus place"),
    ({"graph__edges__0__en": ""},
     "graph.edges[0] (main_gate–junction): ko/en instruction.en: missing or empty"),
    ({"graph__edges__2__to": "hall_a"},
     "graph.edges[2] (hall_a–hall_a): to: an edge must join two different nodes"),
    ({"places__0__metres": 5},
     "places[0] (id=main_gate): metres: only for off-campus places"),
    ({"buildings__1__aliases": ["hall a"]},
     "buildings (id=hall_b): aliases: 'hall a' also names 'hall_a'"),
    ({"buildings__0__id": "Hall A"},
     "buildings[0] (id=Hall A): id: 'Hall A' must be lowercase letters, digits and _"),
])
def test_bad_files_name_file_entry_and_field(tmp_path, changes, expected):
    errors = errors_of(tmp_path, broken(**changes))
    assert any(expected in e for e in errors), errors


def test_all_errors_are_collected_not_just_the_first(tmp_path):
    data = broken(graph__edges__1__metres=-5, buildings__1__number=1, buildings__0__colour="red")
    errors = errors_of(tmp_path, data)
    assert len(errors) >= 3
    message = str(KBError(errors))
    assert message.startswith(f"{len(errors)} problems in the knowledge base")


def test_unreadable_files(tmp_path):
    with pytest.raises(KBError, match="knowledge base not found"):
        load_kb(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("buildings: [\n", encoding="utf-8")
    with pytest.raises(KBError, match="not valid YAML"):
        load_kb(bad)
    data = copy.deepcopy(TINY)
    data["rooms"] = []
    del data["graph"]
    errors = errors_of(tmp_path, data)
    assert any("top level: rooms: unknown key" in e for e in errors)
    assert any("top level: graph: missing" in e for e in errors)
