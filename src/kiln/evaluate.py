"""`kiln eval`: score a trained model (either framework) on a labeled file."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from kiln.data import (
    Batch,
    EncodedDataset,
    encode_labels,
    encode_texts,
    read_examples,
    sorted_batches,
)
from kiln.metrics import EvalResult, cross_entropy_sum, summarize
from kiln.models import read_manifest, resolve_model_dir
from kiln.models.package import check_vocabulary
from kiln.runtime import Backend, make_backend, reference_artifact


def evaluate_file(
    model_dir: str | os.PathLike[str], data_file: str | os.PathLike[str],
    text_column: str | None = None, label_column: str | None = None, batch_size: int = 64,
) -> tuple[EvalResult, list[str]]:
    """Evaluate a model folder (or a run's ``model/``) on a labeled file.

    Columns default to the ones the model was trained with. Returns the result and label names.

    Raises:
        RunDirError: not a model folder. DataError: bad file or a label the model does not know.
    """
    folder = resolve_model_dir(model_dir)
    manifest = read_manifest(folder)
    columns = manifest.get("data", {})
    path = Path(data_file)
    raw = read_examples(path, text_column or columns.get("text_column", "text"),
                        label_column or columns.get("label_column", "label"))
    names = list(manifest["labels"])
    labels = encode_labels(raw, names, path)
    tokenizer = check_vocabulary(folder, manifest)
    dataset = EncodedDataset(encode_texts(tokenizer, [e.text for e in raw]), labels)
    pad = int(manifest["model"]["kwargs"].get("pad_id", 0))
    # the trained model itself, in its own framework, through its runtime backend
    backend = make_backend(folder, manifest, reference_artifact(manifest))
    return evaluate_backend(backend, sorted_batches(dataset, pad, batch_size), len(names)), names


def evaluate_backend(backend: Backend, batches: Iterable[Batch], num_classes: int) -> EvalResult:
    """Loss, accuracy, macro-F1 and confusion matrix of any runtime backend on ``batches``."""
    loss_sum, labels, preds = 0.0, [], []
    for batch in batches:
        logits = backend.run(batch["input_ids"].numpy(), batch["attention_mask"].numpy())
        y = batch["labels"].numpy()
        loss_sum += cross_entropy_sum(logits, y)
        labels.append(y)
        preds.append(logits.argmax(-1))
    return summarize(loss_sum, np.concatenate(labels), np.concatenate(preds), num_classes)
