"""Walking routes: every pair of places is reachable, by the fewest minutes, rendered in ko/en."""
from __future__ import annotations

import itertools

import pytest
import yaml

from campus_guide.config import SAMPLE_KB
from campus_guide.knowledge import KBError, find_route, load_kb
from campus_guide.prompt import language_of


@pytest.fixture(scope="module")
def kb():
    return load_kb(SAMPLE_KB)


def all_pairs_minutes(kb) -> dict:
    """Floyd–Warshall over the graph: the reference for Dijkstra."""
    nodes = list(kb.graph.nodes)
    inf = float("inf")
    d = {(a, b): (0 if a == b else inf) for a in nodes for b in nodes}
    for e in kb.graph.edges:
        d[e.a, e.b] = d[e.b, e.a] = min(d[e.a, e.b], e.minutes)
    for k, i, j in itertools.product(nodes, nodes, nodes):
        if d[i, k] + d[k, j] < d[i, j]:
            d[i, j] = d[i, k] + d[k, j]
    return d


def test_every_pair_of_places_has_a_shortest_route(kb):
    ids = [e.id for e in kb.entries()]
    best = all_pairs_minutes(kb)
    for a, b in itertools.product(ids, ids):
        route = find_route(kb, a, b)
        if a == b:
            assert route.steps == ()
            continue
        assert route.steps, (a, b)
        assert route.steps[-1].to == b
        assert route.metres == round(sum(s.metres for s in route.steps)) > 0
        assert route.minutes >= sum(s.minutes for s in route.steps) - 1e-9
        # on-graph part is optimal by minutes
        start = kb.get(a).gate if getattr(kb.get(a), "off_campus", False) else a
        goal = kb.get(b).gate if getattr(kb.get(b), "off_campus", False) else b
        extra = sum(getattr(kb.get(x), "minutes", 0) for x in (a, b) if getattr(kb.get(x), "off_campus", False))
        walked = sum(s.minutes for s in route.steps) - extra
        assert walked == pytest.approx(best[start, goal]), (a, b)


def test_route_renders_numbered_landmark_steps_in_both_languages(kb):
    route = find_route(kb, "main_gate", "library")
    en, ko = route.render("en").splitlines(), route.render("ko").splitlines()
    assert en[0] == "1. Follow the wide main avenue to Fountain Plaza."
    assert en[-2].endswith("to Central Library.") and en[-1] == f"Total: {route.metres} m, about {route.minutes} min on foot."
    assert ko[0] == "1. 넓은 중앙 대로를 따라 분수광장까지 가세요."
    assert ko[-1] == f"총 {route.metres}m, 도보 약 {route.minutes}분."
    assert all(language_of(line) == "ko" for line in ko)
    assert [line.split(".")[0] for line in en[:-1]] == [str(i) for i in range(1, len(en))]
    fact = route.fact("en")
    assert "\n" not in fact and fact.startswith("Route from Main Gate to Central Library:")
    assert "Clock Tower" in fact and f"{route.metres} m" in fact
    assert route.to_json("ko") == {"from": "main_gate", "to": "library", "steps": [s.text.ko for s in route.steps],
                                   "metres": route.metres, "minutes": route.minutes, "transit": None}


def test_off_campus_routes_use_the_gate_and_recorded_directions(kb):
    route = find_route(kb, "library", "district_office")
    assert [s.to for s in route.steps][-2:] == ["main_gate", "district_office"]
    assert route.steps[-1].text.en == "Walk south along Hanbit-ro to Hanbit District Office."
    assert route.transit is not None and "bus 7" in route.render("en")
    assert "7번 버스" in route.fact("ko")
    back = find_route(kb, "station_exit5", "eng2")
    assert back.steps[0].to == "east_gate" and back.steps[0].metres == 180


def test_routes_are_symmetric_in_length(kb):
    for a, b in [("main_gate", "library"), ("dorm2", "medicine"), ("hospital", "startup_center")]:
        assert find_route(kb, a, b).minutes == find_route(kb, b, a).minutes
        assert find_route(kb, a, b).metres == find_route(kb, b, a).metres


def test_unknown_place_is_a_clear_error(kb):
    with pytest.raises(KBError, match="unknown place 'narnia'"):
        find_route(kb, "main_gate", "narnia")


def test_fewest_minutes_wins_over_fewest_metres(tmp_path):
    """A short steep stair (few metres, many minutes) loses to a longer flat path."""
    from test_knowledge_schema import TINY
    data = yaml.safe_load(yaml.safe_dump(TINY))
    data["graph"]["edges"].append({"from": "main_gate", "to": "hall_b", "metres": 60, "minutes": 9,
                                   "ko": "가파른 계단을 올라", "en": "Climb the steep stairs"})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    route = find_route(load_kb(path), "main_gate", "hall_b")
    assert [s.to for s in route.steps] == ["junction", "hall_a", "hall_b"]
    assert (route.metres, route.minutes) == (190, 4)
