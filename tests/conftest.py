"""Shared fixtures: small real datasets written to temporary files, tiny fast configs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from kiln.config import load_config
from kiln.data import builtin
from kiln.export import export_run
from kiln.train import train

# Keep tests predictable on a 2-core machine: one intra-op thread per test process.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(train.csv, eval.csv): 400 / 80 texts of the built-in 4-class task."""
    d = tmp_path_factory.mktemp("data")
    ds = builtin.generate(seed=7, n_train=400, n_eval=80)
    builtin.write_csv(ds.train, d / "train.csv")
    builtin.write_csv(ds.eval, d / "eval.csv")
    return d / "train.csv", d / "eval.csv"


def tiny_overrides(train_csv: Path, eval_csv: Path, run_dir: Path, **extra: object) -> list[str]:
    """key=value overrides for a model that trains in seconds."""
    base = {
        "data.train": train_csv,
        "data.eval": eval_csv,
        "run_dir": run_dir,
        "data.max_length": 48,
        "model.preset": "tiny",
        "model.vocab_size": 500,
        "train.epochs": 1,
        "train.batch_size": 16,
        "train.log_every": 5,
        "train.device": "cpu",  # bit-exactness claims are for CPU; GPU tests override this
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture()
def cli_env() -> dict[str, str]:
    """Environment for running the real `kiln` CLI in a subprocess."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONWARNINGS"] = "error::UserWarning:kiln"
    return env


@pytest.fixture(scope="session")
def exported_run(small_dataset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("exported") / "run"
    train(load_config(overrides=tiny_overrides(*small_dataset, run, **{"train.epochs": 3})),
          progress=False)
    export_run(run)
    return run


def kill_at_checkpoint(proc: subprocess.Popen[bytes], run: Path, min_step: int, timeout_s: float,
                       with_children: bool = False) -> int:
    """SIGKILL ``proc`` (and, if asked, every process below it, as when a machine dies) once
    ``run`` holds a checkpoint at ``min_step`` or later; returns the step a resume starts from."""
    from kiln.run.checkpoints import list_checkpoints, resume_point

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        ckpts = list_checkpoints(run)
        if ckpts and int(ckpts[-1].name[5:]) >= min_step:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    children = _descendants(proc.pid) if with_children else []
    for pid in [proc.pid, *children]:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    while any(_alive(pid) for pid in children):
        time.sleep(0.05)
    # where the trainer will resume: the newest intact checkpoint (the kill may fall between a
    # checkpoint's folder being complete and the `latest` pointer naming it)
    latest = resume_point(run)
    assert latest is not None
    return int(latest.name[5:])


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in their own sessions); Linux."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free on 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [int(s.getsockname()[1]) for s in sockets]
    for s in sockets:
        s.close()
    return ports
