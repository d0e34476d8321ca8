"""`kiln export`: turn a trained run into verified inference artifacts in RUN/export/."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.config import load_config
from kiln.data import EncodedDataset, PadCollator, prepare_data, sorted_batches
from kiln.errors import RunDirError
from kiln.export.fallback import MixedPrecision, fall_back, rank_layers
from kiln.export.fusable import fusable_copy
from kiln.export.onnx_export import export_onnx, export_onnx_torchscript
from kiln.export.onnx_optimize import (
    DYNAMIC_OPS,
    STATIC_OPS,
    convert_fp16,
    optimize_for_ort,
    quantizable_nodes,
    quantize_dynamic_int8,
    quantize_static_int8,
)
from kiln.export.openvino_export import (
    convert_openvino,
    openvino_available,
    openvino_matmuls,
    quantize_openvino_int8,
)
from kiln.export.parity import EvalBatch, Parity, Tolerance, measure_parity, run_backend
from kiln.export.tensorrt_export import build_engine, tensorrt_available
from kiln.files import replace_dir, temp_dir
from kiln.models import MANIFEST, file_digest, load_model_dir, ort_optimizer_options, read_manifest
from kiln.runtime.backends import (
    OpenVinoBackend,
    OrtBackend,
    TensorRtBackend,
    TorchBackend,
    linear_layers,
)
from kiln.runtime.predictor import Backend

ARTIFACTS = ("torch-int8", "tf-savedmodel", "onnx-fp32", "onnx-opt", "onnx-int8-dynamic",
             "onnx-int8-static", "onnx-fp16", "openvino-fp32", "openvino-int8", "tensorrt-fp16")
# Artifacts built from the trained model in its own framework; the others come from its ONNX.
NATIVE = {"torch": ("torch-int8",), "keras": ("tf-savedmodel",)}
# Without benchmark numbers, the artifact expected to be fastest on a CPU comes first.
PREFERENCE = ("openvino-int8", "onnx-int8-dynamic", "onnx-int8-static", "onnx-opt", "onnx-fp32",
              "openvino-fp32", "torch-int8")
FILES = {"torch-int8": "model.safetensors", "tf-savedmodel": "saved_model",
         "onnx-fp32": "model.onnx", "onnx-opt": "model.opt.onnx",
         "onnx-int8-dynamic": "model.int8.onnx", "onnx-int8-static": "model.int8-static.onnx",
         "onnx-fp16": "model.fp16.onnx", "openvino-fp32": "model.ov.xml",
         "openvino-int8": "model.ov-int8.xml", "tensorrt-fp16": "model.trt.plan"}
FUSABLE_FILE = "model.fusable.onnx"  # intermediate: the fusable twin before ORT optimisation
PRECISION = {"torch-int8": "int8", "tf-savedmodel": "fp32", "onnx-fp32": "fp32", "onnx-opt": "fp32",
             "onnx-int8-dynamic": "int8", "onnx-int8-static": "int8", "onnx-fp16": "fp16",
             "openvino-fp32": "fp32", "openvino-int8": "int8", "tensorrt-fp16": "fp16"}


def backend_of(artifact: str) -> str:
    """The runtime that runs ``artifact``: torch, tensorflow, onnxruntime, openvino or tensorrt."""
    return {"torch": "torch", "tf": "tensorflow", "onnx": "onnxruntime",
            "openvino": "openvino", "tensorrt": "tensorrt"}[artifact.split("-")[0]]


def default_artifacts(framework: str = "torch") -> tuple[str, ...]:
    """Every artifact this installation can build from a ``framework`` run (OpenVINO needs the
    kiln[openvino] extra, TensorRT the `tensorrt` package and a CUDA GPU)."""
    foreign = {a for fw, names in NATIVE.items() if fw != framework for a in names}
    missing = {"openvino": not openvino_available(), "tensorrt": not tensorrt_available()}
    return tuple(a for a in ARTIFACTS if a not in foreign
                 and not missing.get(a.split("-")[0], False))


@dataclass(frozen=True)
class TrainedModel:
    """The trained model in its own framework, as export needs it."""

    reference: Backend  # the model itself: the parity reference
    reference_name: str  # torch-fp32, keras-fp32
    weights_file: str  # copied next to the artifacts, so that export/ stands alone
    write_onnx: Callable[[Path], object]  # fp32 ONNX with dynamic axes, checked against the model
    native: dict[str, Callable[[Path], Backend]]  # artifacts built from the model into a folder
    # the model's fusable twin as ONNX (see kiln.export.fusable); returns False when it has none
    write_fusable_onnx: Callable[[Path], bool] | None = None
    # native int8 artifacts: their quantised layers, and a build that keeps some of them in fp32
    mixed_precision: dict[str, MixedPrecision] = field(default_factory=dict)


def load_trained_model(model_dir: Path) -> TrainedModel:
    """The ``TrainedModel`` of a model folder, whichever framework trained it.

    Raises:
        RunDirError: a keras model without the kiln[keras] extra installed.
    """
    manifest = read_manifest(model_dir)
    if manifest.get("framework", "torch") == "keras":
        from kiln.keras import INSTALL_HINT, keras_available

        if not keras_available():
            raise RunDirError(f"{model_dir} holds a Keras model; exporting it needs TensorFlow: "
                              f"{INSTALL_HINT}")
        from kiln.keras.export import keras_trained_model

        trained: TrainedModel = keras_trained_model(model_dir, manifest)
        return trained
    loaded = load_model_dir(model_dir)
    max_length = int(loaded.manifest["max_length"])

    def write_fusable_onnx(path: Path) -> bool:
        twin = fusable_copy(loaded.model)
        if twin is not None:
            export_onnx_torchscript(twin, path, max_length)
        return twin is not None

    return TrainedModel(
        reference=TorchBackend(loaded.model), reference_name="torch-fp32",
        weights_file="model.safetensors",
        write_onnx=lambda path: export_onnx(loaded.model, path, max_length),
        native={"torch-int8": lambda _: TorchBackend(copy.deepcopy(loaded.model), int8=True)},
        write_fusable_onnx=write_fusable_onnx,
        mixed_precision={"torch-int8": MixedPrecision(
            linear_layers(loaded.model),
            lambda fp32: TorchBackend(copy.deepcopy(loaded.model), int8=True, fp32_layers=fp32))})


PARITY_FILE = "parity.json"
CALIBRATION_BATCH = 16  # texts per calibration batch
RANKING_TEXTS = 64  # calibration texts that rank int8 layers for the fp32 fallback


@dataclass(frozen=True)
class ExportReport:
    export_dir: Path
    reference_accuracy: float
    parity: list[Parity]
    recommended: str | None
    fused_operators: dict[str, int]

    @property
    def failed(self) -> list[Parity]:
        return [p for p in self.parity if not p.passed]


def export_run(
    run_dir: str | os.PathLike[str], *, tolerance: Tolerance = Tolerance(),
    artifacts: Sequence[str] | None = None, calibration_samples: int = 256,
    max_fp32_fraction: float = 0.25, progress: Callable[[str], None] = lambda message: None,
) -> ExportReport:
    """Export, quantise and verify every artifact of a trained run into ``run_dir/export``.

    An int8 artifact that fails parity is rebuilt with its most harmful layers in fp32, up to
    ``max_fp32_fraction`` of them (0: never; see kiln.export.fallback). The folder is built under
    a temporary name and renamed into place when complete. ``progress`` hears what takes long.

    Raises:
        RunDirError: the run has no trained model or config. ExportError: an export is broken.
    """
    run = Path(run_dir)
    if not (run / "config.yaml").exists() or not (run / "model" / MANIFEST).exists():
        raise RunDirError(f"{run} is not a finished kiln run (config.yaml and model/{MANIFEST} "
                          "are needed); train it first")
    manifest = read_manifest(run / "model")
    framework = manifest.get("framework", "torch")
    artifacts = list(artifacts or default_artifacts(framework))
    unknown = sorted(set(artifacts) - set(ARTIFACTS))
    if unknown:
        raise RunDirError(f"unknown artifacts {unknown}; choose from {list(ARTIFACTS)}")
    foreign = sorted(set(artifacts) - set(default_artifacts(framework)) - {
        a for a in ARTIFACTS if a.startswith(("openvino", "tensorrt"))})
    if foreign:
        raise RunDirError(f"{foreign} cannot be built from a {framework} model; choose from "
                          f"{list(default_artifacts(framework))}")
    if any(a.startswith("openvino") for a in artifacts) and not openvino_available():
        raise RunDirError("OpenVINO artifacts need the optional extra: pip install 'kiln[openvino]'")
    if "tensorrt-fp16" in artifacts and not tensorrt_available():
        raise RunDirError("the TensorRT artifact needs a CUDA GPU and the tensorrt package")
    trained = load_trained_model(run / "model")
    kwargs = manifest["model"]["kwargs"]
    max_length = int(manifest["max_length"])
    data = prepare_data(load_config(run / "config.yaml"), run)
    pad = int(kwargs.get("pad_id", 0))
    batches = eval_batches(data.eval, pad)
    labels = np.concatenate([y for _, _, y in batches])
    reference = run_backend(trained.reference, batches)
    reference_accuracy = float((reference.argmax(-1) == labels).mean())
    calibration = list(calibration_batches(data.train, pad, calibration_samples))

    work = temp_dir(run, ".tmp-export-")
    try:
        shutil.copy2(run / "model" / trained.weights_file, work / trained.weights_file)
        shutil.copy2(run / "model" / "tokenizer.json", work / "tokenizer.json")
        fused: dict[str, int] = {}
        builders: dict[str, Callable[[], Backend]] = {
            name: functools.partial(build, work) for name, build in trained.native.items()}
        onnx_path = work / FILES["onnx-fp32"]
        needs_onnx = any(backend_of(a) in ("onnxruntime", "openvino", "tensorrt")
                         for a in artifacts)
        if needs_onnx:
            trained.write_onnx(onnx_path)
        if "onnx-opt" in artifacts or "onnx-int8-dynamic" in artifacts:
            # The fusable twin of the model (same weights, BERT's operator pattern) lets ORT fuse
            # attention; other models are optimised from model.onnx (pretrained encoders with
            # onnxscript's attention fusions first, see ort_optimizer_options).
            source = onnx_path
            if trained.write_fusable_onnx is not None and trained.write_fusable_onnx(
                    work / FUSABLE_FILE):
                source = work / FUSABLE_FILE
            fused = optimize_for_ort(source, work / FILES["onnx-opt"],
                                     **ort_optimizer_options(manifest["model"]["name"], kwargs))
            (work / FUSABLE_FILE).unlink(missing_ok=True)
        if "onnx-int8-dynamic" in artifacts:
            quantize_dynamic_int8(work / FILES["onnx-opt"], work / FILES["onnx-int8-dynamic"])
        if "onnx-int8-static" in artifacts:
            quantize_static_int8(onnx_path, work / FILES["onnx-int8-static"], calibration)
        if "onnx-fp16" in artifacts:
            convert_fp16(onnx_path, work / FILES["onnx-fp16"])
        if any(a.startswith("openvino") for a in artifacts):
            convert_openvino(onnx_path, work / FILES["openvino-fp32"])
        if "openvino-int8" in artifacts:
            quantize_openvino_int8(work / FILES["openvino-fp32"], work / FILES["openvino-int8"],
                                   calibration)
        if "tensorrt-fp16" in artifacts:
            build_engine(onnx_path, work / FILES["tensorrt-fp16"], max_length)
        file_artifacts = [a for a in ARTIFACTS
                          if backend_of(a) in ("onnxruntime", "openvino", "tensorrt")]
        for name in file_artifacts:
            builders[name] = _file_builder(name, work / FILES[name])

        def check(name: str, backend: Backend) -> Parity:
            return measure_parity(name, FILES[name], run_backend(backend, batches), reference,
                                  labels, len(manifest["labels"]), tolerance)

        results = [check(name, builders[name]()) for name in artifacts]
        mixed = {**trained.mixed_precision, **_file_mixed_precision(work, calibration)}
        orders: dict[str, list[str]] = {}  # ranked layers, by the artifact that ranked them
        # layers are ranked on the first calibration texts (training data), against the trained
        # model; 64 texts order them about as well as 256 at a quarter of the cost
        ranking = [(b["input_ids"], b["attention_mask"], np.zeros(len(b["input_ids"]), np.int64))
                   for b in calibration[:max(1, RANKING_TEXTS // CALIBRATION_BATCH)]]
        ranking_reference = functools.cache(lambda: run_backend(trained.reference, ranking))
        for i, failed in enumerate(results):
            if failed.passed or failed.artifact not in mixed or not ranking:
                continue
            plan = mixed[failed.artifact]
            progress(f"{failed.artifact} failed parity ({'; '.join(failed.failures)}); looking "
                     f"for int8 layers to keep in fp32, of {len(plan.layers)}")
            ranker = plan.ranked_by or failed.artifact
            if ranker not in orders:
                orders[ranker] = rank_layers(mixed[ranker].layers, mixed[ranker].build, ranking,
                                             ranking_reference())
            order = [layer for layer in orders[ranker] if layer in set(plan.layers)]
            found = fall_back(order, len(plan.layers), plan.build,
                              functools.partial(check, failed.artifact), max_fp32_fraction)
            if found is not None:
                _keep_fallback(work, failed.artifact)
                results[i] = dataclasses.replace(found.parity, fp32_layers=found.fp32_layers,
                                                 quantizable_layers=found.quantizable)
        for side in work.glob(".fallback.*"):  # mixed-precision builds that did not pass
            side.unlink()
        for name in file_artifacts:  # files built only as an intermediate step are not shipped
            if name not in artifacts:
                (work / FILES[name]).unlink(missing_ok=True)
                (work / FILES[name]).with_suffix(".bin").unlink(missing_ok=True)
        recommended = next((n for n in PREFERENCE for r in results if r.artifact == n and r.passed),
                           None)
        _write_json(work / PARITY_FILE, {"reference": {"artifact": trained.reference_name,
                                                        "accuracy": reference_accuracy},
                                         "tolerance": tolerance.__dict__,
                                         "artifacts": [r.to_json() for r in results]})
        export_manifest = _export_manifest(manifest, work, results, recommended, tolerance,
                                           reference_accuracy, fused)
        _write_json(work / MANIFEST, export_manifest)
        final = run / "export"
        replace_dir(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return ExportReport(final, reference_accuracy, results, recommended, fused)


def _file_mixed_precision(work: Path, calibration: list[dict[str, np.ndarray]],
                          ) -> dict[str, MixedPrecision]:
    """The int8 artifacts built from model.onnx in ``work``: their quantised layers, and a build
    (into a side file, see _keep_fallback) that keeps some of them in fp32. Layers are named as
    the ONNX graph's nodes, which OpenVINO keeps as its operations' names."""
    mixed: dict[str, MixedPrecision] = {}
    onnx_path, optimized = work / FILES["onnx-fp32"], work / FILES["onnx-opt"]
    if optimized.exists():
        def build_dynamic(fp32: Sequence[str]) -> Backend:
            side = _side_file(work, "onnx-int8-dynamic")
            quantize_dynamic_int8(optimized, side, fp32_nodes=fp32)
            return OrtBackend(side)

        mixed["onnx-int8-dynamic"] = MixedPrecision(quantizable_nodes(optimized, DYNAMIC_OPS),
                                                    build_dynamic)
    if onnx_path.exists():
        def build_static(fp32: Sequence[str]) -> Backend:
            side = _side_file(work, "onnx-int8-static")
            quantize_static_int8(onnx_path, side, calibration, fp32_nodes=fp32)
            return OrtBackend(side)

        static_layers = quantizable_nodes(onnx_path, STATIC_OPS)
        mixed["onnx-int8-static"] = MixedPrecision(static_layers, build_static)
        fp32_ir = work / FILES["openvino-fp32"]
        if fp32_ir.exists():
            names = openvino_matmuls(fp32_ir)

            def build_openvino(fp32: Sequence[str]) -> Backend:
                side = _side_file(work, "openvino-int8")
                quantize_openvino_int8(fp32_ir, side, calibration,
                                       fp32_layers=[names[layer] for layer in fp32])
                return OpenVinoBackend(side)

            # NNCF quantises the same weight MatMuls as ORT's static int8 (per-channel weights,
            # calibrated per-tensor activations), and ranking with ORT's builds is cheaper
            mixed["openvino-int8"] = MixedPrecision(
                [layer for layer in static_layers if layer in names], build_openvino,
                ranked_by="onnx-int8-static")
    return mixed


def _side_file(work: Path, name: str) -> Path:
    return work / f".fallback.{FILES[name]}"


def _keep_fallback(work: Path, name: str) -> None:
    """Put the passing mixed-precision build of ``name`` in place of the all-int8 one."""
    side = _side_file(work, name)
    if side.exists():
        side.replace(work / FILES[name])
        if side.suffix == ".xml":  # OpenVINO IR: the weights beside it
            side.with_suffix(".bin").replace((work / FILES[name]).with_suffix(".bin"))


def _file_builder(name: str, path: Path) -> Callable[[], Backend]:
    if backend_of(name) == "openvino":
        return lambda: OpenVinoBackend(path)
    if backend_of(name) == "tensorrt":
        return lambda: TensorRtBackend(path)
    return lambda: OrtBackend(path)


def eval_batches(dataset: EncodedDataset, pad_id: int, batch_size: int = 64) -> list[EvalBatch]:
    """The evaluation set as padded numpy batches of similar length."""
    return [(b["input_ids"].numpy(), b["attention_mask"].numpy(), b["labels"].numpy())
            for b in sorted_batches(dataset, pad_id, batch_size)]


def calibration_batches(dataset: EncodedDataset, pad_id: int, samples: int,
                        batch_size: int = CALIBRATION_BATCH) -> Iterator[dict[str, np.ndarray]]:
    """A seeded sample of training texts, in batches, for static quantisation ranges."""
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(dataset), size=min(samples, len(dataset)), replace=False)
    collate = PadCollator(pad_id)
    for start in range(0, len(chosen), batch_size):
        b = collate([dataset[int(i)] for i in chosen[start:start + batch_size]])
        yield {"input_ids": b["input_ids"].numpy(), "attention_mask": b["attention_mask"].numpy()}


def _export_manifest(
    model_manifest: dict[str, Any], folder: Path, results: list[Parity], recommended: str | None,
    tolerance: Tolerance, reference_accuracy: float, fused: dict[str, int],
) -> dict[str, Any]:
    import onnx
    import onnxruntime

    manifest = dict(model_manifest)
    manifest["artifacts"] = {
        r.artifact: {
            "file": r.file,
            "backend": backend_of(r.artifact),
            "precision": PRECISION[r.artifact],
            "passed": r.passed,
            "accuracy": r.accuracy,
            "argmax_agreement": r.argmax_agreement,
            "max_abs_diff": r.max_abs_diff,
            **({"fp32_layers": r.fp32_layers} if r.fp32_layers else {}),
        }
        for r in results
    }
    manifest["export"] = {
        "recommended": recommended,
        "reference_accuracy": reference_accuracy,
        "tolerance": tolerance.__dict__,
        "ort_fused_operators": fused,
        "versions": {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
    }
    manifest["files"] = {p.relative_to(folder).as_posix(): file_digest(p)
                         for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    return manifest


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
