"""One evaluation pass of a model over a DataLoader."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from kiln.data import Batch
from kiln.metrics import EvalResult, confusion_matrix, from_confusion, summarize


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
