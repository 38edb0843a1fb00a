"""Tiny random Gemma / Gemma-2 / Gemma-3 models with a locally trained tokenizer (and a tiny random
Whisper on the real Whisper vocabulary, `make_tiny_whisper`, for the `train asr` tests).

No model hub is reachable, yet training, merge, export and llama.cpp have to be tested on the real
architectures. A model of a few million parameters built from a config, with a SentencePiece
tokenizer trained here on campus text but laid out like Gemma's (ids below), goes through exactly
the code paths the 270M and 2B models do, in seconds.

Layout kept from the real tokenizer: <pad> 0, <eos> 1, <bos> 2, <unk> 3, fillers 4..105,
<start_of_turn> 106, <end_of_turn> 107. Sizes are multiples of 256 so llama.cpp's K-quants apply
(it silently falls back otherwise), and Gemma-3 gets its real 5 sliding + 1 global layer pattern
(with any other pattern llama.cpp's logits differ from transformers').
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterable

from campus_guide import prompt
from campus_guide.config import SAMPLE_KB

ARCHS = ("gemma3", "gemma2", "gemma")
SPECIAL_PIECES = ("<pad>", "<eos>", "<bos>", "<unk>")  # ids 0..3, as in Gemma
FILLERS = ("<mask>", "[@BOS@]") + tuple(f"<unused{i}>" for i in range(100))  # ids 4..105
TURN_PIECES = (prompt.START_OF_TURN, prompt.END_OF_TURN)  # ids 106, 107

_EXTRA_TEXT = (
    "Where is the library? How do I get to the engineering building from here?",
    "도서관은 어디에 있나요? 여기서 공학관까지 어떻게 가나요? 몇 번 건물이에요?",
    "The student center is building 12, next to the main gate. It takes about 4 minutes.",
    "학생회관은 12번 건물이고 정문 옆에 있어요. 걸어서 약 4분 걸려요.",
    "Turn left, walk straight past the cafeteria, then turn right at the fountain.",
    "왼쪽으로 돌아서 식당을 지나 직진한 다음 분수대에서 오른쪽으로 가세요.",
)


def campus_text() -> list[str]:
    """Sentences the tiny tokenizer learns from: the shared prompt strings (so the instruction
    tokenizes compactly), a few campus sentences, and the sample knowledge base when present."""
    lines = [*prompt.INSTRUCTION.values(), *prompt.UNKNOWN.values(), *prompt.REDIRECT.values(),
             *_EXTRA_TEXT]
    if SAMPLE_KB.is_file():
        lines += [ln.strip() for ln in SAMPLE_KB.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return lines


def train_tokenizer(out_file: Path, text: Iterable[str], vocab_size: int = 2048) -> Path:
    """A byte-fallback BPE SentencePiece model in Gemma's id layout (deterministic: one thread)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(text)),
        model_writer=buf,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,            # a small corpus yields fewer pieces; that is fine
        character_coverage=1.0,            # keep every Hangul syllable seen
        byte_fallback=True,                # anything unseen still encodes (as Gemma does)
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=[*FILLERS, *TURN_PIECES],
        add_dummy_prefix=False,            # Gemma never adds a prefix space
        remove_extra_whitespaces=False,
        split_digits=True,
        num_threads=1,
        minloglevel=2,
    )
    out_file.write_bytes(buf.getvalue())
    return out_file


def _config(arch: str, vocab: int, hidden: int, layers: int | None, heads: int):
    import transformers as tf

    head_dim = hidden // heads
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                  num_attention_heads=heads, num_key_value_heads=1, head_dim=head_dim,
                  max_position_embeddings=2048, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    if arch == "gemma3":
        n = layers or 6
        kinds = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]
        cfg = tf.Gemma3TextConfig(num_hidden_layers=n, layer_types=kinds, sliding_window=128,
                                  query_pre_attn_scalar=head_dim, **common)
        cfg.architectures = ["Gemma3ForCausalLM"]
        return cfg, tf.Gemma3ForCausalLM
    if arch == "gemma2":
        n = layers or 4
        kinds = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
        cfg = tf.Gemma2Config(num_hidden_layers=n, layer_types=kinds, sliding_window=128,
                              query_pre_attn_scalar=head_dim, attn_implementation="eager", **common)
        cfg.architectures = ["Gemma2ForCausalLM"]
        return cfg, tf.Gemma2ForCausalLM
    cfg = tf.GemmaConfig(num_hidden_layers=layers or 2, **common)
    cfg.architectures = ["GemmaForCausalLM"]
    return cfg, tf.GemmaForCausalLM


def make_tiny_model(
    out_dir: str | Path,
    arch: str = "gemma3",
    hidden: int = 256,
    layers: int | None = None,
    heads: int = 4,
    vocab_size: int = 2048,
    seed: int = 0,
    text: Iterable[str] | None = None,
) -> Path:
    """Write a random `arch` model + tokenizer to `out_dir`, ready for training, merge and
    llama.cpp's converter (tokenizer.model, tokenizer_config.json with added_tokens_decoder,
    generation_config with eos [1, 107]). Same arguments, same files."""
    import torch
    from transformers import AutoTokenizer

    from training.merge import write_generation_config, write_tokenizer_files

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if hidden % 256 or hidden % heads:
        raise ValueError(f"hidden={hidden} must be a multiple of 256 (K-quants) and of heads={heads}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sp_file = train_tokenizer(out / "tokenizer.model", text or campus_text(), vocab_size)
    write_tokenizer_files(out, sp_file.read_bytes())
    tok = AutoTokenizer.from_pretrained(out)

    cfg, cls = _config(arch, len(tok), hidden, layers, heads)
    torch.manual_seed(seed)
    model = cls(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)                      # tokenizer.json for fast loading ...
    write_tokenizer_files(out, sp_file.read_bytes())  # ... then restore what save_pretrained drops
    write_generation_config(out, tok)
    return out


def make_tiny_whisper(out_dir: str | Path, tokenizer_json: str | Path, d_model: int = 64, layers: int = 2,
                      heads: int = 2, mels: int = 80, seed: int = 0) -> Path:
    """A random Whisper (`layers` encoder + `layers` decoder layers of width `d_model`) on the
    real multilingual Whisper vocabulary, read from a `tokenizer.json` (the packaged CTranslate2
    whisper-base has one), saved with tokenizer, feature extractor and a generation config that
    carries Whisper's suppress lists and language ids, as a real checkpoint does. ~1 s."""
    import torch
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperTokenizerFast)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = WhisperTokenizerFast(tokenizer_file=str(tokenizer_json))
    ids = lambda t: tok.convert_tokens_to_ids(t)    # noqa: E731
    sot, eot, translate = ids("<|startoftranscript|>"), ids("<|endoftext|>"), ids("<|translate|>")
    ct2 = Path(tokenizer_json).with_name("config.json")   # a CTranslate2 folder's suppress lists
    lists = json.loads(ct2.read_text()) if ct2.is_file() else {}
    suppress, begin = lists.get("suppress_ids", []), lists.get("suppress_ids_begin", [220, eot])
    cfg = WhisperConfig(vocab_size=len(tok), num_mel_bins=mels, d_model=d_model,
                        encoder_layers=layers, decoder_layers=layers,
                        encoder_attention_heads=heads, decoder_attention_heads=heads,
                        encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model,
                        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
                        suppress_tokens=suppress, begin_suppress_tokens=begin)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(cfg)
    lang_to_id = {tok.convert_ids_to_tokens(i): i for i in range(sot + 1, translate)}
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
        suppress_tokens=suppress, begin_suppress_tokens=begin, lang_to_id=lang_to_id,
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": translate},
        no_timestamps_token_id=ids("<|notimestamps|>"), is_multilingual=True, max_length=448)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=mels).save_pretrained(out)
    return out
