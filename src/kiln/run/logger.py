"""Where training metrics go: metrics.jsonl, TensorBoard event files, and the terminal."""

from __future__ import annotations

import itertools
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TextIO

from kiln.config import write_text_atomic
from kiln.metrics import EvalResult

METRICS_FILE = "metrics.jsonl"


class Logger(Protocol):
    """What a trainer logs to: a RunLogger, or a NullLogger on ranks that write nothing."""

    def log_train(self, step: int, scalars: dict[str, float]) -> None: ...

    def log_eval(self, step: int, result: EvalResult, epoch: int) -> None: ...

    def message(self, text: str) -> None: ...

    def close(self) -> None: ...


class RunLogger:
    """Writes one JSON object per logged step or evaluation, the same scalars to TensorBoard, and a
    progress bar (on a terminal) or plain periodic lines (otherwise).

    On resume from ``start_step``, entries after that step (written by the interrupted run after its
    last checkpoint) are dropped from metrics.jsonl and TensorBoard, so each step appears once.
    """

    def __init__(
        self, run_dir: Path, total_steps: int, start_step: int = 0, tensorboard: bool = True,
        progress: bool | None = None, stream: TextIO | None = None,
    ) -> None:
        self.path = run_dir / METRICS_FILE
        self.stream = stream or sys.stderr
        _truncate_after(self.path, start_step)
        self._jsonl = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._tb: Any = None
        if tensorboard:
            self._tb = ScalarEvents(run_dir / "tensorboard", purge_step=start_step or None)
        self._bar: Any = None
        if progress if progress is not None else self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, file=self.stream,
                             dynamic_ncols=True, unit="step")
        self.total_steps = total_steps
        self._last_step = start_step
        self._start = (time.monotonic(), start_step)  # for the elapsed time and ETA of plain lines

    def log_train(self, step: int, scalars: dict[str, float]) -> None:
        self._write({"step": step, "kind": "train", **scalars}, prefix="train")
        if self._bar is not None:
            self._bar.update(step - self._last_step)
            self._bar.set_postfix(loss=f"{scalars['loss']:.4f}", lr=f"{scalars['lr']:.2e}",
                                  samples_s=f"{scalars['samples_per_s']:.0f}")
        else:
            self.message(
                f"step {step}/{self.total_steps}  loss {scalars['loss']:.4f}  "
                f"lr {scalars['lr']:.2e}  {scalars['samples_per_s']:.0f} samples/s  "
                f"{self._timing(step)}"
            )
        self._last_step = step

    def log_eval(self, step: int, result: EvalResult, epoch: int) -> None:
        self._write({"step": step, "kind": "eval", "epoch": epoch, **result.scalars()}, prefix="eval")
        self.message(
            f"eval at step {step}: loss {result.loss:.4f}  accuracy {result.accuracy:.4f}  "
            f"macro_f1 {result.macro_f1:.4f}"
        )

    def _timing(self, step: int) -> str:
        """"elapsed 1:05  ETA 2:10": wall time since this process started training, and the
        rest of it at the pace so far (evaluations and checkpoints included)."""
        started, first = self._start
        elapsed = time.monotonic() - started
        done = step - first
        eta = _clock(elapsed / done * (self.total_steps - step)) if done > 0 else "?"
        return f"elapsed {_clock(elapsed)}  ETA {eta}"

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        self._jsonl.close()

    def _write(self, record: dict[str, Any], prefix: str) -> None:
        record["time"] = round(time.time(), 3)
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "kind", "time", "epoch") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{prefix}/{key}", value, record["step"])


class ScalarEvents:
    """A TensorBoard event file of scalars, as torch's SummaryWriter writes one, from
    tensorboard's protobufs and record writer alone.

    torch's writer opens its file through ``tensorboard.compat.tf``, which imports TensorFlow
    whenever it is installed (kiln's keras extra): seconds per process and a page of TensorFlow's
    log lines, for a file format that needs neither.
    """

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.record_writer import RecordWriter

        log_dir.mkdir(parents=True, exist_ok=True)
        self._records = RecordWriter(_new_event_file(log_dir))
        self._event = Event
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))
        if purge_step is not None:  # TensorBoard drops what an interrupted run logged after it
            self._write(Event(wall_time=time.time(), step=purge_step,
                              session_log=SessionLog(status=SessionLog.START)))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value))])
        self._write(self._event(wall_time=time.time(), step=step, summary=summary))

    def close(self) -> None:
        self._records.close()

    def _write(self, event: Any) -> None:
        self._records.write(event.SerializeToString())
        self._records.flush()


def _new_event_file(log_dir: Path) -> BinaryIO:
    """A new file named as TensorBoard writers name theirs; the last number keeps two loggers of
    one process and second apart (a resume in the same process)."""
    stem = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    for n in itertools.count():
        try:
            return open(log_dir / f"{stem}.{n}", "xb")  # noqa: SIM115 (closed by ScalarEvents)
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


class NullLogger:
    """The logger of ranks other than 0 in distributed training: they write nothing."""

    def log_train(self, step: int, scalars: dict[str, float]) -> None:
        pass

    def log_eval(self, step: int, result: EvalResult, epoch: int) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def _clock(seconds: float) -> str:
    """h:mm:ss, or m:ss under an hour."""
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _truncate_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    if len(kept) != len(lines):
        write_text_atomic(path, "".join(line + "\n" for line in kept))
