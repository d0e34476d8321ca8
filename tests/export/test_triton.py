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


# --- the text ensemble: tokenizer -> model -> postprocess ----------------------------------------

TEXTS = ["w1 w2 w3", "w5", "w7 unknown w9 w2", " ".join(f"w{i % 40}" for i in range(30))]
MAX_LENGTH = 8  # the last text is longer: truncation is exercised


def text_manifest() -> dict[str, Any]:
    return {**manifest(), "max_length": MAX_LENGTH, "model": {"kwargs": {"pad_id": 0}}}


@pytest.fixture()
def word_tokenizer(tmp_path: Path) -> Path:
    """A real tokenizers file: words w0..w45 plus [PAD] [UNK] [CLS] [SEP], BERT's template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3,
             **{f"w{i}": i + 4 for i in range(VOCAB - 4)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def write_ensemble(onnx_file: Path, tokenizer: Path, repo: Path, **settings: Any) -> Path:
    from kiln.export import write_text_ensemble

    return write_text_ensemble(onnx_file, text_manifest(), repo, "clf", tokenizer_file=tokenizer,
                               **settings)


def configs(repo: Path) -> dict[str, model_config_pb2.ModelConfig]:
    return {folder.name: parse_triton_config(folder / "config.pbtxt")
            for folder in sorted(repo.iterdir())}


def tensors(specs: Any) -> list[tuple[str, str, list[int]]]:
    return [(s.name, model_config_pb2.DataType.Name(s.data_type), list(s.dims)) for s in specs]


def test_ensemble_configs_parse_and_wire_every_tensor(
    onnx_file: Path, word_tokenizer: Path, tmp_path: Path,
) -> None:
    folder = write_ensemble(onnx_file, word_tokenizer, tmp_path / "repo", max_batch_size=32)
    assert folder == tmp_path / "repo" / "clf" and (folder / "1").is_dir()
    found = configs(tmp_path / "repo")
    assert sorted(found) == ["clf", "clf_model", "clf_postprocess", "clf_tokenizer"]
    ensemble = found["clf"]
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 32
    assert tensors(ensemble.input) == [("text", "TYPE_STRING", [1])]
    assert tensors(ensemble.output) == [("logits", "TYPE_FP32", [3]),
                                        ("probabilities", "TYPE_FP32", [3]),
                                        ("label", "TYPE_STRING", [1])]
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["clf_tokenizer", "clf_model", "clf_postprocess"]
    available = {"text"}  # what a step may read: the request's tensors and earlier steps' outputs
    for step in steps:
        model = found[step.model_name]
        assert model.max_batch_size == 32
        assert set(step.input_map) == {i.name for i in model.input}
        assert set(step.input_map.values()) <= available
        assert set(step.output_map) <= {o.name for o in model.output}
        available |= set(step.output_map.values())
    assert {o.name for o in ensemble.output} <= available
    assert found["clf_tokenizer"].backend == found["clf_postprocess"].backend == "python"
    assert found["clf_model"].platform == "onnxruntime_onnx"
    assert json.loads(found["clf_postprocess"].parameters["labels"].string_value) == LABELS


def test_ensemble_takes_and_gives_what_kiln_serve_does(
    onnx_file: Path, word_tokenizer: Path, tmp_path: Path,
) -> None:
    from types import SimpleNamespace

    from kiln.serve.core import model_config
    from kiln.serve.settings import ServeSettings

    folder = write_ensemble(onnx_file, word_tokenizer, tmp_path / "repo")
    ensemble = parse_triton_config(folder / "config.pbtxt")
    predictor = SimpleNamespace(label_names=LABELS, max_length=MAX_LENGTH,
                                backend=SimpleNamespace(name="onnxruntime"))
    served = model_config(SimpleNamespace(name="clf", predictor=predictor),
                          ServeSettings())
    as_served = [(t["name"], t["data_type"], t["dims"]) for t in served["input"]]
    assert tensors(ensemble.input)[0] in as_served
    assert tensors(ensemble.output) == [(t["name"], t["data_type"], t["dims"])
                                        for t in served["output"]]
    assert {k: v.string_value for k, v in ensemble.parameters.items()} == {
        k: v["string_value"] for k, v in served["parameters"].items()}


def test_python_model_backend_runs_the_same_onnx_file(
    onnx_file: Path, word_tokenizer: Path, tmp_path: Path,
) -> None:
    folder = write_ensemble(onnx_file, word_tokenizer, tmp_path / "repo", model_backend="python")
    model = folder.parent / "clf_model"
    config = parse_triton_config(model / "config.pbtxt")
    assert config.backend == "python" and not config.platform
    assert config.parameters["onnx_file"].string_value == "model.onnx"
    assert tensors(config.input) == [("input_ids", "TYPE_INT64", [-1]),
                                     ("attention_mask", "TYPE_INT64", [-1])]
    written = json.loads((model / "kiln.json").read_text(encoding="utf-8"))
    assert set(written["files"]) == {"1/model.onnx", "1/model.py"}
    verify_files(model, written)
    tokenizer = folder.parent / "clf_tokenizer"
    verify_files(tokenizer, json.loads((tokenizer / "kiln.json").read_text(encoding="utf-8")))
    assert (tokenizer / "tokenizer.json").read_bytes() == word_tokenizer.read_bytes()


def test_ensemble_refuses_what_it_cannot_wrap(
    onnx_file: Path, word_tokenizer: Path, tmp_path: Path,
) -> None:
    from kiln.export import write_text_ensemble

    with pytest.raises(KilnError, match="TensorRT"):
        write_ensemble(onnx_file, word_tokenizer, tmp_path / "repo", model_backend="python",
                       kind="gpu", tensorrt=True)
    body = text_manifest()
    body["outputs"].append({"name": "pooled", "dtype": "float32", "shape": ["batch", 3]})
    with pytest.raises(KilnError, match="needs one output"):
        write_text_ensemble(onnx_file, body, tmp_path / "repo", "clf",
                            tokenizer_file=word_tokenizer)
    with pytest.raises(KilnError, match="does not exist"):
        write_text_ensemble(onnx_file, text_manifest(), tmp_path / "repo", "clf",
                            tokenizer_file=tmp_path / "missing.json")
    assert not (tmp_path / "repo").exists()  # refused before anything was written


# --- the Python-backend steps, run under a stand-in for Triton's triton_python_backend_utils ---


class FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, np.asarray(array)

    def as_numpy(self) -> np.ndarray:
        return self.array


class FakeResponse:
    def __init__(self, output_tensors: list[FakeTensor], error: Any = None) -> None:
        self.outputs = {t.name: t.array for t in output_tensors}
        self.error = error


class FakeError:
    def __init__(self, message: str) -> None:
        self.message = message


def fake_pb_utils() -> Any:
    from types import SimpleNamespace

    numpy_types = {"TYPE_INT64": np.int64, "TYPE_INT32": np.int32, "TYPE_FP32": np.float32}
    return SimpleNamespace(
        Tensor=FakeTensor, InferenceResponse=FakeResponse, TritonError=FakeError,
        get_input_tensor_by_name=lambda request, name: request.get(name),
        triton_string_to_numpy=lambda name: numpy_types[name])


def load_step(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``folder/1/model.py`` initialised as Triton's Python backend would: its config as JSON."""
    import importlib.util

    from google.protobuf import json_format

    monkeypatch.setitem(__import__("sys").modules, "triton_python_backend_utils", fake_pb_utils())
    spec = importlib.util.spec_from_file_location(f"step_{folder.name}", folder / "1" / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = json_format.MessageToJson(parse_triton_config(folder / "config.pbtxt"),
                                       preserving_proto_field_name=True)
    model = module.TritonPythonModel()
    model.initialize({"model_config": config, "model_repository": str(folder),
                      "model_version": "1", "model_instance_kind": "CPU",
                      "model_instance_device_id": "0"})
    return model


def text_request(texts: list[str]) -> dict[str, FakeTensor]:
    return {"text": FakeTensor("text", np.array([[t.encode()] for t in texts], dtype=np.object_))}


def test_python_steps_give_the_predictors_answers(
    onnx_file: Path, word_tokenizer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tokenizers import Tokenizer

    from kiln.runtime import Predictor
    from kiln.runtime.backends import OrtBackend

    repo = write_ensemble(onnx_file, word_tokenizer, tmp_path / "repo",
                          model_backend="python").parent
    tokenizer, model, post = (load_step(repo / f"clf_{step}", monkeypatch)
                              for step in ("tokenizer", "model", "postprocess"))
    # two requests batched together, as Triton's dynamic batcher hands them over
    tokens = tokenizer.execute([text_request(TEXTS[:1]), text_request(TEXTS[1:])])
    logits = model.execute([{k: FakeTensor(k, v) for k, v in r.outputs.items()} for r in tokens])
    answers = post.execute([{"logits": FakeTensor("logits", r.outputs["logits"])} for r in logits])

    predictor = Predictor(backend=OrtBackend(onnx_file, threads=1),
                          tokenizer=Tokenizer.from_file(str(word_tokenizer)),
                          label_names=LABELS, max_length=MAX_LENGTH)
    ids, mask = predictor.encode(TEXTS)
    assert ids.shape == (4, MAX_LENGTH)  # truncated, padded to the batch's longest
    np.testing.assert_array_equal(np.concatenate([r.outputs["input_ids"] for r in tokens]), ids)
    np.testing.assert_array_equal(np.concatenate([r.outputs["attention_mask"] for r in tokens]),
                                  mask)
    expected = predictor.predict(TEXTS)
    np.testing.assert_allclose(np.concatenate([r.outputs["logits"] for r in logits]),
                               expected.logits, atol=1e-6)
    np.testing.assert_allclose(np.concatenate([r.outputs["probabilities"] for r in answers]),
                               expected.probabilities, atol=1e-6)
    labels = np.concatenate([r.outputs["label"] for r in answers])
    assert labels.shape == (4, 1)
    assert [x.decode() for x in labels[:, 0]] == expected.labels


def test_python_model_step_runs_requests_of_other_lengths_apart(
    onnx_file: Path, word_tokenizer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = write_ensemble(onnx_file, word_tokenizer, tmp_path / "repo",
                          model_backend="python").parent
    model = load_step(repo / "clf_model", monkeypatch)
    rng = np.random.default_rng(0)
    feeds = [rng.integers(0, VOCAB, shape, np.int64) for shape in [(2, 5), (1, 9), (3, 5)]]
    requests = [{"input_ids": FakeTensor("input_ids", ids),
                 "attention_mask": FakeTensor("attention_mask", np.ones_like(ids))}
                for ids in feeds]
    responses = model.execute(requests)
    for ids, response in zip(feeds, responses, strict=True):
        np.testing.assert_allclose(response.outputs["logits"],
                                   run_logits_of(onnx_file, ids), atol=1e-6)


def run_logits_of(path: Path, ids: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    return np.asarray(logits)


def test_a_blank_or_broken_text_fails_its_request_alone(
    onnx_file: Path, word_tokenizer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = write_ensemble(onnx_file, word_tokenizer, tmp_path / "repo").parent
    tokenizer = load_step(repo / "clf_tokenizer", monkeypatch)
    broken = {"text": FakeTensor("text", np.array([[b"\xff\xfe"]], dtype=np.object_))}
    good, blank, bad = tokenizer.execute([text_request(["w1 w2"]), text_request(["w1", "  "]),
                                          broken])
    assert good.error is None and good.outputs["input_ids"].tolist() == [[2, 5, 6, 3]]
    assert "row 1 is blank" in blank.error.message and not blank.outputs
    assert "not UTF-8" in bad.error.message
