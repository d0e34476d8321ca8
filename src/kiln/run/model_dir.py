"""The model folder a run ends with, for either trainer: the kept weights and the manifest every
later stage reads (``kiln.models.package`` writes it atomically)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kiln.config import Config
from kiln.models import build_manifest, save_model_files
from kiln.run.schedule import uses_best
from kiln.run.state import TrainState


def write_model_dir(
    cfg: Config, run_dir: Path, state: TrainState, kwargs: dict[str, Any],
    label_names: tuple[str, ...], precision: str, *, best_file: Path,
    write_weights: Callable[[Path, bool], None], weights_file: str = "model.safetensors",
    framework: str = "torch", training: dict[str, Any] | None = None,
    versions: dict[str, str] | None = None, report: Callable[[str], None] = lambda message: None,
) -> Path:
    """Write ``run_dir/model/``: the best weights (by train.metric) or the last ones, as
    train.select says. ``write_weights(path, use_best)`` writes them to ``path``;
    ``training`` and ``versions`` add framework-specific manifest entries. Best weights are used
    only when they pass their checksums (``report`` hears when they do not)."""
    use_best = uses_best(cfg.train, state, best_file, report)
    manifest = build_manifest(cfg.model.name, kwargs, label_names, cfg.data.max_length,
                              extra=manifest_extra(cfg, run_dir, state, use_best, precision,
                                                   **(training or {})))
    manifest.update(framework=framework, weights=weights_file)
    manifest["versions"] = {**manifest["versions"], **(versions or {})}
    return save_model_files(run_dir / "model",
                            lambda tmp: write_weights(tmp / weights_file, use_best),
                            run_dir / "tokenizer.json", manifest)


def manifest_extra(cfg: Config, run_dir: Path, state: TrainState, use_best: bool, precision: str,
                   **training: Any) -> dict[str, Any]:
    """The manifest's "training" and "data" records: which weights were kept and how they scored
    (``training`` adds framework-specific entries)."""
    return {
        "training": {
            "run_dir": str(run_dir),
            "selected": "best" if use_best else "last",
            "step": state.best_step if use_best else state.step,
            "total_steps": state.step,
            "metric": cfg.train.metric,
            "eval": dict(state.best_eval if use_best else state.last_eval),
            "precision": precision,
            **training,
            "seed": cfg.seed,
        },
        "data": {"text_column": cfg.data.text_column, "label_column": cfg.data.label_column},
    }
