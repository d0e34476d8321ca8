"""The report page: its sections in order, rendered from what the run recorded, written
atomically as ``RUN/report.html``."""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from pathlib import Path

import kiln
from kiln.files import write_text_atomic
from kiln.report.artifacts import benchmark_section, export_section
from kiln.report.data import data_section
from kiln.report.html import Html, note, page
from kiln.report.records import RunRecords, read_run
from kiln.report.summary import config_section, serve_section, summary_section
from kiln.report.training import evaluation_section, training_section

REPORT_FILE = "report.html"

# (element id, heading, builder): the ids are stable, scripts and tests find sections by them
SECTIONS: tuple[tuple[str, str, Callable[[RunRecords], Html]], ...] = (
    ("summary", "Summary", summary_section),
    ("config", "Config", config_section),
    ("data", "Data", data_section),
    ("training", "Training", training_section),
    ("evaluation", "Evaluation", evaluation_section),
    ("export", "Export and parity", export_section),
    ("benchmark", "Benchmark", benchmark_section),
    ("serve", "Serve and deploy", serve_section),
)
SECTION_IDS = tuple(id_ for id_, _, _ in SECTIONS)


def render_report(run_dir: str | os.PathLike[str]) -> str:
    """The report of ``run_dir`` as one self-contained HTML document (no script, no link out).

    Raises:
        RunDirError: ``run_dir`` is not a run directory.
    """
    run = read_run(Path(run_dir))
    sections = [(id_, title, _build(build, run)) for id_, title, build in SECTIONS]
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return page(f"kiln report: {run.name}", f"{run.run_dir} · written {now} by kiln "
                f"{kiln.__version__}", sections)


def _build(build: Callable[[RunRecords], Html], run: RunRecords) -> Html:
    """One section; a file of an unexpected shape (another kiln version, a hand edit) costs
    that section, not the page."""
    try:
        return build(run)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        return note(f"this section could not be built from the run's files "
                    f"({type(exc).__name__}: {exc})")


def write_report(run_dir: str | os.PathLike[str],
                 out: str | os.PathLike[str] | None = None) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``RUN/report.html``) atomically and
    return its path.

    Raises:
        RunDirError: ``run_dir`` is not a run directory.
    """
    target = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    write_text_atomic(target, render_report(run_dir))
    return target
