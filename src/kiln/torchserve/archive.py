"""`kiln torchserve RUN`: a TorchServe model archive (``.mar``) of a run's verified artifact, and a
``config.properties`` that serves it with kiln serve's batching.

The archive holds the artifact's files, the tokenizer, the manifest ``kiln.json`` (narrowed to
what is packaged, with the export's checksums) and kiln's handler (``kiln_handler.py``, a copy of
handler.py). It is written by `torch-model-archiver`, run as a subprocess with a private temporary
folder: the archiver assembles every archive in ``$TMPDIR/<model name>`` and deletes that folder,
so two archivers of the same model name must not share one.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from kiln.errors import KilnError, RunDirError
from kiln.files import file_digest, replacing_dir, temp_dir
from kiln.models import MANIFEST, read_manifest, verify_files
from kiln.runtime import artifact_folder, default_artifact, list_artifacts, reference_artifact
from kiln.torchserve.settings import TorchServeSettings

HANDLER = "kiln_handler.py"  # the handler's name in the archive (TorchServe imports kiln_handler)
CONFIG = "config.properties"
MODEL_VERSION = "1.0"  # the archive's model version: the key of its entry in ``models=``
INSTALL = "pip install 'kiln[torchserve]'"
# TorchServe's rule for model names (model_archiver's check_model_name_regex_or_exit)
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")


@dataclass(frozen=True)
class TorchServeArchive:
    """What `kiln torchserve` wrote: ``folder`` holds ``<name>.mar`` and config.properties."""

    folder: Path
    name: str
    artifact: str

    @property
    def mar(self) -> Path:
        return self.folder / f"{self.name}.mar"

    @property
    def config(self) -> Path:
        return self.folder / CONFIG

    def command(self) -> str:
        """The command that serves the archive (TorchServe's own `torchserve` script)."""
        return shlex.join(["torchserve", "--start", "--ncs", "--model-store", str(self.folder),
                           "--ts-config", str(self.config)])


def torchserve_run(
    run_dir: str | os.PathLike[str], *, artifact: str | None = None,
    out: str | os.PathLike[str] | None = None, name: str | None = None,
    settings: TorchServeSettings | None = None,
) -> TorchServeArchive:
    """Write ``out`` (default ``RUN/torchserve/``): the model archive ``<name>.mar`` of
    ``artifact`` and the ``config.properties`` that serves it. An older folder is replaced.

    Args:
        run_dir: a run directory (its export/, else its model/), or an export or model folder.
        artifact: what to package (default: the one `kiln serve` would serve).
        out: the folder to write; TorchServe's ``--model-store``.
        name: the model name, ``/predictions/<name>`` (default: the run folder's name).
        settings: batching, workers, limits and addresses (default: kiln serve's).

    Raises:
        RunDirError: no model, an unknown or failed artifact, or a file that fails its checksum.
        KilnError: a bad name or setting, or torch-model-archiver missing or failing.
    """
    settings = settings or TorchServeSettings()
    settings.check()
    run = Path(run_dir)
    folder = artifact_folder(run)
    manifest = read_manifest(folder)
    artifact = artifact or default_artifact(folder, manifest)
    files = artifact_files(folder, manifest, artifact)
    packaged = packaged_manifest(manifest, artifact, files)
    verify_files(folder, packaged)  # what goes in is what was verified at export
    resolved = run.resolve()  # named as kiln serve names it: the run folder's name
    name = name or (resolved.parent.name if resolved.name in ("export", "model") else resolved.name)
    if not MODEL_NAME.match(name):
        raise KilnError(f"model name {name!r}: TorchServe needs letters, digits, '_', '-' and "
                        "'.', starting with a letter or digit; choose one with --name")
    target = Path(out) if out is not None else (
        run.parent if resolved.name in ("export", "model") else run) / "torchserve"
    with replacing_dir(target) as tmp:
        stage = temp_dir(tmp.parent, f".tmp-{name}-stage-")
        try:
            handler = _stage(folder, files, packaged, stage)
            archive_model(name, handler, stage / "model", tmp)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        (tmp / CONFIG).write_text(config_properties(name, settings), encoding="utf-8")
    return TorchServeArchive(folder=target, name=name, artifact=artifact)


def packaged_manifest(manifest: dict[str, Any], artifact: str, files: list[str]) -> dict[str, Any]:
    """The manifest as the archive holds it: only the packaged artifact and files (with the
    export's checksums), and ``torchserve.artifact``, which the handler loads."""
    artifacts = {k: v for k, v in manifest.get("artifacts", {}).items() if k == artifact}
    return {**manifest, "artifacts": artifacts, "files": {f: manifest["files"][f] for f in files},
            "torchserve": {"artifact": artifact}}


def artifact_files(folder: Path, manifest: dict[str, Any], artifact: str) -> list[str]:
    """The files of ``folder`` that serving ``artifact`` reads: its own (an OpenVINO model's
    weights, an ONNX model's external data, every file of a folder artifact) and the tokenizer.

    Raises:
        RunDirError: an unknown artifact, one that failed its parity check, or a file the
            manifest has no checksum for.
    """
    if artifact == reference_artifact(manifest):
        main = str(manifest["weights"])
    else:
        entry = manifest.get("artifacts", {}).get(artifact)
        if entry is None:
            raise RunDirError(f"no artifact '{artifact}' in {folder}; available: "
                              f"{list_artifacts(folder, manifest)}")
        if not entry.get("passed", True):
            raise RunDirError(f"artifact '{artifact}' in {folder} failed its parity check; see "
                              "parity.json")
        main = str(entry["file"])
    listed = manifest.get("files", {})
    own = [f for f in listed if f == main or f.startswith(f"{main}/")]  # a folder's files
    companions = [str(manifest.get("tokenizer", "tokenizer.json"))]
    if main.endswith(".xml"):  # OpenVINO IR: the graph, and its weights beside it
        companions.append(str(Path(main).with_suffix(".bin")))
    if main.endswith(".onnx") and own:
        companions.extend(_onnx_external_data(folder / main))
    unlisted = [f for f in companions if f not in listed]
    if not own or unlisted:
        raise RunDirError(f"{folder / MANIFEST} has no checksum for "
                          f"{unlisted[0] if own else main} (artifact '{artifact}'); "
                          "re-export the run")
    return list(dict.fromkeys([*own, *companions]))


def _onnx_external_data(path: Path) -> list[str]:
    """The external-data files an ONNX model's tensors point to, relative to its folder."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    def tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        for node in graph.node:
            for attribute in node.attribute:
                yield from (attribute.t, *attribute.tensors)
                for subgraph in (attribute.g, *attribute.graphs):
                    yield from tensors(subgraph)

    model = onnx.load(str(path), load_external_data=False)
    return sorted({ExternalDataInfo(t).location for t in tensors(model.graph)
                   if uses_external_data(t)})


def _stage(folder: Path, files: list[str], manifest: dict[str, Any], stage: Path) -> Path:
    """Lay out the archive's contents in ``stage``: ``model/`` (the files, and the manifest with
    their checksums and the handler's) and the handler; returns the handler's path."""
    model = stage / "model"
    for rel in files:
        (model / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / rel, model / rel)
    handler = stage / HANDLER
    handler.write_bytes(resources.files("kiln.torchserve").joinpath("handler.py").read_bytes())
    body = {**manifest, "files": {**manifest["files"], HANDLER: file_digest(handler)}}
    (model / MANIFEST).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    return handler


def archive_model(name: str, handler: Path, extra: Path, export_path: Path) -> Path:
    """Run torch-model-archiver: ``export_path/<name>.mar`` with ``handler`` and the contents of
    the folder ``extra``, no serialized file (the handler reads the model through kiln).

    Raises:
        KilnError: torch-model-archiver is not installed, or it failed (its message included).
    """
    import importlib.util

    if importlib.util.find_spec("model_archiver") is None:
        raise KilnError(f"kiln torchserve needs torch-model-archiver: {INSTALL}")
    command = [sys.executable, "-m", "model_archiver.model_packaging", "--model-name", name,
               "--version", MODEL_VERSION, "--handler", str(handler), "--extra-files", str(extra),
               "--export-path", str(export_path), "--archive-format", "default", "--force"]
    with tempfile.TemporaryDirectory(dir=export_path.parent, prefix=".tmp-archiver-") as tmp:
        done = subprocess.run(command, env={**os.environ, "TMPDIR": tmp}, capture_output=True,
                              text=True, check=False)
    mar = export_path / f"{name}.mar"
    if done.returncode != 0 or not mar.is_file():
        raise KilnError(f"torch-model-archiver failed (exit {done.returncode}):\n"
                        f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return mar


TOKEN_OFF = """\
# TorchServe 0.12 asks every call for a token by default. Off here, as kiln serve asks for no API
# key on this machine's own addresses. Before binding beyond it, delete this line: TorchServe then
# writes key_file.json at start and every call must send 'Authorization: Bearer <inference key>'.
disable_token_authorization=true
"""
TOKEN_ON = """\
# Token authorization stays on (TorchServe's default), as the server is bound beyond this machine:
# TorchServe writes key_file.json in its working directory at start, and every call must send
# 'Authorization: Bearer <its inference key>'.
"""

def config_properties(name: str, settings: TorchServeSettings) -> str:
    """TorchServe's config.properties: the archive loaded at start with kiln serve's batching."""
    s = settings
    model = {"defaultVersion": True, "marName": f"{name}.mar", "minWorkers": s.workers,
             "maxWorkers": s.workers, "batchSize": s.max_batch_size,
             "maxBatchDelay": s.max_batch_delay_ms, "responseTimeout": s.response_timeout_s}
    host = f"[{s.host}]" if ":" in s.host else s.host  # an IPv6 address in a URL
    return CONFIG_TEMPLATE.format(
        name=name, host=host, grpc_host=s.host, inference=s.inference_port, management=s.management_port,
        metrics=s.metrics_port, grpc_inference=s.grpc_inference_port,
        grpc_management=s.grpc_management_port, max_request=s.max_request_bytes,
        queue=s.job_queue_size, workers=s.workers,
        token=TOKEN_ON if s.token_auth else TOKEN_OFF,
        models=json.dumps({name: {MODEL_VERSION: model}}, separators=(",", ":")))


CONFIG_TEMPLATE = """\
# TorchServe configuration for kiln model '{name}' (written by `kiln torchserve`).
# Serve it from this folder: torchserve --start --ncs --model-store . --ts-config config.properties
inference_address=http://{host}:{inference}
management_address=http://{host}:{management}
metrics_address=http://{host}:{metrics}
grpc_inference_address={grpc_host}
grpc_management_address={grpc_host}
grpc_inference_port={grpc_inference}
grpc_management_port={grpc_management}
{token}# Registering models over the management API stays off (TorchServe's default); this one is
# loaded at start.
enable_model_api=false
# The handler imports kiln from the Python that runs torchserve: install kiln[torchserve] (and
# the artifact's runtime, e.g. kiln[openvino]) there; nothing is pip-installed per model.
install_py_dep_per_model=false
# true would let TS_<PROPERTY> environment variables (TS_INFERENCE_ADDRESS, ...) override the
# lines of this file, as containers often want; off, so that this file says what runs.
enable_envvars_config=false
metrics_mode=prometheus
max_request_size={max_request}
job_queue_size={queue}
default_workers_per_model={workers}
load_models={name}.mar
# batchSize / maxBatchDelay (ms) are kiln serve's --max-batch-size / --max-queue-delay-ms
models={models}
"""
