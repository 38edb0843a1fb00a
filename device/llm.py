"""llama-cpp-python on a GGUF, streamed with incremental detokenization.

llama-cpp-python's `create_completion(stream=True)` detokenizes the whole output again at every
token (38 ms/token at 400 tokens on this machine), so decoding gets slower as the answer grows.
Here each new token's bytes are detokenized alone and fed to an incremental UTF-8 decoder, which
holds back the half of a Hangul syllable that a byte-level token may split.
"""
from __future__ import annotations

import codecs
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from campus_guide.errors import UserError
from campus_guide.bundle import MANIFEST_FILE, BundleError, verify_bundle
from campus_guide.ggufmeta import GGUFError, read_gguf
from campus_guide.config import ADAPTER_NAME, LLMConfig, resolve_adapter, resolve_model
from campus_guide.prompt import START_OF_TURN, STOP_STRINGS, stop_token_ids

from .models import require

log = logging.getLogger(__name__)

# <start_of_turn> as text means a base model is writing the next turn itself: stop there too.
_STOPS = STOP_STRINGS + (START_OF_TURN,)


def _route_llama_log() -> None:
    """llama.cpp prints its load chatter (27 lines of "cannot use buft 'CPU_REPACK'" for an
    adapter) to stderr whatever `verbose` says. Send it to the `llama.cpp` logger instead: its
    errors are shown, the rest only with `campus-guide -v`."""
    import ctypes

    import llama_cpp

    chatter = logging.getLogger("llama.cpp")
    GGML_LOG_ERROR = 4      # ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        line = text.decode("utf-8", "replace").rstrip()
        if line:
            chatter.log(logging.ERROR if level == GGML_LOG_ERROR else logging.DEBUG, "%s", line)

    _route_llama_log.callback = callback     # ctypes keeps no reference of its own
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


class LLMError(UserError):
    """The model or adapter cannot be loaded, or a prompt does not fit; says what to do."""


@dataclass
class GenStats:
    """Timings of one `stream` call; time the consumer spends between pieces is excluded."""
    prompt_tokens: int = 0
    prefill_s: float = 0.0     # prompt evaluation + first sample (= time to the first token)
    tokens: int = 0            # generated tokens, stop token excluded
    decode_s: float = 0.0      # time spent producing tokens after the first
    stopped: str = ""          # "stop" (end of turn) or "length" (max_tokens)
    ids: list[int] = field(default_factory=list)   # generated token ids

    @property
    def tok_s(self) -> float:
        return (self.tokens - 1) / self.decode_s if self.tokens > 1 and self.decode_s > 0 else 0.0


def _hold_back(text: str) -> tuple[str, str, bool]:
    """Split `text` into (safe to emit, held back, stopped): a stop string ends the text; a tail
    that could still grow into one is held until the next piece decides."""
    for s in _STOPS:
        i = text.find(s)
        if i >= 0:
            return text[:i], "", True
    for n in range(min(len(text), max(map(len, _STOPS)) - 1), 0, -1):
        if any(s.startswith(text[-n:]) for s in _STOPS):
            return text[:-n], text[-n:], False
    return text, "", False


class Detokenizer:
    """Token ids -> text one token at a time, in O(1) per token. A byte-level token may carry
    half of a Hangul syllable; the incremental UTF-8 decoder keeps it until the rest arrives."""

    def __init__(self, llama):
        self.llama = llama
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return self._utf8.decode(self.llama.detokenize([token], special=True))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class LLM:
    """One loaded GGUF (+ optional LoRA adapter); `stream(prompt)` yields text pieces."""

    def __init__(self, cfg: LLMConfig, models_dir: str | os.PathLike = "models", *,
                 logits_all: bool = False):
        """`logits_all`: keep every position's logits, for `log_probs` (measuring, not serving)."""
        self.cfg = cfg
        self.model_path = require(resolve_model(cfg.model, models_dir), "LLM model file (GGUF)",
                                  "llm.model")
        self.adapter_path = self._adapter(cfg.lora, Path(models_dir))
        self._verify_bundle(self.model_path.parent)
        try:
            read_gguf(self.model_path)     # a file that is no GGUF at all gets a plain answer
        except GGUFError as e:
            raise LLMError(f"llama.cpp could not load {self.model_path}: {e}") from None
        from llama_cpp import Llama, llama_vocab_is_eog

        if not hasattr(_route_llama_log, "callback"):
            _route_llama_log()

        try:
            self.llama = Llama(
                model_path=str(self.model_path),
                lora_path=str(self.adapter_path) if self.adapter_path else None,
                n_ctx=cfg.n_ctx,
                n_threads=cfg.n_threads or os.cpu_count(),
                n_threads_batch=cfg.n_threads_batch or cfg.n_threads or os.cpu_count(),
                n_gpu_layers=cfg.n_gpu_layers,
                seed=cfg.seed,
                logits_all=logits_all,
                n_batch=cfg.n_ctx if logits_all else 512,
                verbose=False,
            )
        except (ValueError, RuntimeError) as e:
            raise LLMError(
                f"llama.cpp could not load {self.model_path}"
                + (f" with adapter {self.adapter_path}" if self.adapter_path else "")
                + f": {e}. Check that the file is a complete GGUF (re-run `campus-guide models "
                f"fetch`) and that the adapter was made for this base model (or set llm.lora: null)."
            ) from None
        log.info("llm: %s, adapter %s", self.model_path, self.adapter_path or "none")
        vocab = self.llama._model.vocab
        self._is_eog = lambda t: bool(llama_vocab_is_eog(vocab, t))
        self._stop_ids = set(stop_token_ids(self._token_id))
        self.last = GenStats()

    @staticmethod
    def _adapter(lora: str | None, models_dir: Path) -> Path | None:
        p = resolve_adapter(lora, models_dir)
        if p is not None and not p.is_file():
            raise LLMError(
                f"LoRA adapter not found: {p}. Fix llm.lora in the config "
                f"(\"auto\" uses {models_dir / ADAPTER_NAME} when present, null uses none)."
            )
        return p

    @staticmethod
    def _verify_bundle(folder: Path) -> None:
        """A deployed bundle carries checksums; a model that does not match them is refused."""
        if not (folder / MANIFEST_FILE).is_file():
            return
        try:
            verify_bundle(folder, part="llm")
        except BundleError as e:
            raise LLMError(
                f"model bundle {folder} does not match its {MANIFEST_FILE}: {e}. "
                f"Re-deploy the bundle (campus-guide flash) or remove the damaged file."
            ) from None

    def _token_id(self, text: str) -> int | None:
        """The id of a special token, or None when this vocabulary (e.g. SmolLM2) lacks it."""
        ids = self.llama.tokenize(text.encode(), add_bos=False, special=True)
        return ids[0] if len(ids) == 1 else None

    def tokenize(self, prompt: str, bos: bool = True) -> list[int]:
        """The prompt carries no <bos>; llama.cpp adds exactly one (prompt.py's contract).
        `bos=False` for text that continues a prompt (a reference answer)."""
        return self.llama.tokenize(prompt.encode("utf-8"), add_bos=bos, special=True)

    def log_probs(self, ids: list[int], start: int) -> "numpy.ndarray":  # noqa: F821
        """Log-softmax of the next-token distribution at every position from `start` on (what a
        quantized model loses against its 16-bit original); needs `logits_all=True`."""
        import numpy as np

        self.reset()
        self.llama.eval(ids)
        logits = np.asarray(self.llama.scores[start - 1:len(ids) - 1], dtype=np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))

    def fits(self, prompt: str) -> bool:
        """Whether the prompt leaves room for a full answer in the context window."""
        return len(self.tokenize(prompt)) + self.cfg.max_tokens <= self.cfg.n_ctx

    def stream(self, prompt: str) -> Iterator[str]:
        """Text pieces of the answer as they are generated; statistics land in `self.last`."""
        tokens = self.tokenize(prompt)
        if len(tokens) >= self.cfg.n_ctx:
            raise LLMError(
                f"prompt has {len(tokens)} tokens but llm.n_ctx is {self.cfg.n_ctx}; "
                f"raise llm.n_ctx or lower dialogue.memory_turns"
            )
        stats = self.last = GenStats(prompt_tokens=len(tokens))
        budget = min(self.cfg.max_tokens, self.cfg.n_ctx - len(tokens))
        detok = Detokenizer(self.llama)
        held = ""
        gen = self._generate(tokens, self.cfg.temperature)
        busy = 0.0   # time inside this generator, the consumer's time between pieces excluded
        try:
            t = time.perf_counter()
            for token in gen:
                now = time.perf_counter()
                busy += now - t
                if stats.tokens == 0:
                    stats.prefill_s = busy
                    busy = 0.0
                if token in self._stop_ids or self._is_eog(token):
                    stats.stopped = "stop"
                    break
                stats.tokens += 1
                stats.ids.append(token)
                stats.decode_s = busy
                text = held + detok.feed(token)
                emit, held, stop = _hold_back(text)
                if stop:
                    stats.stopped = "stop"
                    held = ""
                if emit:
                    yield emit
                if stop:
                    break
                if stats.tokens >= budget:
                    stats.stopped = "length"
                    break
                t = time.perf_counter()
            rest = held + detok.flush()
            if rest:
                yield rest
        finally:
            gen.close()

    def _generate(self, tokens: list[int], temp: float) -> Iterator[int]:
        """llama.generate, with its sampler freed when generation ends.

        Why: each generate() makes a new LlamaSampler, whose native chain holds ~12 bytes per
        vocabulary entry (3 MB for Gemma-3's 262k), and llama-cpp-python's sampler is a reference
        cycle (its ExitStack's callback closes over it), so the one it replaces waits for
        Python's full garbage collection - in a kiosk, hundreds of turns: 60 MB over 20 answers
        (docs/appliance.md, "Memory over a long run")."""
        try:
            yield from self.llama.generate(tokens, temp=temp, repeat_penalty=1.0)
        finally:
            sampler, self.llama._sampler = getattr(self.llama, "_sampler", None), None
            if sampler is not None:
                sampler.close()

    def prefill(self, prompt: str) -> float:
        """Seconds to evaluate `prompt` from an empty cache (the benchmark's prefill floor)."""
        tokens = self.tokenize(prompt)
        self.reset()
        t = time.perf_counter()
        self.llama.eval(tokens)
        return time.perf_counter() - t

    def raw_decode_tok_s(self, tokens: list[int], n: int) -> float:
        """llama.cpp alone: greedy tokens/s after the first, no detokenization, no Python
        around it (what `stream` is compared with)."""
        self.reset()
        t0, count = None, 0
        gen = self._generate(tokens, 0.0)
        try:
            for _ in gen:
                if t0 is None:
                    t0 = time.perf_counter()
                else:
                    count += 1
                if count >= n:
                    break
        finally:
            gen.close()
        return count / (time.perf_counter() - t0) if count else 0.0

    def reset(self) -> None:
        """Forget the KV cache, so the next prompt is evaluated in full (fair benchmarks)."""
        self.llama.reset()
        self.llama._ctx.kv_cache_clear()

    def close(self) -> None:
        self.llama.close()
