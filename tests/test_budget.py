"""The memory plan from the real model files, the budget command's exit codes, and the
production target's plan."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from campus_guide.cli import main
from campus_guide.config import Config, load_config
from campus_guide.ggufmeta import GGUFError, LLMShape, kv_cache_bytes
from device.budget import (CUDA_RUNTIME, GEMMA2_2B, GEMMA2_2B_Q4_K_M_BYTES, WHISPER_BASE_F16_BYTES,
                           LONG_RUN_ROW, WHISPER_CUDA_WORKSPACE, WHISPER_WORK, GiB, MiB, BudgetError,
                           compute_bytes, plan, plan_for_config, production_plans)

ROOT = Path(__file__).resolve().parents[1]

GEMMA3_270M = LLMShape(arch="gemma3", n_layer=18, n_embd=640, n_head_kv=1, head_dim_k=256,
                       head_dim_v=256, n_vocab=262144, sliding_window=512)


def test_llama_cpp_buffer_sizes_match_its_own_log():
    # llama.cpp 0.3.36 loading gemma-3-270m Q4_K_M at n_ctx 2048 logs:
    #   llama_kv_cache: size = 6.00 MiB (3 layers) + 30.00 MiB (15 SWA layers, full size)
    #   sched_reserve: CPU compute buffer size = 514.50 MiB
    assert kv_cache_bytes(GEMMA3_270M, 2048) == 36 * MiB
    assert compute_bytes(GEMMA3_270M, gpu=True) == int(514.5 * MiB)
    assert kv_cache_bytes(GEMMA3_270M, 2000) == 36 * MiB          # padded to 256 cells
    assert compute_bytes(GEMMA3_270M, gpu=False) < 8 * MiB        # untouched pages are free on the CPU


@pytest.mark.models
def test_shape_is_read_from_the_real_gguf(models_dir):
    assert LLMShape.from_gguf(models_dir / "gemma3-270m-q4_k_m.gguf") == GEMMA3_270M


@pytest.mark.models
def test_plan_uses_the_actual_files(models_dir):
    cfg = Config(models_dir=str(models_dir))
    plan = plan_for_config(cfg)
    rows = {i.name: i.bytes for i in plan.items}
    assert rows["LLM weights"] == (models_dir / "gemma3-270m-q4_k_m.gguf").stat().st_size
    assert rows["LLM KV cache"] == 36 * MiB
    assert rows["Whisper weights"] == (models_dir / "whisper-base" / "model.bin").stat().st_size // 2
    assert "CUDA context + cuBLAS" not in rows                    # CPU config: nothing offloaded
    assert 0.7 * GiB < plan.total_bytes < 1.5 * GiB and not plan.over

    cfg.llm.n_ctx, cfg.llm.n_gpu_layers = 8192, -1
    bigger = plan_for_config(cfg)
    assert {i.name: i.bytes for i in bigger.items}["LLM KV cache"] == 4 * 36 * MiB
    assert "CUDA context + cuBLAS" in {i.name for i in bigger.items}
    assert bigger.total_bytes > plan.total_bytes + 600 * MiB       # GPU logits buffer is committed


@pytest.mark.models
def test_budget_command_exits_non_zero_above_the_budget(models_dir, tmp_path, capsys):
    cfg = tmp_path / "kiosk.yaml"
    cfg.write_text(f"models_dir: {models_dir}\nbudget:\n  total_gb: 6.5\n")
    assert main(["--config", str(cfg), "budget"]) == 0
    out = capsys.readouterr().out
    assert "fits" in out and "LLM KV cache" in out and "headroom" in out

    cfg.write_text(f"models_dir: {models_dir}\nbudget:\n  total_gb: 0.5\n")
    assert main(["--config", str(cfg), "budget"]) == 1
    assert "OVER BUDGET" in capsys.readouterr().out
    assert main(["--config", str(cfg), "budget", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["over"] is True and data["budget_gb"] == 0.5
    assert data["total_bytes"] == sum(i["bytes"] for i in data["items"])


def test_missing_model_file_says_what_to_do(tmp_path, capsys):
    cfg = tmp_path / "kiosk.yaml"
    cfg.write_text(f"models_dir: {tmp_path / 'nothing'}\n")
    assert main(["--config", str(cfg), "budget"]) == 2
    err = capsys.readouterr().err
    assert "LLM model not found" in err and "campus-guide models fetch" in err
    with pytest.raises(BudgetError):
        plan_for_config(Config(models_dir=str(tmp_path / "nothing")))


def test_a_garbled_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(GGUFError, match="cannot read this GGUF"):
        LLMShape.from_gguf(bad)


def test_production_target_fits_the_orin_nano(capsys):
    base, small, _ = production_plans()
    rows = {i.name: i.bytes for i in base.items}
    assert rows["LLM KV cache"] == 26 * 2048 * 4 * (256 + 256) * 2 == 208 * MiB
    assert rows["LLM compute buffer (GPU)"] == 512 * (256000 + 2 * 2304) * 4
    assert not base.over and not small.over
    assert small.total_bytes > base.total_bytes
    assert 2.5 * GiB < base.total_bytes < 4 * GiB
    assert main(["budget", "--production"]) == 0
    assert "Gemma-2 2B Q4_K_M" in capsys.readouterr().out
    assert GEMMA2_2B.sliding_window == 4096                      # n_ctx 2048 < window: no saving anyway


@pytest.mark.models
@pytest.mark.slow
def test_plan_is_within_15_percent_of_the_measured_peak_rss(models_dir, tmp_path):
    """The real pipeline in its own process: load everything, answer the bundled question. One
    turn is compared with the plan less its long-run row (what a day of turns adds, calibrated
    on the 1,000-turn soak, not measurable in one turn)."""
    cfg = tmp_path / "kiosk.yaml"
    cfg.write_text(f"models_dir: {models_dir}\nruntime:\n  state_dir: {tmp_path / 'state'}\n")
    out = subprocess.run([sys.executable, "-m", "campus_guide.cli", "--config", str(cfg),
                          "budget", "--measure", "--json"], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    long_run = next(i["bytes"] for i in data["items"] if i["name"] == LONG_RUN_ROW)
    assert data["one_turn_plan_mib"] == pytest.approx((data["total_bytes"] - long_run) / MiB, abs=0.1)
    ratio = data["one_turn_plan_mib"] / data["measured_peak_rss_mib"]
    assert 0.85 <= ratio <= 1.15, f"plan {data['one_turn_plan_mib']:.0f} MiB vs measured " \
                                  f"{data['measured_peak_rss_mib']:.0f} MiB"


def test_asr_on_the_gpu_is_planned_in_the_same_memory():
    """whisper-base int8_float16 on CUDA (configs/kiosk.yaml): the weights as the whole model.bin,
    a CUDA workspace estimate, one CUDA context shared with llama.cpp; one total, one budget,
    with the GPU part named."""
    cpu, _, gpu = production_plans()
    assert "whisper-base int8_float16 (GPU)" in gpu.title and "(GPU)" not in cpu.title.split("whisper")[1]
    rows = {i.name: i for i in gpu.items}
    assert rows["Whisper weights (GPU)"].bytes == WHISPER_BASE_F16_BYTES and rows["Whisper weights (GPU)"].gpu
    assert rows["Whisper CUDA workspace (GPU)"].bytes == WHISPER_CUDA_WORKSPACE
    assert rows["Whisper host side (CPU)"].bytes == WHISPER_WORK and not rows["Whisper host side (CPU)"].gpu
    assert "Whisper weights" not in rows and "Whisper work buffers" not in rows
    assert [i.name for i in gpu.items].count("CUDA context + cuBLAS") == 1
    assert "llama.cpp + CTranslate2" in rows["CUDA context + cuBLAS"].note
    assert "unverified" in rows["Whisper weights (GPU)"].note and "unverified" in rows["Whisper CUDA workspace (GPU)"].note

    cpu_rows = {i.name: i.bytes for i in cpu.items}
    whisper_cpu = cpu_rows["Whisper weights"] + cpu_rows["Whisper work buffers"]
    whisper_gpu = WHISPER_BASE_F16_BYTES + WHISPER_CUDA_WORKSPACE + WHISPER_WORK
    assert gpu.total_bytes == cpu.total_bytes - whisper_cpu + whisper_gpu   # the same sum, ASR moved
    assert gpu.gpu_bytes == cpu.gpu_bytes + WHISPER_BASE_F16_BYTES + WHISPER_CUDA_WORKSPACE
    assert cpu.gpu_bytes == sum(cpu_rows[n] for n in ("LLM weights", "LLM KV cache",
                                                      "LLM compute buffer (GPU)", "CUDA context + cuBLAS"))
    assert gpu.budget_gb == 6.5 and not gpu.over and 3 * GiB < gpu.total_bytes < 4 * GiB

    table = gpu.table()
    assert "Whisper weights (GPU)" in table and "on the GPU" in table and "share the same memory" in table
    weights_line = next(line for line in table.splitlines() if line.startswith("Whisper weights (GPU)"))
    assert "  GPU  " in weights_line
    data = gpu.to_dict()
    assert data["gpu_bytes"] == gpu.gpu_bytes and data["total_bytes"] == sum(i["bytes"] for i in data["items"])
    assert [i["name"] for i in data["items"] if i["gpu"]][-2:] == ["Whisper weights (GPU)",
                                                                   "Whisper CUDA workspace (GPU)"]


def test_asr_alone_on_the_gpu_still_counts_a_cuda_context():
    """An LLM on the CPU with Whisper on CUDA: CTranslate2 alone brings the CUDA context."""
    p = plan(llm=GEMMA2_2B, llm_bytes=GEMMA2_2B_Q4_K_M_BYTES, n_ctx=2048, gpu=False,
             whisper_bytes=WHISPER_BASE_F16_BYTES, whisper_int8=True, whisper_gpu=True,
             voice_bytes={}, espeak=True)
    rows = {i.name: i for i in p.items}
    assert rows["CUDA context + cuBLAS"].bytes == CUDA_RUNTIME and "(CTranslate2)" in rows["CUDA context + cuBLAS"].note
    assert not rows["LLM weights"].gpu and "LLM compute buffer (CPU)" in rows
    assert p.gpu_bytes == CUDA_RUNTIME + WHISPER_BASE_F16_BYTES + WHISPER_CUDA_WORKSPACE
    cpu_only = plan(llm=GEMMA2_2B, llm_bytes=GEMMA2_2B_Q4_K_M_BYTES, n_ctx=2048, gpu=False,
                    whisper_bytes=WHISPER_BASE_F16_BYTES, whisper_int8=True, voice_bytes={}, espeak=True)
    assert cpu_only.gpu_bytes == 0 and "CUDA context + cuBLAS" not in {i.name for i in cpu_only.items}
    assert "on the GPU" not in cpu_only.table() and "  CPU  " not in cpu_only.table()   # CPU plans unchanged


def test_the_kiosk_config_asks_for_asr_on_the_gpu():
    asr = load_config(ROOT / "configs" / "kiosk.yaml").asr
    assert (asr.device, asr.compute_type, asr.model) == ("cuda", "int8_float16", "whisper-base")


@pytest.mark.models
def test_cuda_asr_plan_uses_the_actual_model_bin(models_dir):
    cfg = Config(models_dir=str(models_dir))
    cfg.asr.device, cfg.asr.compute_type = "cuda", "int8_float16"
    rows = {i.name: i for i in plan_for_config(cfg).items}
    model_bin = models_dir / "whisper-base" / "model.bin"
    assert rows["Whisper weights (GPU)"].bytes == model_bin.stat().st_size
    assert str(model_bin) in rows["Whisper weights (GPU)"].note
    assert rows["CUDA context + cuBLAS"].note.endswith("(CTranslate2)")    # default LLM on the CPU


def test_trim_heap_gives_a_fragmented_heap_back():
    """What the kiosk does after every turn: blocks freed between live ones (as a turn's threads
    leave them) stay resident until malloc_trim returns their pages."""
    from device.budget import rss_mb, trim_heap

    keep: list[bytes] = []

    def turn() -> None:
        junk = [bytes(16000) for _ in range(20000)]     # 320 MB in 16-kB blocks (not mmap'd)
        keep.extend(junk[::50])                          # every 50th stays alive
    worker = threading.Thread(target=turn)
    worker.start()
    worker.join()
    before = rss_mb()
    if not trim_heap():
        pytest.skip("not glibc: no malloc_trim")
    assert before - rss_mb() > 150


_TURN_AFTER_A_BIG_BUFFER = """
import ctypes, sys, threading
from device.budget import rss_mb, trim_heap, tune_heap
if sys.argv[1] == "tuned" and not tune_heap():
    print("skip"); sys.exit()
big = ctypes.create_string_buffer(30 << 20); del big        # Whisper's, piper's first big buffer
def turn():
    blocks = [ctypes.create_string_buffer(2 << 20) for _ in range(20)]   # 40 MB in a thread
    del blocks
base = rss_mb()
worker = threading.Thread(target=turn); worker.start(); worker.join()
trim_heap()
print(round(rss_mb() - base))
"""


def test_tune_heap_lets_the_threads_arenas_give_freed_memory_back():
    """glibc raises its thresholds after one big free, and then keeps up to 64 MB freed by a
    thread at the top of that thread's arena, out of malloc_trim's reach; with the threshold
    fixed (what Pipeline does first), the turn's 40 MB go back. A fresh interpreter each, since
    the thresholds are process-wide and move with the process's history."""
    def kept(mode: str) -> str:
        return subprocess.run([sys.executable, "-c", _TURN_AFTER_A_BIG_BUFFER, mode], check=True,
                              capture_output=True, text=True, cwd=Path(__file__).parents[1]).stdout.strip()

    tuned = kept("tuned")
    if tuned == "skip":
        pytest.skip("not glibc: no mallopt")
    assert int(kept("default")) > 25      # the trap is real on this C library
    assert int(tuned) < 8
