"""CUDA-only paths: mixed precision with bf16 and with fp16 + GradScaler, MFU against the GPU's
peak, and NCCL DDP / FSDP on two GPUs."""

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


def test_mfu_uses_the_gpu_peak_table(small_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    import json

    from kiln.train.meters import peak_flops

    peak, source = peak_flops(torch.device("cuda"), "bf16")
    cfg = load_config(overrides=tiny_overrides(*small_dataset, tmp_path, **{
        "train.max_steps": 4, "train.log_every": 2, "train.device": "cuda"}))
    train(cfg, progress=False)
    last = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
            if '"train"' in x][-1]
    assert last["peak_memory_mb"] > 0 and last["flops_per_s"] > 0
    if peak:  # a GPU in kiln's table
        assert 0 < last["mfu"] < 1, source


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL DDP/FSDP needs 2 GPUs")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_nccl_two_gpus_match_one_gpu(strategy: str, small_dataset: tuple[Path, Path],
                                     tmp_path: Path, cli_env: dict[str, str]) -> None:
    import json
    import subprocess
    import sys

    common = {"model.dropout": 0.0, "train.max_steps": 8, "train.log_every": 2,
              "train.device": "cuda", "train.precision": "fp32", "train.strategy": strategy}
    kiln = [sys.executable, "-m", "kiln", "train"]
    subprocess.run(kiln + tiny_overrides(*small_dataset, tmp_path / "one", **common,
                                         **{"train.batch_size": 32}), check=True, env=cli_env)
    done = subprocess.run(kiln + ["--nproc-per-node", "2"] + tiny_overrides(
        *small_dataset, tmp_path / "two", **common, **{"train.batch_size": 16}),
        env=cli_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    losses = [[json.loads(x)["loss"] for x in (tmp_path / r / "metrics.jsonl").read_text()
               .splitlines() if '"train"' in x] for r in ("one", "two")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)  # TF32 matmuls differ a little
