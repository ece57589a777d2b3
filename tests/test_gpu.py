"""On a CUDA device: training in bf16 autocast, evaluation that agrees with the CPU's, NCCL with two GPUs.

Skipped without a GPU (see conftest); ``sh benchmarks/gpu_check.sh`` runs them with the GPU benchmarks.
"""

import json

import pytest
import torch
from conftest import run_entry, run_torchrun

GPU_TINY = ["--vit", "nano", "--img-size", "32", "--patch-size", "8", "--batch-size", "8", "--accum-iter", "2",
            "--warmup-epochs", "0", "--num-workers", "0", "--log-interval", "2"]


@pytest.mark.gpu
def test_cuda_training_uses_bf16_autocast_and_its_evaluation_agrees_with_the_cpu(mtl_data, tmp_path):
    result = run_entry("main_mtl.py", "--data-dir", mtl_data, "--output-dir", tmp_path / "gpu", "--epochs", "1",
                       "--device", "cuda", *GPU_TINY)
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    assert f"precision {expected}" in result.stdout and "device cuda" in result.stdout
    best = tmp_path / "gpu" / "checkpoints" / "best_mtl.pth"
    for device in ("cuda", "cpu"):
        run_entry("main_mtl.py", "--eval", "--ckpt", best, "--data-dir", mtl_data, "--output-dir", tmp_path / device,
                  "--device", device, "--precision", "fp32", "--num-workers", "0")
    gpu, cpu = (json.loads((tmp_path / d / "val_metrics.json").read_text()) for d in ("cuda", "cpu"))
    assert gpu["counts"] == cpu["counts"]
    for key in ("ccc_v", "ccc_a", "f1_au"):
        assert gpu[key] == pytest.approx(cpu[key], abs=1e-3), key


@pytest.mark.gpu
@pytest.mark.dist
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_train_with_nccl(mtl_data, tmp_path):
    run_torchrun(2, "main_mtl.py", "--data-dir", mtl_data, "--output-dir", tmp_path, "--epochs", "1",
                 "--device", "cuda", *GPU_TINY)
    assert json.loads((tmp_path / "args.json").read_text())["world_size"] == 2
