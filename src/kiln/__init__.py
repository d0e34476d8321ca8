"""kiln: train, export, verify, benchmark and serve text classifiers.

The public Python API; everything the `kiln` command does is reachable from Python:
``kiln.train.train(kiln.load_config(overrides=[...]))`` trains, ``kiln.evaluate_file`` evaluates.
"""

__version__ = "0.1.0"

from kiln.config import Config, load_config  # noqa: E402
from kiln.errors import ConfigError, DataError, KilnError, RunDirError  # noqa: E402
from kiln.models import TransformerClassifier, load_model_dir  # noqa: E402
from kiln.train import EvalResult, TrainResult  # noqa: E402
from kiln.train.evaluate import evaluate_file  # noqa: E402

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
