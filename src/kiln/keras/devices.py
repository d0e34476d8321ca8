"""Device, mixed-precision policy, threads and tf.distribute strategy, resolved once from config.

The same choices as the torch path (``kiln.train.precision``): ``auto`` precision is float32 on a
CPU (measured 2-3.5x slower with a mixed policy on CPUs without bf16 units), mixed_bfloat16 on
GPUs that have bf16 (compute capability 8.0+), else mixed_float16, whose loss scaling Keras adds by
itself (a LossScaleOptimizer).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from kiln.config import Config
from kiln.errors import ConfigError
from kiln.extras import import_keras

tf, keras = import_keras()

POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


@dataclass(frozen=True)
class KerasSetup:
    """Where and how a keras run computes."""

    strategy: Any  # tf.distribute.Strategy
    strategy_name: str
    precision: str  # kiln's name: fp32, bf16, fp16
    policy: str  # the Keras dtype policy
    device: str  # cpu or gpu
    replicas: int
    is_chief: bool  # the worker that writes checkpoints, logs and the model
    task: str  # this worker's name in a multi-worker cluster ("" for one process)


def resolve_setup(cfg: Config) -> KerasSetup:
    """Resolve device, threads, precision and strategy of ``cfg``.

    Raises:
        ConfigError: a GPU asked for but not visible, fp16 without a GPU, threads that TensorFlow
            had already fixed, or a mirrored strategy with a single device.
    """
    tc = cfg.train
    device = _resolve_device(tc.device)
    if tc.num_threads:
        _set_threads(tc.num_threads)
    precision = _resolve_precision(tc.precision, device)
    strategy, name = _make_strategy(cfg.keras.strategy, device)
    return KerasSetup(strategy=strategy, strategy_name=name, precision=precision,
                      policy=POLICIES[precision], device=device,
                      replicas=int(strategy.num_replicas_in_sync), is_chief=_is_chief(strategy),
                      task=_task_name(strategy))


def _resolve_device(name: str) -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if name == "cuda" and not gpus:
        raise ConfigError("train.device=cuda but TensorFlow sees no GPU here; use train.device=cpu")
    if name == "cpu" and gpus:
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # TensorFlow already started on the GPU in this process
            if tf.config.get_visible_devices("GPU"):
                raise ConfigError("train.device=cpu, but TensorFlow was already started on the "
                                  "GPU in this process; start a new process") from None
        return "cpu"
    return "gpu" if gpus and name != "cpu" else "cpu"


def _set_threads(threads: int) -> None:
    if tf.config.threading.get_intra_op_parallelism_threads() == threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:
        raise ConfigError(f"train.num_threads={threads}: TensorFlow already started in this "
                          "process with another thread count; set it in a new process") from None


def _resolve_precision(precision: str, device: str) -> str:
    if precision == "auto":
        if device != "gpu":
            return "fp32"
        return "bf16" if _gpus_have_bf16() else "fp16"
    if precision == "fp16" and device != "gpu":
        raise ConfigError("train.precision=fp16 needs a GPU (mixed_float16 with loss scaling); "
                          "use fp32 or bf16 on CPU")
    if precision == "bf16" and device == "cpu":
        warnings.warn("train.precision=bf16 on CPU: usually slower than fp32 unless the CPU has "
                      "bf16 units (AMX/AVX512-BF16)", stacklevel=3)
    return precision


def _gpus_have_bf16() -> bool:
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if not capability or tuple(capability) < (8, 0):
            return False
    return True


def _make_strategy(name: str, device: str) -> tuple[Any, str]:
    gpus = tf.config.list_logical_devices("GPU") if device == "gpu" else []
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy(), name
    if name == "multi_worker":
        # The cluster (workers, this task's index) comes from the TF_CONFIG environment variable,
        # which TensorFlow reads itself; without it this is a cluster of one.
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        spec = strategy.cluster_resolver.cluster_spec()
        workers = sum(len(spec.as_dict().get(job, [])) for job in ("chief", "worker"))
        if workers > 1:
            # Seen with Keras 3.15.1 + TensorFlow 2.21 on CPU, even for a one-layer model: fit
            # passes the first distributed batch to strategy.reduce, which cannot reduce it
            # across workers ("Attempt to convert a value (PerReplica...) to a Tensor").
            raise ConfigError(
                f"keras.strategy=multi_worker: TF_CONFIG names {workers} workers, and Keras "
                f"{keras.__version__}'s fit fails on a MultiWorkerMirroredStrategy of more than "
                "one worker (it cannot reduce its first PerReplica batch). Train on one machine "
                "with keras.strategy=mirrored, or across machines with framework=torch")
        return strategy, name
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    if len(devices) < 2:
        raise ConfigError(f"keras.strategy=mirrored needs at least 2 devices; TensorFlow sees "
                          f"{devices}. Use keras.strategy=auto or default")
    return tf.distribute.MirroredStrategy(devices), name


def _is_chief(strategy: Any) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def _task_name(strategy: Any) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return ""
    return f"{resolver.task_type}-{resolver.task_id}"
