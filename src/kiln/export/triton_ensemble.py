"""A Triton model repository that takes text, as `kiln serve` does: an ensemble of three steps.

``out_dir/`` gets four models; a client sends ``text`` to ``<name>`` and gets ``logits``,
``probabilities`` and ``label``, the tensors (names, types, per-row dims) of `kiln serve`'s model
configuration, so one request works on both servers:

- ``<name>_tokenizer``: Python backend (``1/model.py``, ``tokenizer.json``): text -> ``input_ids``,
  ``attention_mask``, truncated to the manifest's max_length, padded per batch.
- ``<name>_model``: the ONNX classifier (triton.py), on the ONNX Runtime backend or the Python one.
- ``<name>_postprocess``: Python backend: ``logits`` -> softmax ``probabilities`` and ``label``.
- ``<name>``: platform ``ensemble``; ``ensemble_scheduling`` wires the steps.

Each config is Triton's own ``ModelConfig`` message; each folder has a ``kiln.json`` with the
checksums of its files. The steps' folders are written before the ensemble's, each atomically.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from tritonclient.grpc import model_config_pb2

from kiln.export.triton import (
    VERSION,
    ModelBackend,
    TritonExportError,
    add_dynamic_batching,
    check_settings,
    copy_python_model,
    finish_model_folder,
    row_dims,
    triton_dtype,
    write_triton_repository,
)
from kiln.files import replacing_dir
from kiln.models.package import TOKENIZER

TEXT, LOGITS, PROBABILITIES, LABEL = "text", "logits", "probabilities", "label"
TOKEN_INPUTS = ("input_ids", "attention_mask")  # what the tokenizer step gives, by name

_CPU = model_config_pb2.ModelInstanceGroup.KIND_CPU
_FP32, _STRING = model_config_pb2.TYPE_FP32, model_config_pb2.TYPE_STRING


def step_names(name: str) -> tuple[str, str, str]:
    """The ensemble's steps: (tokenizer, model, postprocess) model names."""
    return f"{name}_tokenizer", f"{name}_model", f"{name}_postprocess"


def write_text_ensemble(
    onnx_file: Path, manifest: Mapping[str, Any], out_dir: Path, name: str, *,
    tokenizer_file: Path, model_backend: ModelBackend = "onnxruntime", max_batch_size: int = 64,
    max_queue_delay_us: int = 2000, instances: int = 1, kind: Literal["cpu", "gpu"] = "cpu",
    tensorrt: bool = False,
) -> Path:
    """Write the ensemble ``out_dir/<name>/`` and its three steps (see the module's docstring).

    Args:
        onnx_file, manifest, max_batch_size, max_queue_delay_us, instances, kind, tensorrt: as
            for write_triton_repository (the model step); the Python steps always run on the CPU.
        out_dir: the model repository (``tritonserver --model-repository``).
        name: the model name clients send text to.
        tokenizer_file: the model's tokenizers JSON file, copied into the tokenizer step.
        model_backend: where the model step runs: ``"onnxruntime"`` or ``"python"``.

    Returns:
        The ensemble's folder ``out_dir/<name>``.

    Raises:
        TritonExportError: bad settings, a missing file, or a manifest/graph that does not fit
            (inputs other than input_ids/attention_mask, not one output, no labels).
    """
    check_settings(name, max_batch_size, max_queue_delay_us, instances, kind)
    _check_text_manifest(manifest)
    if not tokenizer_file.is_file():
        raise TritonExportError(f"tokenizer {tokenizer_file} does not exist")
    tokenizer, model, postprocess = step_names(name)
    write_triton_repository(
        onnx_file, manifest, out_dir, model, max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us, instances=instances, kind=kind, tensorrt=tensorrt,
        backend=model_backend)
    with replacing_dir(out_dir / tokenizer) as tmp:
        tokenizer_name = str(manifest.get("tokenizer", TOKENIZER))
        shutil.copy2(tokenizer_file, tmp / tokenizer_name)
        finish_model_folder(
            tmp, tokenizer_config(manifest, tokenizer, max_batch_size, max_queue_delay_us,
                                  instances),
            manifest, [tokenizer_name, copy_python_model("tokenizer", tmp)])
    with replacing_dir(out_dir / postprocess) as tmp:
        finish_model_folder(tmp, postprocess_config(manifest, postprocess, max_batch_size,
                                                    instances),
                            manifest, [copy_python_model("postprocess", tmp)])
    with replacing_dir(out_dir / name) as tmp:
        (tmp / VERSION).mkdir()  # Triton wants a version folder, even an empty one
        finish_model_folder(tmp, ensemble_config(manifest, name, max_batch_size), manifest, [])
    return out_dir / name


def tokenizer_config(manifest: Mapping[str, Any], name: str, max_batch_size: int,
                     max_queue_delay_us: int, instances: int) -> model_config_pb2.ModelConfig:
    """The tokenizer step: ``text`` [1] -> the model's token inputs [-1], batched dynamically so
    that a batch is tokenised in one call and padded once."""
    config = model_config_pb2.ModelConfig(name=name, backend="python",
                                          max_batch_size=max_batch_size)
    config.input.add(name=TEXT, data_type=_STRING, dims=[1])
    for spec in manifest["inputs"]:
        config.output.add(name=spec["name"], data_type=triton_dtype(spec["dtype"]), dims=[-1])
    add_dynamic_batching(config, max_queue_delay_us)
    config.instance_group.add(count=instances, kind=_CPU)
    kwargs = manifest.get("model", {}).get("kwargs", {})
    _parameters(config, tokenizer=str(manifest.get("tokenizer", TOKENIZER)),
                max_length=str(int(manifest["max_length"])),
                pad_id=str(int(kwargs.get("pad_id", 0))))
    return config


def postprocess_config(manifest: Mapping[str, Any], name: str, max_batch_size: int,
                       instances: int) -> model_config_pb2.ModelConfig:
    """The postprocess step: ``logits`` -> ``probabilities`` and ``label``. No dynamic batching:
    a softmax per request costs microseconds, waiting for others would only add latency."""
    n = len(manifest["labels"])
    config = model_config_pb2.ModelConfig(name=name, backend="python",
                                          max_batch_size=max_batch_size)
    config.input.add(name=LOGITS, data_type=_FP32, dims=[n])
    config.output.add(name=PROBABILITIES, data_type=_FP32, dims=[n])
    config.output.add(name=LABEL, data_type=_STRING, dims=[1])
    config.instance_group.add(count=instances, kind=_CPU)
    _parameters(config, labels=json.dumps(list(manifest["labels"])))
    return config


def ensemble_config(manifest: Mapping[str, Any], name: str,
                    max_batch_size: int) -> model_config_pb2.ModelConfig:
    """The model clients call: `kiln serve`'s text input and outputs, the steps wired by name;
    ``parameters`` carry the label names and max_length, as `kiln serve`'s config does."""
    tokenizer, model, postprocess = step_names(name)
    n, output = len(manifest["labels"]), manifest["outputs"][0]
    config = model_config_pb2.ModelConfig(name=name, platform="ensemble",
                                          max_batch_size=max_batch_size)
    config.input.add(name=TEXT, data_type=_STRING, dims=[1])
    config.output.add(name=LOGITS, data_type=_FP32, dims=row_dims(output["shape"]))
    config.output.add(name=PROBABILITIES, data_type=_FP32, dims=[n])
    config.output.add(name=LABEL, data_type=_STRING, dims=[1])
    tokens = {spec["name"]: spec["name"] for spec in manifest["inputs"]}
    steps = config.ensemble_scheduling.step
    steps.add(model_name=tokenizer, model_version=-1, input_map={TEXT: TEXT}, output_map=tokens)
    steps.add(model_name=model, model_version=-1, input_map=tokens,
              output_map={output["name"]: LOGITS})
    steps.add(model_name=postprocess, model_version=-1, input_map={LOGITS: LOGITS},
              output_map={PROBABILITIES: PROBABILITIES, LABEL: LABEL})
    _parameters(config, labels=",".join(manifest["labels"]),
                max_length=str(int(manifest["max_length"])))
    return config


def _parameters(config: model_config_pb2.ModelConfig, **values: str) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = value


def _check_text_manifest(manifest: Mapping[str, Any]) -> None:
    for key in ("inputs", "outputs", "labels", "max_length"):
        if key not in manifest:
            raise TritonExportError(f"manifest has no {key!r}; is it a kiln model manifest?")
    names = sorted(spec["name"] for spec in manifest["inputs"])
    if names != sorted(TOKEN_INPUTS):
        raise TritonExportError(f"the model takes {names}; the text ensemble's tokenizer step "
                                f"gives {list(TOKEN_INPUTS)}")
    if len(manifest["outputs"]) != 1:
        outputs = [spec["name"] for spec in manifest["outputs"]]
        raise TritonExportError(f"the model gives {outputs}; the text ensemble needs one output, "
                                "the logits")
    if manifest["outputs"][0]["dtype"] != "float32":
        raise TritonExportError(f"the model's logits are {manifest['outputs'][0]['dtype']}; the "
                                "postprocess step takes float32")
