"""`kiln export`: turn a trained run into verified inference artifacts in RUN/export/.

The steps: check the request against the artifact table (``kiln.runtime.artifacts``), load the
trained model, build every artifact asked for (and the ones they are built from) in a temporary
folder, measure each one's parity with the trained model on the evaluation set, rebuild failing
int8 ones with some layers in fp32, write parity.json and the manifest, and put the folder in place.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.config import load_config
from kiln.data import EncodedDataset, PadCollator, prepare_data, sorted_batches
from kiln.errors import RunDirError
from kiln.export import builders
from kiln.export.builders import BuildJob
from kiln.export.fallback import MixedPrecision, fall_back, rank_layers
from kiln.export.parity import EvalBatch, Parity, Tolerance, measure_parity, run_backend
from kiln.export.trained import TrainedModel, torch_trained_model
from kiln.extras import install_hint, installed
from kiln.files import replacing_dir
from kiln.models import MANIFEST, file_digest, read_manifest
from kiln.runtime.artifacts import (
    ARTIFACTS,
    KIND,
    PREFERENCE,
    buildable,
    default_artifacts,
    reference_artifact,
    with_sources,
)
from kiln.runtime.drift import DriftReference, reference_profile
from kiln.runtime.load import load_predictor, open_file
from kiln.runtime.predictor import Backend

PARITY_FILE = "parity.json"
CALIBRATION_BATCH = 16  # texts per calibration batch
RANKING_TEXTS = 64  # calibration texts that rank int8 layers for the fp32 fallback


@dataclass(frozen=True)
class ExportReport:
    export_dir: Path
    reference_accuracy: float
    parity: list[Parity]
    preferred: str | None  # unmeasured: the first that passed in PREFERENCE; `kiln bench` decides
    fused_operators: dict[str, int]

    @property
    def failed(self) -> list[Parity]:
        return [p for p in self.parity if not p.passed]


@dataclass(frozen=True)
class EvalSet:
    """The evaluation set as export measures it: batches, labels, the trained model's logits."""

    batches: list[EvalBatch]
    labels: np.ndarray
    reference: np.ndarray  # the trained model's logits
    num_classes: int
    tolerance: Tolerance

    @property
    def reference_accuracy(self) -> float:
        return float((self.reference.argmax(-1) == self.labels).mean())

    def check(self, name: str, backend: Backend) -> Parity:
        return measure_parity(name, KIND[name].file, run_backend(backend, self.batches),
                              self.reference, self.labels, self.num_classes, self.tolerance)


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
    manifest = _finished_model_manifest(run)
    requested = _check_request(list(artifacts or default_artifacts(_framework(manifest))),
                               _framework(manifest))
    trained = load_trained_model(run / "model")
    data = prepare_data(load_config(run / "config.yaml"), run)
    pad = int(manifest["model"]["kwargs"].get("pad_id", 0))
    batches = eval_batches(data.eval, pad)
    evalset = EvalSet(batches, np.concatenate([y for _, _, y in batches]),
                      run_backend(trained.reference, batches), len(manifest["labels"]), tolerance)
    calibration = list(calibration_batches(data.train, pad, calibration_samples))
    with replacing_dir(run / "export") as work:
        job = BuildJob(work, trained, manifest, calibration)
        for name in (trained.weights_file, "tokenizer.json"):
            shutil.copy2(run / "model" / name, work / name)
        results = _build_and_check(job, requested, evalset, max_fp32_fraction, progress)
        preferred = next((n for n in PREFERENCE for r in results if r.artifact == n and r.passed),
                         None)
        _write_json(work / PARITY_FILE, {
            "reference": {"artifact": trained.reference_name,
                          "accuracy": evalset.reference_accuracy},
            "tolerance": tolerance.__dict__, "artifacts": [r.to_json() for r in results]})
        exported = _export_manifest(manifest, work, results, preferred, tolerance,
                                    evalset.reference_accuracy, job.fused)
        _write_json(work / MANIFEST, exported)
        if data.eval_texts:
            progress("recording the evaluation set's drift reference")
            exported["drift_reference"] = _drift_reference(work, preferred,
                                                           data.eval_texts).to_json()
            _write_json(work / MANIFEST, exported)
    return ExportReport(run / "export", evalset.reference_accuracy, results, preferred,
                        job.fused)


def _drift_reference(folder: Path, artifact: str | None,
                     texts: Sequence[str]) -> DriftReference:
    """The drift reference of the evaluation ``texts``, as ``artifact`` (served until a bench
    picks another, else the trained model) tokenises and scores them in ``folder``; other
    verified artifacts agree with it to the parity gate."""
    predictor = load_predictor(folder, artifact)
    return reference_profile(predictor, texts, artifact or reference_artifact(
        read_manifest(folder)))


def _framework(manifest: dict[str, Any]) -> str:
    return str(manifest.get("framework", "torch"))


def _finished_model_manifest(run: Path) -> dict[str, Any]:
    """The trained model's manifest.

    Raises:
        RunDirError: the run has no config or trained model.
    """
    if not (run / "config.yaml").exists() or not (run / "model" / MANIFEST).exists():
        raise RunDirError(f"{run} is not a finished kiln run (config.yaml and model/{MANIFEST} "
                          "are needed); train it first")
    return read_manifest(run / "model")


def _check_request(artifacts: list[str], framework: str) -> list[str]:
    """``artifacts``, once each is known, buildable from a ``framework`` model and installed.

    Raises:
        RunDirError: naming the artifacts that are not, and what to choose or install.
    """
    unknown = sorted(set(artifacts) - set(ARTIFACTS))
    if unknown:
        raise RunDirError(f"unknown artifacts {unknown}; choose from {list(ARTIFACTS)}")
    foreign = sorted(set(artifacts) - set(buildable(framework)))
    if foreign:
        raise RunDirError(f"{foreign} cannot be built from a {framework} model; choose from "
                          f"{list(default_artifacts(framework))}")
    for name in artifacts:
        extra = KIND[name].extra
        if extra is not None and not installed(extra):
            raise RunDirError(f"{name} needs the optional extra '{extra}': {install_hint(extra)}")
    return artifacts


def load_trained_model(model_dir: Path) -> TrainedModel:
    """The ``TrainedModel`` of a model folder, whichever framework trained it.

    Raises:
        RunDirError: a keras model without the kiln[keras] extra installed.
    """
    manifest = read_manifest(model_dir)
    if _framework(manifest) != "keras":
        return torch_trained_model(model_dir)
    if not installed("keras"):
        raise RunDirError(f"{model_dir} holds a Keras model; exporting it needs TensorFlow: "
                          f"{install_hint('keras')}")
    from kiln.export.keras_export import keras_trained_model  # imports TensorFlow

    return keras_trained_model(model_dir, manifest)


def _build_and_check(job: BuildJob, requested: list[str], evalset: EvalSet,
                     max_fp32_fraction: float, progress: Callable[[str], None]) -> list[Parity]:
    """Build ``requested`` (and their sources), measure each one's parity, and give failing int8
    ones the fp32 fallback; intermediate files that were not asked for are removed."""
    built = {name: getattr(builders, str(KIND[name].builder))(job)
             for name in with_sources(requested)}

    def opened(name: str) -> Backend:
        return built[name] or open_file(KIND[name].backend, job.path(name),
                                        max_length=int(job.manifest["max_length"]))

    results = [evalset.check(name, opened(name)) for name in requested]
    results = _fall_back(job, results, evalset, max_fp32_fraction, progress)
    for side in job.work.glob(".fallback.*"):  # mixed-precision builds that did not pass
        side.unlink()
    for name in set(built) - set(requested):  # built only as a step towards another
        builders.remove(job.work, name)
    return results


def _fall_back(job: BuildJob, results: list[Parity], evalset: EvalSet, max_fp32_fraction: float,
               progress: Callable[[str], None]) -> list[Parity]:
    """``results`` with each failing int8 artifact rebuilt with its most harmful layers in fp32,
    where that makes it pass."""
    plans = functools.cache(lambda name: getattr(builders, fallback)(job) if (
        fallback := KIND[name].fallback) else None)
    # layers are ranked on the first calibration texts (training data), against the trained
    # model; 64 texts order them about as well as 256 at a quarter of the cost
    ranking = [(b["input_ids"], b["attention_mask"], np.zeros(len(b["input_ids"]), np.int64))
               for b in job.calibration[:max(1, RANKING_TEXTS // CALIBRATION_BATCH)]]
    ranking_reference = functools.cache(lambda: run_backend(job.trained.reference, ranking))
    orders: dict[str, list[str]] = {}  # ranked layers, by the artifact that ranked them
    results = list(results)
    for i, failed in enumerate(results):
        plan: MixedPrecision | None = plans(failed.artifact)
        if failed.passed or plan is None or not ranking:
            continue
        progress(f"{failed.artifact} failed parity ({'; '.join(failed.failures)}); looking "
                 f"for int8 layers to keep in fp32, of {len(plan.layers)}")
        ranker = plan.ranked_by or failed.artifact
        if ranker not in orders:
            ranked = plans(ranker) or plan
            orders[ranker] = rank_layers(ranked.layers, ranked.build, ranking, ranking_reference())
        order = [layer for layer in orders[ranker] if layer in set(plan.layers)]
        found = fall_back(order, len(plan.layers), plan.build,
                          functools.partial(evalset.check, failed.artifact), max_fp32_fraction)
        if found is not None:
            builders.keep_fallback(job.work, failed.artifact)
            results[i] = dataclasses.replace(found.parity, fp32_layers=found.fp32_layers,
                                             quantizable_layers=found.quantizable)
    return results


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
    model_manifest: dict[str, Any], folder: Path, results: list[Parity], preferred: str | None,
    tolerance: Tolerance, reference_accuracy: float, fused: dict[str, int],
) -> dict[str, Any]:
    import onnx
    import onnxruntime

    manifest = dict(model_manifest)
    manifest["artifacts"] = {
        r.artifact: {
            "file": r.file,
            "backend": KIND[r.artifact].backend,
            "precision": KIND[r.artifact].precision,
            "passed": r.passed,
            "accuracy": r.accuracy,
            "argmax_agreement": r.argmax_agreement,
            "max_abs_diff": r.max_abs_diff,
            **({"fp32_layers": r.fp32_layers} if r.fp32_layers else {}),
        }
        for r in results
    }
    manifest["export"] = {
        "preferred": preferred,  # not a recommendation: nothing is measured yet
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
