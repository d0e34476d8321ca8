"""torch.distributed for the training loop: the process group torchrun sets up, how data is split
between ranks, and the few collectives the loop needs.

kiln never builds its own launcher or process-group plumbing: torchrun (torch.distributed.run)
starts the processes and sets RANK, LOCAL_RANK and WORLD_SIZE; `kiln train --nproc-per-node N`
only calls torchrun. One process without those variables is world size 1 and every function
here is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from kiln.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun prepared (gloo on CPU, nccl on CUDA).

    Returns the rank layout and this rank's device (``cuda:LOCAL_RANK`` on CUDA).

    Raises:
        ConfigError: torchrun started more processes on this node than there are GPUs.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local} but only {torch.cuda.device_count()} GPUs here; "
                              "use --nproc-per-node at most the number of GPUs")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(minutes=30))
    return Dist(rank=rank, world_size=world, local_rank=local), device


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def all_reduce_sum(d: Dist, values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over ranks (one collective)."""
    if not d.enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_tensor(d: Dist, t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (in place; returned for convenience)."""
    if d.enabled:
        dist.all_reduce(t)
    return t


def all_gather(d: Dist, obj: Any) -> list[Any]:
    """``obj`` from every rank, in rank order (picklable objects; tensors travel on CPU)."""
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``model`` (the module itself when world size is 1)."""
    if not d.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard_fsdp(model: nn.Module) -> nn.Module:
    """FSDP2: each block of every layer stack (nn.ModuleList) is sharded on its own, then the rest.

    Parameters become DTensors sharded over the ranks; full weights exist only inside a block's
    forward and backward.
    """
    from torch.distributed.fsdp import fully_shard

    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            for block in module:
                fully_shard(block)
    fully_shard(model)
    return model


# Checkpoints always hold full (unsharded) state keyed by parameter name, whatever the strategy:
# a run saved with FSDP on 4 ranks resumes on 2, or in one process, and model/ is plain weights.


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on CPU (a collective under FSDP; on rank 0 only, then)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {k: v for k, v in get_model_state_dict(model, options=options).items()
            if isinstance(v, torch.Tensor)}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Optimizer state keyed by parameter name, full and on CPU (a collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return dict(get_optimizer_state_dict(model, optimizer, options=options))


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load a full, name-keyed optimizer state into this rank's (possibly sharded) optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state,
                             options=StateDictOptions(full_state_dict=True))
