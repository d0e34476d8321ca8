"""The torch trainer's checkpoint contents: weights (safetensors), optimizer and trainer state,
written through the run layer's atomic folder protocol (``kiln.run.checkpoints``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kiln.run.checkpoints import write_checkpoint


def save_checkpoint(
    run_dir: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    trainer_state: dict[str, Any],
    keep: int,
    extra_files: tuple[Path, ...] = (),
) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it and keep the newest ``keep``.

    Returns:
        The checkpoint folder.
    """

    def write(tmp: Path) -> None:
        save_safetensors(model_state, tmp / "model.safetensors")
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(trainer_state, tmp / "trainer_state.pt")

    return write_checkpoint(run_dir, step, write, keep, extra_files)


def load_checkpoint(path: Path, device: torch.device) -> tuple[dict[str, torch.Tensor], Any, Any]:
    """(model state, optimizer state, trainer state); pickles load with ``weights_only=True``."""
    model_state = load_file(path / "model.safetensors", device=str(device))
    optimizer_state = torch.load(path / "optimizer.pt", map_location=device, weights_only=True)
    trainer_state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
    return model_state, optimizer_state, trainer_state


def save_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors needs contiguous CPU tensors that share no storage."""
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}, str(path))
