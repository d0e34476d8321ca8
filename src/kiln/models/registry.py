"""Models by name. A model is rebuilt from its name and the keyword arguments in the manifest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from kiln.config import ModelConfig
from kiln.errors import ConfigError
from kiln.models.transformer import TransformerClassifier

MODELS: dict[str, Callable[..., nn.Module]] = {"transformer": TransformerClassifier}


def model_kwargs(
    cfg: ModelConfig, *, vocab_size: int, num_labels: int, max_length: int, pad_id: int
) -> dict[str, Any]:
    """The full constructor arguments of ``cfg.name``: what the manifest stores to rebuild it."""
    return {
        "vocab_size": vocab_size,
        "num_labels": num_labels,
        "max_length": max_length,
        "embed_dim": cfg.embed_dim,
        "num_heads": cfg.num_heads,
        "num_layers": cfg.num_layers,
        "ff_dim": cfg.ff_dim,
        "dropout": cfg.dropout,
        "pooling": cfg.pooling,
        "pad_id": pad_id,
    }


def build_model(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """Instantiate model ``name`` with ``kwargs``.

    Raises:
        ConfigError: ``name`` is not registered.
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model '{name}'; registered models: {sorted(MODELS)}")
    return MODELS[name](**kwargs)
