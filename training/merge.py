"""Merge a LoRA adapter into a 16-bit base and write what llama.cpp's converter needs.

Always onto 16-bit weights: the ancestor merged onto its 4-bit base and lost its general skills.
For a QLoRA adapter the base is first put through the same NF4 round trip the adapter was trained
against (the "dequantized base"), so the merged weights are the ones training actually saw.
The output gets `generation_config.json` with both `<eos>` and `<end_of_turn>` as eos (or the
model talks past its turn), `tokenizer.model` and `added_tokens_decoder` (transformers 5 writes
neither; without them the GGUF has no turn tokens).
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from campus_guide import prompt
from campus_guide.errors import UserError
from campus_guide.ggufmeta import vocabulary
from training.runs import TRAIN_RECORD

log = logging.getLogger(__name__)

DTYPES = ("bfloat16", "float16", "float32")


# --- files llama.cpp's converter needs ------------------------------------------------------------

def _special_pieces(sp_bytes: bytes) -> dict[int, str]:
    """Control, unknown and user-defined pieces of a SentencePiece model (the turn tokens among
    them): these must be marked special, or the converter stores them as plain text."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(sp_bytes)
    keep = {pb.ModelProto.SentencePiece.CONTROL, pb.ModelProto.SentencePiece.UNKNOWN,
            pb.ModelProto.SentencePiece.USER_DEFINED}
    return {i: p.piece for i, p in enumerate(m.pieces) if p.type in keep}


def write_tokenizer_files(out_dir: Path, sp_bytes: bytes) -> None:
    """Write tokenizer.model and merge Gemma's special-token settings into tokenizer_config.json."""
    out_dir = Path(out_dir)
    (out_dir / "tokenizer.model").write_bytes(sp_bytes)
    cfg_file = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}
    for machine_specific in ("vocab_file", "is_local", "local_files_only"):
        cfg.pop(machine_specific, None)
    flags = dict(lstrip=False, normalized=False, rstrip=False, single_word=False, special=True)
    cfg.update(
        tokenizer_class=cfg.get("tokenizer_class", "GemmaTokenizer"),
        bos_token=prompt.BOS, eos_token=prompt.EOS, pad_token="<pad>", unk_token="<unk>",
        add_bos_token=True, add_eos_token=False,
        added_tokens_decoder={str(i): {"content": p, **flags}
                              for i, p in sorted(_special_pieces(sp_bytes).items())},
    )
    cfg_file.write_text(json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8")


def stop_ids(tok) -> list[int]:
    """Ids of `<eos>` and `<end_of_turn>` in this vocabulary: [1, 107] for Gemma 1/2 and the tiny
    models, [1, 106] for Gemma-3 (where 107 is a newline)."""
    def token_id(t: str) -> int | None:
        i = tok.convert_tokens_to_ids(t)
        return None if i is None or i == tok.unk_token_id else i

    ids = prompt.stop_token_ids(token_id)
    if len(ids) < len(prompt.STOP_STRINGS):
        raise UserError(f"the tokenizer lacks {' or '.join(prompt.STOP_STRINGS)}; is this a Gemma model?")
    return ids


def write_generation_config(out_dir: Path, tok) -> None:
    """Greedy by default, stopping at `<eos>` or `<end_of_turn>`."""
    from transformers import GenerationConfig

    GenerationConfig(bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
                     eos_token_id=stop_ids(tok), do_sample=False).save_pretrained(out_dir)


def sp_model_from_gguf(gguf_file: Path) -> bytes:
    """Rebuild a SentencePiece model from a GGUF's vocabulary (the packaged Gemma-3 has no
    tokenizer.model beside it, and the converter of a merged model needs one)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    tokens, scores, types = vocabulary(gguf_file)
    # GGUF token types: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte,
    # the same numbering SentencePiece uses.
    m = pb.ModelProto()
    for tok, score, kind in zip(tokens, scores, types):
        m.pieces.add(piece=tok, score=score, type=kind)
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.vocab_size = len(tokens)
    m.trainer_spec.pad_id, m.trainer_spec.eos_id = 0, prompt.EOS_ID
    m.trainer_spec.bos_id, m.trainer_spec.unk_id = prompt.BOS_ID, 3
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = False
    m.normalizer_spec.remove_extra_whitespaces = False
    return m.SerializeToString()


# --- loading ----------------------------------------------------------------------------------------

def is_4bit(model_dir: Path) -> bool:
    cfg_file = Path(model_dir) / "config.json"
    if not cfg_file.is_file():
        return False
    q = json.loads(cfg_file.read_text(encoding="utf-8")).get("quantization_config") or {}
    return bool(q.get("load_in_4bit") or q.get("quant_method") in ("bitsandbytes_4bit", "gptq", "awq")
                or (q.get("quant_method") == "bitsandbytes" and not q.get("load_in_8bit")))


def load_base(base: str | Path, dtype: str = "float32"):
    """(model, tokenizer, sp_bytes | None) from an HF folder or a GGUF file (dequantized by
    transformers). Refuses quantized checkpoints with what to do instead."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = Path(base)
    if not base.exists():
        raise UserError(f"base model {base} not found (an HF model folder or a .gguf file)")
    if is_4bit(base):
        raise UserError(
            f"{base} is a 4-bit checkpoint; merging into 4-bit weights destroys the base model's "
            "skills. Pass the original 16-bit base (for QLoRA: the model you quantized while "
            "training); merge dequantizes it exactly as training did.")
    kw = dict(dtype=getattr(torch, dtype))
    if base.suffix == ".gguf":
        tok = AutoTokenizer.from_pretrained(base.parent, gguf_file=base.name)
        model = AutoModelForCausalLM.from_pretrained(base.parent, gguf_file=base.name, **kw)
        # The weights are already dequantized to `dtype`; transformers still tags the model as
        # "quantized with gguf" and then refuses save_pretrained. Drop the tag (and keep
        # quantization_config out of the merged config.json).
        model.hf_quantizer = None
        for attr in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(model.config, attr):
                delattr(model.config, attr)
        return model, tok, sp_model_from_gguf(base)
    attn = {"attn_implementation": "eager"} if "gemma2" in (base / "config.json").read_text() else {}
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, **kw, **attn)
    sp = base / "tokenizer.model"
    return model, tok, sp.read_bytes() if sp.is_file() else None


def gguf_base_config(base_gguf: Path, out_dir: Path) -> Path:
    """The HF config.json of a GGUF base, written to `out_dir`: llama.cpp's LoRA converter reads
    the base's hyper-parameters from it and needs no base weights."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    cfg = AutoConfig.from_pretrained(base_gguf.parent, gguf_file=base_gguf.name)
    cfg.architectures = cfg.architectures or [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[cfg.model_type]]
    cfg.save_pretrained(out_dir)
    return out_dir


def nf4_round_trip(model) -> int:
    """Replace every Linear weight the 4-bit training quantized (all but the output head) by its
    NF4-dequantized value; returns the count."""
    import bitsandbytes.functional as bnbf
    import torch

    n = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and not name.endswith("lm_head"):
            w = mod.weight.data
            q, state = bnbf.quantize_4bit(w.to(torch.float32).contiguous(), quant_type="nf4")
            mod.weight.data = bnbf.dequantize_4bit(q, state).to(w.dtype).reshape(w.shape)
            n += 1
    return n


# --- merge --------------------------------------------------------------------------------------------

@dataclass
class MergeResult:
    out_dir: Path
    method: str
    dequantized_layers: int


def merge(base: str | Path, adapter: str | Path, out_dir: str | Path,
          dtype: str = "bfloat16") -> MergeResult:
    """Adapter + 16-bit base -> a standalone HF model folder that export can convert."""
    import torch
    from peft import PeftModel

    adapter, out = Path(adapter), Path(out_dir)
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)} (never 4-bit)")
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter} has no adapter_config.json; pass the folder `train fit` wrote "
                        "(its best/ or final/ subfolder)")
    record_file = adapter / TRAIN_RECORD
    method = json.loads(record_file.read_text())["method"] if record_file.is_file() else "lora"

    model, tok, sp = load_base(base, "float32")
    n = nf4_round_trip(model) if method == "qlora" else 0
    if n:
        log.info("QLoRA adapter: merged onto the NF4-dequantized base (%d linear layers)", n)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.to(getattr(torch, dtype)).save_pretrained(out)
    tok.save_pretrained(out)
    if sp is not None:
        write_tokenizer_files(out, sp)
    else:
        log.warning("%s has no tokenizer.model; llama.cpp's converter will need one", base)
    write_generation_config(out, tok)
    for extra in ("README.md", TRAIN_RECORD):
        if (adapter / extra).is_file():
            shutil.copy(adapter / extra, out / extra)
    return MergeResult(out, method, n)
