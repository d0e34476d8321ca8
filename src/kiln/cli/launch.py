"""`--nproc-per-node N` and the other torchrun options: `kiln train` and `kiln run` start their
training stage under torchrun (torch.distributed.run), which runs `python -m kiln train ...` in
each process. When torchrun already started kiln (RANK is set), these options do nothing.
"""

from __future__ import annotations

import argparse
import os
import sys

from kiln.errors import ConfigError

# (flag, type, help): passed to torchrun unchanged when given.
TORCHRUN_OPTIONS: tuple[tuple[str, type, str], ...] = (
    ("--nproc-per-node", int, "train with N processes on this machine (DDP or FSDP, "
     "train.strategy): gloo on CPU, nccl on CUDA; the global batch is "
     "train.batch_size x train.grad_accum_steps x processes"),
    ("--nnodes", str, "torchrun: number of machines (or MIN:MAX)"),
    ("--node-rank", int, "torchrun: this machine's rank (static rendezvous)"),
    ("--rdzv-backend", str, "torchrun: rendezvous backend (default c10d)"),
    ("--rdzv-endpoint", str, "torchrun: HOST:PORT of the rendezvous"),
    ("--rdzv-id", str, "torchrun: job id shared by all machines"),
    ("--master-addr", str, "torchrun: address of rank 0 (static rendezvous)"),
    ("--master-port", int, "torchrun: port of rank 0 (static rendezvous)"),
    ("--max-restarts", int, "torchrun: restarts of the worker group after a failure; each "
     "restart resumes from the latest checkpoint"),
)


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("distributed training (torchrun)")
    for flag, kind, text in TORCHRUN_OPTIONS:
        group.add_argument(flag, type=kind, default=None, help=text)


def wants_launch(args: argparse.Namespace) -> bool:
    """Whether to start torchrun: some torchrun option was given and torchrun is not our parent."""
    if "RANK" in os.environ:
        return False
    return any(getattr(args, _dest(flag)) is not None for flag, _, _ in TORCHRUN_OPTIONS)


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def launch_training(args: argparse.Namespace, framework: str) -> int:
    """Run `kiln train SETTINGS` under torchrun; returns the exit code of the first failed worker
    (each worker prints its own error) or 0.

    Raises:
        ConfigError: ``framework`` is not torch (Keras scales through keras.strategy).
    """
    if framework != "torch":
        raise ConfigError("--nproc-per-node and the other torchrun options are for "
                          "framework=torch; a keras run uses keras.strategy (mirrored, or "
                          "multi_worker with TF_CONFIG)")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    argv: list[str] = []
    for flag, _, _ in TORCHRUN_OPTIONS:
        value = getattr(args, _dest(flag))
        if value is not None:
            argv += [flag, str(value)]
    multi_node = any(getattr(args, _dest(f)) is not None
                     for f in ("--rdzv-endpoint", "--master-addr")) or args.nnodes not in (None, "1")
    if not multi_node:
        argv.append("--standalone")  # a free local port, no rendezvous server to run
    argv += ["-m", "kiln", "train", *args.settings] + (["--fresh"] if args.fresh else [])
    try:
        torchrun(argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        print(f"kiln: training failed in rank {rank} (exit code {failure.exitcode})",
              file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")
