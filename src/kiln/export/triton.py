"""A Triton Inference Server model for an exported ONNX classifier: token ids in, logits out.

The model folder holds ``<model_name>/config.pbtxt``, ``<model_name>/1/model.onnx`` (plus any
external-data files the graph references) and the manifest ``kiln.json``. It runs on Triton's ONNX
Runtime backend, or (``backend="python"``) on its Python backend through ``onnxruntime``
(``1/model.py``). `kiln triton` wraps it in an ensemble that takes text (triton_ensemble.py). Every
config is built from Triton's own protobuf schema, so a field Triton does not know cannot get in.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import onnx
from google.protobuf import text_format
from onnx.external_data_helper import ExternalDataInfo, uses_external_data
from tritonclient.grpc import model_config_pb2

from kiln.errors import KilnError
from kiln.files import replacing_dir
from kiln.models.package import MANIFEST, TOKENIZER, file_digest

CONFIG = "config.pbtxt"
VERSION = "1"
ONNX_MODEL = "model.onnx"
PYTHON_MODEL = "model.py"  # what Triton's Python backend runs, in the version folder
WARMUP_SEQUENCE_LENGTH = 16  # tokens per warm-up request; clipped to the manifest's max_length
TENSORRT_WORKSPACE_BYTES = 1 << 30  # 1 GiB of scratch space for TensorRT engine building

# manifest dtype -> (ONNX element type, Triton data type)
_DTYPES: dict[str, tuple[int, int]] = {
    "int64": (onnx.TensorProto.INT64, model_config_pb2.TYPE_INT64),
    "int32": (onnx.TensorProto.INT32, model_config_pb2.TYPE_INT32),
    "float32": (onnx.TensorProto.FLOAT, model_config_pb2.TYPE_FP32),
    "float16": (onnx.TensorProto.FLOAT16, model_config_pb2.TYPE_FP16),
}
# where the model step runs: Triton's ONNX Runtime backend, or its Python backend with onnxruntime
ModelBackend = Literal["onnxruntime", "python"]
MODEL_BACKENDS: tuple[ModelBackend, ...] = ("onnxruntime", "python")


class TritonExportError(KilnError):
    """The ONNX model, manifest or settings cannot make a valid Triton model repository."""


def write_triton_repository(
    onnx_file: Path, manifest: Mapping[str, Any], out_dir: Path, model_name: str, *,
    max_batch_size: int = 64, max_queue_delay_us: int = 2000, instances: int = 1,
    kind: Literal["cpu", "gpu"] = "cpu", tensorrt: bool = False,
    tokenizer_file: Path | None = None, backend: ModelBackend = "onnxruntime",
) -> Path:
    """Write ``out_dir/<model_name>/`` as a Triton model for the ONNX Runtime (or Python) backend.

    The folder is assembled under a temporary name and renamed into place, replacing an older one.

    Args:
        onnx_file: the exported classifier; external-data files it references are copied with it.
        manifest: the model's ``kiln.json`` body: ``inputs``, ``outputs`` and ``labels`` are used.
        out_dir: the model repository (``tritonserver --model-repository``).
        model_name: the name clients ask for; also the folder name.
        max_batch_size: largest batch the dynamic batcher forms (>= 1).
        max_queue_delay_us: how long a request may wait for others to fill a batch, in µs.
        instances: model instances (execution copies) per device.
        kind: run on the CPU or the GPU.
        tensorrt: on ``kind="gpu"``, let ONNX Runtime hand subgraphs to TensorRT in FP16;
            ignored on the CPU.
        tokenizer_file: copied next to ``config.pbtxt`` under the manifest's tokenizer name.
        backend: ``"onnxruntime"`` (Triton's ONNX Runtime backend) or ``"python"`` (Triton's
            Python backend running the same ONNX file through ``onnxruntime``, ``1/model.py``).

    Returns:
        The model folder ``out_dir/<model_name>``.

    Raises:
        TritonExportError: a setting is out of range, a file is missing, or the ONNX graph's
            inputs/outputs differ from what the manifest promises.
    """
    check_settings(model_name, max_batch_size, max_queue_delay_us, instances, kind)
    _check_backend(backend, kind, tensorrt)
    if not onnx_file.is_file():
        raise TritonExportError(f"ONNX model {onnx_file} does not exist")
    if tokenizer_file is not None and not tokenizer_file.is_file():
        raise TritonExportError(f"tokenizer {tokenizer_file} does not exist")
    graph = onnx.load(str(onnx_file), load_external_data=False)
    _check_graph(graph, manifest, onnx_file)
    config = _model_config(manifest, model_name, max_batch_size, max_queue_delay_us, instances,
                           kind, tensorrt, backend)
    target = out_dir / model_name
    with replacing_dir(target) as tmp:
        files = _copy_model(onnx_file, _external_data_files(graph, onnx_file), tmp)
        if backend == "python":
            files.append(copy_python_model("onnx_model", tmp))
        if tokenizer_file is not None:
            tokenizer_name = str(manifest.get("tokenizer", TOKENIZER))
            shutil.copy2(tokenizer_file, tmp / tokenizer_name)
            files.append(tokenizer_name)
        finish_model_folder(tmp, config, manifest, files)
    return target


def finish_model_folder(folder: Path, config: model_config_pb2.ModelConfig,
                        manifest: Mapping[str, Any], files: list[str]) -> None:
    """Write ``config.pbtxt`` and ``kiln.json`` (the manifest with the checksums of ``files``,
    paths relative to ``folder``, so verify_files() works on it as on a model folder)."""
    body = {**manifest, "files": {f: file_digest(folder / f) for f in files}}
    (folder / MANIFEST).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    (folder / CONFIG).write_text(text_format.MessageToString(config), encoding="utf-8")


def copy_python_model(source: str, folder: Path) -> str:
    """Copy kiln/export/triton_python/``source``.py to ``folder/1/model.py``, where Triton's
    Python backend looks for it; returns its path relative to ``folder``."""
    (folder / VERSION).mkdir(exist_ok=True)
    code = resources.files("kiln.export.triton_python").joinpath(f"{source}.py").read_bytes()
    (folder / VERSION / PYTHON_MODEL).write_bytes(code)
    return f"{VERSION}/{PYTHON_MODEL}"


def _model_config(
    manifest: Mapping[str, Any], model_name: str, max_batch_size: int, max_queue_delay_us: int,
    instances: int, kind: Literal["cpu", "gpu"], tensorrt: bool, backend: ModelBackend,
) -> model_config_pb2.ModelConfig:
    """The model's ``config.pbtxt`` as Triton's own message: inputs and outputs from the manifest,
    dynamic batching, instances, warm-up, and the TensorRT accelerator on the GPU."""
    config = model_config_pb2.ModelConfig(name=model_name, max_batch_size=max_batch_size)
    if backend == "python":
        config.backend = "python"
        config.parameters["onnx_file"].string_value = ONNX_MODEL
    else:
        config.platform = "onnxruntime_onnx"
    for spec in manifest["inputs"]:
        config.input.add(name=spec["name"], data_type=triton_dtype(spec["dtype"]),
                         dims=row_dims(spec["shape"]))
    for spec in manifest["outputs"]:
        config.output.add(name=spec["name"], data_type=triton_dtype(spec["dtype"]),
                          dims=row_dims(spec["shape"]))
    add_dynamic_batching(config, max_queue_delay_us)
    config.instance_group.add(count=instances, kind=(
        model_config_pb2.ModelInstanceGroup.KIND_GPU if kind == "gpu"
        else model_config_pb2.ModelInstanceGroup.KIND_CPU))
    # Warm-up runs one request before the model is marked ready, so the first user does not pay
    # for ONNX Runtime's (or TensorRT's) lazy initialisation. zero_data, not random_data: random
    # int64 token ids would index outside the embedding table and fail the load.
    warmup = config.model_warmup.add(name="batch1", batch_size=1, count=1)
    length = min(WARMUP_SEQUENCE_LENGTH, int(manifest.get("max_length", WARMUP_SEQUENCE_LENGTH)))
    for spec in manifest["inputs"]:
        warmup.inputs[spec["name"]].CopyFrom(model_config_pb2.ModelWarmup.Input(
            data_type=triton_dtype(spec["dtype"]), dims=[length], zero_data=True))
    if tensorrt and kind == "gpu":
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(
            name="tensorrt")
        accelerator.parameters["precision_mode"] = "FP16"
        accelerator.parameters["max_workspace_size_bytes"] = str(TENSORRT_WORKSPACE_BYTES)
    return config


def add_dynamic_batching(config: model_config_pb2.ModelConfig, max_queue_delay_us: int) -> None:
    """Batch requests that arrive within ``max_queue_delay_us``, preferring powers of two."""
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    config.dynamic_batching.preferred_batch_size.extend(
        _preferred_batch_sizes(config.max_batch_size))


def triton_dtype(dtype: str) -> int:
    """Triton's data type for a manifest dtype (``"int64"`` -> ``TYPE_INT64``)."""
    return _DTYPES[dtype][1]


def _copy_model(onnx_file: Path, data_files: list[str], folder: Path) -> list[str]:
    """Copy the ONNX file and its external-data files into ``folder/1/``; returns their paths
    relative to ``folder``."""
    version = folder / VERSION
    version.mkdir()
    shutil.copy2(onnx_file, version / ONNX_MODEL)
    for location in data_files:
        (version / location).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(onnx_file.parent / location, version / location)
    return [f"{VERSION}/{ONNX_MODEL}", *(f"{VERSION}/{loc}" for loc in data_files)]


def parse_triton_config(path: Path) -> model_config_pb2.ModelConfig:
    """Read a ``config.pbtxt`` into Triton's ``ModelConfig`` message.

    Raises:
        TritonExportError: the file is missing or is not a valid ModelConfig (unknown fields too).
    """
    if not path.is_file():
        raise TritonExportError(f"Triton config {path} does not exist")
    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise TritonExportError(f"{path} is not a valid Triton model config: {exc}") from None


def check_settings(model_name: str, max_batch_size: int, max_queue_delay_us: int,
                   instances: int, kind: str) -> None:
    """Refuse a model name that is not a plain folder name and settings out of range.

    Raises:
        TritonExportError: naming the setting and the range it must be in.
    """
    if not model_name or model_name in {".", ".."} or "/" in model_name or "\\" in model_name:
        raise TritonExportError(f"model_name {model_name!r} must be a plain folder name")
    if max_batch_size < 1:
        raise TritonExportError(f"max_batch_size={max_batch_size}: must be >= 1")
    if max_queue_delay_us < 0:
        raise TritonExportError(f"max_queue_delay_us={max_queue_delay_us}: must be >= 0")
    if instances < 1:
        raise TritonExportError(f"instances={instances}: must be >= 1")
    if kind not in ("cpu", "gpu"):
        raise TritonExportError(f"kind={kind!r}: must be 'cpu' or 'gpu'")


def _check_backend(backend: str, kind: str, tensorrt: bool) -> None:
    if backend not in MODEL_BACKENDS:
        raise TritonExportError(f"model backend {backend!r}: must be one of {list(MODEL_BACKENDS)}")
    if backend == "python" and tensorrt and kind == "gpu":
        raise TritonExportError("the TensorRT accelerator is an option of Triton's ONNX Runtime "
                                "backend; drop it or use the onnxruntime model backend")


def _check_graph(model: onnx.ModelProto, manifest: Mapping[str, Any], onnx_file: Path) -> None:
    for key in ("inputs", "outputs", "labels"):
        if key not in manifest:
            raise TritonExportError(f"manifest has no {key!r}; is it a kiln model manifest?")
    num_labels = len(manifest["labels"])
    initializers = {t.name for t in model.graph.initializer}
    graph_inputs = {v.name: v for v in model.graph.input if v.name not in initializers}
    graph_outputs = {v.name: v for v in model.graph.output}
    for role, specs, found in (("input", manifest["inputs"], graph_inputs),
                               ("output", manifest["outputs"], graph_outputs)):
        for spec in specs:
            name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
            if dtype not in _DTYPES:
                raise TritonExportError(f"manifest {role} {name!r} has dtype {dtype!r}; "
                                        f"Triton export supports {sorted(_DTYPES)}")
            if name not in found:
                raise TritonExportError(
                    f"{onnx_file}: the manifest promises {role} tensor {name!r} but the ONNX "
                    f"graph's {role}s are {sorted(found)}; re-export the model")
            tensor_type = found[name].type.tensor_type
            if tensor_type.elem_type != _DTYPES[dtype][0]:
                actual = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
                raise TritonExportError(f"{onnx_file}: {role} tensor {name!r} is {actual} in "
                                        f"the ONNX graph but {dtype} in the manifest")
            if tensor_type.HasField("shape") and len(tensor_type.shape.dim) != len(shape):
                raise TritonExportError(
                    f"{onnx_file}: {role} tensor {name!r} has rank {len(tensor_type.shape.dim)} "
                    f"in the ONNX graph but the manifest's shape is {shape}")
    for spec in manifest["outputs"]:
        if list(spec["shape"][1:]) != [num_labels]:
            raise TritonExportError(f"manifest output {spec['name']!r} has shape {spec['shape']} "
                                    f"but there are {num_labels} labels")
    unknown = sorted(set(graph_inputs) - {spec["name"] for spec in manifest["inputs"]})
    if unknown:
        raise TritonExportError(f"{onnx_file}: the ONNX graph needs inputs {unknown} that the "
                                f"manifest does not describe; re-export the model")


def row_dims(shape: Sequence[Any]) -> list[int]:
    """A manifest shape as Triton's per-row ``dims``."""
    # The batch axis is implicit in Triton when max_batch_size > 0; named axes are dynamic (-1).
    return [d if isinstance(d, int) else -1 for d in shape[1:]]


def _preferred_batch_sizes(max_batch_size: int) -> list[int]:
    return [1 << p for p in range(2, max_batch_size.bit_length()) if 1 << p <= max_batch_size]


def _external_data_files(model: onnx.ModelProto, onnx_file: Path) -> list[str]:
    """Relative paths of the external-data files the graph's tensors point to."""
    locations = sorted({ExternalDataInfo(t).location for t in _all_tensors(model.graph)
                        if uses_external_data(t)})
    for location in locations:
        if Path(location).is_absolute() or ".." in Path(location).parts:
            raise TritonExportError(f"{onnx_file} keeps tensors in {location!r}; external data "
                                    "must sit next to the model (a relative path inside its folder)")
        if not (onnx_file.parent / location).is_file():
            raise TritonExportError(f"{onnx_file} keeps tensors in {location!r}, which is missing "
                                    f"from {onnx_file.parent}")
    return locations


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _all_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _all_tensors(subgraph)
