"""HFEncoderClassifier: a pretrained Hugging Face encoder (BERT-style) with a new classification head.

The model is rebuilt from its config alone (``AutoModel.from_config``), so the manifest holds the
encoder's config and a model folder needs nothing but its own files; pretrained weights are loaded
once, when training starts (:func:`load_pretrained_encoder`). Everything runs offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kiln.errors import ConfigError

# Keys of config.json that describe where a file came from, not the model.
_PROVENANCE_KEYS = ("_name_or_path", "transformers_version", "architectures")


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError("model.name=hf_encoder needs transformers: pip install 'kiln[hf]'") from None
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars on every load
    return transformers


def encoder_config(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config.json that rebuild the encoder (where it was loaded from dropped)."""
    return {k: v for k, v in config.items() if k not in _PROVENANCE_KEYS}


class HFEncoderClassifier(nn.Module):
    """A Hugging Face encoder, pooled over real tokens (or its first token), then dropout and a
    new linear head.

    Args:
        config: the encoder's config.json as a dict (``model_type`` says the architecture).
        num_labels: classes of the head.
        pooling: ``"mean"`` over tokens with mask 1, or ``"cls"`` (first token).
        dropout: dropout before the head; the encoder keeps the dropout of its config.
        pad_id: token id of padding (recorded for consumers; the mask decides what is padding).
    """

    def __init__(
        self, config: dict[str, Any], num_labels: int, pooling: str = "mean", dropout: float = 0.1,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        transformers = _transformers()
        params = dict(config)
        model_type = params.pop("model_type")
        try:
            hf_config = transformers.AutoConfig.for_model(model_type, **params)
        except ValueError as exc:  # an architecture this transformers does not know
            raise ConfigError(f"model.path: transformers cannot build model_type "
                              f"{model_type!r}: {exc}") from None
        self.pooling = pooling
        self.pad_id = pad_id
        try:  # PyTorch's fused attention where the architecture supports it
            self.encoder = transformers.AutoModel.from_config(hf_config, attn_implementation="sdpa")
        except ValueError:
            self.encoder = transformers.AutoModel.from_config(hf_config)
        if getattr(self.encoder, "pooler", None) is not None:
            # BERT's pooler is unused (pooling is ours); parameters without gradients would also
            # make DistributedDataParallel fail.
            self.encoder.pooler = None
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(int(hf_config.hidden_size), num_labels)
        nn.init.normal_(self.head.weight, std=float(getattr(hf_config, "initializer_range", 0.02)))
        nn.init.zeros_(self.head.bias)

    @property
    def token_embedding(self) -> nn.Module:
        """The encoder's token embedding (its rows are the vocabulary)."""
        embedding: nn.Module = self.encoder.get_input_embeddings()
        return embedding

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, num_labels]`` for ``input_ids`` and ``attention_mask`` ``[batch, seq]``
        (mask 1 = real token, 0 = padding)."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        logits: torch.Tensor = self.head(self.dropout(pooled))
        return logits


def load_pretrained_encoder(model: HFEncoderClassifier, folder: Path) -> None:
    """Copy the pretrained weights of ``folder`` into ``model.encoder`` (the head stays new).

    transformers reads the weights (safetensors or a torch file), offline, mapping older key names.

    Raises:
        ConfigError: the weights do not fit the encoder built from the same folder's config.
    """
    transformers = _transformers()
    try:  # only the weights are kept: the attention implementation does not matter here
        pretrained = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.path {folder}: the pretrained weights cannot be loaded: {exc}") \
            from None
    state = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("pooler.")}
    missing, unexpected = model.encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"model.path {folder}: weights do not match its config.json (missing "
                          f"{missing[:5]}, unexpected {unexpected[:5]})")
