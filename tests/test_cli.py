"""The device commands as a person runs them: one JSON object, a spoken answer file, readable
output, and clear one-line errors instead of tracebacks."""
import builtins
import json

import pytest
import soundfile as sf

from campus_guide.cli import main
from campus_guide.prompt import language_of


@pytest.fixture
def reuse(pipeline, monkeypatch):
    """The commands build a Pipeline; hand them the session's, already loaded."""
    import device.kiosk
    import device.pipeline

    monkeypatch.setattr(pipeline, "close", lambda: None)
    monkeypatch.setattr(device.pipeline, "Pipeline", lambda cfg: pipeline)
    monkeypatch.setattr(device.kiosk, "Pipeline", lambda cfg: pipeline)
    pipeline.dialogue.history.clear()
    return pipeline


@pytest.mark.models
def test_ask_bundled_question_json_and_wav(reuse, tmp_path, capsys):
    out = tmp_path / "answer.wav"
    assert main(["ask", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"transcript", "language", "answer", "sources", "timings"} <= set(result)
    assert set(result["timings"]) == {"end_of_turn_s", "asr_s", "first_token_s", "first_sentence_s",
                                      "first_audio_s", "total_s", "voice_to_voice_s"}
    assert result["timings"]["end_of_turn_s"] is None      # a file has no live end of turn
    assert "library" in result["transcript"].lower() and result["sources"] == ["library"]
    assert "10" in result["answer"] and result["timings"]["first_audio_s"] > 0
    audio, rate = sf.read(out)
    assert rate == reuse.tts.sample_rate and len(audio) > rate and abs(audio).max() > 0.05


@pytest.mark.models
def test_ask_korean_text_prints_a_readable_korean_turn(reuse, capsys):
    assert main(["ask", "--text", "도서관은 어디에 있나요?"]) == 0
    out = capsys.readouterr().out
    answer = next(line for line in out.splitlines() if line.startswith("guide"))
    assert language_of(answer.split(":", 1)[1]) == "ko" and "10" in answer
    assert "timings:" in out and "first audio" in out


@pytest.mark.models
def test_demo_typed_questions_then_ctrl_c(reuse, monkeypatch, capsys):
    lines = iter(["Where is the library?"])

    def fake_input(prompt=""):
        try:
            return next(lines)
        except StopIteration:
            raise KeyboardInterrupt from None

    monkeypatch.setattr(builtins, "input", fake_input)
    assert main(["demo", "--no-mic"]) == 0
    captured = capsys.readouterr()
    assert "guide  [" in captured.out and "10" in captured.out and "bye" in captured.out
    assert "Traceback" not in captured.err


@pytest.mark.models
def test_missing_model_file_names_the_file_and_the_fix(models_dir, tmp_path, capsys):
    cfg = tmp_path / "kiosk.yaml"
    cfg.write_text(f"models_dir: {models_dir}\nasr: {{model: whisper-tiny.en}}\n"
                   f"llm: {{model: campus-missing.gguf}}\n", encoding="utf-8")
    assert main(["--config", str(cfg), "ask", "--text", "Where is the library?"]) == 2
    err = capsys.readouterr().err
    assert str(models_dir / "campus-missing.gguf") in err and "campus-guide models fetch" in err
    assert "llm.model" in err and "Traceback" not in err


@pytest.mark.parametrize("argv,message", [
    (["ask", "--wav", "x.wav", "--text", "hi"], "not both"),
    (["ask", "--wav", "/nonexistent/q.wav"], "audio file not found"),
    (["bench", "--out", "b.json", "--runs", "0"], "at least 1"),
    (["bench", "--out", "bench.txt"], ".json"),
])
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("campus-guide: error:") and "Traceback" not in err


@pytest.mark.models
def test_models_fetch_lists_the_assembled_files(models_dir, capsys):
    assert main(["models", "fetch", "--dir", str(models_dir)]) == 0
    out = capsys.readouterr().out
    assert "gemma3-270m-q4_k_m.gguf" in out and "whisper-tiny.en/model.bin" in out
