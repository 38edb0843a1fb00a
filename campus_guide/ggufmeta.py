"""GGUF metadata, read one way for every area: the board's memory plan, export's checks and
bundle manifest, and training's tokenizer rebuild all call `read_gguf` (PyPI gguf-py, which reads
every version llama.cpp writes) or `vocabulary`. The KV-cache formula lives here too, so export's
manifest and the board's plan agree to the byte."""
from __future__ import annotations

import dataclasses
import mmap
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import prompt
from .errors import UserError


class GGUFError(UserError):
    """A file is not a readable GGUF, or lacks what the caller needs from it."""


@dataclass
class LLMShape:
    """What the memory of a llama.cpp model depends on, besides its file size."""

    arch: str
    n_layer: int
    n_embd: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    sliding_window: int = 0   # 0: none

    @classmethod
    def from_gguf(cls, path: str | Path) -> "LLMShape":
        info = read_gguf(path)
        if not (info.block_count and info.embedding_length and info.vocab_size):
            raise GGUFError(f"{path}: cannot plan memory for a '{info.architecture}' model: its "
                            f"header lacks block_count, embedding_length or a vocabulary")
        return info.shape


def padded_ctx(n_ctx: int) -> int:
    """llama.cpp rounds the context up to a multiple of 256."""
    return -(-n_ctx // 256) * 256


def kv_cache_bytes(shape: LLMShape, n_ctx: int) -> int:
    """f16 K and V for every layer and every context cell.

    Sliding-window layers (Gemma-2 every other layer, Gemma-3 five of six) could keep only the
    window, but llama-cpp-python keeps llama.cpp's default `swa_full=true`, which gives them the
    full context too (its log: 36 MiB for Gemma-3 270M at n_ctx 2048, this formula exactly).
    """
    per_cell = shape.n_head_kv * (shape.head_dim_k + shape.head_dim_v) * 2
    return shape.n_layer * padded_ctx(n_ctx) * per_cell


@dataclass
class GGUFInfo:
    """What the rest of the chain needs to know about a GGUF file."""
    path: str
    size: int
    architecture: str
    name: str
    file_type: str                  # F16, Q4_K_M, ...
    context_length: int
    block_count: int
    embedding_length: int
    head_count_kv: int
    key_length: int
    value_length: int
    vocab_size: int
    bos_id: int | None
    add_bos: bool
    eos_id: int | None
    start_of_turn_id: int | None    # ids of the turn tokens *by their text*
    end_of_turn_id: int | None
    end_of_turn_type: str | None    # CONTROL / USER_DEFINED / NORMAL ...
    chat_template: str | None
    sliding_window: int = 0         # 0: none
    tensor_types: dict[str, int] = field(default_factory=dict)
    weights_bytes: int = 0

    @property
    def shape(self) -> LLMShape:
        return LLMShape(arch=self.architecture, n_layer=self.block_count, n_embd=self.embedding_length,
                        n_head_kv=self.head_count_kv, head_dim_k=self.key_length,
                        head_dim_v=self.value_length, n_vocab=self.vocab_size,
                        sliding_window=self.sliding_window)

    def kv_cache_bytes(self, n_ctx: int) -> int:
        return kv_cache_bytes(self.shape, n_ctx)

    def memory_bytes(self, n_ctx: int) -> int:
        """What the board needs for this model at `n_ctx`: weights + KV cache."""
        return self.weights_bytes + self.kv_cache_bytes(n_ctx)


_read_cache: dict[tuple[str, int, int], GGUFInfo] = {}


def read_gguf(path: str | Path) -> GGUFInfo:
    """Metadata of a GGUF file, cached per file version."""
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such GGUF file")
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _read_cache:
        _read_cache[key] = _info(path, _Header.read(path))
    return dataclasses.replace(_read_cache[key], path=str(path))


def vocabulary(path: str | Path) -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, token types) of a GGUF's tokenizer, for rebuilding a SentencePiece model."""
    kv = _Header.read(Path(path)).kv
    for name in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        if name not in kv:
            raise GGUFError(f"{path}: no {name} in the GGUF; cannot rebuild its tokenizer")
    return (list(kv["tokenizer.ggml.tokens"]), [float(x) for x in kv["tokenizer.ggml.scores"]],
            [int(x) for x in kv["tokenizer.ggml.token_type"]])


# --- the header ---------------------------------------------------------------------------------
# The layout is GGUF's (magic, version, counts, key/values, tensor infos); the type tables come
# from gguf-py. gguf-py's own GGUFReader builds a numpy view per vocabulary entry, 9 s for
# Gemma's 262k tokens on this machine; the board plans its memory at every start, so the header
# is parsed here directly (0.3 s), numeric arrays as whole numpy arrays.

_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
           12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass
class _Header:
    kv: dict[str, Any]
    tensors: list[tuple[str, list[int], int]]   # name, dims, ggml type

    @classmethod
    def read(cls, path: Path) -> "_Header":
        try:   # mapped, not read: only the header's pages are touched, never the weights
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                return cls._parse(m)
        except (struct.error, ValueError, UnicodeDecodeError, IndexError, KeyError, OSError) as e:
            raise GGUFError(f"{path}: cannot read this GGUF ({e}); re-run the conversion or "
                            f"`campus-guide models fetch`, or re-deploy the bundle") from None

    @classmethod
    def _parse(cls, buf: mmap.mmap) -> "_Header":
        if buf[:4] != b"GGUF":
            raise ValueError("not a GGUF file: it does not start with 'GGUF'")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version < 2:
            raise ValueError(f"GGUF version {version} is too old")
        pos = 24

        def string() -> str:
            nonlocal pos
            (n,) = struct.unpack_from("<Q", buf, pos)
            pos += 8 + n
            return buf[pos - n:pos].decode("utf-8")

        def value(kind: int) -> Any:
            nonlocal pos
            if kind == _STRING:
                return string()
            if kind == _ARRAY:
                elem, n = struct.unpack_from("<IQ", buf, pos)
                pos += 12
                if elem in _SCALAR:
                    dt = np.dtype(_SCALAR[elem])
                    arr = np.frombuffer(buf[pos:pos + n * dt.itemsize], dt)   # a copy: the map closes
                    pos += n * dt.itemsize
                    return arr
                return [value(elem) for _ in range(n)]
            fmt = _SCALAR[kind]
            (v,) = struct.unpack_from(fmt, buf, pos)
            pos += struct.calcsize(fmt)
            return v

        kv = {}
        for _ in range(n_kv):
            key = string()
            (kind,) = struct.unpack_from("<I", buf, pos)
            pos += 4
            kv[key] = value(kind)
        tensors = []
        for _ in range(n_tensors):
            name = string()
            (n_dims,) = struct.unpack_from("<I", buf, pos)
            dims = list(struct.unpack_from(f"<{n_dims}Q", buf, pos + 4))
            (ggml_type,) = struct.unpack_from("<I", buf, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 4 + 8
            tensors.append((name, dims, ggml_type))
        return cls(kv, tensors)


def _info(path: Path, h: _Header) -> GGUFInfo:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType, TokenType

    kv = h.kv
    arch = kv.get("general.architecture", "")

    def num(key: str, default: int = 0) -> int:
        v = kv.get(f"{arch}.{key}", default)
        return int(max(v) if isinstance(v, np.ndarray) else v)

    tokens = kv.get("tokenizer.ggml.tokens", [])
    index = {t: i for i, t in enumerate(tokens)} if tokens else {}
    types = kv.get("tokenizer.ggml.token_type")
    eot = index.get(prompt.END_OF_TURN)
    ft = kv.get("general.file_type")
    emb, heads = num("embedding_length"), max(num("attention.head_count", 1), 1)
    key_len = num("attention.key_length", emb // heads)
    weights = 0
    counts: Counter = Counter()
    for _, dims, t in h.tensors:
        qtype = GGMLQuantizationType(t)
        block, size = GGML_QUANT_SIZES[qtype]
        weights += int(np.prod(dims)) // block * size
        counts[qtype.name] += 1
    bos, eos = kv.get("tokenizer.ggml.bos_token_id"), kv.get("tokenizer.ggml.eos_token_id")
    return GGUFInfo(
        path=str(path), size=path.stat().st_size, architecture=arch,
        name=kv.get("general.name", path.stem),
        file_type=LlamaFileType(ft).name.removeprefix("MOSTLY_") if ft is not None else "unknown",
        context_length=num("context_length"), block_count=num("block_count"), embedding_length=emb,
        head_count_kv=num("attention.head_count_kv", heads), key_length=key_len,
        value_length=num("attention.value_length", key_len), vocab_size=len(tokens),
        bos_id=None if bos is None else int(bos),
        add_bos=bool(kv.get("tokenizer.ggml.add_bos_token", False)),
        eos_id=None if eos is None else int(eos),
        start_of_turn_id=index.get(prompt.START_OF_TURN), end_of_turn_id=eot,
        end_of_turn_type=(TokenType(int(types[eot])).name
                          if types is not None and eot is not None and eot < len(types) else None),
        chat_template=kv.get("tokenizer.chat_template"),
        sliding_window=num("attention.sliding_window"),
        tensor_types=dict(counts), weights_bytes=weights,
    )
