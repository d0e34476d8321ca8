"""Artifacts for what the CPU has: OpenVINO bf16 and int8+bf16 where the CPU computes bf16
natively, and the machine's matrix-multiply peaks that `kiln bench` measures artifacts against."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kiln.bench import BenchSettings, bench_run
from kiln.bench.peaks import matmul_flops, measure_peaks, peak_share
from kiln.config import load_config
from kiln.data import prepare_data
from kiln.errors import RunDirError
from kiln.export.builders import (
    BuildJob,
    build_openvino_bf16,
    keep_fallback,
    mixed_openvino_int8_bf16,
)
from kiln.export.parity import Tolerance
from kiln.extras import installed
from kiln.models import read_manifest
from kiln.runtime import OpenVinoBackend, load_predictor
from kiln.runtime import artifacts as artifact_table
from kiln.runtime.artifacts import default_artifacts, native_bf16, not_built_here

BF16 = ("openvino-bf16", "openvino-int8-bf16")
needs_openvino = pytest.mark.skipif(not installed("openvino"),
                                    reason="optional extra kiln[openvino] not installed")
needs_bf16 = pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bf16 "
                                "(avx512_bf16 or amx_bf16 in /proc/cpuinfo)")

# /proc/cpuinfo of one core of a Cascade Lake (VNNI, no bf16) as Linux prints it
CASCADE_LAKE = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 ss ht syscall nx avx f16c \
avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni arch_capabilities
bugs\t\t: spectre_v1 spectre_v2
bogomips\t: 4999.99

"""


def test_native_bf16_is_read_from_the_cpu_flags() -> None:
    assert not native_bf16(CASCADE_LAKE)
    with_bf16 = CASCADE_LAKE.replace("avx512_vnni", "avx512_vnni avx512_bf16")
    assert native_bf16(with_bf16)
    assert native_bf16(CASCADE_LAKE.replace("avx512_vnni", "amx_bf16 amx_tile amx_int8"))
    # the word in another line (bugs, model name) is not a flag
    assert not native_bf16(CASCADE_LAKE.replace("spectre_v1", "avx512_bf16"))
    assert not native_bf16("")  # no /proc/cpuinfo (not Linux)


@needs_openvino
def test_without_native_bf16_the_bf16_artifacts_are_left_out_saying_why(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(artifact_table, "_proc_cpuinfo", lambda: CASCADE_LAKE)
    assert not set(BF16) & set(default_artifacts())
    assert {"openvino-fp32", "openvino-int8"} <= set(default_artifacts())
    for name in BF16:
        assert "avx512_bf16" in not_built_here()[name]
    # asked for by name, it is refused before anything is written
    job = BuildJob(tmp_path, trained=None, manifest={}, calibration=[])  # type: ignore[arg-type]
    with pytest.raises(RunDirError, match="openvino-bf16 cannot be built on this machine"):
        build_openvino_bf16(job)
    assert list(tmp_path.iterdir()) == []


@needs_openvino
@needs_bf16
def test_bf16_artifacts_pass_parity_sharing_the_weights_of_their_source(
        exported_run: Path) -> None:
    export = exported_run / "export"
    manifest = read_manifest(export)
    for name in BF16:
        entry = manifest["artifacts"][name]
        assert entry["backend"] == "openvino"
        if name == "openvino-bf16":
            assert entry["passed"], entry  # bf16 moves logits by ~5e-3: no argmax flips here
            assert 0 < entry["max_abs_diff"] < 0.05, entry
        else:  # int8 on this tiny model may miss the 99% gate, as the other int8 ones may
            assert entry["argmax_agreement"] >= 0.95, entry
    assert manifest["artifacts"]["openvino-bf16"]["precision"] == "bf16"
    # one copy of the weights on disk, a whole file under each name (checksums, packaging)
    for source, bf16 in (("model.ov.bin", "model.ov-bf16.bin"),
                         ("model.ov-int8.bin", "model.ov-int8-bf16.bin")):
        assert os.path.samefile(export / source, export / bf16)
        assert manifest["files"][bf16] == manifest["files"][source]


@needs_openvino
@needs_bf16
def test_bf16_artifacts_load_in_bf16_with_shape_buckets_and_label_like_fp32(
        exported_run: Path) -> None:
    texts = list(prepare_data(load_config(exported_run / "config.yaml"), exported_run).eval_texts)
    reference = load_predictor(exported_run, "openvino-fp32", threads=1).predict(texts)
    tolerance = Tolerance()
    for name in BF16:
        predictor = load_predictor(exported_run, name, threads=1, allow_failed=True)
        info = predictor.backend.info()
        assert info["inference_precision"] == "bf16", (name, info)
        assert info["max_length"] == 48 and info["length_bucket"] == 16  # no recompiles
        got = predictor.predict(texts)
        agreement = float(np.mean(np.array(got.labels) == np.array(reference.labels)))
        floor = tolerance.min_argmax_agreement if name == "openvino-bf16" else 0.95
        assert agreement >= floor, (name, agreement)
        np.testing.assert_allclose(got.logits, reference.logits, atol=0.5)


@needs_openvino
@needs_bf16
def test_an_explicit_precision_overrides_the_one_the_ir_records(exported_run: Path) -> None:
    from kiln.torchserve.archive import artifact_files

    export = exported_run / "export"
    assert OpenVinoBackend(export / "model.ov.xml").info()["inference_precision"] == "f32"
    pinned = OpenVinoBackend(export / "model.ov-bf16.xml", inference_precision="f32")
    assert pinned.info()["inference_precision"] == "f32"
    # what a packaged model ships with the artifact: its IR and the weights beside it
    files = artifact_files(export, read_manifest(export), "openvino-bf16")
    assert {"model.ov-bf16.xml", "model.ov-bf16.bin"} <= set(files)


@needs_openvino
@needs_bf16
def test_the_int8_bf16_fp32_fallback_is_rebuilt_in_bf16(exported_run: Path,
                                                         tmp_path: Path) -> None:
    work = tmp_path / "export"  # fallback builds write beside the artifacts
    shutil.copytree(exported_run / "export", work)
    ids = np.random.default_rng(0).integers(5, 400, (8, 16))
    job = BuildJob(work, trained=None, manifest=read_manifest(work),  # type: ignore[arg-type]
                   calibration=[{"input_ids": ids, "attention_mask": np.ones_like(ids)}])
    plan = mixed_openvino_int8_bf16(job)
    assert plan is not None and plan.layers and plan.ranked_by == "onnx-int8-static"
    assert plan.build(plan.layers[:1]).info()["inference_precision"] == "bf16"
    keep_fallback(work, "openvino-int8-bf16")
    kept = OpenVinoBackend(work / "model.ov-int8-bf16.xml")
    assert kept.info()["inference_precision"] == "bf16"


def test_peaks_are_measured_and_the_flop_formula_matches_torch_s_count() -> None:
    from kiln.models import TransformerClassifier
    from kiln.train.meters import count_flops

    peaks = measure_peaks(threads=1, seconds=0.02, size=256)
    assert peaks.fp32 > 0 and peaks.bf16 > 0 and peaks.int8 > 0
    assert peaks.of("int8") == peaks.int8 and peaks.of("fp16") is None
    share = peak_share("openvino-bf16", 100.0, 2e9, peaks)
    assert share is not None and share["precision"] == "bf16"
    assert share["share"] == pytest.approx(200.0 / peaks.bf16)
    model = TransformerClassifier(500, 4, 48, 64, 4, 2, 128, 0.1)
    counted = count_flops(model, 500, 48, torch.device("cpu"))
    manifest = {"model": {"name": "transformer", "kwargs": {
        "embed_dim": 64, "ff_dim": 128, "num_layers": 2, "num_labels": 4}}}
    for length in (16, 48):
        expected = counted.linear * length + counted.quadratic * length**2
        assert matmul_flops(manifest, length) == pytest.approx(expected, rel=0.01)


@needs_openvino
def test_bench_reports_peaks_and_each_artifact_s_share(exported_run: Path,
                                                       tmp_path: Path) -> None:
    run = tmp_path / "run"  # a copy: this bench's report must not become the run's pick
    shutil.copytree(exported_run, run)
    names = ["onnx-int8-dynamic", *(["openvino-bf16"] if native_bf16() else ["openvino-fp32"])]
    settings = BenchSettings(threads=1, texts=3, batch_size=8, warmup=1, min_seconds=0.05,
                             artifacts=names, rounds=1, retries=0)
    report = bench_run(run, settings)
    peaks = report["machine"]["peaks"]
    assert peaks["fp32"] > 0 and peaks["bf16"] > 0 and peaks["int8"] > 0
    assert report["machine"]["matmul_gflop_per_sample"] > 0
    for name in ["torch-fp32", *names]:
        share = report["results"][name]["peak_share"]
        assert share["precision"] == artifact_table.KIND[name].precision
        assert share["achieved_gflops"] > 0 and share["share"] > 0, (name, share)
    assert "share of peak" in (run / "bench" / "report.md").read_text()
