"""CUDA-only paths: mixed precision with bf16 and with fp16 + GradScaler, and resume on a GPU."""

from pathlib import Path

import pytest
import torch

from kiln.config import load_config
from kiln.train import train
from tests.conftest import tiny_overrides

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: no GPU on this machine"),
]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cuda(precision: str, small_dataset: tuple[Path, Path],
                                        tmp_path: Path) -> None:
    cfg = load_config(overrides=tiny_overrides(*small_dataset, tmp_path, **{
        "train.epochs": 3, "train.precision": precision, "train.device": "cuda"}))
    result = train(cfg, progress=False)
    assert result.eval["accuracy"] > 0.5  # learns, despite reduced precision
    ckpt = torch.load(tmp_path / "checkpoints" / f"step-{result.step:06d}" / "trainer_state.pt",
                      weights_only=True)
    if precision == "fp16":
        assert ckpt["scaler"]["scale"] > 0  # the GradScaler's state is checkpointed
    assert "cuda" in ckpt["rng"]  # CUDA generator states travel with the checkpoint


def test_auto_precision_picks_bf16_or_fp16_on_cuda(small_dataset: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    cfg = load_config(overrides=tiny_overrides(*small_dataset, tmp_path, **{
        "train.max_steps": 2, "train.device": "auto"}))
    train(cfg, progress=False)
    import json

    precision = json.loads((tmp_path / "model" / "kiln.json").read_text())["training"]["precision"]
    assert precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
