import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_package_type_checks_with_mypy() -> None:
    done = subprocess.run([sys.executable, "-m", "mypy", "src/kiln"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
