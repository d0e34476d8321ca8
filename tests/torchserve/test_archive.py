"""`kiln torchserve RUN`: what goes in the model archive and its config.properties."""

from __future__ import annotations

import json
import shutil
import zipfile
from importlib import resources
from pathlib import Path

import pytest

from kiln.cli import main
from kiln.errors import KilnError, RunDirError
from kiln.models import read_manifest
from kiln.runtime import artifact_folder, default_artifact
from kiln.serve import ServeSettings
from kiln.torchserve import (
    TorchServeArchive,
    TorchServeSettings,
    artifact_files,
    config_properties,
    torchserve_run,
)
from tests.torchserve.conftest import NOT_INSTALLED

pytest.importorskip("model_archiver", reason=NOT_INSTALLED)
ts_model_server = pytest.importorskip("ts.model_server", reason=NOT_INSTALLED)


def properties(path: Path) -> dict[str, str]:
    """config.properties as TorchServe's launcher reads it."""
    return dict(ts_model_server.load_properties(str(path)))


def test_the_archive_holds_the_artifact_kiln_serve_would_serve(
    archive: TorchServeArchive, exported_run: Path,
) -> None:
    export = artifact_folder(exported_run)
    assert archive.artifact == default_artifact(export, read_manifest(export))
    with zipfile.ZipFile(archive.mar) as z:
        names = set(z.namelist())
        mar_manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        packaged = json.loads(z.read("kiln.json"))
        handler = z.read("kiln_handler.py")
    assert mar_manifest["model"]["handler"] == "kiln_handler.py"
    assert "serializedFile" not in mar_manifest["model"]  # the handler loads through kiln
    assert handler == resources.files("kiln.torchserve").joinpath("handler.py").read_bytes()
    files = artifact_files(export, read_manifest(export), archive.artifact)
    assert "tokenizer.json" in files and len(files) >= 2
    assert set(packaged["files"]) == {*files, "kiln_handler.py"}
    assert names == {*files, "kiln_handler.py", "kiln.json", "MAR-INF/MANIFEST.json"}
    assert list(packaged["artifacts"]) == [archive.artifact]  # the others stay out
    assert packaged["torchserve"] == {"artifact": archive.artifact}


def test_an_openvino_artifact_takes_its_weights_and_the_trained_model_its_safetensors(
    exported_run: Path,
) -> None:
    export = artifact_folder(exported_run)
    manifest = read_manifest(export)
    assert artifact_files(export, manifest, "torch-fp32") == ["model.safetensors", "tokenizer.json"]
    assert artifact_files(export, manifest, "onnx-opt") == ["model.opt.onnx", "tokenizer.json"]
    if "openvino-fp32" in manifest["artifacts"]:
        assert sorted(artifact_files(export, manifest, "openvino-fp32")) == [
            "model.ov.bin", "model.ov.xml", "tokenizer.json"]


def test_config_properties_batch_as_kiln_serve_does(archive: TorchServeArchive) -> None:
    serve, settings = ServeSettings(), TorchServeSettings()
    assert settings.max_batch_size == serve.max_batch_size
    assert settings.max_batch_delay_ms == serve.max_queue_delay_ms
    assert settings.workers == serve.workers
    assert settings.response_timeout_s == serve.timeout_s
    assert settings.max_request_bytes == serve.max_request_bytes
    props = properties(archive.config)
    model = json.loads(props["models"])["clf"]["1.0"]
    assert (model["batchSize"], model["maxBatchDelay"]) == (32, 2)
    assert model["marName"] == props["load_models"] == "clf.mar"
    assert (model["minWorkers"], model["maxWorkers"], model["responseTimeout"]) == (1, 1, 30)
    assert props["inference_address"] == "http://127.0.0.1:8080"
    assert props["disable_token_authorization"] == "true"
    assert props["install_py_dep_per_model"] == "false"
    assert props["enable_envvars_config"] == "false"
    assert props["max_request_size"] == str(4 * 1024 * 1024)


def test_the_cli_writes_run_torchserve_and_says_how_to_serve_it(
    exported_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "my-run"  # a copy: the shared run's torchserve/ is not this test's to write
    shutil.copytree(exported_run / "export", run / "export")
    assert main(["torchserve", str(run), "--artifact", "onnx-fp32", "--max-batch-size", "8"]) == 0
    out = capsys.readouterr().out
    folder = run / "torchserve"
    assert sorted(p.name for p in folder.iterdir()) == ["config.properties", "my-run.mar"]
    assert (f"torchserve --start --ncs --model-store {folder} --ts-config "
            f"{folder / 'config.properties'}") in out
    assert json.loads(properties(folder / "config.properties")["models"])[
        "my-run"]["1.0"]["batchSize"] == 8
    assert main(["torchserve", str(run), "--artifact", "onnx-int9"]) == 2
    assert "no artifact 'onnx-int9'" in capsys.readouterr().err
    assert main(["torchserve", str(run), "--name", "bad/name"]) == 2
    assert main(["torchserve", str(run), "--workers", "0"]) == 2
    assert sorted(p.name for p in folder.iterdir()) == ["config.properties", "my-run.mar"]


def test_a_changed_artifact_is_not_packaged(exported_run: Path, tmp_path: Path) -> None:
    export = tmp_path / "run" / "export"
    shutil.copytree(exported_run / "export", export)
    data = bytearray((export / "model.onnx").read_bytes())
    data[-1] ^= 1  # same size, another checksum
    (export / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(RunDirError, match="model.onnx does not match the checksum"):
        torchserve_run(export.parent, artifact="onnx-fp32")
    torchserve_run(export.parent, artifact="onnx-opt")  # the others are intact
    assert not list(export.parent.glob(".tmp-*"))


def test_a_failed_artifact_and_bad_settings_are_refused(exported_run: Path, tmp_path: Path) -> None:
    export = tmp_path / "run" / "export"
    shutil.copytree(exported_run / "export", export)
    manifest = json.loads((export / "kiln.json").read_text())
    manifest["artifacts"]["onnx-opt"]["passed"] = False
    (export / "kiln.json").write_text(json.dumps(manifest))
    with pytest.raises(RunDirError, match="'onnx-opt' .* failed its parity check"):
        torchserve_run(export.parent, artifact="onnx-opt")
    with pytest.raises(KilnError, match="five different port numbers"):
        torchserve_run(export.parent, settings=TorchServeSettings(management_port=8080))


def test_token_authorization_stays_on_beyond_this_machine() -> None:
    local = config_properties("clf", TorchServeSettings())
    assert "\ndisable_token_authorization=true\n" in local
    exposed = config_properties("clf", TorchServeSettings(host="0.0.0.0"))
    assert "disable_token_authorization" not in exposed.replace("# ", "")
    assert "inference_address=http://0.0.0.0:8080\n" in exposed
    assert "inference_address=http://[::1]:8080\n" in config_properties(
        "clf", TorchServeSettings(host="::1"))
