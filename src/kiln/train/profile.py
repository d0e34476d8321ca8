"""torch.profiler around the first training steps: a trace TensorBoard and Perfetto open, and a
table of the operators that take the time.

The loop marks the time it waits for the next batch with ``DATA_WAIT`` (a record_function), so the
summary can say what share of the profiled step time went to waiting for data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

from kiln.config import ProfilerConfig

DATA_WAIT = "kiln.data_wait"
PROFILE_DIR = "profile"  # under the run's tensorboard/ folder, where TensorBoard looks for traces


def make_profiler(pc: ProfilerConfig, trace_dir: Path, device: torch.device) -> profile:
    """A started-on-enter profiler: skip ``wait`` steps, warm up, record ``active`` steps once."""
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    trace_dir.mkdir(parents=True, exist_ok=True)
    return profile(
        activities=activities,
        schedule=schedule(wait=pc.wait, warmup=pc.warmup, active=pc.active, repeat=1),
        on_trace_ready=tensorboard_trace_handler(str(trace_dir)),
        record_shapes=True,
        profile_memory=True,
        with_stack=False,
    )


def summarize(prof: profile, device: torch.device, row_limit: int) -> str:
    """The top operators by self time and the share of step time spent waiting for data."""
    averages: Any = prof.key_averages()
    on_gpu = device.type == "cuda"
    sort_key = "self_cuda_time_total" if on_gpu else "self_cpu_time_total"
    table = averages.table(sort_by=sort_key, row_limit=row_limit)
    step_us = sum(e.cpu_time_total for e in averages if e.key.startswith("ProfilerStep"))
    wait_us = sum(e.cpu_time_total for e in averages if e.key == DATA_WAIT)
    lines = [f"top {row_limit} operators by self {'CUDA' if on_gpu else 'CPU'} time:", table]
    if step_us:
        lines.append(f"waiting for data: {wait_us / step_us:.1%} of the profiled step time "
                     f"({wait_us / 1e3:.1f} ms of {step_us / 1e3:.1f} ms)")
    return "\n".join(lines)
