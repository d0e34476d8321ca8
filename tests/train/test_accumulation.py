"""Gradient accumulation is the large batch it stands for, through the real training loop."""

from pathlib import Path

import torch
from safetensors.torch import load_file

from kiln.config import load_config
from kiln.train import train
from tests.conftest import tiny_overrides


def final_weights(small_dataset: tuple[Path, Path], run_dir: Path, batch: int, accum: int) -> dict[str, torch.Tensor]:
    cfg = load_config(overrides=tiny_overrides(
        *small_dataset, run_dir, **{
            "train.batch_size": batch, "train.grad_accum_steps": accum, "train.max_steps": 3,
            "model.dropout": 0.0, "train.select": "last", "train.max_grad_norm": 0.5,
            # equal to fp32 rounding; bf16 (what auto picks on an AMX CPU) rounds 8 rows and 32
            # rows of a matmul differently
            "train.precision": "fp32",
        }))
    train(cfg, progress=False)
    return load_file(str(run_dir / "model" / "model.safetensors"))


def test_k_micro_batches_update_like_one_batch_k_times_larger(
    small_dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    big = final_weights(small_dataset, tmp_path / "big", batch=32, accum=1)
    accumulated = final_weights(small_dataset, tmp_path / "acc", batch=8, accum=4)
    uneven = final_weights(small_dataset, tmp_path / "uneven", batch=5, accum=7)  # 35 per step
    for name, value in big.items():
        torch.testing.assert_close(accumulated[name], value, atol=2e-6, rtol=1e-5, msg=name)
    # a different global batch must give different weights, or the test could not fail
    assert any(not torch.allclose(uneven[n], big[n], atol=1e-4) for n in big)
