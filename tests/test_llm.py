"""The LLM stage on the real 270M Gemma GGUF: streaming, incremental detokenization, errors."""
import os
from pathlib import Path

import pytest

from campus_guide.errors import UserError
from campus_guide.config import LLMConfig
from campus_guide.prompt import render_prompt

MODELS = Path(os.environ.get("CAMPUS_GUIDE_MODELS", Path(__file__).parents[1] / "models"))
GGUF = "gemma3-270m-q4_k_m.gguf"
KO_FACT = "중앙도서관은 10번 건물이며 중앙잔디광장 북쪽에 있습니다."


@pytest.fixture(scope="module")
def llm():
    from device.llm import LLM

    if not (MODELS / GGUF).is_file():
        pytest.skip(f"{MODELS / GGUF} missing: run `campus-guide models fetch`")
    model = LLM(LLMConfig(model=GGUF, lora=None, max_tokens=24, n_threads=1), MODELS)
    yield model
    model.close()


@pytest.mark.models
def test_incremental_detokenization_equals_full_on_korean(llm):
    from device.llm import Detokenizer

    # Rare syllables fall back to byte tokens that split one character across tokens.
    text = "똠얌꿳 뷁 햏 — 중앙도서관은 10번 건물이에요. 쀍쀍!"
    ids = llm.tokenize(text)[1:]
    assert len(ids) > len(text.split())
    detok = Detokenizer(llm.llama)
    pieces = [detok.feed(t) for t in ids] + [detok.flush()]
    assert "".join(pieces) == llm.llama.detokenize(ids).decode("utf-8") == text
    assert all("\ufffd" not in p for p in pieces)


@pytest.mark.models
def test_stream_matches_its_tokens_and_records_timings(llm):
    prompt = render_prompt("도서관은 어디에 있나요?", [KO_FACT], [], "ko")
    text = "".join(llm.stream(prompt))
    stats = llm.last
    assert stats.prompt_tokens == len(llm.tokenize(prompt)) and stats.tokens == len(stats.ids) > 0
    full = llm.llama.detokenize(stats.ids, special=True).decode("utf-8", "replace")
    assert full.startswith(text) and "<end_of_turn>" not in text
    assert stats.prefill_s > 0 and stats.stopped in ("stop", "length")
    if stats.stopped == "length":
        assert stats.tokens == 24
    if stats.tokens > 1:
        assert stats.tok_s > 0
    # Greedy: the same prompt gives the same answer (with the KV-cache prefix reused).
    assert "".join(llm.stream(prompt)) == text


@pytest.mark.models
def test_answers_do_not_pile_up_native_memory_between_garbage_collections(llm):
    """Each answer's sampler (3 MB of native buffers for Gemma-3's vocabulary) is freed when it
    ends; llama-cpp-python's own sampler is a reference cycle that only Python's full
    collection would free, and a kiosk goes hundreds of turns between those."""
    import gc

    from device.budget import rss_mb

    prompt = render_prompt("Where is the library?", ["The library is building 10."], [], "en")
    "".join(llm.stream(prompt))
    gc.collect()
    gc.disable()
    try:
        before = rss_mb()
        for _ in range(10):
            "".join(llm.stream(prompt))
        grown = rss_mb() - before
    finally:
        gc.enable()
    assert grown < 10, f"{grown:.1f} MB more after 10 answers (30 when every sampler is kept)"


@pytest.mark.models
def test_one_bos_and_stop_ids_from_the_vocabulary(llm):
    ids = llm.tokenize(render_prompt("Where is the library?", ["x"], [], "en"))
    assert ids[0] == llm.llama.token_bos() and ids[1] != ids[0]
    # Gemma-3: 107 is a newline, not <end_of_turn>; only real turn tokens stop generation.
    assert 107 not in llm._stop_ids and 1 in llm._stop_ids


@pytest.mark.models
def test_prefill_from_an_empty_cache(llm):
    prompt = render_prompt("Where is the library?", [KO_FACT], [], "en")
    assert llm.prefill(prompt) > 0
    assert llm.llama.n_tokens == len(llm.tokenize(prompt))


def test_stop_strings_are_held_back_then_cut():
    from device.llm import _hold_back

    assert _hold_back("Building 10.<end_of") == ("Building 10.", "<end_of", False)
    assert _hold_back("Building 10.<end_of_turn>junk") == ("Building 10.", "", True)
    assert _hold_back("a <b> c") == ("a <b> c", "", False)
    assert _hold_back("next<start_of_turn>user") == ("next", "", True)


def test_missing_model_file_names_the_file_and_the_fix(tmp_path):
    from device.llm import LLM

    with pytest.raises(UserError) as e:
        LLM(LLMConfig(model="nope.gguf"), tmp_path)
    assert str(tmp_path / "nope.gguf") in str(e.value) and "campus-guide models fetch" in str(e.value)


def test_missing_adapter_is_a_clear_error(tmp_path):
    from device.llm import LLM

    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(UserError, match="LoRA adapter not found: .*missing-lora.gguf.*llm.lora"):
        LLM(LLMConfig(model="m.gguf", lora="missing-lora.gguf"), tmp_path)


def test_corrupt_gguf_is_a_clear_error(tmp_path):
    from device.llm import LLM

    (tmp_path / "m.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(UserError, match="could not load .*m.gguf.*models fetch"):
        LLM(LLMConfig(model="m.gguf", lora=None), tmp_path)


def test_a_bundle_that_does_not_match_its_manifest_is_refused(tmp_path):
    import json

    from campus_guide.bundle import MANIFEST_FILE, MODEL_FILE, SCHEMA_VERSION
    from device.llm import LLM

    (tmp_path / MODEL_FILE).write_bytes(b"GGUF truncated copy")
    manifest = dict(
        schema_version=SCHEMA_VERSION, name="m-Q4_K_M-0000", model_file=MODEL_FILE, sha256="0" * 64,
        size=123456, quant_type="Q4_K_M", architecture="gemma3", base_model="x",
        training_config_sha256=None, chat_format="gemma", stop_strings=[], stop_token_ids=[],
        context_length=2048, n_ctx=2048, memory_bytes=0, eval=None, created="2026-01-01")
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="does not match its manifest.json.*bytes"):
        LLM(LLMConfig(model=MODEL_FILE, lora=None), tmp_path)
