"""A trained Keras model as ``kiln export`` needs it: the parity reference, ONNX through tf2onnx,
and a TensorFlow SavedModel.

Both exports take the model's serving function (int64 ``input_ids`` and ``attention_mask`` of any
batch and length, ``logits`` out), so the ONNX graph has the input and output names, dtypes and
dynamic axes of a torch export, and ONNX Runtime, int8 quantisation, Triton and ``kiln serve``
treat it like any other.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kiln.export.onnx_export import ExportError, check_onnx_shapes
from kiln.export.trained import TrainedModel
from kiln.extras import import_keras
from kiln.models.keras_model import load_keras_model, serving_function
from kiln.runtime.tensorflow import KerasBackend, SavedModelBackend

tf, keras = import_keras()

ONNX_OPSET = 17
SAVED_MODEL = "saved_model"


def export_keras_onnx(model: Any, path: Path, max_length: int) -> Path:
    """Write ``model`` as ONNX (tf2onnx) with dynamic ``batch`` and ``sequence`` axes, checked in
    ONNX Runtime against the model at several shapes.

    Raises:
        ExportError: the conversion fails, or the graph fails or disagrees at some shape.
    """
    import tf2onnx

    logits = serving_function(model)

    def serve(input_ids: Any, attention_mask: Any) -> dict[str, Any]:
        return {"logits": logits(input_ids, attention_mask)}  # the dict key names the output

    function = tf.function(serve, input_signature=logits.input_signature, autograph=False)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with _quiet():
            proto, _ = tf2onnx.convert.from_function(
                function, input_signature=logits.input_signature, opset=ONNX_OPSET)
    except Exception as exc:  # tf2onnx raises whatever the converter hit
        raise ExportError(f"tf2onnx could not convert the Keras model: {exc}") from exc
    _name_dynamic_axes(proto)
    import onnx

    onnx.save_model(proto, str(tmp))
    tmp.replace(path)
    backend = KerasBackend(model)
    vocab = int(model.get_layer("token_embedding").input_dim)
    check_onnx_shapes(path, backend.run, max_length, vocab)
    return path


def _name_dynamic_axes(proto: Any) -> None:
    # tf2onnx names unknown dimensions unk__N; give them the names a torch export has
    names = {0: "batch", 1: "sequence"}
    for value in list(proto.graph.input) + list(proto.graph.output):
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.dim_param and axis in names and (value.name != "logits" or axis == 0):
                dim.dim_param = names[axis]


def export_saved_model(model: Any, folder: Path) -> Path:
    """A TensorFlow SavedModel (for TF Serving / TFLite converters) whose ``serving_default``
    signature takes ``input_ids`` and ``attention_mask`` (int64) and returns ``logits``."""
    logits = serving_function(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default", lambda input_ids, attention_mask: {
            "logits": logits(input_ids, attention_mask)},
        input_signature=logits.input_signature)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with _quiet():
        archive.write_out(str(tmp), verbose=False)
    tmp.rename(folder)
    return folder


def keras_trained_model(model_dir: Path, manifest: dict[str, Any]) -> TrainedModel:
    """The ``TrainedModel`` of a keras model folder, for ``kiln.export.export_run``."""
    model = load_keras_model(model_dir / manifest["weights"])
    max_length = int(manifest["max_length"])

    def saved_model(work: Path) -> SavedModelBackend:
        return SavedModelBackend(export_saved_model(model, work / SAVED_MODEL))

    return TrainedModel(
        reference=KerasBackend(model), reference_name="keras-fp32",
        weights_file=manifest["weights"],
        write_onnx=lambda path: export_keras_onnx(model, path, max_length),
        native={"tf-savedmodel": saved_model})


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """tf2onnx and SavedModel writing log every step at INFO and print notices; kiln prints
    its own summary."""
    loggers = [logging.getLogger(n) for n in ("tf2onnx", "tensorflow", "absl")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)

