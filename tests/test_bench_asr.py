"""`campus-guide bench asr`: the scorer on known strings, an end-to-end run on a corpus spoken by
piper in tmp_path, and the errors a person gets for a broken corpus."""
from __future__ import annotations

import json

import numpy as np
import pytest

from campus_guide.cli import main
from campus_guide.scoring import (Score, cer, corpus_rate, edit_distance, normalize_chars,
                                  normalize_words, wer)
from device.bench_asr import CorpusError, load_corpus

QUESTIONS = [
    "Where is the library?",
    "How do I get to the gym?",
    "Where can I find the student union?",
    "Is there a cafe near the main gate?",
]


# --- the scorer -------------------------------------------------------------------------------

@pytest.mark.parametrize("a, b, d", [
    ("", "", 0), ("abc", "", 3), ("", "abc", 3), ("kitten", "sitting", 3),
    ("도서관", "도사관", 1), ("도서관", "도서", 1), (["a", "b"], ["b", "a"], 2),
])
def test_edit_distance(a, b, d):
    assert edit_distance(a, b) == d == edit_distance(b, a)


def test_normalisation_drops_punctuation_spaces_and_case():
    assert normalize_chars("그런데 집이 어디예요?") == "그런데집이어디예요"
    assert normalize_chars("Eng. Bldg 1, ^^ 공학관!") == "engbldg1공학관"
    assert normalize_words("Where's the LIBRARY?  It's—here.") == ["where", "is", "the",
                                                                  "library", "it", "is", "here"]
    assert normalize_words("I can’t find O'Brien Hall") == ["i", "can", "not", "find", "obrien",
                                                            "hall"]


def test_korean_cer_golden_values():
    ref = "도서관은 어디에 있나요?"                       # 10 characters once normalised
    assert cer(ref, ref) == 0.0
    assert cer("도서관은 어디에 있나요", ref) == 0.0          # spacing and punctuation are free
    assert cer("도서간은어디에있나요", ref) == pytest.approx(0.1)       # one substitution
    assert cer("도사관을 놔디에 인하여", ref) == pytest.approx(0.6)     # 사 을 놔 인 하 여
    assert cer("도서관", ref) == pytest.approx(0.7)                     # seven deletions
    assert cer("", ref) == 1.0 and cer("아", "") == 1.0


def test_english_wer_golden_values():
    ref = "Where is the library?"
    assert wer("where is the library", ref) == 0.0
    assert wer("Where is a library?", ref) == pytest.approx(0.25)
    assert wer("Where is the Central Library?", ref) == pytest.approx(0.25)   # one insertion
    assert wer("library", ref) == pytest.approx(0.75)
    assert wer("Where's the library?", ref) == 0.0          # Whisper's spelling, same words
    assert wer("Where is engineering building to?", "Where is Engineering Building 2?") == 0.2


def test_corpus_rate_is_total_edits_over_total_length():
    assert corpus_rate([Score(1, 10), Score(3, 10)]) == pytest.approx(0.2)
    assert corpus_rate([Score(1, 2), Score(0, 98)]) == pytest.approx(0.01)   # not a mean of 0.5, 0
    assert corpus_rate([]) is None


# --- bad input --------------------------------------------------------------------------------

def _corpus(tmp_path, tsv: str | None, wavs=("a.wav",)):
    d = tmp_path / "corpus"
    d.mkdir()
    for w in wavs:
        (d / w).write_bytes(b"")
    if tsv is not None:
        (d / "transcripts.tsv").write_text(tsv, encoding="utf-8")
    return d


def test_missing_folder(tmp_path):
    with pytest.raises(CorpusError, match=r"nope: corpus folder not found.*--corpus"):
        load_corpus(tmp_path / "nope")


def test_missing_transcripts(tmp_path):
    with pytest.raises(CorpusError, match=r"transcripts\.tsv: not found.*path, text"):
        load_corpus(_corpus(tmp_path, None))


@pytest.mark.parametrize("tsv, line", [
    ("path\ttext\na.wav\tWhere is it?\nb.wav Where is it?\n", 3),   # spaces, not a tab
    ("a.wav\t\n", 1),                                               # no text
    ("a.wav\tok\n\t text\n", 2),                                    # no path
])
def test_malformed_line_is_named(tmp_path, tsv, line):
    with pytest.raises(CorpusError, match=rf"transcripts\.tsv:{line}: expected 'path<TAB>text'"):
        load_corpus(_corpus(tmp_path, tsv))


def test_empty_transcripts(tmp_path):
    with pytest.raises(CorpusError, match="no clips listed"):
        load_corpus(_corpus(tmp_path, "path\ttext\n"))


def test_missing_wav_names_line_and_file(tmp_path):
    d = _corpus(tmp_path, "a.wav\tone\nsub/b.wav\ttwo\nc.wav\tthree\n")
    with pytest.raises(CorpusError, match=r"transcripts\.tsv:2: audio file 'sub/b\.wav' not "
                                          r"found.*\(and 1 more\)"):
        load_corpus(d)


def test_header_and_extra_columns_are_accepted(tmp_path):
    d = _corpus(tmp_path, "path\ttext\troom\nb.wav\t그런데 집이 어디예요?\tstudio\n", ["b.wav"])
    (clip,) = load_corpus(d)
    assert clip.name == "b.wav" and clip.text == "그런데 집이 어디예요?" and clip.line == 2


def test_cli_prints_the_error_without_a_traceback(tmp_path, capsys):
    assert main(["bench", "asr", "--corpus", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "corpus folder not found" in err and "Traceback" not in err


def test_plain_bench_still_requires_out(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--runs", "1"])
    assert e.value.code == 2 and "required: --out" in capsys.readouterr().err


# --- end to end on piper speech ----------------------------------------------------------------

@pytest.fixture(scope="module")
def piper_corpus(models_dir, tmp_path_factory):
    """A tiny English corpus spoken by the kiosk's own piper voice (nothing from outside)."""
    from campus_guide.config import Config
    from device.audio import write_wav
    from device.tts import Synthesizer

    d = tmp_path_factory.mktemp("piper-corpus")
    tts = Synthesizer(Config(models_dir=str(models_dir)))
    lines = ["path\ttext"]
    for i, q in enumerate(QUESTIONS):
        audio = np.concatenate(list(tts.synthesize(q, "en")))
        pad = np.zeros(tts.sample_rate // 4, np.float32)
        write_wav(d / "en" / f"q{i}.wav", np.concatenate([pad, audio, pad]), tts.sample_rate)
        lines.append(f"en/q{i}.wav\t{q}")
    (d / "transcripts.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d


@pytest.mark.models
def test_bench_asr_end_to_end_on_piper_speech(piper_corpus, models_dir, tmp_path, capsys,
                                              monkeypatch):
    monkeypatch.setenv("CAMPUS_GUIDE_MODELS", str(models_dir))
    out = tmp_path / "asr.json"
    assert main(["bench", "asr", "--corpus", str(piper_corpus), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "WER (en)" in printed and "language ID" in printed and str(out) in printed

    report = json.loads(out.read_text(encoding="utf-8"))
    assert {"clips", "cer", "wer", "lang_id_accuracy", "asr_s_mean", "asr_s_p95", "settings",
            "rows"} <= set(report)
    assert report["clips"] == len(QUESTIONS) and len(report["rows"]) == len(QUESTIONS)
    assert report["cer"] is None                         # no Korean reference in this corpus
    assert report["wer"] < 0.25, [(r["ref"], r["hyp"]) for r in report["rows"]]
    assert report["lang_id_accuracy"] == 1.0             # whisper-base, language auto
    assert report["settings"]["language"] == "auto" and report["settings"]["model"] == "whisper-base"
    assert 0 < report["asr_s_mean"] <= report["asr_s_p95"] < 60
    row = report["rows"][0]
    assert row["path"] == "en/q0.wav" and row["metric"] == "wer" and row["expected_language"] == "en"
    assert {"ref", "hyp", "language", "error_rate", "asr_s"} <= set(row)


@pytest.mark.models
def test_bench_asr_overrides_language_and_beam(piper_corpus, cfg):
    from device.bench_asr import run_asr_bench

    report = run_asr_bench(cfg, piper_corpus, language="en", beam_size=2, progress=False)
    assert report["settings"]["language"] == "en" and report["settings"]["beam_size"] == 2
    assert report["lang_id_accuracy"] == 1.0 and report["wer"] < 0.25
