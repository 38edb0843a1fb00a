"""`campus-guide kb ...`: human output, --json shapes and errors without tracebacks."""
from __future__ import annotations

import json

import pytest
import yaml

from campus_guide.cli import main
from test_knowledge_retrieval import embedding_cache_dir
from test_knowledge_schema import TINY, broken, write


@pytest.fixture(autouse=True)
def embedding_cache(request, monkeypatch, tmp_path_factory):
    monkeypatch.setenv("CAMPUS_GUIDE_CACHE", embedding_cache_dir(request, tmp_path_factory))
    monkeypatch.delenv("CAMPUS_GUIDE_CONFIG", raising=False)


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_check_sample(capsys):
    rc, out, _ = run(capsys, "kb", "check")
    assert rc == 0 and "OK - Hanbit University" in out and "connected" in out
    rc, out, _ = run(capsys, "kb", "check", "--json")
    data = json.loads(out)
    assert data["ok"] is True and data["connected"] is True
    assert data["buildings"] >= 38 and data["places_off_campus"] >= 20


def test_check_broken_file_lists_every_problem(capsys, tmp_path):
    path = write(tmp_path, broken(graph__edges__1__metres=-5, buildings__1__number=1))
    rc, _, err = run(capsys, "kb", "check", str(path))
    assert rc == 2 and "Traceback" not in err
    assert "metres: must be positive" in err and "number: '1' duplicate" in err
    rc, out, _ = run(capsys, "kb", "check", str(path), "--json")
    data = json.loads(out)
    assert rc == 1 and data["ok"] is False and len(data["errors"]) == 2


def test_route_by_names_and_ids(capsys):
    rc, out, _ = run(capsys, "kb", "route", "정문", "도서관", "--lang", "ko")
    assert rc == 0 and out.splitlines()[0] == "정문 → 중앙도서관" and "1. 넓은 중앙 대로를 따라" in out
    rc, out, _ = run(capsys, "kb", "route", "--json", "gate 2", "library")
    data = json.loads(out)
    assert {"steps", "metres", "minutes"} <= set(data)
    assert data["from"] == "east_gate" and data["to"] == "library"
    assert data["steps"][-1].endswith("to Central Library.") and data["metres"] > 0 and data["minutes"] > 0
    rc, _, err = run(capsys, "kb", "route", "narnia", "library")
    assert rc == 2 and "no place called 'narnia'" in err


def test_ask_json_shape(capsys):
    rc, out, _ = run(capsys, "kb", "ask", "--json", "여기서 도서관 어떻게 가?")
    data = json.loads(out)
    assert rc == 0
    assert data["results"][0]["id"] == "library" and isinstance(data["results"][0]["score"], float)
    assert data["route"]["from"] == "main_gate" and data["route"]["to"] == "library"
    assert data["known"] is True and data["answer"].startswith("정문에서 중앙도서관")
    rc, out, _ = run(capsys, "kb", "ask", "--json", "tell me a joke")
    data = json.loads(out)
    assert data["route"] is None and data["known"] is False


def test_ask_human_output_explains_why(capsys):
    rc, out, _ = run(capsys, "kb", "ask", "where is the enginering building 1")
    assert rc == 0 and "eng1" in out and "fuzzy" in out and "answer: Engineering Building 1 is building 30" in out


def test_kb_flag_and_config_default(capsys, tmp_path):
    kb_path = write(tmp_path, TINY)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"kb": kb_path.name, "dialogue": {"kiosk_location": "main_gate"}}))
    rc, out, _ = run(capsys, "--config", str(cfg), "kb", "route", "--json", "main_gate", "Hall B")
    assert rc == 0 and json.loads(out)["to"] == "hall_b"
    rc, out, _ = run(capsys, "kb", "ask", "--json", "--kb", str(kb_path), "where is hall a?")
    assert json.loads(out)["results"][0]["id"] == "hall_a"


def test_eval_json_and_report_file(capsys, tmp_path):
    kb_path = write(tmp_path, TINY)
    out_file, plot = tmp_path / "report.json", tmp_path / "scores.png"
    argv = ["kb", "eval", "--json", "--kb", str(kb_path), "--out", str(out_file)]
    try:
        import matplotlib  # noqa: F401
        argv += ["--plot", str(plot)]
    except ImportError:
        plot = None
    rc, out, _ = run(capsys, *argv)
    data = json.loads(out)
    assert rc == 0 and 0 <= data["recall_at_3"] <= 1 and data["n"] > 10
    assert {"recall_at_1", "misses", "false_accept_rate", "by_kind"} <= set(data)
    assert json.loads(out_file.read_text())["n"] == data["n"]
    if plot:
        assert plot.read_bytes()[:4] == b"\x89PNG"
