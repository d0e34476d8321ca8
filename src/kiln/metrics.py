"""Classification metrics from predictions: accuracy, macro-F1, confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one evaluation pass."""

    loss: float
    accuracy: float
    macro_f1: float
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    num_examples: int

    def scalars(self) -> dict[str, float]:
        return {"loss": self.loss, "accuracy": self.accuracy, "macro_f1": self.macro_f1}


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def macro_f1(cm: np.ndarray) -> float:
    """Unweighted mean of per-class F1; a class never predicted nor present counts as F1 = 0."""
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # predicted + actual = 2tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())


def cross_entropy_sum(logits: np.ndarray, labels: np.ndarray) -> float:
    """Summed softmax cross-entropy of ``logits`` [n, classes] against class indices, in float64."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].sum())


def summarize(loss_sum: float, labels: np.ndarray, preds: np.ndarray, num_classes: int) -> EvalResult:
    """Build an EvalResult from summed loss, true labels and predicted labels."""
    return from_confusion(loss_sum, confusion_matrix(labels, preds, num_classes))


def from_confusion(loss_sum: float, cm: np.ndarray) -> EvalResult:
    """Build an EvalResult from summed loss and a confusion matrix (true rows, predicted columns)."""
    n = int(cm.sum())
    return EvalResult(
        loss=loss_sum / max(n, 1),
        accuracy=float(np.trace(cm) / n) if n else 0.0,
        macro_f1=macro_f1(cm),
        confusion=cm.tolist(),
        num_examples=n,
    )


def format_confusion(cm: Sequence[Sequence[int]], names: Sequence[str]) -> str:
    """A plain-text confusion matrix with true labels down and predictions across."""
    width = max(max(len(n) for n in names), max(len(str(v)) for row in cm for v in row), 4)
    head = " " * (width + 2) + " ".join(n[:width].rjust(width) for n in names)
    rows = [
        f"{name[:width].rjust(width)}  " + " ".join(str(v).rjust(width) for v in row)
        for name, row in zip(names, cm)
    ]
    return "\n".join(["true \\ predicted", head, *rows])
