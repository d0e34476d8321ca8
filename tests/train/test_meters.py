"""Where training time goes: throughput, data-wait share, FLOP/s and MFU, peak memory, the
data-wait warning, the profiler, and surviving an out-of-memory error."""

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kiln.config import load_config
from kiln.data import PadCollator
from kiln.models.transformer import TransformerClassifier
from kiln.train import train
from kiln.train.meters import count_flops
from tests.conftest import tiny_overrides

METERS = ("samples_per_s", "tokens_per_s", "step_time_s", "data_wait_share", "flops_per_s", "mfu",
          "peak_memory_mb")


def train_records(run: Path) -> list[dict[str, float]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if '"kind": "train"' in x]


def test_flop_count_matches_the_matmuls_of_a_transformer() -> None:
    model = TransformerClassifier(vocab_size=100, num_labels=3, max_length=64, embed_dim=64,
                                  num_heads=2, num_layers=2, ff_dim=128, dropout=0.0)
    flops = count_flops(model, 100, 64, torch.device("cpu"))
    d, f, layers = 64, 128, 2
    # Per token and layer: QKV + output projections 4*d*d, feed-forward 2*d*f multiply-adds;
    # attention scores and weighted sum 2*S*d per token. FLOPs = 2 x multiply-adds.
    assert flops.linear == pytest.approx(layers * 2 * (4 * d * d + 2 * d * f), rel=0.05)
    assert flops.quadratic == pytest.approx(layers * 2 * 2 * d, rel=0.05)
    assert flops.train_flops(8, 32) == pytest.approx(3 * 8 * (flops.linear * 32 + flops.quadratic * 32**2))


def test_meters_reach_metrics_jsonl_and_tensorboard(
    small_dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    train(load_config(overrides=tiny_overrides(*small_dataset, tmp_path, **{
        "train.max_steps": 6, "train.log_every": 3})), progress=False)
    records = train_records(tmp_path)
    assert [r["step"] for r in records] == [3, 6]
    for r in records:
        assert all(r[k] > 0 for k in METERS if k != "data_wait_share"), r
        assert 0 <= r["data_wait_share"] < 1 and 0 < r["mfu"] < 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {f"train/{k}" for k in METERS} <= set(events.Tags()["scalars"])


def test_a_slow_dataset_triggers_the_data_wait_warning(
    small_dataset: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    collate = PadCollator.__call__

    def slow_collate(self: PadCollator, items: list) -> dict:  # type: ignore[type-arg]
        time.sleep(0.05)  # a dataset that decodes or augments on the fly, say
        return collate(self, items)

    monkeypatch.setattr(PadCollator, "__call__", slow_collate)
    train(load_config(overrides=tiny_overrides(*small_dataset, tmp_path, **{
        "train.max_steps": 6, "train.log_every": 2})), progress=False)
    err = capsys.readouterr().err
    assert "waiting for data" in err and "data.num_workers" in err
    assert "MFU measured against" in err and "measured fp32 matmul" in err  # the CPU peak's source
    assert err.count("warning: the training loop spent") == 1, "warned once, not every step"
    assert all(r["data_wait_share"] > 0.5 for r in train_records(tmp_path))


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_result(
    small_dataset: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = {"train.max_steps": 6, "train.batch_size": 16, "train.select": "last",
              "model.dropout": 0.0,
              "train.precision": "fp32"}  # equal to fp32 rounding, not bf16's, whatever auto picks
    train(load_config(overrides=tiny_overrides(*small_dataset, tmp_path / "fits", **common)),
          progress=False)

    forward = TransformerClassifier.forward

    def small_device(self: TransformerClassifier, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor) -> torch.Tensor:
        if self.training and input_ids.shape[0] > 5:  # a device that holds 5 examples at most
            raise torch.OutOfMemoryError("out of memory (simulated: more than 5 examples)")
        return forward(self, input_ids, attention_mask)

    monkeypatch.setattr(TransformerClassifier, "forward", small_device)
    train(load_config(overrides=tiny_overrides(*small_dataset, tmp_path / "oom", **common)),
          progress=False)
    err = capsys.readouterr().err
    assert "out of memory at a micro-batch of 16 examples: continuing with micro-batches of 8" in err
    assert "micro-batches of 4 and 4 accumulation steps; the global batch (16)" in err
    a = load_file(str(tmp_path / "fits" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "oom" / "model" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert [r["loss"] for r in train_records(tmp_path / "fits")] == pytest.approx(
        [r["loss"] for r in train_records(tmp_path / "oom")], rel=1e-5)


def test_out_of_memory_at_one_example_is_raised(
    small_dataset: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_memory(self: TransformerClassifier, *args: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("out of memory (simulated)")

    monkeypatch.setattr(TransformerClassifier, "forward", no_memory)
    with pytest.raises(torch.OutOfMemoryError):
        train(load_config(overrides=tiny_overrides(*small_dataset, tmp_path, **{
            "train.max_steps": 2, "train.batch_size": 4})), progress=False)


@pytest.mark.slow
def test_kiln_profile_prints_top_operators_and_leaves_a_trace(
    small_dataset: tuple[Path, Path], tmp_path: Path, cli_env: dict[str, str]
) -> None:
    import subprocess
    import sys

    run = tmp_path / "profiled"
    settings = [s for s in tiny_overrides(*small_dataset, run) if not s.startswith("train.epochs")]
    done = subprocess.run(
        [sys.executable, "-m", "kiln", "profile", *settings, "profiler.wait=1",
         "profiler.warmup=1", "profiler.active=2", "profiler.row_limit=5"],
        env=cli_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "top 5 operators by self CPU time" in done.stderr
    assert "aten::" in done.stderr and "waiting for data:" in done.stderr
    assert [r["step"] for r in train_records(run)][-1] == 4, "stops after the profiled steps"
    traces = list((run / "tensorboard" / "profile").glob("*.pt.trace.json"))
    assert len(traces) == 1  # the file pattern TensorBoard's PyTorch Profiler plugin reads
    events = json.loads(traces[0].read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    assert "kiln.data_wait" in names and any(str(n).startswith("ProfilerStep#") for n in names)


@pytest.mark.slow
def test_torch_compile_trains_and_saves_plain_weights(
    small_dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    common = {"train.max_steps": 3, "train.select": "last", "model.dropout": 0.0,
              "data.bucket_by_length": True,
              "train.precision": "fp32"}  # inductor rounds bf16 intermediates unlike eager
    train(load_config(overrides=tiny_overrides(*small_dataset, tmp_path / "eager", **common)),
          progress=False)
    train(load_config(overrides=tiny_overrides(*small_dataset, tmp_path / "compiled", **common,
                                                **{"train.compile": True})), progress=False)
    a = load_file(str(tmp_path / "eager" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "compiled" / "model" / "model.safetensors"))
    assert a.keys() == b.keys(), "no _orig_mod. prefixes: the weights load into a plain model"
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
