"""TensorRT: an fp16 engine built from the exported ONNX, for NVIDIA GPUs.

Needs the `tensorrt` package and a CUDA GPU (`kiln.extras.installed("tensorrt")`); the engine is specific to
the GPU model and TensorRT version that built it, so `kiln export` builds it on the serving
machine's kind of GPU. The optimisation profile covers batch 1..max_batch and length
1..max_length, the same dynamic axes as the ONNX file.
"""

from __future__ import annotations

from pathlib import Path

from kiln.export.onnx_export import INPUT_NAMES, ExportError


def build_engine(onnx_path: Path, plan_path: Path, max_length: int, max_batch: int = 64,
                 fp16: bool = True) -> Path:
    """Parse ``onnx_path``, build a (fp16) engine with a dynamic-shape profile, write the plan.

    Raises:
        ExportError: TensorRT cannot parse the graph or build an engine.
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch (the only mode in TensorRT 10)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name in INPUT_NAMES:
        profile.set_shape(name, (1, 1), (max(1, max_batch // 4), max(1, max_length // 2)),
                          (max_batch, max_length))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT could not build an engine from {onnx_path.name}")
    tmp = plan_path.with_name(f".{plan_path.name}.tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(plan_path)
    return plan_path
