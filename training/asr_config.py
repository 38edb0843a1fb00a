"""The Whisper recipe's YAML (`campus-guide train asr --config FILE`): one dataclass, validated
with the same rules as the LLM recipe's (training/config.py): unknown keys get "did you mean",
ranges are checked, relative paths are taken from the YAML's folder."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path


from campus_guide.config import ConfigError, _build
from training.config import LoraOptions, read_yaml

METHODS = ("lora", "full")
LANGUAGES = ("ko", "en", "auto")     # auto: each clip's language from its transcript's script
QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16",
                 "float16", "bfloat16", "float32")


@dataclass
class WhisperLora(LoraOptions):
    # Whisper's attention projections (encoder self, decoder self and cross attention);
    # fc1 / fc2 are its feed-forward layers.
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])


@dataclass
class Augment:
    """Applied to training clips only, seeded; validation clips are heard as recorded."""
    speed_prob: float = 0.5         # share of clips played faster or slower
    speed_min: float = 0.9
    speed_max: float = 1.1
    noise_prob: float = 0.5         # share of clips with white noise added
    noise_snr_min: float = 10.0     # dB
    noise_snr_max: float = 30.0


@dataclass
class Synth:
    """Campus-name utterances spoken by the kiosk's own voices (piper for en, espeak-ng for ko
    unless tts.voices.ko is set): "중앙도서관 어디에 있나요?", "Where is the Central Library?"."""
    clips: int = 0                  # 0: none
    languages: list[str] = field(default_factory=lambda: ["ko", "en"])
    kb: str = ""                    # knowledge base; default: the kiosk config's (the sample campus)
    out: str = ""                   # corpus folder it is written to; default OUT/synth


@dataclass
class AsrConfig:
    base: str = ""                  # local Hugging Face Whisper folder (config.json, weights, tokenizer,
                                    # preprocessor_config.json); no model hub is used
    corpus: list[str] = field(default_factory=list)   # folders of WAVs + transcripts.tsv (bench asr's format)
    synth: Synth = field(default_factory=Synth)
    out: str = "runs/asr"
    method: str = "lora"            # lora | full
    lora: WhisperLora = field(default_factory=WhisperLora)
    language: str = "ko"            # the language token every clip is trained with; auto: by script
    lr: float = 1.0e-3
    weight_decay: float = 0.0
    warmup_steps: int = 10
    epochs: float = 3.0
    max_steps: int = 0              # > 0 overrides epochs
    batch_size: int = 8
    grad_accum: int = 1
    val_fraction: float = 0.1       # of the distinct sentences (never of clips: no sentence in both)
    max_label_tokens: int = 128     # longer transcripts are dropped (and counted), never truncated
    max_new_tokens: int = 96        # decoding limit in the CER evaluations
    eval_steps: int = 50
    patience: int = 4               # evaluations without a better validation CER before stopping
    min_delta: float = 0.0          # CER improvement that counts (ties go to the lower loss)
    augment: Augment = field(default_factory=Augment)
    quantization: str = "int8"      # CTranslate2 weights (the kiosk runs int8)
    ct2_tolerance: float = 0.005    # converted CER may differ from the merged model's by this (0.5 points)
    seed: int = 0
    dtype: str = "auto"             # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16
    threads: int = 0                # torch CPU threads; 0 = torch's default
    source: str | None = None


def _between(lo, hi):
    return lambda v: lo <= v <= hi


_CHECKS = {
    "method": (f"one of {', '.join(METHODS)}", lambda c: c.method in METHODS),
    "language": (f"one of {', '.join(LANGUAGES)}", lambda c: c.language in LANGUAGES),
    "lora.rank": ("at least 1", lambda c: c.lora.rank >= 1),
    "lora.alpha": ("at least 1", lambda c: c.lora.alpha >= 1),
    "lora.dropout": ("within 0..1", lambda c: 0 <= c.lora.dropout < 1),
    "lora.target_modules": ("a non-empty list of module names (Whisper: q_proj k_proj v_proj "
                            "out_proj fc1 fc2)",
                            lambda c: bool(c.lora.target_modules)
                            and all(isinstance(m, str) for m in c.lora.target_modules)),
    "lr": ("within 0..1", lambda c: 0 < c.lr < 1),
    "weight_decay": ("0 or more", lambda c: c.weight_decay >= 0),
    "warmup_steps": ("0 or more", lambda c: c.warmup_steps >= 0),
    "epochs": ("positive", lambda c: c.epochs > 0),
    "max_steps": ("0 or more", lambda c: c.max_steps >= 0),
    "batch_size": ("at least 1", lambda c: c.batch_size >= 1),
    "grad_accum": ("at least 1", lambda c: c.grad_accum >= 1),
    "val_fraction": ("within (0, 0.5]", lambda c: 0 < c.val_fraction <= 0.5),
    "max_label_tokens": ("within 8..444 (Whisper's decoder holds 448 positions, 4 are the prefix)",
                         lambda c: 8 <= c.max_label_tokens <= 444),
    # faster-whisper stops near half the room it is given (training/asr.py); 200 keeps it level
    "max_new_tokens": ("within 1..200", lambda c: 1 <= c.max_new_tokens <= 200),
    "eval_steps": ("at least 1", lambda c: c.eval_steps >= 1),
    "patience": ("at least 1", lambda c: c.patience >= 1),
    "min_delta": ("0 or more", lambda c: c.min_delta >= 0),
    "augment.speed_prob": ("within 0..1", lambda c: 0 <= c.augment.speed_prob <= 1),
    "augment.noise_prob": ("within 0..1", lambda c: 0 <= c.augment.noise_prob <= 1),
    "augment.speed_min": ("within 0.5..2 and at most augment.speed_max",
                          lambda c: 0.5 <= c.augment.speed_min <= c.augment.speed_max <= 2),
    "augment.speed_max": ("within 0.5..2", lambda c: _between(0.5, 2)(c.augment.speed_max)),
    "augment.noise_snr_min": ("within -10..80 dB and at most augment.noise_snr_max",
                              lambda c: -10 <= c.augment.noise_snr_min <= c.augment.noise_snr_max <= 80),
    "synth.clips": ("0 or more", lambda c: c.synth.clips >= 0),
    "synth.languages": ("a non-empty list of ko / en",
                        lambda c: bool(c.synth.languages) and all(x in ("ko", "en") for x in c.synth.languages)),
    "quantization": (f"one of {', '.join(QUANTIZATIONS)}", lambda c: c.quantization in QUANTIZATIONS),
    "ct2_tolerance": ("0 or more", lambda c: c.ct2_tolerance >= 0),
    "dtype": ("one of auto, float32, bfloat16", lambda c: c.dtype in ("auto", "float32", "bfloat16")),
    "threads": ("0 or more", lambda c: c.threads >= 0),
}


def _pop_list(data: dict, section: str | None, key: str):
    """campus_guide.config's validator knows scalars and mappings; lists are taken out here."""
    d = data if section is None else data.get(section)
    if not isinstance(d, dict) or key not in d:
        return None
    v = d.pop(key)
    return [str(x) if isinstance(x, (str, Path)) else x for x in (v if isinstance(v, list) else [v])]


def load_asr_config(path: str | Path, **overrides) -> AsrConfig:
    """Read and validate a Whisper training YAML; relative paths are taken from its folder."""
    p = Path(path)
    data = read_yaml(p, "ASR training config not found (example: training/configs/asr-whisper.yaml)",
                     overrides)
    lists = {("", "corpus"): _pop_list(data, None, "corpus"),
             ("lora", "target_modules"): _pop_list(data, "lora", "target_modules"),
             ("synth", "languages"): _pop_list(data, "synth", "languages")}
    cfg = _build(AsrConfig, data, "", str(p))
    for (section, key), value in lists.items():
        if value is not None:
            setattr(getattr(cfg, section) if section else cfg, key, value)
    if not all(isinstance(c, str) and c for c in cfg.corpus):
        raise ConfigError(f"{p}: 'corpus' must be a folder or a list of folders, got {cfg.corpus!r}")
    for key, (what, ok) in _CHECKS.items():
        if not ok(cfg):
            raise ConfigError(f"{p}: '{key}' must be {what}")
    if not cfg.base:
        raise ConfigError(f"{p}: 'base' is required: a local Hugging Face Whisper folder "
                          "(e.g. whisper-small saved with save_pretrained)")
    if not cfg.corpus and not cfg.synth.clips:
        raise ConfigError(f"{p}: no training audio: give 'corpus' (folders with transcripts.tsv) "
                          "or 'synth.clips' > 0, or both")
    here = p.resolve().parent

    def absolute(v: str) -> str:
        q = Path(v).expanduser()
        return str(q if q.is_absolute() else here / q)

    cfg.base, cfg.out = absolute(cfg.base), absolute(cfg.out)
    cfg.corpus = [absolute(c) for c in cfg.corpus]
    cfg.synth.kb = absolute(cfg.synth.kb) if cfg.synth.kb else ""
    cfg.synth.out = absolute(cfg.synth.out) if cfg.synth.out else str(Path(cfg.out) / "synth")
    cfg.source = str(p)
    return cfg


def asr_config_hash(cfg: AsrConfig) -> str:
    """Of every option, with paths reduced to their last component (the same on another machine)."""
    d = dataclasses.asdict(cfg)
    d.pop("source")
    d.update(base=Path(d["base"]).name, out=Path(d["out"]).name, corpus=[Path(c).name for c in d["corpus"]])
    d["synth"].update(kb=Path(d["synth"]["kb"]).name, out=Path(d["synth"]["out"]).name)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
