"""Distributed training through torchrun on CPU (gloo): `kiln train --nproc-per-node 2`.

Two processes with per-device batch B give the same updates as one process with batch 2B, and a
two-process run killed mid-epoch resumes to exactly where an uninterrupted one ends.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kiln.data import EpochBatchSampler, SortedBatchSampler, shard_batches
from kiln.run.checkpoints import list_checkpoints
from tests.conftest import kill_at_checkpoint, tiny_overrides

KILN = [sys.executable, "-m", "kiln", "train"]


def train_losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines if '"kind": "train"' in x]


def test_ranks_split_every_global_batch_between_them() -> None:
    lengths = np.arange(103)
    one = EpochBatchSampler(lengths, 10, seed=3)
    ranks = [EpochBatchSampler(lengths, 5, seed=3, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(one) == 11
    for whole, a, b in zip(one.batches(0), ranks[0].batches(0), ranks[1].batches(0)):
        assert sorted(a + b) == sorted(whole) and abs(len(a) - len(b)) <= 1
    # A last global batch smaller than the number of ranks is dropped (every rank must step).
    assert shard_batches([[1, 2, 3], [4]], rank=1, world_size=2) == [[3]]
    assert len(EpochBatchSampler(np.arange(21), 5, seed=0, rank=0, world_size=2)) == 2


def test_evaluation_shards_cover_each_example_once_in_equal_batch_counts() -> None:
    lengths = np.random.default_rng(0).integers(1, 50, size=101)
    shards = [list(SortedBatchSampler(lengths, 8, rank=r, world_size=3)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    seen = sorted(i for s in shards for batch in s for i in batch)
    assert seen == list(range(101))


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(
    small_dataset: tuple[Path, Path], tmp_path: Path, cli_env: dict[str, str]
) -> None:
    common = {"model.dropout": 0.0, "train.max_steps": 12, "train.log_every": 2,
              "train.eval_every": 6,
              "train.precision": "fp32"}  # equal to fp32 rounding, not bf16's, whatever auto picks
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(KILN + tiny_overrides(*small_dataset, one, **common, **{"train.batch_size": 32}),
                   check=True, env=cli_env, capture_output=True)
    # 2 processes x micro-batch 8 x 2 accumulation steps = the same 32 examples per update, with
    # the gradient all-reduce skipped on the first micro-step (no_sync).
    done = subprocess.run(
        KILN + ["--nproc-per-node", "2"] + tiny_overrides(
            *small_dataset, two, **common, **{"train.batch_size": 8, "train.grad_accum_steps": 2}),
        env=cli_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "global batch 32 (8 per device x 2 accumulation x 2 processes, ddp)" in done.stderr
    assert done.stdout.count("trained model:") == 1, "only rank 0 reports"

    assert np.allclose(train_losses(one), train_losses(two), rtol=1e-5, atol=1e-6)
    wa = load_file(str(one / "model" / "model.safetensors"))
    wb = load_file(str(two / "model" / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    evals = [[json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()
              if '"kind": "eval"' in x] for r in (one, two)]
    # Each rank evaluates half the examples; the reduced counts cover the whole eval set.
    assert [e["accuracy"] for e in evals[0]] == [e["accuracy"] for e in evals[1]]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="Linux only: finds torchrun's worker processes through /proc to kill them")
def test_killed_two_process_run_resumes_to_the_uninterrupted_result(
    small_dataset: tuple[Path, Path], tmp_path: Path, cli_env: dict[str, str]
) -> None:
    settings = {"train.epochs": 2, "train.checkpoint_every": 3, "train.eval_every": 5,
                "train.keep_checkpoints": 20, "train.select": "last", "model.dropout": 0.2,
                "train.batch_size": 8}
    full, killed = tmp_path / "full", tmp_path / "killed"
    launch = KILN + ["--nproc-per-node", "2"]
    subprocess.run(launch + tiny_overrides(*small_dataset, full, **settings), check=True,
                   env=cli_env, capture_output=True)

    proc = subprocess.Popen(launch + tiny_overrides(*small_dataset, killed, **settings),
                            env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # like a machine that dies: torchrun and both workers
    stopped_at = kill_at_checkpoint(proc, killed, 6, timeout_s=180, with_children=True)
    assert stopped_at < 50 and not (killed / "model").exists()

    done = subprocess.run(launch + tiny_overrides(*small_dataset, killed, **settings),
                          env=cli_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"resumed at step {stopped_at}" in done.stderr
    wa = load_file(str(full / "model" / "model.safetensors"))
    wb = load_file(str(killed / "model" / "model.safetensors"))
    assert all(wa[k].equal(wb[k]) for k in wa), "every rank's data position and RNG must resume"


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_in_one_process_with_the_same_global_batch(
    small_dataset: tuple[Path, Path], tmp_path: Path, cli_env: dict[str, str]
) -> None:
    settings = {"model.dropout": 0.0, "train.max_steps": 12, "train.checkpoint_every": 3,
                "train.keep_checkpoints": 10, "train.select": "last", "train.batch_size": 8,
                "train.strategy": "fsdp", "train.log_every": 3}
    sharded = tmp_path / "sharded"
    done = subprocess.run(KILN + ["--nproc-per-node", "2"] + tiny_overrides(
        *small_dataset, sharded, **settings), env=cli_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "2 processes, fsdp" in done.stderr

    # The same run stopped after step 6 and continued by one process: FSDP checkpoints hold
    # full weights and optimizer state, so they load at any world size.
    cut = tmp_path / "cut"
    shutil.copytree(sharded, cut)
    for ckpt in list_checkpoints(cut):
        if int(ckpt.name[5:]) > 6:
            shutil.rmtree(ckpt)
    (cut / "checkpoints" / "latest").unlink()
    shutil.rmtree(cut / "model")
    single = tiny_overrides(*small_dataset, cut, **settings)
    refused = subprocess.run(KILN + single, env=cli_env, capture_output=True, text=True)
    assert refused.returncode == 2
    assert "global batch of 16" in refused.stderr and "train.grad_accum_steps" in refused.stderr
    resumed = subprocess.run(KILN + single + ["train.grad_accum_steps=2"], env=cli_env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 6" in resumed.stderr

    wa = load_file(str(sharded / "model" / "model.safetensors"))
    wb = load_file(str(cut / "model" / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    assert np.allclose(train_losses(sharded), train_losses(cut), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_kiln_run_trains_under_torchrun_then_exports_in_the_parent(
    small_dataset: tuple[Path, Path], tmp_path: Path, cli_env: dict[str, str]
) -> None:
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "kiln", "run", "--no-bench", "--nproc-per-node", "2",
         *tiny_overrides(*small_dataset, run, **{"train.max_steps": 4})],
        env=cli_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "2 processes, ddp" in done.stderr
    assert "kiln run finished" in done.stdout
    assert (run / "export" / "parity.json").exists() and (run / "triton").is_dir()
