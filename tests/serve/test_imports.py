"""A serve worker loads the runtime and the server, not the training stack."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.serve.test_server import free_port, wait_for_address, wait_until_ready

IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", re.MULTILINE)


def test_kiln_serve_imports_no_training_module(exported_run: Path, tmp_path: Path) -> None:
    # Python logs every module it imports (in every worker process too, which inherits the
    # variable); read from the real `kiln serve`, from start-up until it has answered a request.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPROFILEIMPORTTIME="1")
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kiln", "serve", str(exported_run),
                                 "--port", "0", "--workers", "2", "--threads", "1",
                                 "--grpc-port", str(free_port())], env=env,  # gRPC's imports too
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        url = wait_for_address(proc, log, deadline)
        wait_until_ready(proc, url, log, deadline)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    imported = set(IMPORTED.findall(log.read_text()))
    # the log is read correctly: the server, the runtime and the CLI are in it
    assert {"kiln.cli", "kiln.serve.core", "kiln.runtime.load",
            "kiln.serve.grpc_adapter"} <= imported
    assert sorted(m for m in imported if m == "kiln.train" or m.startswith("kiln.train.")) == []
    assert sorted(m for m in imported if m.startswith(("kiln.export", "kiln.keras"))) == []
