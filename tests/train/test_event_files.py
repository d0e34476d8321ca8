"""kiln's TensorBoard event files: read back by TensorBoard's own reader, a resume's purge step
drops what the interrupted run logged after it, and writing them never imports TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kiln.run.logger import ScalarEvents


def scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_a_resumed_run_replaces_what_the_interrupted_one_logged_after_its_checkpoint(
        tmp_path: Path) -> None:
    first = ScalarEvents(tmp_path)
    for step in range(1, 9):
        first.add_scalar("train/loss", 10.0 - step, step)
    first.close()  # "killed" after step 8; its last checkpoint was step 5
    resumed = ScalarEvents(tmp_path, purge_step=6)
    for step in range(6, 11):
        resumed.add_scalar("train/loss", 100.0 + step, step)
    resumed.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2  # same second: two files
    assert scalars(tmp_path, "train/loss") == [(1, 9.0), (2, 8.0), (3, 7.0), (4, 6.0), (5, 5.0),
                                               (6, 106.0), (7, 107.0), (8, 108.0), (9, 109.0),
                                               (10, 110.0)]


def test_writing_event_files_does_not_import_tensorflow(tmp_path: Path) -> None:
    code = ("import sys; from pathlib import Path; from kiln.run.logger import ScalarEvents; "
            f"w = ScalarEvents(Path({str(tmp_path)!r})); w.add_scalar('a', 1.0, 1); w.close(); "
            "print('tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
    assert done.stderr == ""  # none of TensorFlow's start-up lines
