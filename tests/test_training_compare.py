"""`train compare`: both variants on the same held-out questions, a point per checkpoint with its
CPU minutes, resumable, and a report that says whether the target was reached."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from campus_guide.errors import UserError  # noqa: E402
from training.compare import (CompareOptions, Curve, Point, _check_same_questions,  # noqa: E402
                              compare, markdown, summary)
from training.dataset import read_jsonl  # noqa: E402
from training.tiny import make_tiny_model  # noqa: E402

MINI_KB = Path(__file__).parent / "data" / "mini_campus.yaml"
CONFIG = """base: set-by-compare
data: set-by-compare
method: lora
lora: {rank: 8, alpha: 16, dropout: 0.0, target_modules: [q_proj, v_proj]}
lr: 5.0e-3
warmup_steps: 1
max_steps: 4
batch_size: 4
max_length: 512
eval_examples: 4
threads: 1
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    (root / "train.yaml").write_text(CONFIG)
    opts = CompareOptions(root / "work", make_tiny_model(root / "tiny", arch="gemma3"), root / "train.yaml",
                          MINI_KB, every=2, test_per_intent=1, eval_limit=4, max_tokens=6)
    return opts, compare(opts)


def test_both_variants_answer_the_same_questions_with_and_without_facts(run):
    opts, _ = run
    g, m = (list(read_jsonl(opts.work / v / "data" / "test.jsonl")) for v in ("grounded", "memorised"))
    assert [r["question"] for r in g] == [r["question"] for r in m]
    assert all(r["facts"] for r in g if not r["unknown"]) and not any(r["facts"] for r in m)


def test_a_point_per_checkpoint_with_its_cpu_minutes(run):
    opts, curves = run
    assert [c.variant for c in curves] == ["grounded", "memorised"]
    for c in curves:
        assert [p.step for p in c.points] == [0, 2, 4]          # the untuned base, then each checkpoint
        minutes = [p.cpu_minutes for p in c.points]
        assert minutes[0] == 0 and minutes == sorted(minutes) and minutes[-1] > 0
        assert all(0 <= p.fact <= 1 for p in c.points)
        assert len(json.loads((opts.work / c.variant / "eval" / "step-4.json").read_text())["rows"]) == 4
    report = json.loads((opts.work / "compare.json").read_text())
    assert report["held_out_questions"] == 4 and report["target"] == 0.95
    assert set(report["variants"]) == {"grounded", "memorised"}
    assert (opts.work / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "| step | grounded CPU min |" in (opts.work / "compare.md").read_text()


def test_a_second_call_reuses_runs_and_scores(run):
    opts, curves = run
    logs = {v: (opts.work / v / "run" / "log.jsonl").stat().st_mtime_ns for v in ("grounded", "memorised")}
    again = compare(opts)
    assert again == curves
    assert logs == {v: (opts.work / v / "run" / "log.jsonl").stat().st_mtime_ns for v in logs}


def test_different_held_out_questions_are_refused():
    a = [{"question": "Where is the library?", "expect": ["10"]}]
    b = [{"question": "Where is the gym?", "expect": ["60"]}]
    _check_same_questions({"grounded": a, "memorised": a})
    with pytest.raises(UserError, match="held-out splits differ"):
        _check_same_questions({"grounded": a, "memorised": b})


def test_summary_reports_the_first_checkpoint_at_the_target():
    pts = [Point(s, m, m, f, {"test_paraphrase": p, "test_template": t}, {}, 1.0)
           for s, m, f, p, t in [(0, 0, 0.1, 0.1, 0.1), (50, 5, 0.96, 0.98, 0.9), (100, 10, 0.97, 0.97, 0.97)]]
    s = summary(Curve("grounded", pts), 0.95)
    assert s["reached"] == {"step": 50, "cpu_minutes": 5}
    assert s["reached_by_split"] == {"test_paraphrase": {"step": 50, "cpu_minutes": 5},
                                     "test_template": {"step": 100, "cpu_minutes": 10}}
    missed = summary(Curve("memorised", pts[:1]), 0.95)
    assert missed["reached"] is None and missed["best"]["fact"] == 0.1
    text = markdown([Curve("grounded", pts), Curve("memorised", pts[:1])], 0.95, 48)
    assert "95% at step 50, after 5.0 CPU minutes" in text and "95% not reached in 0.0 CPU minutes" in text
    assert "test_template: 95% at step 100, after 10.0 CPU minutes" in text and "| 50 | 5.0 | 0.96 | 0.98 / 0.90 |" in text
