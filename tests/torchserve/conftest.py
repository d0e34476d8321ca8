"""The archive `kiln torchserve` writes from the shared exported run, built once per session."""

from __future__ import annotations

import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln.torchserve import TorchServeArchive, torchserve_run

# the test modules skip (saying why) where kiln[torchserve] is not installed
NOT_INSTALLED = ("kiln[torchserve] is not installed (pip install 'kiln[torchserve]'): "
                 "torch-model-archiver writes the archive, TorchServe runs its handler")


@pytest.fixture(scope="session")
def archive(exported_run: Path, tmp_path_factory: pytest.TempPathFactory) -> TorchServeArchive:
    """The default archive: the artifact `kiln serve` would serve, named clf."""
    out = tmp_path_factory.mktemp("torchserve") / "store"  # not in the shared run
    return torchserve_run(exported_run, out=out, name="clf")


def extract(mar: Path, folder: Path) -> Path:
    """The archive's files, as TorchServe unpacks them for its worker."""
    with zipfile.ZipFile(mar) as z:
        z.extractall(folder)
    return folder


@pytest.fixture()
def load_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], Any]]:
    """``load(model_dir)``: TorchServe's own model loader on an unpacked archive, as its worker
    does it (the handler module imported by name from the model folder, its one class
    instantiated and initialised); returns TorchServe's Service."""
    from ts.model_loader import TsModelLoader

    def load(model_dir: Path) -> Any:
        monkeypatch.syspath_prepend(str(model_dir))
        sys.modules.pop("kiln_handler", None)  # each archive's own copy
        return TsModelLoader().load("clf", str(model_dir), "kiln_handler.py", None, 4)

    yield load
    sys.modules.pop("kiln_handler", None)
