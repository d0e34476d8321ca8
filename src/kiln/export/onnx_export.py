"""Export a trained model to ONNX with dynamic batch and sequence axes that really work.

The TorchScript exporter (`dynamo=False`) bakes the example's sequence length into a Reshape of
nn.TransformerEncoder (pytorch/pytorch#110801); the dynamo exporter keeps both axes symbolic. The
result is checked in ONNX Runtime at several batch sizes and lengths before it is accepted.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

INPUT_NAMES = ["input_ids", "attention_mask"]
OUTPUT_NAMES = ["logits"]


class ExportError(RuntimeError):
    """An artifact could not be produced or does not behave like the model it came from."""


def export_onnx(model: nn.Module, path: Path, max_length: int, opset: int = 18) -> Path:
    """Write ``model`` as a single-file ONNX graph with dynamic ``batch`` and ``sequence`` axes.

    Raises:
        ExportError: the exported graph fails or disagrees with the model at some shape.
    """
    model = model.eval()
    example = torch.full((2, min(8, max_length)), 5, dtype=torch.long)
    batch = torch.export.Dim("batch", min=1, max=4096)
    sequence = torch.export.Dim("sequence", min=1, max=max_length)
    axes = {0: batch, 1: sequence}
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)  # "torchvision is not installed" notices
    with warnings.catch_warnings():
        # the exporter reports its own internals (axis renames, pytree deprecations) as warnings
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (example, torch.ones_like(example)), dynamo=True, opset_version=opset,
            input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
            dynamic_shapes={"input_ids": axes, "attention_mask": axes}, optimize=True,
            verbose=False,
        )
    onnx_logger.setLevel(level)
    assert program is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    program.save(str(tmp), external_data=False)
    tmp.replace(path)
    check_dynamic_shapes(model, path, max_length)
    return path


def export_onnx_torchscript(model: nn.Module, path: Path, max_length: int, opset: int = 17) -> Path:
    """The TorchScript exporter, for models written with explicit reshapes (FusableClassifier):
    its graphs keep the Shape/Reshape/Transpose pattern ONNX Runtime's BERT fusions match.

    Raises:
        ExportError: the exported graph fails or disagrees with the model at some shape.
    """
    model = model.eval()
    example = torch.full((2, min(8, max_length)), 5, dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated upstream
        torch.onnx.export(
            model, (example, torch.ones_like(example)), str(tmp), dynamo=False,
            opset_version=opset, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": {0: "batch"}},
        )
    tmp.replace(path)
    check_dynamic_shapes(model, path, max_length)
    return path


def check_dynamic_shapes(model: nn.Module, path: Path, max_length: int) -> None:
    """Run the ONNX file at batch 1..64 and lengths 1..max_length (with padding) against ``model``.

    Raises:
        ExportError: a shape fails to run or the logits differ by more than 1e-3.
    """
    embedding = getattr(model, "token_embedding", None)
    vocab = embedding.num_embeddings if isinstance(embedding, nn.Embedding) else 100

    @torch.inference_mode()
    def reference(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out: np.ndarray = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        return out

    check_onnx_shapes(path, reference, max_length, vocab)


def check_onnx_shapes(
    path: Path, reference: Callable[[np.ndarray, np.ndarray], np.ndarray], max_length: int,
    vocab: int,
) -> None:
    """Run the ONNX file at batch 1..64 and lengths 1..max_length (one row padded) and compare
    its logits with ``reference(input_ids, attention_mask)``, the model it was exported from.

    Raises:
        ExportError: a shape fails to run or the logits differ by more than 1e-3.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch, length in [(1, 1), (1, max_length), (3, 7), (64, max(1, max_length // 2)),
                          (5, max_length)]:
        ids = rng.integers(5, vocab, size=(batch, length), dtype=np.int64)
        mask = np.ones_like(ids)
        mask[0, max(1, length // 2):] = 0  # one padded row
        try:
            (got,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ExportError(f"{path.name} fails at batch {batch}, length {length}: {exc}") from exc
        diff = float(np.abs(got - reference(ids, mask)).max())
        if diff > 1e-3:
            raise ExportError(f"{path.name} differs from the model by {diff:.2e} at batch {batch}, "
                              f"length {length}")
