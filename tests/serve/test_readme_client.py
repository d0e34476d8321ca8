"""The README's tritonclient example (HTTP and gRPC) runs as written against `kiln serve`."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

from tests.serve.test_server import free_port, start_server

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_client_example() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("Triton's own Python client works unchanged")
    match = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert match is not None, "the README lost its tritonclient example"
    return match.group(1)


def test_the_readme_tritonclient_example_runs_over_http_and_grpc(exported_run: Path) -> None:
    grpc_port = free_port()
    proc, url = start_server(exported_run, dict(os.environ, OMP_NUM_THREADS="1"), "--threads",
                             "1", "--grpc-port", str(grpc_port), name="mine")
    try:
        code = readme_client_example()
        assert "localhost:8000" in code and "localhost:8001" in code
        code = code.replace("localhost:8000", url).replace("localhost:8001",
                                                           f"127.0.0.1:{grpc_port}")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, str(README), "exec"), {})  # noqa: S102 (the README's own code)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # one answer over HTTP, one over gRPC: each starts with the labels; the same both ways
    answers = [line for line in printed.getvalue().splitlines() if line.startswith("[b'")]
    assert len(answers) == 2 and answers[0] == answers[1], printed.getvalue()
