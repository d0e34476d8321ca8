"""One Predictor over interchangeable backends: texts in, labels and probabilities out.

A backend only maps padded token tensors to logits; tokenisation, padding and label names belong to
the Predictor, read from the saved tokenizer and manifest, so every backend sees the same inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from tokenizers import Tokenizer


class Backend(Protocol):
    """Runs a classifier: int64 ``input_ids`` and ``attention_mask`` [batch, seq] -> float32 logits."""

    name: str

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...

    def info(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Predictions:
    """Per-text label names, class probabilities [batch, classes] and raw logits."""

    labels: list[str]
    probabilities: np.ndarray
    logits: np.ndarray


@dataclass
class Predictor:
    """Texts to labels through any backend, with the model's own tokenizer and label names."""

    backend: Backend
    tokenizer: Tokenizer
    label_names: list[str]
    max_length: int
    pad_id: int = 0
    vocab_size: int | None = None  # token ids must be below it (None: the tokenizer's size)

    @property
    def vocabulary(self) -> int:
        """How many token ids the model embeds: valid ids are 0 .. vocabulary - 1."""
        return self.vocab_size or self.tokenizer.get_vocab_size()

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, truncated to max_length and padded to the longest text."""
        encoded = [e.ids[: self.max_length] for e in self.tokenizer.encode_batch(list(texts))]
        return pad_batch(encoded, self.pad_id)

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Logits for already tokenised inputs."""
        return self.backend.run(input_ids, attention_mask)

    def predict(self, texts: Sequence[str]) -> Predictions:
        """Label and probabilities for each text."""
        logits = self.logits(*self.encode(texts))
        probabilities = softmax(logits)
        return Predictions(
            labels=[self.label_names[i] for i in probabilities.argmax(axis=-1)],
            probabilities=probabilities,
            logits=logits,
        )


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad ``sequences`` to the longest one; returns (input_ids, attention_mask) as int64."""
    longest = max((len(s) for s in sequences), default=1)
    ids = np.full((len(sequences), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), longest), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out
