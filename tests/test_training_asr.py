"""`train asr`, the Whisper recipe, on a tiny random Whisper (d_model 64, 2 + 2 layers, 80 mels)
with the real multilingual vocabulary (whisper-base's tokenizer.json, 51865 tokens), trained on
campus names spoken by the kiosk's own voices (piper en, espeak-ng ko). Two short runs, LoRA
(language fixed to ko) and full (language by script), each end to end: split, augmentation,
training, CER before / after, merge, CTranslate2 int8, faster-whisper."""
from __future__ import annotations

import json

import numpy as np
import pytest

for _mod in ("transformers", "peft", "ctranslate2", "faster_whisper"):
    pytest.importorskip(_mod)

from campus_guide.config import SAMPLE_KB, Config, ConfigError  # noqa: E402
from campus_guide.corpus import load_corpus  # noqa: E402
from campus_guide.errors import UserError  # noqa: E402
from training.asr import (PREFIX_LEN, Labeller, Utterance, augment, collate, load_whisper, score,  # noqa: E402
                          split_by_sentence, synthesize_campus, to_ctranslate2, train_asr)
from training.asr_config import Augment, load_asr_config  # noqa: E402

RUN = """\
base: tiny
corpus: [corpus]
out: {out}
method: {method}
language: {language}
lora: {{rank: 8, alpha: 16, dropout: 0.0, target_modules: [q_proj, v_proj, fc1, fc2]}}
lr: {lr}
warmup_steps: 0
max_steps: 6
batch_size: 4
eval_steps: 3
patience: 5
val_fraction: 0.25
max_new_tokens: 12
threads: 1
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory, models_dir):
    """The tiny Whisper and an 8-clip corpus (4 ko by espeak-ng, 4 en by piper) in one folder."""
    from training.tiny import make_tiny_whisper

    root = tmp_path_factory.mktemp("asr")
    make_tiny_whisper(root / "tiny", models_dir / "whisper-base" / "tokenizer.json")
    synthesize_campus(SAMPLE_KB, root / "corpus", 8, ["ko", "en"], 0, Config(models_dir=str(models_dir)))
    return root


def _run(work, models_dir, method, language, lr):
    y = work / f"{method}.yaml"
    y.write_text(RUN.format(out=f"run-{method}", method=method, language=language, lr=lr))
    return train_asr(load_asr_config(y), Config(models_dir=str(models_dir)), progress=False)


@pytest.fixture(scope="module")
def lora_run(work, models_dir):
    return _run(work, models_dir, "lora", "ko", 1.0e-2)


@pytest.fixture(scope="module")
def full_run(work, models_dir):
    return _run(work, models_dir, "full", "auto", 3.0e-3)


def _rows(run):
    return [json.loads(x) for x in (run.out_dir / "log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------- data

def test_synthetic_corpus_is_in_bench_asr_format_and_reused(work, models_dir):
    clips = load_corpus(work / "corpus")                    # the reader `bench asr` uses
    assert len(clips) == 8
    langs = {c.name.rsplit("-", 1)[1][:2] for c in clips}
    assert langs == {"ko", "en"}
    import soundfile as sf

    info = sf.info(str(clips[0].path))
    assert info.samplerate == 16000 and info.duration > 0.3
    before = (work / "corpus" / "transcripts.tsv").stat().st_mtime_ns
    synthesize_campus(SAMPLE_KB, work / "corpus", 8, ["ko", "en"], 0, Config(models_dir=str(models_dir)))
    assert (work / "corpus" / "transcripts.tsv").stat().st_mtime_ns == before   # same inputs: not redone


def test_split_is_by_sentence_and_seeded(tmp_path):
    utts = [Utterance(tmp_path / f"{i}.wav", text, "ko", "c") for i, text in
            enumerate(["도서관 어디예요?", "도서관 어디예요", "공학관 어디예요?", "정문", "Where is the gate?",
                       "where is the gate", "학생회관", "카페"])]
    train, val = split_by_sentence(utts, 0.25, seed=3)
    from campus_guide.scoring import normalize_chars

    t, v = {normalize_chars(u.text) for u in train}, {normalize_chars(u.text) for u in val}
    assert not t & v and len(train) + len(val) == len(utts)
    assert len(v) == 2                                       # 25 % of 6 distinct sentences, rounded
    again = split_by_sentence(utts, 0.25, seed=3)
    assert [u.path for u in again[1]] == [u.path for u in val]
    with pytest.raises(UserError, match="at least 2"):
        split_by_sentence(utts[:2], 0.25, seed=0)           # one sentence, said twice


def test_augmentation_is_seeded_and_bounded():
    audio = np.sin(np.linspace(0, 2000, 16000)).astype(np.float32) * 0.3
    a = Augment(speed_prob=1.0, speed_min=0.9, speed_max=1.1, noise_prob=1.0, noise_snr_min=20, noise_snr_max=20)
    x = augment(audio, np.random.default_rng(5), a)
    assert np.array_equal(x, augment(audio, np.random.default_rng(5), a))
    assert 16000 / 1.1 - 1 <= len(x) <= 16000 / 0.9 + 1 and len(x) != 16000
    off = Augment(speed_prob=0.0, noise_prob=0.0)
    assert np.array_equal(augment(audio, np.random.default_rng(5), off), audio)
    clean = augment(audio, np.random.default_rng(5), Augment(speed_prob=0.0, noise_prob=1.0,
                                                             noise_snr_min=20, noise_snr_max=20))
    snr = 10 * np.log10(np.mean(audio ** 2) / np.mean((clean - audio) ** 2))
    assert 19 < snr < 21


def test_loss_covers_transcript_tokens_only(work):
    _, tok, fe = load_whisper(work / "tiny")
    lab = Labeller(tok)
    ids = lab.ids("도서관은 어디에 있나요?", "ko")
    assert tok.convert_ids_to_tokens(ids[:PREFIX_LEN]) == [
        "<|startoftranscript|>", "<|ko|>", "<|transcribe|>", "<|notimestamps|>"]
    text_ids = tok.encode(" 도서관은 어디에 있나요?", add_special_tokens=False)
    short = lab.ids("정문", "ko")
    b = collate([(np.zeros(16000, np.float32), ids), (np.zeros(8000, np.float32), short)], fe, lab.eot)
    assert b["input_features"].shape == (2, 80, 3000)
    assert b["decoder_input_ids"][0].tolist() == ids[:-1]
    labels = b["labels"][0].tolist()
    assert labels[:PREFIX_LEN - 1] == [-100] * 3              # <|ko|> <|transcribe|> <|notimestamps|>
    assert [x for x in labels if x != -100] == text_ids + [lab.eot]
    assert [x for x in b["labels"][1].tolist() if x != -100] == short[PREFIX_LEN:]   # padding masked
    assert b["decoder_attention_mask"][1].sum() == len(short) - 1
    assert lab.text(text_ids) == "도서관은 어디에 있나요?"


# ----------------------------------------------------------------------------------- training

def test_full_fine_tune_lowers_validation_loss(full_run):
    evals = [r["eval_loss"] for r in _rows(full_run) if "eval_loss" in r]
    assert len(evals) == 3                                   # step 0, 3, 6
    assert evals[-1] < evals[0] - 0.05
    assert full_run.best_eval_loss < full_run.first_eval_loss
    assert (full_run.best_dir / "config.json").is_file()     # full: best/ is a complete model
    assert full_run.merged_dir == full_run.best_dir


def test_lora_run_saves_an_adapter_and_cer_is_the_shared_scorer(lora_run):
    rows = _rows(lora_run)
    assert all({"cer", "wer", "eval_loss"} <= r.keys() for r in rows if r["step"] in (0, 3, 6))
    assert (lora_run.best_dir / "adapter_config.json").is_file()
    rep = lora_run.report
    assert rep["clips"]["train"] + rep["clips"]["val"] == 8 and rep["clips"]["val_sentences"] == 2
    refs = [r["ref"] for r in rep["rows"]]
    for key in ("before", "after", "ct2"):                   # every figure: campus_guide.scoring
        assert score([r[key] for r in rep["rows"]], refs) == {k: rep[key][k] for k in ("cer", "wer")}
    assert {r["lang"] for r in rep["rows"]} == {"ko"}        # language fixed by the config
    assert json.loads((lora_run.out_dir / "report.json").read_text())["after"] == rep["after"]
    assert (lora_run.out_dir / "done.json").is_file() and (lora_run.out_dir / "loss.png").is_file()


def test_merged_model_equals_base_plus_adapter(lora_run, work):
    import torch
    from peft import PeftModel

    base, tok, fe = load_whisper(work / "tiny", torch.float32)
    with_adapter = PeftModel.from_pretrained(base, str(lora_run.best_dir)).eval()
    b_weights = [p for n, p in with_adapter.named_parameters() if "lora_B" in n]
    assert b_weights and any(p.abs().max() > 0 for p in b_weights)   # a trained adapter, not a no-op
    merged, _, _ = load_whisper(lora_run.merged_dir, torch.float32)
    lab = Labeller(tok)
    batch = collate([(np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1,
                      lab.ids("중앙도서관 어디예요?", "ko"))], fe, lab.eot)
    kw = {k: batch[k] for k in ("input_features", "decoder_input_ids", "decoder_attention_mask")}
    with torch.no_grad():
        a, m = with_adapter(**kw).logits, merged.eval()(**kw).logits
        plain = load_whisper(work / "tiny", torch.float32)[0].eval()(**kw).logits
    assert torch.allclose(a, m, atol=1e-4), (a - m).abs().max()
    assert not torch.allclose(plain, m, atol=1e-4)           # and the merge changed the model


# ------------------------------------------------------------------------------------- export

def test_conversion_loads_in_faster_whisper_and_is_compared(lora_run, models_dir):
    ct2 = lora_run.ct2_dir
    for f in ("model.bin", "config.json", "tokenizer.json", "preprocessor_config.json"):
        assert (ct2 / f).is_file(), f
    rep = lora_run.report
    assert rep["quantization"] == "int8"
    assert rep["ct2_cer_delta"] == pytest.approx(rep["ct2"]["cer"] - rep["after"]["cer"])
    assert rep["ct2_within_tolerance"] == (abs(rep["ct2_cer_delta"]) <= 0.005)
    assert all(isinstance(r["ct2"], str) for r in rep["rows"]) and any(r["ct2"] for r in rep["rows"])
    # the kiosk's own loader takes it as asr.model
    from device.asr import Transcriber

    cfg = Config(models_dir=str(models_dir))
    cfg.asr.model, cfg.asr.language, cfg.asr.hotwords, cfg.asr.cpu_threads = str(ct2), "ko", False, 1
    t = Transcriber(cfg)
    assert t.model.model.is_multilingual
    assert isinstance(t.transcribe(np.zeros(16000, np.float32) + 0.02).text, str)


def test_the_converted_whisper_bundles_with_the_llm(lora_run, tiny_gguf, models_dir, tmp_path):
    """The chain's last step: one bundle with both models, the recipe's figures in its manifest,
    and a kiosk config pointed at the bundle's LLM transcribes with the bundle's Whisper."""
    from campus_guide.bundle import ASR_DIR, verify_bundle
    from device.asr import Transcriber
    from export.bundle import make_bundle
    from training.asr import REPORT

    m = make_bundle(tiny_gguf, tmp_path / "b", asr=lora_run.ct2_dir, asr_report=lora_run.out_dir / REPORT)
    assert verify_bundle(tmp_path / "b") == m and [f.path for f in m.files()][0] == "model.gguf"
    assert {f"{ASR_DIR}/model.bin", f"{ASR_DIR}/tokenizer.json"} <= {f.path for f in m.asr.files}
    rep = lora_run.report
    assert m.asr.quantization == "int8" and m.asr.multilingual
    assert m.asr.eval["after"]["cer"] == rep["after"]["cer"] and m.asr.eval["ct2"]["cer"] == rep["ct2"]["cer"]
    cfg = Config(models_dir=str(models_dir))
    cfg.llm.model, cfg.asr.language, cfg.asr.cpu_threads = str(tmp_path / "b" / "model.gguf"), "ko", 1
    assert Transcriber(cfg).path == tmp_path / "b" / ASR_DIR


def test_float32_conversion_computes_what_transformers_computes(lora_run, work, tmp_path):
    """Without quantization the converted model's encoder output and its log-probabilities at
    every step of its own greedy transcript match transformers' on the same features, so the int8
    comparison measures the quantization. (Whole transcripts are not compared: a random model's
    near-ties flip on faster-whisper's own, slightly different log-mel features.)"""
    import ctranslate2
    import torch
    from faster_whisper import WhisperModel

    from device.audio import read_wav

    model, tok, fe = load_whisper(lora_run.merged_dir, torch.float32)
    lab = Labeller(tok)
    ct2 = WhisperModel(str(to_ctranslate2(lora_run.merged_dir, tmp_path / "f32", "float32")),
                       device="cpu", compute_type="float32", cpu_threads=1)
    audio = [read_wav(c.path, 16000) for c in load_corpus(work / "corpus")[:2]]
    feats = fe(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        enc = model.get_encoder()(feats).last_hidden_state
    enc_ct2 = ct2.model.encode(ctranslate2.StorageView.from_array(feats.numpy()), to_cpu=True)
    assert np.allclose(np.array(enc_ct2), enc.numpy(), atol=1e-4)
    prefix = lab.prefix("ko")
    res = ct2.model.generate(enc_ct2, [prefix] * 2, beam_size=1, max_length=24, return_logits_vocab=True,
                             suppress_blank=False, suppress_tokens=[])
    for i, r in enumerate(res):
        seq, steps = r.sequences_ids[0], np.array(r.logits[0])
        n = min(len(seq), len(steps))
        assert n >= 4
        with torch.no_grad():
            logits = model(encoder_outputs=(enc[i:i + 1],),
                           decoder_input_ids=torch.tensor([prefix + seq[:n - 1]])).logits[0, PREFIX_LEN - 1:]
        hf = torch.log_softmax(logits, -1).numpy()
        mine = steps[:n] - np.log(np.exp(steps[:n] - steps[:n].max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - steps[:n].max(-1, keepdims=True)
        assert np.abs(hf - mine).max() < 1e-3
        assert hf.argmax(-1).tolist() == seq[:n]             # transformers makes the same greedy picks


# ------------------------------------------------------------------------------------- config

@pytest.mark.parametrize("yaml_text, message", [
    ("method: qlora", "'method' must be one of lora, full"),
    ("language: fr", "'language' must be one of ko, en, auto"),
    ("lora: {rnak: 4}", "unknown key 'lora.rnak' (did you mean 'rank'?)"),
    ("val_fraction: 0.9", "'val_fraction' must be within (0, 0.5]"),
    ("augment: {speed_min: 1.2, speed_max: 1.1}", "'augment.speed_min' must be within 0.5..2 and at most"),
    ("quantization: int4", "'quantization' must be one of int8"),
    ("max_label_tokens: 600", "'max_label_tokens' must be within 8..444"),
    ("lr: fast", "'lr' must be float"),
    ("synth: {languages: [ko, fr]}", "'synth.languages' must be a non-empty list of ko / en"),
    ("corpus: [5]", "'corpus' must be a folder or a list of folders"),
])
def test_bad_config_values_say_what_to_fix(tmp_path, yaml_text, message):
    p = tmp_path / "asr.yaml"
    p.write_text("base: /m\ncorpus: c\n" + yaml_text + "\n")
    with pytest.raises(ConfigError) as e:
        load_asr_config(p)
    assert message in str(e.value) and str(p) in str(e.value)


def test_missing_base_or_audio_and_a_ctranslate2_base(tmp_path, models_dir):
    p = tmp_path / "asr.yaml"
    p.write_text("corpus: c\n")
    with pytest.raises(ConfigError, match="'base' is required"):
        load_asr_config(p)
    p.write_text("base: /m\n")
    with pytest.raises(ConfigError, match="no training audio"):
        load_asr_config(p)
    p.write_text("base: m\ncorpus: [a, b]\nout: o\n")
    cfg = load_asr_config(p)                                 # relative paths: from the YAML's folder
    assert cfg.corpus == [str(tmp_path / "a"), str(tmp_path / "b")] and cfg.base == str(tmp_path / "m")
    assert cfg.synth.out == str(tmp_path / "o" / "synth")
    with pytest.raises(UserError, match="CTranslate2 conversion.*cannot be fine-tuned"):
        load_whisper(models_dir / "whisper-base")
    with pytest.raises(UserError, match="not a local Hugging Face Whisper folder"):
        load_whisper(tmp_path / "nowhere")


def test_lora_targets_that_whisper_lacks(work):
    from training.asr import add_lora
    from training.asr_config import AsrConfig

    model, _, _ = load_whisper(work / "tiny")
    cfg = AsrConfig(base="x", corpus=["c"])
    cfg.lora.target_modules = ["gate_proj"]
    with pytest.raises(UserError, match="out_proj fc1 fc2"):
        add_lora(model, cfg)


def test_cli_reports_a_bad_config(tmp_path, capsys):
    from campus_guide.cli import main

    p = tmp_path / "asr.yaml"
    p.write_text("base: /m\ncorpus: c\nmethod: qlora\n")
    assert main(["train", "asr", "--config", str(p)]) == 2
    assert "'method' must be one of lora, full" in capsys.readouterr().err
