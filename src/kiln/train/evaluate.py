"""One evaluation pass of a model over a DataLoader."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from kiln.data import (
    Batch,
    EncodedDataset,
    encode_labels,
    encode_texts,
    load_tokenizer,
    read_examples,
    sorted_batches,
)
from kiln.models import load_model_dir, read_manifest, resolve_model_dir
from kiln.runtime import Backend, make_backend, reference_artifact
from kiln.train.metrics import (
    EvalResult,
    confusion_matrix,
    cross_entropy_sum,
    from_confusion,
    summarize,
)


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[Batch], num_classes: int, device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> EvalResult:
    """Loss, accuracy, macro-F1 and confusion matrix of ``model`` on ``batches``.

    ``reduce`` sums a tensor over processes (distributed training: each rank evaluates its share
    of the examples and the confusion matrices and losses are added up).
    The model is put in eval mode and restored to its previous mode afterwards.
    """
    was_training = model.training
    model.eval()
    loss_sum, labels, preds = 0.0, [], []
    for batch in batches:
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        y = batch["labels"].to(device)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        labels.append(y.cpu().numpy())
        preds.append(logits.argmax(dim=-1).cpu().numpy())
    model.train(was_training)
    y_true = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    y_pred = np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)
    if reduce is None:
        return summarize(loss_sum, y_true, y_pred, num_classes)
    cm = torch.from_numpy(confusion_matrix(y_true, y_pred, num_classes)).to(torch.float64)
    packed = reduce(torch.cat([cm.flatten(), torch.tensor([loss_sum], dtype=torch.float64)])
                    .to(device)).cpu()
    return from_confusion(float(packed[-1]), packed[:-1].reshape(num_classes, num_classes)
                          .round().to(torch.int64).numpy())


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
    tokenizer = load_tokenizer(folder / manifest["tokenizer"])
    dataset = EncodedDataset(encode_texts(tokenizer, [e.text for e in raw]), labels)
    pad = int(manifest["model"]["kwargs"].get("pad_id", 0))
    batches = sorted_batches(dataset, pad, batch_size)
    if manifest.get("framework", "torch") != "torch":
        # a model of another framework (keras) runs through its runtime backend
        backend = make_backend(folder, manifest, reference_artifact(manifest))
        return evaluate_backend(backend, batches, len(names)), names
    loaded = load_model_dir(folder)
    result = evaluate(loaded.model, batches, len(names), torch.device("cpu"))
    return result, names


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
