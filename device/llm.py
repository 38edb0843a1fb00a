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

from campus_guide.cli import UserError
from campus_guide.config import LLMConfig, resolve_model
from campus_guide.prompt import START_OF_TURN, STOP_STRINGS, stop_token_ids

from .models import require

log = logging.getLogger(__name__)

ADAPTER_NAME = "campus-lora.gguf"
MANIFEST = "manifest.json"
# <start_of_turn> as text means a base model is writing the next turn itself: stop there too.
_STOPS = STOP_STRINGS + (START_OF_TURN,)


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

    def __init__(self, cfg: LLMConfig, models_dir: str | os.PathLike = "models"):
        self.cfg = cfg
        self.model_path = require(resolve_model(cfg.model, models_dir), "LLM model file (GGUF)",
                                  "llm.model")
        self.adapter_path = self._adapter(cfg.lora, Path(models_dir))
        self._verify_bundle(self.model_path.parent)
        from llama_cpp import Llama, llama_vocab_is_eog

        try:
            self.llama = Llama(
                model_path=str(self.model_path),
                lora_path=str(self.adapter_path) if self.adapter_path else None,
                n_ctx=cfg.n_ctx,
                n_threads=cfg.n_threads or os.cpu_count(),
                n_gpu_layers=cfg.n_gpu_layers,
                seed=cfg.seed,
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
        if lora is None:
            return None
        if lora == "auto":
            p = models_dir / ADAPTER_NAME
            return p if p.is_file() else None
        p = resolve_model(lora, models_dir)
        if not p.is_file():
            raise LLMError(
                f"LoRA adapter not found: {p}. Fix llm.lora in the config "
                f"(\"auto\" uses {models_dir / ADAPTER_NAME} when present, null uses none)."
            )
        return p

    @staticmethod
    def _verify_bundle(folder: Path) -> None:
        """A deployed bundle carries checksums; a model that does not match them is refused."""
        if not (folder / MANIFEST).is_file():
            return
        from export.bundle import BundleError, verify_bundle

        try:
            verify_bundle(folder)
        except BundleError as e:
            raise LLMError(
                f"model bundle {folder} does not match its {MANIFEST}: {e}. "
                f"Re-deploy the bundle (campus-guide flash) or remove the damaged file."
            ) from None

    def _token_id(self, text: str) -> int | None:
        """The id of a special token, or None when this vocabulary (e.g. SmolLM2) lacks it."""
        ids = self.llama.tokenize(text.encode(), add_bos=False, special=True)
        return ids[0] if len(ids) == 1 else None

    def tokenize(self, prompt: str) -> list[int]:
        """The prompt carries no <bos>; llama.cpp adds exactly one (prompt.py's contract)."""
        return self.llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)

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
        gen = self.llama.generate(tokens, temp=self.cfg.temperature, repeat_penalty=1.0)
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

    def prefill(self, prompt: str) -> float:
        """Seconds to evaluate `prompt` from an empty cache (the benchmark's prefill floor)."""
        tokens = self.tokenize(prompt)
        self.reset()
        t = time.perf_counter()
        self.llama.eval(tokens)
        return time.perf_counter() - t

    def reset(self) -> None:
        """Forget the KV cache, so the next prompt is evaluated in full (fair benchmarks)."""
        self.llama.reset()
        self.llama._ctx.kv_cache_clear()

    def close(self) -> None:
        self.llama.close()
