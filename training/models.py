"""The model each method trains, and how a checkpoint of it is saved.

- lora: the 16-bit (or GGUF, dequantized) base frozen, PEFT LoRA on `lora.target_modules`;
- qlora: the HF base loaded in bitsandbytes NF4, LoRA on top;
- full: every weight trainable; a checkpoint is a complete model folder that export can convert.
"""
from __future__ import annotations

from pathlib import Path

from campus_guide.errors import UserError
from training.config import TrainConfig


def torch_dtype(name: str, device_type: str):
    """`auto`: bf16 on a GPU, fp32 on the CPU."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device_type == "cuda" else torch.float32
    return getattr(torch, name)


def load_model(cfg: TrainConfig, dtype):
    """(model, tokenizer, sp_bytes) with the method's trainable parameters set up."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from training.merge import load_base

    if cfg.method == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise UserError("method qlora needs bitsandbytes: pip install 'campus-guide[qlora]'") from None
        from peft import prepare_model_for_kbit_training
        from transformers import AutoTokenizer

        base = Path(cfg.base)
        model = AutoModelForCausalLM.from_pretrained(
            base, dtype=dtype, quantization_config=BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype))
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        tok = AutoTokenizer.from_pretrained(base)
        sp = (base / "tokenizer.model").read_bytes() if (base / "tokenizer.model").is_file() else None
    else:
        model, tok, sp = load_base(cfg.base, str(dtype).removeprefix("torch."))
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
    if cfg.method == "full":
        model.requires_grad_(True)
        return model, tok, sp
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in cfg.lora.target_modules if m not in names]
    if missing:
        raise UserError(f"lora.target_modules {missing} are not modules of this model "
                        f"(Gemma has q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)")
    model = get_peft_model(model, LoraConfig(
        r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules, bias="none", task_type="CAUSAL_LM"))
    return model, tok, sp


def save_checkpoint(model, tok, sp: bytes | None, method: str, out_dir: Path) -> None:
    """The adapter, or for `full` a complete model folder: tokenizer, tokenizer.model,
    added_tokens_decoder and both eos, as llama.cpp's converter needs them."""
    model.save_pretrained(out_dir)
    if method == "full":
        from training.merge import write_generation_config, write_tokenizer_files

        tok.save_pretrained(out_dir)
        write_generation_config(out_dir, tok)
        if sp is not None:
            write_tokenizer_files(out_dir, sp)
