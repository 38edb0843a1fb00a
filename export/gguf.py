"""Merged Hugging Face model -> GGUF, with the checks that catch a broken conversion early.

A Gemma GGUF can convert without error and still be useless on the kiosk: without
`tokenizer.model` the converter stops; without `added_tokens_decoder` the turn tokens become plain
text and every answer is "?"; a doubled `<bos>` quietly degrades output. So the model folder is
checked before converting, and the written GGUF is read back (gguf-py for metadata, llama.cpp's own
tokenizer for the chat format) before anyone quantizes or ships it.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from campus_guide import prompt
from campus_guide.ggufmeta import GGUFInfo, read_gguf
from export import ExportError
from export.llamacpp import convert_hf

log = logging.getLogger(__name__)

# HF architecture -> GGUF architecture (the Gemma family llama.cpp's converter handles).
SUPPORTED = {"GemmaForCausalLM": "gemma", "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3"}
OUTTYPES = ("f16", "bf16", "f32")


# --- before converting ------------------------------------------------------------------------------

@dataclass
class Preflight:
    hf_architecture: str
    architecture: str               # GGUF name
    start_of_turn_id: int
    end_of_turn_id: int
    context_length: int


def preflight(model_dir: str | Path) -> Preflight:
    """Everything that would make the converter fail, or succeed with a useless model; every
    problem is reported at once with its fix."""
    d = Path(model_dir)
    if not (d / "config.json").is_file():
        raise ExportError(f"{d}: no config.json; pass the folder `campus-guide train merge` wrote")
    cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    problems = []
    archs = cfg.get("architectures") or []
    hf_arch = archs[0] if archs else "(none)"
    if hf_arch not in SUPPORTED:
        hint = (" (a multimodal checkpoint: save its text model as Gemma3ForCausalLM first)"
                if hf_arch == "Gemma3ForConditionalGeneration" else "")
        problems.append(f"config.json architecture {hf_arch} is not supported{hint}; "
                        f"supported: {', '.join(SUPPORTED)}")
    if not (list(d.glob("*.safetensors")) or list(d.glob("pytorch_model*.bin"))):
        problems.append("no weights (*.safetensors); the merge did not finish")
    ids: dict[str, int] = {}
    if not (d / "tokenizer.model").is_file():
        only_json = " (it has only tokenizer.json, as ko-gemma-2b-v1 ships)" if (d / "tokenizer.json").is_file() else ""
        problems.append(
            f"no tokenizer.model{only_json}; the Gemma converter reads the SentencePiece model. "
            f"Copy tokenizer.model from the base model the fine-tune started from (for ko-gemma-2b-v1: "
            f"google/gemma-2b's, same vocabulary), or re-run `campus-guide train merge`, which writes it")
    tc_file = d / "tokenizer_config.json"
    decoder = json.loads(tc_file.read_text(encoding="utf-8")).get("added_tokens_decoder", {}) if tc_file.is_file() else {}
    for piece in (prompt.START_OF_TURN, prompt.END_OF_TURN):
        found = [int(i) for i, t in decoder.items() if t.get("content") == piece]
        if found:
            ids[piece] = found[0]
        else:
            problems.append(
                f"tokenizer_config.json has no {piece} in added_tokens_decoder, so it would convert as "
                f"plain text and the model answers '?'. transformers 5 save_pretrained drops it: re-run "
                f"`campus-guide train merge` (training.merge.write_tokenizer_files restores it)")
    if problems:
        raise ExportError(f"{d} cannot be converted yet:\n  - " + "\n  - ".join(problems))
    text_cfg = cfg.get("text_config", cfg)
    return Preflight(hf_arch, SUPPORTED[hf_arch], ids[prompt.START_OF_TURN], ids[prompt.END_OF_TURN],
                     int(text_cfg.get("max_position_embeddings", 0)))


# --- after converting -------------------------------------------------------------------------------

def check_gguf(info: GGUFInfo, expect: Preflight | None = None) -> None:
    """Assert what the kiosk relies on; `expect` (from the HF folder) pins ids and sizes."""
    problems = []
    if info.architecture not in SUPPORTED.values():
        problems.append(f"architecture {info.architecture!r}, expected one of {', '.join(SUPPORTED.values())}")
    if expect and info.architecture != expect.architecture:
        problems.append(f"architecture {info.architecture}, but the HF model is {expect.architecture}")
    if info.end_of_turn_id is None:
        problems.append(f"no {prompt.END_OF_TURN} token in the vocabulary")
    elif info.end_of_turn_type not in ("CONTROL", "USER_DEFINED"):
        problems.append(f"{prompt.END_OF_TURN} (id {info.end_of_turn_id}) is a {info.end_of_turn_type} "
                        f"token, so it is plain text; fix added_tokens_decoder and convert again")
    if expect and info.end_of_turn_id != expect.end_of_turn_id:
        problems.append(f"{prompt.END_OF_TURN} has id {info.end_of_turn_id}, the tokenizer says {expect.end_of_turn_id}")
    if expect and info.start_of_turn_id != expect.start_of_turn_id:
        problems.append(f"{prompt.START_OF_TURN} has id {info.start_of_turn_id}, the tokenizer says {expect.start_of_turn_id}")
    if info.bos_id != prompt.BOS_ID or not info.add_bos:
        problems.append(f"BOS id {info.bos_id} / add_bos {info.add_bos}; Gemma needs id {prompt.BOS_ID}, "
                        f"added by the tokenizer (prompt.py renders no <bos>)")
    if info.context_length <= 0:
        problems.append("no context length recorded")
    elif expect and expect.context_length and info.context_length != expect.context_length:
        problems.append(f"context length {info.context_length}, config.json says {expect.context_length}")
    if problems:
        raise ExportError(f"{info.path} is not usable on the kiosk:\n  - " + "\n  - ".join(problems))


def check_chat_format(path: str | Path) -> list[int]:
    """Tokenize one prompt in our chat format with llama.cpp's own tokenizer (vocab only, fast):
    exactly one <bos> first, each turn marker one token, and end-of-turn ends generation.
    Returns the token ids (for the record)."""
    import llama_cpp
    from llama_cpp._internals import LlamaModel

    text = prompt.render_prompt("Where is the library?", ["The library is building 5."], lang="en")
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True                # the vocabulary alone: no weights, no context
    try:
        model = LlamaModel(path_model=str(path), params=params, verbose=False)
    except ValueError as e:
        raise ExportError(f"{path}: llama.cpp cannot load this GGUF ({e}); convert it again") from None
    try:
        ids = model.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        info_sot = model.tokenize(prompt.START_OF_TURN.encode(), add_bos=False, special=True)
        info_eot = model.tokenize(prompt.END_OF_TURN.encode(), add_bos=False, special=True)
        eog = bool(llama_cpp.llama_vocab_is_eog(model.vocab, info_eot[0])) if len(info_eot) == 1 else False
    finally:
        model.close()
    problems = []
    if ids[:1] != [prompt.BOS_ID] or ids.count(prompt.BOS_ID) != 1:
        problems.append(f"the prompt does not start with exactly one <bos> (ids {ids[:4]}...)")
    if len(info_sot) != 1 or len(info_eot) != 1:
        problems.append(f"turn markers split into several tokens ({info_sot}, {info_eot}): they are plain text")
    elif not eog:
        problems.append(f"llama.cpp does not treat {prompt.END_OF_TURN} (id {info_eot[0]}) as end of "
                        f"generation; the kiosk would talk past its turn")
    if problems:
        raise ExportError(f"{path}: chat format check failed:\n  - " + "\n  - ".join(problems))
    return ids


def convert(model_dir: str | Path, out_dir: str | Path, outtype: str = "f16") -> tuple[Path, GGUFInfo]:
    """Preflight, convert with the pinned llama.cpp converter, then read back and check."""
    if outtype not in OUTTYPES:
        raise ExportError(f"--outtype {outtype}: choose one of {', '.join(OUTTYPES)}")
    model_dir = Path(model_dir)
    expect = preflight(model_dir)
    out = Path(out_dir) / f"{model_dir.resolve().name}-{outtype}.gguf"
    convert_hf(model_dir, out, outtype)
    info = read_gguf(out)
    check_gguf(info, expect)
    check_chat_format(out)
    return out, info


def describe(info: GGUFInfo) -> str:
    return (f"{info.path}: {info.architecture} '{info.name}', {info.file_type}, "
            f"{info.size / 1e6:.1f} MB, context {info.context_length}, vocab {info.vocab_size}, "
            f"<bos> {info.bos_id} (added: {info.add_bos}), {prompt.END_OF_TURN} {info.end_of_turn_id} "
            f"({info.end_of_turn_type}), chat template: "
            f"{'in file' if info.chat_template else 'none (campus_guide.prompt ' + prompt.CHAT_FORMAT + ' format)'}")
