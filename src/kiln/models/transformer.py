"""TransformerClassifier: token + position embeddings, a padding-masked encoder, pooling, a head."""

from __future__ import annotations

import torch
from torch import nn


class TransformerClassifier(nn.Module):
    """A batch-first Transformer encoder text classifier.

    Padding is masked both in attention (``src_key_padding_mask``) and in mean pooling, so a text's
    logits do not depend on how much padding its batch needed.

    Args:
        vocab_size: rows of the token embedding.
        num_labels: classes of the head.
        max_length: longest sequence; sizes the learned position embedding.
        embed_dim: model width.
        num_heads: attention heads; must divide ``embed_dim``.
        num_layers: encoder layers, each initialised independently.
        ff_dim: feed-forward width.
        dropout: dropout on embeddings and inside every layer.
        pooling: ``"mean"`` over real tokens or ``"cls"`` (first token).
        pad_id: token id of padding; its embedding stays zero.
    """

    def __init__(
        self,
        vocab_size: int,
        num_labels: int,
        max_length: int,
        embed_dim: int = 128,
        num_heads: int = 4,
        num_layers: int = 2,
        ff_dim: int = 256,
        dropout: float = 0.1,
        pooling: str = "mean",
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.pooling = pooling
        self.max_length = max_length
        self.token_embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.position_embedding = nn.Embedding(max_length, embed_dim)
        self.embed_dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            embed_dim, num_heads, ff_dim, dropout, activation="gelu", batch_first=True,
            norm_first=True,  # pre-LayerNorm trains stably without a delicate warmup
        )
        # nn.TransformerEncoder deep-copies `layer`; _init_weights below re-draws every copy.
        self.encoder = nn.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(embed_dim), enable_nested_tensor=False
        )
        self.head = nn.Linear(embed_dim, num_labels)
        self.apply(_init_weights)
        with torch.no_grad():
            self.token_embedding.weight[pad_id].zero_()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, num_labels]`` for ``input_ids`` and ``attention_mask`` ``[batch, seq]``
        (mask 1 = real token, 0 = padding)."""
        seq = input_ids.shape[1]
        positions = torch.arange(seq, device=input_ids.device)
        x = self.token_embedding(input_ids) + self.position_embedding(positions)
        x = self.embed_dropout(x)
        x = self.encoder(x, src_key_padding_mask=attention_mask == 0)
        if self.pooling == "cls":
            pooled = x[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(x.dtype)
            pooled = (x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)


def _init_weights(module: nn.Module) -> None:
    # BERT-style initialisation, drawn separately for each module (and so for each layer).
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.MultiheadAttention):
        nn.init.normal_(module.in_proj_weight, std=0.02)
        nn.init.zeros_(module.in_proj_bias)
