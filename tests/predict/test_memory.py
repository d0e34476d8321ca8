"""kiln predict streams: peak memory does not grow with the input's size."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import resource, sys, torch
torch.set_num_threads(1)
from kiln.predict import PredictOptions, predict_file
predict_file(sys.argv[1], sys.argv[2], sys.argv[3], PredictOptions(threads=1, progress=False))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
WORDS = "the bill app password parcel refund login late broken card order reset".split()


def peak_rss_kib(run: Path, rows: int, folder: Path, env: dict[str, str]) -> int:
    rng = random.Random(rows)
    data = folder / f"in-{rows}.csv"
    with open(data, "w", encoding="utf-8") as f:
        f.write("id,text\n")
        for i in range(rows):
            f.write(f"{i},{' '.join(rng.choices(WORDS, k=rng.randint(3, 12)))}\n")
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(run), str(data),
                           str(folder / f"out-{rows}.csv")],
                          capture_output=True, text=True, env=env, timeout=120, check=True)
    return int(done.stdout.split()[-1])


@pytest.mark.slow
def test_peak_memory_is_flat_in_the_input_size(exported_run: Path, tmp_path: Path,
                                                cli_env: dict[str, str]) -> None:
    small = peak_rss_kib(exported_run, 20_000, tmp_path, cli_env)
    large = peak_rss_kib(exported_run, 200_000, tmp_path, cli_env)
    assert large <= small * 1.10, f"peak RSS {small} KiB for 20,000 rows, {large} for 200,000"
