"""The direction rule between areas, checked on every import statement (function-level ones too,
which is where cycles hide):

    campus_guide  <-  device  <-  export  <-  training

The shared core imports no area; the device imports neither training nor export; export and
training use the device only through its public stage interfaces; training may use export's
llama.cpp converter; export never imports training."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
AREAS = ("campus_guide", "device", "training", "export")
# What other areas may use of the device: the stages and the memory plan, never its internals.
DEVICE_PUBLIC = {"device.llm", "device.asr", "device.tts", "device.audio", "device.pipeline",
                 "device.budget"}
ALLOWED = {
    "campus_guide": {"campus_guide"},
    "device": {"campus_guide", "device"},
    "export": {"campus_guide", "export", "device"},
    "training": {"campus_guide", "training", "export", "device"},
}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in a file; relative imports resolved to absolute names."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return out


def violations() -> list[str]:
    bad = []
    for area in AREAS:
        for path in sorted((ROOT / area).rglob("*.py")):
            for line, module in imports(path):
                top = module.split(".")[0]
                where = f"{path.relative_to(ROOT)}:{line} imports {module}"
                if top not in AREAS:
                    continue
                if top not in ALLOWED[area]:
                    bad.append(where)
                elif top == "device" and area != "device" and module not in DEVICE_PUBLIC:
                    bad.append(where + " (not one of the device's public interfaces)")
                elif area == "training" and top == "export" and module != "export.llamacpp":
                    bad.append(where + " (training uses only export's converter)")
    return bad


def test_imports_follow_the_direction_rule():
    assert violations() == []


@pytest.mark.parametrize("source, expected", [
    ("from device.llm import LLM", []),
    ("from export.bundle import make_bundle", ["device/x.py:1 imports export.bundle"]),
])
def test_the_check_sees_a_violation(tmp_path, monkeypatch, source, expected):
    """The rule checker itself: a device module importing export is reported."""
    fake = tmp_path / "device"
    fake.mkdir()
    (fake / "x.py").write_text(source + "\n")
    for area in AREAS:
        if area != "device":
            (tmp_path / area).mkdir()
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert violations() == expected
