"""Parity: is an artifact still the trained model? Measured on the run's evaluation set."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kiln.metrics import confusion_matrix, macro_f1
from kiln.runtime.predictor import Backend

EvalBatch = tuple[np.ndarray, np.ndarray, np.ndarray]  # input_ids, attention_mask, labels


@dataclass(frozen=True)
class Tolerance:
    """When an artifact fails: accuracy lower than the model's by more than ``max_accuracy_drop``
    points, or argmax agreement with the model under ``min_argmax_agreement``."""

    max_accuracy_drop: float = 0.5  # percentage points
    min_argmax_agreement: float = 0.99


@dataclass(frozen=True)
class Parity:
    artifact: str
    file: str
    max_abs_diff: float
    argmax_agreement: float
    accuracy: float
    macro_f1: float
    accuracy_drop: float  # percentage points below the trained model (negative: better)
    passed: bool
    failures: list[str]
    # int8 layers put back in fp32 for the artifact to pass (kiln.export.fallback), out of
    # ``quantizable_layers``
    fp32_layers: list[str] = field(default_factory=list)
    quantizable_layers: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_backend(backend: Backend, batches: Sequence[EvalBatch]) -> np.ndarray:
    """Logits of ``backend`` over all batches, concatenated in batch order."""
    return np.concatenate([backend.run(ids, mask) for ids, mask, _ in batches])


def measure_parity(
    artifact: str, file: str, logits: np.ndarray, reference: np.ndarray, labels: np.ndarray,
    num_classes: int, tolerance: Tolerance,
) -> Parity:
    """Compare an artifact's logits with the trained model's on the same examples."""
    preds, ref_preds = logits.argmax(-1), reference.argmax(-1)
    accuracy = float((preds == labels).mean())
    drop = 100.0 * (float((ref_preds == labels).mean()) - accuracy)
    agreement = float((preds == ref_preds).mean())
    failures = []
    if not np.isfinite(logits).all():
        failures.append("non-finite logits")
    if drop > tolerance.max_accuracy_drop:
        failures.append(f"accuracy drop {drop:.2f} points > {tolerance.max_accuracy_drop}")
    if agreement < tolerance.min_argmax_agreement:
        failures.append(f"argmax agreement {agreement:.4f} < {tolerance.min_argmax_agreement}")
    return Parity(
        artifact=artifact, file=file, max_abs_diff=float(np.abs(logits - reference).max()),
        argmax_agreement=agreement, accuracy=accuracy,
        macro_f1=macro_f1(confusion_matrix(labels, preds, num_classes)), accuracy_drop=drop,
        passed=not failures, failures=failures,
    )


def format_parity_table(rows: Sequence[Parity], reference_accuracy: float) -> str:
    """A plain-text table of every artifact's parity."""
    head = (f"{'artifact':22s} {'max|diff|':>10s} {'agree':>7s} {'accuracy':>9s} "
            f"{'drop(pt)':>9s} {'macro_f1':>9s}  result")
    lines = [f"trained model accuracy {reference_accuracy:.4f}", head, "-" * len(head)]
    for r in rows:
        result = "ok" if r.passed else "FAILED: " + "; ".join(r.failures)
        if r.fp32_layers:
            result += f" ({len(r.fp32_layers)} of {r.quantizable_layers} layers kept in fp32)"
        lines.append(f"{r.artifact:22s} {r.max_abs_diff:10.2e} {r.argmax_agreement:7.4f} "
                     f"{r.accuracy:9.4f} {r.accuracy_drop:9.2f} {r.macro_f1:9.4f}  {result}")
    return "\n".join(lines)
