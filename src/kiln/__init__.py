"""kiln: train, export, verify, benchmark and serve text classifiers.

The public Python API; everything the `kiln` command does is reachable from Python:
``kiln.train.train(kiln.load_config(overrides=[...]))`` trains, ``kiln.evaluate_file`` evaluates.

Names are imported on first use (PEP 562), so importing one corner of kiln (a serve worker, say)
does not load the others (the training stack).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Config": "kiln.config",
    "load_config": "kiln.config",
    "ConfigError": "kiln.errors",
    "DataError": "kiln.errors",
    "KilnError": "kiln.errors",
    "RunDirError": "kiln.errors",
    "TransformerClassifier": "kiln.models",
    "load_model_dir": "kiln.models",
    "EvalResult": "kiln.metrics",
    "TrainResult": "kiln.run",
    "evaluate_file": "kiln.evaluate",
}

def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kiln' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "Config",
    "ConfigError",
    "DataError",
    "EvalResult",
    "KilnError",
    "RunDirError",
    "TrainResult",
    "TransformerClassifier",
    "__version__",
    "evaluate_file",
    "load_config",
    "load_model_dir",
]
