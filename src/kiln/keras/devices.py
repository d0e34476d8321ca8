"""Device, mixed-precision policy, threads and tf.distribute strategy, resolved once from config.

The same choices as the torch path (``kiln.train.precision``): ``auto`` precision on a CPU is
mixed_bfloat16 only where the CPU has bf16 matrix instructions and TensorFlow's own bf16 matrix
multiply measures at least ``BF16_MIN_SPEEDUP`` times fp32 here (a mixed policy measured 2-3.5x
slower on CPUs without bf16 units), else float32; on GPUs mixed_bfloat16 where they have bf16
(compute capability 8.0+), else mixed_float16, whose loss scaling Keras adds by itself (a
LossScaleOptimizer).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from kiln.config import Config
from kiln.errors import ConfigError
from kiln.extras import import_keras
from kiln.run.precision import (
    Precision,
    asked_precision,
    best_time_ratio,
    choose_cpu_precision,
)
from kiln.runtime.artifacts import cpu_bf16_units

tf, keras = import_keras()

POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


@dataclass(frozen=True)
class KerasSetup:
    """Where and how a keras run computes."""

    strategy: Any  # tf.distribute.Strategy
    strategy_name: str
    precision: str  # kiln's name: fp32, bf16, fp16
    precision_reason: str  # why (for auto, it starts with "auto: ")
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
    # the strategy first: a multi-worker one must configure TensorFlow before any op runs, and
    # resolving ``auto`` precision runs matrix multiplies
    strategy, name = _make_strategy(cfg.keras.strategy, device)
    precision = _resolve_precision(tc.precision, device)
    return KerasSetup(strategy=strategy, strategy_name=name, precision=precision.name,
                      precision_reason=precision.reason, policy=POLICIES[precision.name],
                      device=device,
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


def _resolve_precision(precision: str, device: str) -> Precision:
    if precision == "auto":
        if device != "gpu":
            return auto_cpu_precision()
        if _gpus_have_bf16():
            return Precision("bf16", "auto: this GPU supports bf16")
        return Precision("fp16", "auto: this GPU has no bf16, mixed_float16 with loss scaling")
    return asked_precision(precision, fp16_here=device == "gpu",
                           fp16_needs="a GPU (mixed_float16 with loss scaling)",
                           on_cpu=device == "cpu", auto_cpu=auto_cpu_precision, stacklevel=3)


@functools.cache
def auto_cpu_precision() -> Precision:
    """What ``auto`` chooses on this CPU for a Keras run (decided once per process)."""
    return choose_cpu_precision(cpu_bf16_units(), measure_bf16_matmul_speedup,
                                how="in TensorFlow (CPU time)")


def measure_bf16_matmul_speedup(n: int = 512, seconds: float = 0.3) -> float:
    """How many times faster TensorFlow multiplies two n x n bf16 matrices than fp32 ones on this
    CPU (the oneDNN kernels a mixed_bfloat16 policy runs), timed in this process's CPU time:
    TensorFlow multiplies on its own threads, and what other processes take does not count."""
    with tf.device("/CPU:0"):
        a = tf.random.stateless_normal((n, n), seed=(0, 0))
        b = tf.random.stateless_normal((n, n), seed=(0, 1))
        a16, b16 = tf.cast(a, tf.bfloat16), tf.cast(b, tf.bfloat16)
        return best_time_ratio(lambda: tf.linalg.matmul(a, b).numpy(),
                               lambda: tf.linalg.matmul(a16, b16).numpy(),
                               time.process_time, seconds)


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
