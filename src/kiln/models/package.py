"""The model folder: weights (safetensors), tokenizer, label names and the manifest ``kiln.json``.

The manifest says everything a consumer needs (model kind and arguments, inputs and outputs with
their dynamic axes, max length, tokenizer, labels, file checksums, versions), so later stages load
a model from the folder alone.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

from kiln.errors import RunDirError
from kiln.files import file_digest, replacing_dir
from kiln.models.registry import build_model

MANIFEST = "kiln.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LoadedModel:
    """A model rebuilt from its folder, in eval mode."""

    model: nn.Module
    tokenizer: Tokenizer
    manifest: dict[str, Any]

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest["labels"])


def versions() -> dict[str, str]:
    """Versions of what produced an artifact."""
    import tokenizers

    import kiln

    return {
        "kiln": kiln.__version__,
        "torch": str(torch.__version__),
        "tokenizers": tokenizers.__version__,
        "python": platform.python_version(),
    }


def build_manifest(
    name: str, kwargs: Mapping[str, Any], labels: Sequence[str], max_length: int,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """The manifest body (without file checksums, which save_model_dir adds)."""
    axes = {0: "batch", 1: "sequence"}
    return {
        "format": "kiln-model",
        "format_version": FORMAT_VERSION,
        "framework": "torch",
        "model": {"name": name, "kwargs": dict(kwargs)},
        "weights": WEIGHTS,
        "tokenizer": TOKENIZER,
        "max_length": max_length,
        "labels": list(labels),
        "inputs": [
            {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
            {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"]},
        ],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", len(labels)]}],
        "dynamic_axes": {"input_ids": axes, "attention_mask": axes, "logits": {0: "batch"}},
        **extra,
        "versions": versions(),
    }


def save_model_dir(
    directory: Path, state: Mapping[str, torch.Tensor], tokenizer_file: Path,
    manifest: Mapping[str, Any],
) -> Path:
    """Write weights, tokenizer and manifest (with checksums) into ``directory`` atomically.

    The folder is assembled under a temporary name and renamed into place, replacing any older one.
    """

    def write(tmp: Path) -> None:
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.items()},
                  str(tmp / WEIGHTS))

    return save_model_files(directory, write, tokenizer_file, manifest)


def save_model_files(
    directory: Path, write_weights: Callable[[Path], None], tokenizer_file: Path,
    manifest: Mapping[str, Any],
) -> Path:
    """The model folder for any framework: ``write_weights(tmp)`` writes ``manifest["weights"]``
    into a temporary folder; tokenizer and manifest (with checksums) join it; then it is renamed
    into place, replacing any older ``directory``."""
    with replacing_dir(directory) as tmp:
        write_weights(tmp)
        shutil.copy2(tokenizer_file, tmp / TOKENIZER)
        body = dict(manifest)
        body["files"] = {f: file_digest(tmp / f) for f in (manifest["weights"], TOKENIZER)}
        (tmp / MANIFEST).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    return directory


def read_manifest(directory: Path) -> dict[str, Any]:
    """Read ``kiln.json`` of a model folder.

    Raises:
        RunDirError: the folder or manifest is missing or not valid JSON.
    """
    path = directory / MANIFEST
    if not path.exists():
        raise RunDirError(f"{directory} is not a kiln model folder: {MANIFEST} is missing")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path} is not valid JSON: {exc}") from None
    if manifest.get("format") != "kiln-model":
        raise RunDirError(f"{path} is not a kiln manifest (format={manifest.get('format')!r})")
    return manifest


def check_vocabulary(directory: Path, manifest: Mapping[str, Any]) -> Tokenizer:
    """The folder's tokenizer, once it is known to fit the model's vocabulary.

    Raises:
        RunDirError: it has another number of tokens than the model embeds (a tokenizer of another
            model), naming both sizes.
    """
    path = directory / manifest["tokenizer"]
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises its own exception type
        raise RunDirError(f"{path} is not a readable tokenizer: {exc}") from None
    expected = manifest["model"]["kwargs"].get("vocab_size")
    if expected is not None and tokenizer.get_vocab_size() != int(expected):
        raise RunDirError(f"{path} has {tokenizer.get_vocab_size()} tokens but the model embeds "
                          f"{expected}: it is another model's tokenizer")
    return tokenizer


def verify_files(directory: Path, manifest: Mapping[str, Any]) -> None:
    """Check every file listed in the manifest against its checksum.

    Raises:
        RunDirError: a file is missing or its content changed.
    """
    for name, expected in manifest.get("files", {}).items():
        path = directory / name
        if not path.exists():
            raise RunDirError(f"{path} is listed in {MANIFEST} but missing")
        if file_digest(path)["sha256"] != expected["sha256"]:
            raise RunDirError(f"{path} does not match the checksum in {MANIFEST}: it was modified")


def load_model_dir(directory: str | os.PathLike[str], device: str = "cpu") -> LoadedModel:
    """Rebuild the model of a model folder (checksums verified), in eval mode."""
    d = Path(directory)
    manifest = read_manifest(d)
    framework = manifest.get("framework", "torch")
    if framework != "torch":
        raise RunDirError(f"{d} holds a {framework} model ({manifest['weights']}), not a torch one; "
                          "load it with kiln.runtime.load_predictor (any framework)")
    tokenizer = check_vocabulary(d, manifest)
    verify_files(d, manifest)
    model = build_model(manifest["model"]["name"], manifest["model"]["kwargs"])
    model.load_state_dict(load_file(str(d / manifest["weights"]), device=device))
    model.to(device).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, manifest=manifest)


def resolve_model_dir(path: str | os.PathLike[str]) -> Path:
    """A run directory's ``model/`` folder, or ``path`` itself if it is a model folder.

    Raises:
        RunDirError: neither holds a manifest.
    """
    p = Path(path)
    for candidate in (p / "model", p):
        if (candidate / MANIFEST).exists():
            return candidate
    if not p.exists():
        raise RunDirError(f"{p} does not exist")
    raise RunDirError(f"{p} is neither a run with a trained model/ nor a model folder "
                      f"(no {MANIFEST}); has training finished?")
