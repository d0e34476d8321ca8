"""What `kiln torchserve` asks of TorchServe (config.properties), in a module light enough for
the CLI to read its defaults without loading the runtime."""

from __future__ import annotations

from dataclasses import dataclass

from kiln.errors import KilnError

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}  # as kiln serve's: no key asked on these

@dataclass(frozen=True)
class TorchServeSettings:
    """What config.properties asks of TorchServe. The batching, limits and worker defaults are
    kiln serve's (kiln.serve.ServeSettings; tests/torchserve checks that they agree); the
    addresses are TorchServe's own defaults, on this machine only."""

    max_batch_size: int = 32  # TorchServe's batchSize: requests per handler call
    max_batch_delay_ms: int = 2  # maxBatchDelay: longest wait to fill a batch (whole ms)
    workers: int = 1  # minWorkers = maxWorkers: Python worker processes, each a model copy
    response_timeout_s: int = 30  # responseTimeout: a batch running longer restarts the worker
    max_request_bytes: int = 4 * 1024 * 1024  # max_request_size
    job_queue_size: int = 512  # requests waiting per model; beyond it TorchServe answers 503
    host: str = "127.0.0.1"
    inference_port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082
    grpc_inference_port: int = 7070
    grpc_management_port: int = 7071

    @property
    def token_auth(self) -> bool:
        """Whether TorchServe's token authorization stays on: when bound beyond this machine."""
        return self.host not in LOCAL_HOSTS

    def check(self) -> None:
        """Refuse settings TorchServe cannot take.

        Raises:
            KilnError: naming the setting and the range it must be in.
        """
        for name in ("max_batch_size", "workers", "response_timeout_s", "max_request_bytes",
                     "job_queue_size"):
            if getattr(self, name) < 1:
                raise KilnError(f"{name}={getattr(self, name)}: must be at least 1")
        if self.max_batch_delay_ms < 0:
            raise KilnError(f"max_batch_delay_ms={self.max_batch_delay_ms}: must be >= 0")
        ports = [self.inference_port, self.management_port, self.metrics_port,
                 self.grpc_inference_port, self.grpc_management_port]
        if not all(0 < p < 65536 for p in ports) or len(set(ports)) != len(ports):
            raise KilnError(f"ports {ports} (inference, management, metrics, gRPC inference, "
                            "gRPC management) must be five different port numbers")
