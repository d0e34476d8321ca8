"""The TransformerClassifier rewritten in the operator pattern ONNX Runtime's transformer
optimizer fuses, with the trained weights loaded into it.

nn.MultiheadAttention exports as one packed projection and a scaled-dot-product node that ORT's
BERT fusions do not recognise (only LayerNorm fused; see FINDINGS.md). The same computation
written as BERT writes it - separate query/key/value projections, reshape/transpose per head,
MatMul, Div by sqrt(head size), Add of the additive padding mask, Softmax, MatMul - with each
residual branch as the first input of its Add, becomes one fused `Attention` node per layer, plus
EmbedLayerNormalization, SkipLayerNormalization and BiasGelu. The logits equal the original
model's (checked at export by parity, and in tests to 1e-5).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from kiln.models.transformer import TransformerClassifier

MASK_VALUE = -10000.0  # BERT's additive mask value; exp(-10000) is 0 in float32 like -inf


class _SelfAttention(nn.Module):
    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        d, h = mha.embed_dim, mha.num_heads
        self.heads, self.head_size = h, d // h
        self.query, self.key, self.value, self.output = (nn.Linear(d, d) for _ in range(4))
        assert mha.in_proj_weight is not None and mha.in_proj_bias is not None
        weights = mha.in_proj_weight.detach().chunk(3)
        biases = mha.in_proj_bias.detach().chunk(3)
        pairs = [*zip(weights, biases), (mha.out_proj.weight.detach(), mha.out_proj.bias.detach())]
        with torch.no_grad():
            for linear, (w, b) in zip((self.query, self.key, self.value, self.output), pairs):
                linear.weight.copy_(w)
                linear.bias.copy_(b)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size()[:-1] + (self.heads, self.head_size)).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size)
        probs = torch.softmax(scores + mask, dim=-1)
        context = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return self.output(context.view(context.size()[:-2] + (self.heads * self.head_size,)))


class _Layer(nn.Module):
    def __init__(self, layer: nn.TransformerEncoderLayer) -> None:
        super().__init__()
        self.norm1, self.norm2 = layer.norm1, layer.norm2
        self.attention = _SelfAttention(layer.self_attn)
        self.linear1, self.linear2 = layer.linear1, layer.linear2

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # The branch first, the residual second: ORT's fusion looks for the branch at input 0.
        x = self.attention(self.norm1(x), mask) + x
        return self.linear2(F.gelu(self.linear1(self.norm2(x)))) + x


class FusableClassifier(nn.Module):
    """Inference-only twin of a TransformerClassifier (pre-LN, GELU) with the same weights."""

    def __init__(self, model: TransformerClassifier) -> None:
        super().__init__()
        self.token_embedding = model.token_embedding
        self.position_embedding = model.position_embedding
        self.layers = nn.ModuleList(_Layer(layer) for layer in model.encoder.layers)
        self.norm = model.encoder.norm
        self.head = model.head
        self.pooling = model.pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.size(1), device=input_ids.device).unsqueeze(0)
        x = self.token_embedding(input_ids) + self.position_embedding(positions)
        additive = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * MASK_VALUE
        for layer in self.layers:
            x = layer(x, additive)
        assert self.norm is not None
        x = self.norm(x)
        if self.pooling == "cls":
            return self.head(x[:, 0])
        mask = attention_mask.unsqueeze(-1).to(x.dtype)
        return self.head((x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0))


def fusable_copy(model: nn.Module) -> FusableClassifier | None:
    """The fusable twin of ``model``, or None when kiln has no rewrite for its architecture."""
    if not isinstance(model, TransformerClassifier):
        return None
    layers = list(model.encoder.layers)
    if not all(isinstance(x, nn.TransformerEncoderLayer) and x.norm_first
               and x.activation is F.gelu for x in layers):
        return None
    return FusableClassifier(model).eval()
