"""`kiln serve`: Open Inference Protocol (KServe v2) server with dynamic batching and metrics."""

from kiln.serve.app import ServeSettings, build_app
from kiln.serve.batcher import Batcher, QueueFull, take_batch
from kiln.serve.repository import discover_models

__all__ = ["Batcher", "QueueFull", "ServeSettings", "build_app", "discover_models", "take_batch"]
