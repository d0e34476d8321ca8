"""The Triton model repository: a config Triton's schema accepts, and a model that loads and runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2

from kiln.errors import KilnError
from kiln.export.triton import parse_triton_config, write_triton_repository
from kiln.models.package import verify_files

VOCAB, HIDDEN, LABELS = 50, 8, ["negative", "neutral", "positive"]


def tiny_onnx(output_name: str = "logits") -> onnx.ModelProto:
    """Embedding lookup, masked mean over the sequence, linear head: [N, S] int64 -> [N, 3]."""
    rng = np.random.default_rng(0)
    # numpy_helper stores raw_data, which is what save_as_external_data moves out of the file.
    embedding = numpy_helper.from_array(
        rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32), "embedding")
    head = numpy_helper.from_array(
        rng.standard_normal((HIDDEN, len(LABELS))).astype(np.float32), "head")
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["embedded"]),  # [N, S, H]
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        # Einsum, not Unsqueeze: ONNX Runtime cannot shape-infer from an `axes` input that
        # lives in external data, and the external-data test moves every initializer out.
        helper.make_node("Einsum", ["embedded", "mask"], ["masked"], equation="nsh,ns->nsh"),
        helper.make_node("ReduceMean", ["masked"], ["pooled"], axes=[1], keepdims=0),  # [N, H]
        helper.make_node("MatMul", ["pooled", "head"], [output_name]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
         for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", len(LABELS)])],
        initializer=[embedding, head])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def manifest() -> dict[str, Any]:
    return {
        "format": "kiln-model", "tokenizer": "tokenizer.json", "max_length": 128, "labels": LABELS,
        "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]}
                   for n in ("input_ids", "attention_mask")],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", len(LABELS)]}],
        "files": {"model.safetensors": {"sha256": "0" * 64, "bytes": 1}},
    }


def run_logits(path: Path, batch: int, length: int) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(batch + length).integers(0, VOCAB, (batch, length), np.int64)
    (logits,) = session.run(["logits"], {"input_ids": ids,
                                         "attention_mask": np.ones_like(ids)})
    return np.asarray(logits)


@pytest.fixture()
def onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "export" / "model.onnx"
    path.parent.mkdir()
    onnx.save_model(tiny_onnx(), str(path))
    assert run_logits(path, 2, 5).shape == (2, 3)
    return path


@pytest.fixture()
def tokenizer_file(tmp_path: Path) -> Path:
    path = tmp_path / "tok.json"
    path.write_text('{"model": {"type": "WordLevel"}}', encoding="utf-8")
    return path


def test_config_parses_with_the_settings_asked_for(
    onnx_file: Path, tokenizer_file: Path, tmp_path: Path,
) -> None:
    folder = write_triton_repository(onnx_file, manifest(), tmp_path / "repo", "sentiment",
                                     max_batch_size=64, max_queue_delay_us=500, instances=2,
                                     tokenizer_file=tokenizer_file)
    assert folder == tmp_path / "repo" / "sentiment"
    config = parse_triton_config(folder / "config.pbtxt")
    assert config.name == "sentiment" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 64
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("input_ids", model_config_pb2.TYPE_INT64, [-1]),
        ("attention_mask", model_config_pb2.TYPE_INT64, [-1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("logits", model_config_pb2.TYPE_FP32, [3])]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16, 32, 64]
    (group,) = config.instance_group
    assert group.count == 2 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    (warmup,) = config.model_warmup
    assert warmup.batch_size == 1 and set(warmup.inputs) == {"input_ids", "attention_mask"}
    for sample in warmup.inputs.values():
        assert sample.data_type == model_config_pb2.TYPE_INT64
        assert list(sample.dims) == [16] and sample.zero_data
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator

    assert (folder / "1" / "model.onnx").is_file()
    assert (folder / "tokenizer.json").read_bytes() == tokenizer_file.read_bytes()
    written = json.loads((folder / "kiln.json").read_text(encoding="utf-8"))
    assert written["labels"] == LABELS
    assert set(written["files"]) == {"1/model.onnx", "tokenizer.json"}
    verify_files(folder, written)


@pytest.mark.parametrize(("batch", "length"), [(1, 1), (1, 128), (64, 1), (64, 128)])
def test_copied_model_runs_at_batch_and_length_extremes(
    onnx_file: Path, tmp_path: Path, batch: int, length: int,
) -> None:
    folder = write_triton_repository(onnx_file, manifest(), tmp_path / "repo", "m")
    copied = run_logits(folder / "1" / "model.onnx", batch, length)
    assert copied.shape == (batch, 3)
    np.testing.assert_array_equal(copied, run_logits(onnx_file, batch, length))


def test_preferred_batch_sizes_are_clipped_to_max_batch_size(
    onnx_file: Path, tmp_path: Path,
) -> None:
    folder = write_triton_repository(onnx_file, manifest(), tmp_path / "repo", "m",
                                     max_batch_size=24)
    config = parse_triton_config(folder / "config.pbtxt")
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16]


def test_output_name_mismatch_names_the_tensor(tmp_path: Path) -> None:
    path = tmp_path / "renamed.onnx"
    onnx.save_model(tiny_onnx(output_name="scores"), str(path))
    with pytest.raises(KilnError, match="'logits'.*'scores'"):
        write_triton_repository(path, manifest(), tmp_path / "repo", "m")
    assert not (tmp_path / "repo" / "m").exists()


def test_dtype_mismatch_is_refused(onnx_file: Path, tmp_path: Path) -> None:
    body = manifest()
    body["inputs"][0]["dtype"] = "int32"
    with pytest.raises(KilnError, match="'input_ids' is INT64 in the ONNX graph but int32"):
        write_triton_repository(onnx_file, body, tmp_path / "repo", "m")


def test_writing_twice_replaces_the_folder(
    onnx_file: Path, tokenizer_file: Path, tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    write_triton_repository(onnx_file, manifest(), repo, "m", tokenizer_file=tokenizer_file)
    folder = write_triton_repository(onnx_file, manifest(), repo, "m", max_batch_size=8)
    assert parse_triton_config(folder / "config.pbtxt").max_batch_size == 8
    assert not (folder / "tokenizer.json").exists()  # nothing left over from the first write
    assert sorted(p.name for p in repo.iterdir()) == ["m"]  # no temporary folders left


def test_tensorrt_accelerator_only_on_gpu(onnx_file: Path, tmp_path: Path) -> None:
    cpu = write_triton_repository(onnx_file, manifest(), tmp_path / "cpu", "m",
                                  kind="cpu", tensorrt=True)
    config = parse_triton_config(cpu / "config.pbtxt")
    assert not config.HasField("optimization")

    gpu = write_triton_repository(onnx_file, manifest(), tmp_path / "gpu", "m",
                                  kind="gpu", tensorrt=True)
    config = parse_triton_config(gpu / "config.pbtxt")
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"
    assert int(accelerator.parameters["max_workspace_size_bytes"]) > 0


def test_external_data_is_copied_and_loads(tmp_path: Path) -> None:
    path = tmp_path / "export" / "model.onnx"
    path.parent.mkdir()
    onnx.save_model(tiny_onnx(), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    assert path.with_name("model.onnx.data").stat().st_size > 0
    folder = write_triton_repository(path, manifest(), tmp_path / "repo", "m")
    copied = folder / "1" / "model.onnx.data"
    assert copied.read_bytes() == path.with_name("model.onnx.data").read_bytes()
    onnx.load(str(folder / "1" / "model.onnx"))  # resolves the external data next to it
    np.testing.assert_array_equal(run_logits(folder / "1" / "model.onnx", 4, 9),
                                  run_logits(path, 4, 9))


def test_missing_external_data_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save_model(tiny_onnx(), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(KilnError, match="weights.bin"):
        write_triton_repository(path, manifest(), tmp_path / "repo", "m")


def test_bad_settings_are_refused(onnx_file: Path, tmp_path: Path) -> None:
    with pytest.raises(KilnError, match="max_batch_size=0"):
        write_triton_repository(onnx_file, manifest(), tmp_path / "repo", "m", max_batch_size=0)
    with pytest.raises(KilnError, match="plain folder name"):
        write_triton_repository(onnx_file, manifest(), tmp_path / "repo", "a/b")


def test_parse_rejects_unknown_fields(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "m"\nmax_batch_sise: 4\n', encoding="utf-8")
    with pytest.raises(KilnError, match="max_batch_sise"):
        parse_triton_config(path)
