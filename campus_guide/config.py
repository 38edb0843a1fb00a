"""One config schema for the whole appliance, loaded from YAML and validated.

Every section is a dataclass; unknown keys, wrong types and out-of-range values raise
`ConfigError` naming the file and the dotted key, so an operator editing
/etc/campus-guide/config.yaml on a kiosk gets told exactly what to fix.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PACKAGE_DATA = Path(__file__).parent / "data"
SAMPLE_KB = PACKAGE_DATA / "sample_campus.yaml"
ENV_CONFIG = "CAMPUS_GUIDE_CONFIG"
ENV_MODELS = "CAMPUS_GUIDE_MODELS"
ENV_CACHE = "CAMPUS_GUIDE_CACHE"


class ConfigError(ValueError):
    """A config file is unreadable or invalid; the message says where and how to fix it."""


@dataclass
class VADConfig:
    threshold: float = 0.5          # speech probability that opens an utterance
    end_silence_s: float = 0.45     # trailing silence that closes it (turn.mode: silence)
    pre_roll_s: float = 0.3         # audio kept from before the start (first syllable)
    min_speech_s: float = 0.25      # shorter bursts are noise (a cough, a door)
    max_utterance_s: float = 15.0   # a monologue is cut cleanly here


@dataclass
class TurnConfig:
    """When the visitor has finished (device/turns.py). At a short pause the speech so far is
    transcribed at once; a turn that sounds finished ends there, one that does not ("where is
    ...", "도서관에 가려면 ...", a bare "excuse me") waits longer for the rest."""
    mode: str = "smart"             # smart | silence (the ancestor's fixed vad.end_silence_s)
    pause_s: float = 0.2            # silence that starts the speculative ASR and the check
    smart_turn: str | None = "smart-turn-v3.2-cpu.onnx"   # the end-of-turn model; null = rules only
    threshold: float = 0.5          # Smart Turn P(complete) above which a pause ends the turn
    incomplete_wait_s: float = 1.5  # silence after which an unfinished-sounding turn ends anyway
    opener_wait_s: float = 2.0      # after a bare opener ("excuse me", "저기요"): wait for the question


@dataclass
class ASRConfig:
    model: str = "whisper-base"     # a name under models_dir, or a path to a CTranslate2 folder;
                                    # a flashed bundle that carries a Whisper (asr/) replaces it
    language: str = "auto"          # auto | ko | en
    compute_type: str = "int8"
    device: str = "cpu"
    # Beam search, still deterministic (temperature 0, no sampling). On 80 real Korean clips
    # (docs/bench.md, "ASR on real speech") greedy decoding loops and drops words: CER 0.168;
    # beam 2: 0.111, beam 3: 0.094, beam 5: 0.096. 3 is the smallest beam under the 0.10 goal and
    # costs 2-10 % more ASR time than greedy (the encoder passes dominate); English unchanged.
    beam_size: int = 3
    cpu_threads: int = 0            # 0 = the thread budget's (device/budget.py, `threads`)
    hotwords: bool = False          # KB names as a Whisper prompt: off, unclear speech came back as copied names (device/asr.py)


@dataclass
class LLMConfig:
    model: str = "gemma3-270m-q4_k_m.gguf"  # a file under models_dir, or a path
    lora: str | None = "auto"       # adapter GGUF applied at load; "auto" = campus-lora.gguf if present; null = none
    n_ctx: int = 2048
    n_threads: int = 0              # decoding; 0 = the thread budget's (device/budget.py, `threads`)
    n_threads_batch: int = 0        # prompt prefill; 0 = the thread budget's
    n_gpu_layers: int = 0           # -1 on the Jetson (all layers on the GPU)
    max_tokens: int = 160
    temperature: float = 0.0
    seed: int = 0


@dataclass
class DialogueConfig:
    memory_turns: int = 10          # question/answer pairs kept as context (the ancestor kept 10)
    session_timeout_s: float = 60.0 # silence after which the next visitor starts afresh
    retrieval_k: int = 3
    min_score: float = 0.50         # below this the kiosk says it does not know (docs/knowledge.md: measured)
    kiosk_location: str = "main_gate"  # graph node meaning "here"
    max_sentence_chars: int = 160   # run-on sentences are cut for TTS here


@dataclass
class TTSConfig:
    voices: dict[str, str | None] = field(
        default_factory=lambda: {"en": "en_US-joe-medium.onnx", "ko": None}
    )
    espeak_fallback: bool = True    # speak languages without a piper voice with espeak-ng
    length_scale: float = 1.0
    threads: int = 0                # onnxruntime threads for piper; 0 = the thread budget's


@dataclass
class AudioConfig:
    sample_rate: int = 16000
    input_device: str | None = None
    output_device: str | None = None
    barge_in: bool = False          # only with an echo-cancelling microphone


@dataclass
class BudgetConfig:
    total_gb: float = 6.5


@dataclass
class RuntimeConfig:
    state_dir: str = "state"        # status.json and turns.jsonl for `campus-guide status`
    log_transcripts: bool = True    # false: turns.jsonl keeps kind, language and timings, not words
    turn_log_max_mb: float = 5.0    # turns.jsonl rotates to turns.jsonl.1 .. .N past this size
    turn_log_keep: int = 2          # rotated copies kept (a kiosk runs for months)


@dataclass
class Config:
    kb: str = str(SAMPLE_KB)
    models_dir: str = "models"
    vad: VADConfig = field(default_factory=VADConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    asr: ASRConfig = field(default_factory=ASRConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    dialogue: DialogueConfig = field(default_factory=DialogueConfig)
    tts: TTSConfig = field(default_factory=TTSConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    source: str | None = None       # the file this came from, for messages

    def models_path(self, name: str | None) -> Path | None:
        return None if name is None else resolve_model(name, self.models_dir)

    def asr_path(self) -> Path:
        """The Whisper folder the kiosk runs: the LLM bundle's own when it carries one (a
        flashed campus Whisper), else `asr.model`."""
        from .bundle import bundle_asr

        return bundle_asr(self.models_path(self.llm.model)) or self.models_path(self.asr.model)


def cache_dir() -> Path:
    """Where derived files are kept between runs (passage embeddings, the llama.cpp converter):
    $CAMPUS_GUIDE_CACHE, else the XDG cache folder."""
    base = os.environ.get(ENV_CACHE) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "campus-guide")
    return Path(base)


def resolve_model(name: str, models_dir: str | os.PathLike) -> Path:
    """A bare name is a file under `models_dir`; anything with a folder in it is a path as is.
    The one rule, so that the budget and the loaders always mean the same file."""
    p = Path(os.path.expanduser(name))
    return p if p.is_absolute() or p.parent != Path(".") else Path(models_dir) / p


ADAPTER_NAME = "campus-lora.gguf"   # the campus adapter as `models fetch` installs it
PACKAGED_ADAPTER = PACKAGE_DATA / ADAPTER_NAME   # what `train default` writes and the package ships


def resolve_adapter(lora: str | None, models_dir: str | os.PathLike) -> Path | None:
    """The LoRA adapter llm.lora means: null -> none; "auto" -> models_dir/campus-lora.gguf when
    it exists, else none; anything else -> that model path (the caller refuses it if missing).
    The one rule, so that the budget plans the adapter the LLM loads."""
    if lora is None:
        return None
    if lora == "auto":
        p = Path(models_dir) / ADAPTER_NAME
        return p if p.is_file() else None
    return resolve_model(lora, models_dir)


_CHECKS: dict[str, tuple[str, Any]] = {
    "vad.threshold": ("within 0..1", lambda v: 0 < v < 1),
    "vad.end_silence_s": ("positive", lambda v: v > 0),
    "vad.max_utterance_s": ("positive", lambda v: v > 0),
    "turn.mode": ("one of smart, silence", lambda v: v in ("smart", "silence")),
    "turn.pause_s": ("within 0.05..2", lambda v: 0.05 <= v <= 2),
    "turn.threshold": ("within 0..1", lambda v: 0 < v < 1),
    "turn.incomplete_wait_s": ("positive", lambda v: v > 0),
    "turn.opener_wait_s": ("positive", lambda v: v > 0),
    "llm.n_threads": ("0 (the budget's) or more", lambda v: v >= 0),
    "llm.n_threads_batch": ("0 (the budget's) or more", lambda v: v >= 0),
    "asr.cpu_threads": ("0 (the budget's) or more", lambda v: v >= 0),
    "tts.threads": ("0 (the budget's) or more", lambda v: v >= 0),
    "asr.language": ("one of auto, ko, en", lambda v: v in ("auto", "ko", "en")),
    "asr.beam_size": ("at least 1", lambda v: v >= 1),
    "llm.n_ctx": ("at least 256", lambda v: v >= 256),
    "llm.max_tokens": ("at least 1", lambda v: v >= 1),
    "dialogue.memory_turns": ("0 or more", lambda v: v >= 0),
    "dialogue.retrieval_k": ("at least 1", lambda v: v >= 1),
    "dialogue.min_score": ("within 0..1", lambda v: 0 <= v <= 1),
    "dialogue.max_sentence_chars": ("at least 20", lambda v: v >= 20),
    "audio.sample_rate": ("8000..48000", lambda v: 8000 <= v <= 48000),
    "budget.total_gb": ("positive", lambda v: v > 0),
    "runtime.turn_log_max_mb": ("positive", lambda v: v > 0),
    "runtime.turn_log_keep": ("at least 1", lambda v: v >= 1),
}


def _build(cls: type, data: Any, where: str, src: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{src}: '{where or 'top level'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - {"source"}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else f" (known: {', '.join(sorted(names))})"
            raise ConfigError(f"{src}: unknown key '{path}'{hint}")
        kwargs[key] = _coerce(hints[key], value, path, src)
        if path in _CHECKS and not _CHECKS[path][1](kwargs[key]):
            raise ConfigError(f"{src}: '{path}' must be {_CHECKS[path][0]}, got {value!r}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str, src: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, src)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{src}: '{path}' must be a mapping, got {value!r}")
        return {str(k): v for k, v in value.items()}
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise ConfigError(f"{src}: '{path}' must be {getattr(tp, '__name__', tp)}, got {value!r}")


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Load `path`, else $CAMPUS_GUIDE_CONFIG, else the built-in defaults.

    Relative paths inside a config file are taken relative to that file, so a deployment's
    config and its models can move together.
    """
    path = path or os.environ.get(ENV_CONFIG)
    if not path:
        cfg = Config()
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found (pass --config FILE or set {ENV_CONFIG})")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        cfg = _build(Config, data, "", str(p))
        cfg.source = str(p)
        base = p.resolve().parent
        for attr in ("kb", "models_dir"):
            v = Path(os.path.expanduser(getattr(cfg, attr)))
            setattr(cfg, attr, str(v if v.is_absolute() else base / v))
        cfg.runtime.state_dir = str(base / os.path.expanduser(cfg.runtime.state_dir))
    if os.environ.get(ENV_MODELS):
        cfg.models_dir = os.environ[ENV_MODELS]
    return cfg


def dump_config(cfg: Config) -> str:
    data = dataclasses.asdict(cfg)
    data.pop("source")
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
