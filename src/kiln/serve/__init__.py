"""`kiln serve`: Open Inference Protocol (KServe v2) server with dynamic batching and metrics."""

from kiln.serve.app import build_app
from kiln.serve.batcher import Batcher, QueueFull, take_batch
from kiln.serve.core import InferenceCore, InferResult
from kiln.serve.errors import ServeError
from kiln.serve.repository import discover_models
from kiln.serve.server import run_server
from kiln.serve.settings import ServeSettings

__all__ = ["Batcher", "InferResult", "InferenceCore", "QueueFull", "ServeError", "ServeSettings",
           "build_app", "discover_models", "run_server", "take_batch"]
