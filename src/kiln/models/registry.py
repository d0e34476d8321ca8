"""Models by name. A model is rebuilt from its name and the keyword arguments in the manifest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from kiln.config import ModelConfig
from kiln.config.pretrained import read_pretrained_config, resolve_pretrained_dir
from kiln.errors import ConfigError
from kiln.models.hf_encoder import HFEncoderClassifier, encoder_config, load_pretrained_encoder
from kiln.models.transformer import TransformerClassifier

MODELS: dict[str, Callable[..., nn.Module]] = {
    "transformer": TransformerClassifier,
    "hf_encoder": HFEncoderClassifier,
}


def model_kwargs(
    cfg: ModelConfig, *, vocab_size: int, num_labels: int, max_length: int, pad_id: int
) -> dict[str, Any]:
    """The full constructor arguments of ``cfg.name``: what the manifest stores to rebuild it.

    Raises:
        ConfigError: a pretrained model.path that cannot be used, or whose embedding has fewer
            rows than the tokenizer has tokens.
    """
    if cfg.name == "hf_encoder":
        assert cfg.path is not None  # the config validator requires it
        config = encoder_config(read_pretrained_config(resolve_pretrained_dir(cfg.path)))
        if vocab_size > int(config.get("vocab_size", vocab_size)):
            raise ConfigError(f"model.path {cfg.path}: the tokenizer has {vocab_size} tokens but "
                              f"the encoder embeds only {config['vocab_size']}")
        return {"config": config, "num_labels": num_labels, "pooling": cfg.pooling,
                "dropout": cfg.dropout, "pad_id": pad_id}
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


def init_model(cfg: ModelConfig, kwargs: dict[str, Any]) -> nn.Module:
    """A model to train: built from ``kwargs``, with the pretrained weights of ``cfg.path`` where
    the model has them (a resumed run then loads its checkpoint over them).

    Raises:
        ConfigError: unknown model, or pretrained weights that cannot be loaded.
    """
    model = build_model(cfg.name, kwargs)
    if isinstance(model, HFEncoderClassifier):
        assert cfg.path is not None
        load_pretrained_encoder(model, resolve_pretrained_dir(cfg.path))
    return model


def ort_optimizer_options(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """What ONNX Runtime's transformer optimizer needs to know of a model from its manifest:
    attention heads, hidden width, and whether to fuse attention first (see
    :func:`kiln.export.onnx_optimize.optimize_for_ort`)."""
    if name == "hf_encoder":
        config = kwargs["config"]
        return {"num_heads": int(config["num_attention_heads"]),
                "hidden_size": int(config["hidden_size"]), "fuse_attention": True}
    # The from-scratch transformer's attention fuses too (MultiHeadAttention, parity intact), but
    # its speed effect is not measured yet: off until it is.
    return {"num_heads": int(kwargs["num_heads"]), "hidden_size": int(kwargs["embed_dim"]),
            "fuse_attention": False}
