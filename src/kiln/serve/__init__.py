"""`kiln serve`: Open Inference Protocol (KServe v2) server with dynamic batching and metrics."""

from kiln.serve.app import ServeSettings, build_app
from kiln.serve.batcher import Batcher, QueueFull, take_batch
from kiln.serve.repository import discover_models
from kiln.serve.server import run_server

__all__ = ["Batcher", "QueueFull", "ServeSettings", "build_app", "discover_models", "run_server",
           "take_batch"]
