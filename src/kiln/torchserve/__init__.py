"""TorchServe as a deploy target: `kiln torchserve RUN` writes a model archive (``.mar``) of a
run's verified artifact with kiln's handler, and the ``config.properties`` that serves it.

Names are imported on first use (PEP 562): the CLI reads the settings' defaults without loading
the runtime.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TorchServeArchive": "kiln.torchserve.archive",
    "artifact_files": "kiln.torchserve.archive",
    "config_properties": "kiln.torchserve.archive",
    "torchserve_run": "kiln.torchserve.archive",
    "TorchServeSettings": "kiln.torchserve.settings",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kiln.torchserve' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_EXPORTS)
