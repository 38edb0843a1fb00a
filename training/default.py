"""`train default`: the campus-tuned model shipped in campus_guide/data/, end to end and seeded.

1. the dataset from the knowledge base (reused when the knowledge base and options are unchanged);
2. a LoRA fine-tune of the base GGUF (dequantized), or a finished run on the same data (`run`);
3. the best adapter -> GGUF with llama.cpp's own converter, at most ADAPTER_MAX_BYTES;
4. base vs tuned on the held-out split through llama.cpp, the kiosk's own `device.llm.LLM`;
then the provenance record beside the adapter, and both copied to campus_guide/data/.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from campus_guide.config import ADAPTER_NAME, PACKAGED_ADAPTER, Config
from campus_guide.errors import UserError
from training import steps
from training.steps import RecipeOptions

log = logging.getLogger(__name__)

ADAPTER_MAX_BYTES = 10 * 1024 * 1024
RECORD_NAME = Path(ADAPTER_NAME).with_suffix(".json").name   # provenance beside the adapter


@dataclass
class DefaultOptions(RecipeOptions):
    run: str | None = None           # a finished run on the same data to use instead of training
    install: bool = True             # copy the adapter and its record into campus_guide/data/
    command: str = "campus-guide train default"   # recorded as how the adapter was made


@dataclass
class DefaultResult:
    adapter: Path                    # in the work folder
    adapter_bytes: int
    record: Path
    reports: list                    # training.evaluate.Report: base, tuned
    installed: Path | None


def default(opts: DefaultOptions, cfg: Config | None = None) -> DefaultResult:
    from campus_guide.bundle import sha256_file
    from campus_guide.knowledge import load_kb
    from training.config import data_sha256
    from training.dataset import read_jsonl
    from training.evaluate import plot_reports, write_report
    from training.fit import fit
    from training.runs import TRAIN_RECORD, finished_run, read_run

    cfg = cfg or Config()
    work, base = Path(opts.work), Path(opts.base)
    data = work / "data"
    kb = load_kb(opts.kb)
    if not steps.dataset(opts, kb, data, cfg, "1/4"):
        log.info("1/4 dataset: reusing %s (same knowledge base and options)", data)

    tcfg = opts.train_config_for(data, work / "run")
    if tcfg.method != "lora":
        raise UserError(f"{opts.train_config}: the shipped model is a LoRA adapter (method: lora), not "
                        f"'{tcfg.method}'; use `train fit` and `train merge` for other methods")
    r = read_run(opts.run) if opts.run else finished_run(tcfg)
    if opts.run and r is None:
        raise UserError(f"{opts.run} is not a finished training run (it needs best/, log.jsonl and done.json)")
    if opts.run and r.train_sha256 != data_sha256(tcfg):
        raise UserError(f"{opts.run} was trained on other data than {data / 'train.jsonl'}; use a run of "
                        f"the same knowledge base and seed, or drop --run to train")
    if r:
        log.info("2/4 using the finished run in %s", r.out_dir)
    else:
        log.info("2/4 LoRA fine-tune of %s", base.name)
        r = fit(tcfg)

    log.info("3/4 adapter -> GGUF")
    adapter = steps.adapter_to_gguf(r.best_dir, base, work / ADAPTER_NAME, work / "base-config")
    size = adapter.stat().st_size
    if size > ADAPTER_MAX_BYTES:
        raise UserError(f"{adapter} is {size / 2**20:.1f} MiB; the shipped adapter must stay under "
                        f"10 MiB (lower lora.rank or target fewer modules)")

    # The adapter shipped until now answers the same held-out questions: "before" and "after".
    previous = _previous_adapter(work, base)
    log.info("4/4 held-out evaluation through llama.cpp: base%s vs tuned",
             " vs the previous adapter" if previous else "")
    rows = list(read_jsonl(data / "test.jsonl"))
    reports = []
    for name, lora in (("base", None), ("previous", previous), ("tuned", adapter)):
        if name == "previous" and lora is None:
            continue
        rep = steps.evaluate_model(rows, base, lora, kb, "test.jsonl", opts.max_tokens,
                                   backend="llamacpp", limit=opts.eval_limit)
        rep.model = "Gemma-3 270M Q4_K_M" + {"base": " (untuned)", "previous": " + previous campus LoRA",
                                             "tuned": " + campus LoRA"}[name]
        write_report(rep, work / f"eval-{name}.json")
        reports.append(rep)
    plot_reports(reports, work / "eval.png")

    peft = json.loads((r.best_dir / "adapter_config.json").read_text())     # what was trained, not asked
    trained = json.loads((r.best_dir / TRAIN_RECORD).read_text())
    record = {
        "command": opts.command,
        "base": {"file": base.name, "sha256": sha256_file(base)},
        "kb": {"file": Path(opts.kb).name, "sha256": kb.sha256},
        "train_config": Path(opts.train_config).name, **({"run": opts.run} if opts.run else {}),
        "config_hash": r.config_hash, "seed": trained["seed"],
        "method": "lora", "lora": {"rank": peft["r"], "alpha": peft["lora_alpha"],
                                   "target_modules": sorted(peft["target_modules"])},
        "steps": r.steps, "best_step": r.best_step, "eval_loss": {"start": round(r.first_eval_loss, 4),
                                                                  "best": round(r.best_eval_loss, 4)},
        "train_minutes": round(r.seconds / 60, 1),
        "eval_minutes": round(sum(rep.seconds for rep in reports) / 60, 1),
        "cpu": f"{os.cpu_count()} cores",
        "heldout": {rep.model: {"overall": rep.overall, "by_split": rep.by_split, "by_type": rep.by_type}
                    for rep in reports},
        "adapter_sha256": sha256_file(adapter), "adapter_bytes": size,
    }
    record_file = work / RECORD_NAME
    record_file.write_text(json.dumps(record, ensure_ascii=False, indent=2))
    installed = None
    if opts.install:
        shutil.copy(adapter, PACKAGED_ADAPTER)
        shutil.copy(record_file, PACKAGED_ADAPTER.with_name(RECORD_NAME))
        installed = PACKAGED_ADAPTER
    return DefaultResult(adapter, size, record_file, reports, installed)


def _previous_adapter(work: Path, base: Path) -> Path | None:
    """A copy of the shipped adapter as it was before this run (kept in the work folder, since
    installing replaces it), if it was made for this base model."""
    keep = work / "previous-campus-lora.gguf"
    if not keep.is_file():
        if not PACKAGED_ADAPTER.is_file():
            return None
        record = PACKAGED_ADAPTER.with_name(RECORD_NAME)
        from campus_guide.bundle import sha256_file

        if record.is_file() and json.loads(record.read_text()).get("base", {}).get("sha256") != sha256_file(base):
            return None
        work.mkdir(parents=True, exist_ok=True)
        shutil.copy(PACKAGED_ADAPTER, keep)
    return keep
