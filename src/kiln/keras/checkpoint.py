"""Keras checkpoints in the run directory's ``checkpoints/step-NNNNNN/`` folders.

The folder protocol (temporary folder, fsync, rename, ``latest`` pointer, rotation) is the torch
path's (``kiln.run.checkpoints.write_checkpoint``), so resume detection, ``--fresh`` and the
config check work the same. Inside: every model variable (weights and the dropout seed-generator
states), every optimizer variable (moments, iteration counter, gradient accumulators, loss scale),
each as a numbered safetensors array, and the progress counters as JSON. No pickles.

Keras' own BackupAndRestore is not used: it keeps one backup and, after a crash mid-epoch,
restarts that epoch from its first batch, training twice on the batches before the crash.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from kiln.errors import RunDirError
from kiln.run.checkpoints import write_checkpoint

MODEL_FILE = "keras_model.safetensors"
OPTIMIZER_FILE = "keras_optimizer.safetensors"
STATE_FILE = "trainer_state.json"


def save_arrays(path: Path, variables: Sequence[Any]) -> None:
    """Write variables (or arrays) in order as ``00000``, ``00001``, ... of a safetensors file."""
    # np.array, not np.ascontiguousarray: that one turns a scalar (the step counter) into shape (1,)
    arrays = {f"{i:05d}": np.array(v, order="C") for i, v in enumerate(variables)}
    save_file(arrays, str(path))


def load_arrays(path: Path, expected: Sequence[Any]) -> list[np.ndarray]:
    """The arrays of ``path`` in order, checked against the shapes of the ``expected`` variables.

    Raises:
        RunDirError: the file holds a different number of arrays or other shapes.
    """
    stored = load_file(str(path))
    arrays = [stored[k] for k in sorted(stored)]
    shapes = [tuple(a.shape) for a in arrays]
    wanted = [tuple(v.shape) for v in expected]
    if shapes != wanted:
        raise RunDirError(f"{path} does not fit this model: {len(arrays)} arrays, expected "
                          f"{len(wanted)} (or the shapes differ); start over with --fresh")
    return arrays


def save_keras_checkpoint(run_dir: Path, step: int, model: Any, optimizer: Any,
                          trainer_state: dict[str, Any], keep: int,
                          extra_files: tuple[Path, ...] = ()) -> Path:
    """Write ``checkpoints/step-{step}`` atomically; returns the folder."""

    def write(tmp: Path) -> None:
        save_arrays(tmp / MODEL_FILE, [v.numpy() for v in model.variables])
        save_arrays(tmp / OPTIMIZER_FILE, [v.numpy() for v in optimizer.variables])
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=1), encoding="utf-8")

    return write_checkpoint(run_dir, step, write, keep, extra_files)


def load_keras_checkpoint(path: Path, model: Any, optimizer: Any) -> dict[str, Any]:
    """Restore model and optimizer variables from checkpoint ``path``; returns the trainer state.

    The optimizer must be built (its variables exist) before this is called.

    Raises:
        RunDirError: the checkpoint is not a keras one or does not fit the model.
    """
    if not (path / MODEL_FILE).exists():
        raise RunDirError(f"{path} is not a keras checkpoint ({MODEL_FILE} is missing); was the "
                          "run trained with framework=torch? Use --fresh to start over")
    for variable, array in zip(model.variables, load_arrays(path / MODEL_FILE, model.variables)):
        variable.assign(array)
    for variable, array in zip(optimizer.variables,
                               load_arrays(path / OPTIMIZER_FILE, optimizer.variables)):
        variable.assign(array)
    state: dict[str, Any] = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    return state
