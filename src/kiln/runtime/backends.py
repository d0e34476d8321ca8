"""Backends: torch eager (fp32, dynamic int8), ONNX Runtime (any ONNX artifact), OpenVINO (IR,
f32 or bf16) and TensorRT."""

from __future__ import annotations

import functools
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


class TorchBackend:
    """The trained nn.Module in eval mode, optionally with dynamic int8 Linear layers (but for
    ``fp32_layers``, named as in ``named_modules``)."""

    def __init__(self, model: nn.Module, *, int8: bool = False, threads: int | None = None,
                 fp32_layers: Sequence[str] = ()) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.int8 = int8
        self.model = quantize_dynamic_int8(model, fp32_layers) if int8 else model.eval()
        self.name = "torch-int8" if int8 else "torch-fp32"

    @torch.inference_mode()
    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        # The MultiheadAttention fast path cannot run quantised Linear layers; it is switched
        # off only around int8 calls so that fp32 keeps it.
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(fastpath and not self.int8)
        try:
            logits = self.model(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        out: np.ndarray = logits.float().numpy()
        return out

    def info(self) -> dict[str, Any]:
        return {"backend": "torch", "precision": "int8" if self.int8 else "fp32",
                "threads": torch.get_num_threads(), "torch": str(torch.__version__)}


def linear_layers(model: nn.Module) -> list[str]:
    """Names of the nn.Linear layers that dynamic int8 quantises (not MultiheadAttention's output
    projection, a subclass the quantiser leaves alone)."""
    return [name for name, module in model.named_modules() if type(module) is nn.Linear]


def quantize_dynamic_int8(model: nn.Module, fp32_layers: Sequence[str] = ()) -> nn.Module:
    """Dynamic int8 quantisation of every nn.Linear but ``fp32_layers`` (weights int8 per output
    channel, activations quantised per batch)."""
    keep = set(fp32_layers)
    unknown = keep - set(linear_layers(model))
    if unknown:
        raise ValueError(f"fp32 layers {sorted(unknown)} are not Linear layers of the model")
    # per-channel weight scales, as ONNX Runtime's: one large row no longer coarsens the others
    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    spec: dict[Any, Any] = {name: qconfig for name in linear_layers(model) if name not in keep}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao is deprecated upstream
        warnings.simplefilter("ignore", UserWarning)
        quantized: nn.Module = torch.ao.quantization.quantize_dynamic(
            model.eval(), spec, dtype=torch.qint8)
    return quantized


class OrtBackend:
    """An ONNX Runtime CPU (or CUDA) session over one ONNX file."""

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None,
                 providers: list[str] | None = None, spin_wait: bool = True) -> None:
        """``spin_wait``: idle intra-op threads spin for the next run (lowest latency when runs
        come back to back); off, they sleep and leave the CPU to other work, as a server needs."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         "1" if spin_wait else "0")
        self.spin_wait = spin_wait
        self.path = Path(path)
        self.session = ort.InferenceSession(
            str(self.path), options, providers=providers or ["CPUExecutionProvider"])
        self.threads = threads
        self.name = f"onnxruntime:{self.path.name}"
        self._output = self.session.get_outputs()[0].name

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        (logits,) = self.session.run(
            [self._output], {"input_ids": input_ids, "attention_mask": attention_mask})
        out: np.ndarray = np.asarray(logits, dtype=np.float32)
        return out

    def info(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {"backend": "onnxruntime", "file": self.path.name,
                "providers": self.session.get_providers(),
                "intra_op_threads": self.threads or "default", "spin_wait": self.spin_wait,
                "onnxruntime": ort.__version__}


@functools.cache
def openvino_core() -> Any:
    """The process's one ``openvino.Core``.

    Each Core's CPU plugin installs a signal stack for the calling thread when it starts and puts
    back the one it found when it is destroyed. Cores freed out of creation order therefore leave
    the thread on a freed signal stack, and the next Python signal handler (a DataLoader worker's
    SIGCHLD, say) kills the process with SIGSEGV. One Core that lives as long as the process
    avoids that, and is what OpenVINO recommends anyway.
    """
    import openvino as ov

    return ov.Core()


# Where an IR records the INFERENCE_PRECISION_HINT it was verified with (kiln.export writes it;
# OpenVINO itself does not read it: OpenVinoBackend does)
PRECISION_RT_INFO = ["runtime_options", "INFERENCE_PRECISION_HINT"]


def recorded_precision(model: Any) -> str | None:
    """The inference precision an ``openvino.Model`` records in its rt_info (``"bf16"``), if any."""
    if not model.has_rt_info(PRECISION_RT_INFO):
        return None
    return str(model.get_rt_info(PRECISION_RT_INFO).astype(str))


class OpenVinoBackend:
    """An OpenVINO CPU compiled model over an IR file (optional extra ``kiln[openvino]``).

    Every new input shape costs OpenVINO's CPU plugin a kernel compilation and a cache entry
    (about 0.3 MB each on the tiny test model, measured: 3,000 random (batch, length) shapes grew a
    process from 0.3 to 1.2 GB). So inputs are padded to a few shapes (see ``_bucketed``; padding
    is masked, the logits are unchanged) and the cache holds at most ``cache_capacity`` shapes:
    memory stays bounded whatever clients send.
    """

    def __init__(self, xml: str | os.PathLike[str], *, threads: int | None = None,
                 max_length: int | None = None, length_bucket: int = 16,
                 cache_capacity: int = 256, inference_precision: str | None = None,
                 streams: int = 1) -> None:
        """``inference_precision``: what OpenVINO computes the operations that are not int8 in,
        ``"f32"`` or ``"bf16"``; by default the one the IR records (its artifact kind's, written
        at export), else f32. ``streams``: inferences that can run at once (threads calling
        `run` together), each on ``threads`` threads.

        One stream runs one inference at a time: measured on the reference model (2 cores, two
        threads calling at once, 1 thread each), one stream served 166-202 texts/s, two 258-329.
        The threads are not pinned to cores: OpenVINO pins each process's from the first core,
        so two processes (kiln serve --workers 2) would share one."""
        self.path = Path(xml)
        model = openvino_core().read_model(str(self.path))
        # OpenVINO runs non-quantised ops in bf16 by default on CPUs with avx512_bf16 or AMX, about
        # 5e-3 off the trained model's logits: ask for the precision parity verified, on whatever
        # CPU the artifact is later served from. (Asked for bf16, a CPU without it keeps f32: so
        # reads the plugin's config code, 2023-24 sources; not tried on such a CPU.)
        precision = inference_precision or recorded_precision(model) or "f32"
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY",
                                  "INFERENCE_PRECISION_HINT": precision,
                                  "CPU_RUNTIME_CACHE_CAPACITY": cache_capacity,
                                  "ENABLE_CPU_PINNING": False}
        if streams > 1:
            config["NUM_STREAMS"] = streams
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads * streams
        self.compiled = openvino_core().compile_model(model, "CPU", config)
        # an infer request runs one inference at a time: each thread gets its own (kiln serve
        # runs --instances batches at once on one backend)
        self._requests = threading.local()
        self.threads = threads
        self.max_length, self.length_bucket = max_length, length_bucket
        self.name = f"openvino:{self.path.name}"

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        rows = len(input_ids)
        input_ids, attention_mask = self._bucketed(input_ids, attention_mask)
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        result = request.infer({"input_ids": input_ids, "attention_mask": attention_mask})
        out: np.ndarray = np.asarray(result[self.compiled.output(0)], dtype=np.float32)
        return out[:rows]

    def padded_shape(self, rows: int, length: int) -> tuple[int, int]:
        """The (batch, length) this backend computes for a batch of ``rows`` x ``length``."""
        if self.max_length is None:
            return rows, length
        return 1 << (rows - 1).bit_length(), length if length >= self.max_length else min(
            -(-length // self.length_bucket) * self.length_bucket, self.max_length)

    def _bucketed(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                  ) -> tuple[np.ndarray, np.ndarray]:
        """The inputs padded to one of a few shapes (`padded_shape`): lengths up to the next
        multiple of ``length_bucket`` tokens (masked), batches up to the next power of two (extra
        rows whose results are dropped). With 32-row batches of up to 128 tokens: 48 shapes."""
        rows, length = input_ids.shape
        target_rows, target_length = self.padded_shape(rows, length)
        if (target_rows, target_length) == (rows, length):
            return input_ids, attention_mask
        ids = np.zeros((target_rows, target_length), dtype=input_ids.dtype)
        mask = np.zeros((target_rows, target_length), dtype=attention_mask.dtype)
        ids[:rows, :length], mask[:rows, :length] = input_ids, attention_mask
        mask[rows:, 0] = 1  # an extra row sees one token: nothing in it divides by zero
        return ids, mask

    def info(self) -> dict[str, Any]:
        import openvino as ov

        precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        return {"backend": "openvino", "file": self.path.name, "threads": self.threads or "default",
                "inference_precision": precision, "length_bucket": self.length_bucket,
                "max_length": self.max_length, "openvino": ov.__version__}


class TensorRtBackend:
    """A TensorRT engine (plan file) on a CUDA GPU; inputs and outputs travel as torch CUDA
    tensors. Needs the `tensorrt` package; see kiln.export.tensorrt_export."""

    def __init__(self, plan: str | os.PathLike[str]) -> None:
        import tensorrt as trt

        self.path = Path(plan)
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not load {self.path} (built by another TensorRT "
                               "version or GPU?)")
        self.context = self.engine.create_execution_context()
        self._running = threading.Lock()  # one execution context runs one inference at a time
        self.name = f"tensorrt:{self.path.name}"
        self._dtypes = {self.engine.get_tensor_name(i): self.engine.get_tensor_dtype(
            self.engine.get_tensor_name(i)) for i in range(self.engine.num_io_tensors)}

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with self._running:
            return self._run(input_ids, attention_mask)

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import tensorrt as trt

        device = torch.device("cuda")
        stream = torch.cuda.current_stream(device)
        tensors = {}
        for name, array in (("input_ids", input_ids), ("attention_mask", attention_mask)):
            dtype = torch.int32 if self._dtypes[name] == trt.DataType.INT32 else torch.int64
            tensors[name] = torch.from_numpy(array).to(device, dtype)
            self.context.set_input_shape(name, tuple(array.shape))
        out_shape = tuple(self.context.get_tensor_shape("logits"))
        out_dtype = torch.float16 if self._dtypes["logits"] == trt.DataType.HALF else torch.float32
        tensors["logits"] = torch.empty(out_shape, dtype=out_dtype, device=device)
        for name, tensor in tensors.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution failed for {self.path.name}")
        stream.synchronize()
        out: np.ndarray = tensors["logits"].float().cpu().numpy()
        return out

    def info(self) -> dict[str, Any]:
        import tensorrt as trt

        return {"backend": "tensorrt", "file": self.path.name, "tensorrt": trt.__version__,
                "gpu": torch.cuda.get_device_name()}
