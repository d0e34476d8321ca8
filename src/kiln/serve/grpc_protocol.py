"""The Open Inference Protocol's gRPC messages, read into the core's terms and written back.

A ModelInferRequest is checked by the same rules as a REST request (those of `tensors.py`), before
it joins a batch: names, datatypes, shapes against the values, UTF-8, token ids within the
vocabulary. Only the wire differs: values arrive in a tensor's ``contents`` field of its datatype,
or all inputs' in ``raw_input_contents`` (little-endian values; each BYTES element a 4-byte
little-endian length and its bytes), and the answer uses the same form as the request (raw in, raw
out, as Triton answers). Each refusal is a `ProtocolError` (400, so INVALID_ARGUMENT) naming the
input.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
from google.protobuf import json_format

from kiln.serve.core import InferResult
from kiln.serve.proto import grpc_service_pb2 as pb
from kiln.serve.tensors import (
    InferRequest,
    ProtocolError,
    decode_bytes,
    encode_bytes,
    input_shape,
    input_specs,
    input_texts,
    output_tensor,
    parameters_of,
    request_timeout_s,
    requested_outputs,
    short_repr,
    token_rows,
)

# the datatypes each input takes, and the field of InferTensorContents that holds each datatype
INPUT_DTYPES = {"text": ("BYTES",), "input_ids": ("INT64", "INT32"),
                "attention_mask": ("INT64", "INT32")}
CONTENTS = {"BYTES": "bytes_contents", "INT64": "int64_contents", "INT32": "int_contents"}
RAW_INTS: dict[str, np.dtype[Any]] = {"INT64": np.dtype("<i8"), "INT32": np.dtype("<i4")}

InputTensor = pb.ModelInferRequest.InferInputTensor


def parse_model_infer(request: pb.ModelInferRequest, max_length: int, *,
                      vocabulary: int | None = None, classes: int | None = None,
                      deadline_s: float | None = None) -> InferRequest:
    """Check a ModelInferRequest and read it as the core's `InferRequest`.

    Inputs, outputs, ``classification`` and ``parameters.timeout`` (microseconds; 0: the
    server's) follow `protocol.parse_infer_request`; token ids may also be INT32. ``deadline_s``
    (the gRPC deadline's time left, None: none) caps the timeout: past it nobody waits.

    Raises:
        ProtocolError: the first rule the request breaks, naming the input (and element).
    """
    if not request.inputs:
        raise ProtocolError("ModelInferRequest has no inputs; send 'text' (BYTES) or "
                            "'input_ids' and 'attention_mask' (INT64)")
    input_specs([{"name": tensor.name} for tensor in request.inputs])  # known, once, one set
    raw = _raw_contents(request)
    tensors = {tensor.name: _decode_input(tensor, None if raw is None else raw[i])
               for i, tensor in enumerate(request.inputs)}
    texts, rows = tensors.get("text"), None
    if texts is None:
        rows = token_rows(tensors["input_ids"], tensors["attention_mask"], max_length, vocabulary)
    outputs = requested_outputs(
        [{"name": o.name, "parameters": _values(o.parameters)} for o in request.outputs],
        False, classes)
    params = parameters_of({"parameters": _values(request.parameters)}, "request")
    timeout_s = request_timeout_s(params)
    if deadline_s is not None:  # (not 0: a timeout of 0 is the server's)
        timeout_s = max(1e-3, min(deadline_s, timeout_s or math.inf))
    return InferRequest(id=request.id or None, texts=texts, input_ids=rows,
                        outputs=outputs.names, binary_outputs=set(), timeout_s=timeout_s,
                        classification=outputs.classification,
                        column=any(t.name == "text" and len(t.shape) == 2
                                   for t in request.inputs))


def _values(parameters: Any) -> dict[str, Any]:
    """A map of InferParameter as plain values (a parameter with no value set is left out)."""
    values = {}
    for key, parameter in parameters.items():
        which = parameter.WhichOneof("parameter_choice")
        if which is not None:
            values[key] = getattr(parameter, which)
    return values


def _raw_contents(request: pb.ModelInferRequest) -> list[bytes] | None:
    """Each input's raw bytes, in input order (None: the inputs carry typed ``contents``)."""
    raw = request.raw_input_contents
    if not raw:
        return None
    if len(raw) != len(request.inputs):
        raise ProtocolError(f"raw_input_contents has {len(raw)} entries for "
                            f"{len(request.inputs)} inputs; send one per input, in input order")
    for tensor in request.inputs:
        if tensor.HasField("contents"):
            raise ProtocolError(f"input '{tensor.name}' has contents, but the request uses "
                                "raw_input_contents; send every input one way")
    return list(raw)


def _decode_input(tensor: InputTensor, raw: bytes | None) -> Any:
    """An input's values, checked: a list of texts (BYTES) or an int64 array of its shape."""
    name, dtype = tensor.name, tensor.datatype
    if dtype not in INPUT_DTYPES[name]:
        raise ProtocolError(f"input '{name}' must have datatype {' or '.join(INPUT_DTYPES[name])}"
                            f", got {short_repr(dtype)}")
    parameters_of({"parameters": _values(tensor.parameters)}, f"input '{name}'")  # shared memory
    shape = input_shape(name, list(tensor.shape))
    values = _typed_values(tensor) if raw is None else _raw_values(name, dtype, raw)
    count = math.prod(shape)
    if len(values) != count:
        raise ProtocolError(f"input '{name}': shape {shape} needs {count} values, got "
                            f"{len(values)}")
    if dtype == "BYTES":
        return input_texts(name, values)
    return np.asarray(values, dtype=np.int64).reshape(shape)


def _typed_values(tensor: InputTensor) -> Any:
    """The values in the tensor's ``contents`` field of its datatype (texts decoded)."""
    name, field = tensor.name, CONTENTS[tensor.datatype]
    for descriptor, _ in tensor.contents.ListFields():
        if descriptor.name != field:
            raise ProtocolError(f"input '{name}' is {tensor.datatype}: send its values in "
                                f"contents.{field}, not contents.{descriptor.name}")
    values = getattr(tensor.contents, field)
    if tensor.datatype != "BYTES":
        return values
    texts = []
    for i, element in enumerate(values):
        try:
            texts.append(element.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"input '{name}': element {i} is not valid UTF-8 ({exc.reason} "
                                f"at byte {exc.start}); the model reads text") from None
    return texts


def _raw_values(name: str, dtype: str, raw: bytes) -> Any:
    """The values of an input's raw_input_contents entry (texts decoded)."""
    if dtype == "BYTES":
        return decode_bytes(name, raw)
    item = RAW_INTS[dtype]
    if len(raw) % item.itemsize:
        raise ProtocolError(f"input '{name}': its raw_input_contents entry has {len(raw)} bytes, "
                            f"not a whole number of {item.itemsize}-byte {dtype} values")
    return np.frombuffer(raw, dtype=item)


def build_model_infer_response(result: InferResult, request: InferRequest, raw: bool,
                               label_names: list[str]) -> pb.ModelInferResponse:
    """The ModelInferResponse of ``result``: the requested outputs, in ``raw_output_contents``
    when ``raw`` (the request sent raw inputs), else in each tensor's typed ``contents``.

    Plain Python lists in, no numpy: this runs on the event loop (see core.infer_rows).
    """
    response = pb.ModelInferResponse(model_name=result.model, model_version=result.version,
                                     id=request.id or "")
    for name in request.outputs:
        dtype, shape, flat = output_tensor(name, request, result.logits,
                                           result.probabilities, result.labels, label_names)
        tensor = response.outputs.add(name=name, datatype=dtype, shape=shape)
        if raw:
            response.raw_output_contents.append(
                encode_bytes(flat) if dtype == "BYTES" else struct.pack(f"<{len(flat)}f", *flat))
        elif dtype == "BYTES":
            tensor.contents.bytes_contents.extend(text.encode() for text in flat)
        else:
            tensor.contents.fp32_contents.extend(flat)
    return response


def server_metadata_response(metadata: dict[str, Any],
                             extensions: tuple[str, ...]) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name=metadata["name"], version=metadata["version"],
                                     extensions=extensions)


def model_metadata_response(metadata: dict[str, Any]) -> pb.ModelMetadataResponse:
    """The core's model metadata as gRPC's (which has no ``parameters``)."""
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=metadata["name"], versions=metadata["versions"], platform=metadata["platform"],
        inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                for t in metadata["inputs"]],
        outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                 for t in metadata["outputs"]])


def model_config_response(config: dict[str, Any]) -> pb.ModelConfigResponse:
    """The core's model configuration, in Triton's JSON form, as gRPC's ModelConfig.

    Raises:
        json_format.ParseError: the core gives a field that grpc_service.proto does not declare
            (add it there, with Triton's number).
    """
    return pb.ModelConfigResponse(config=json_format.ParseDict(config, pb.ModelConfig()))


def repository_index_response(index: list[dict[str, str]],
                              ready_only: bool) -> pb.RepositoryIndexResponse:
    entry = pb.RepositoryIndexResponse.ModelIndex
    return pb.RepositoryIndexResponse(models=[
        entry(**model) for model in index if not ready_only or model["state"] == "READY"])

