"""What a run directory recorded, read once for the report: each file may be missing (a stage not
run yet) or unreadable (a note is kept, the report goes on without it)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kiln.errors import RunDirError


@dataclass(frozen=True)
class RunRecords:
    """The files of one run, as parsed JSON/YAML (None: the file is not there or not readable)."""

    run_dir: Path
    config: dict[str, Any] | None  # config.yaml: the resolved config, with the versions that ran
    metrics: tuple[dict[str, Any], ...]  # metrics.jsonl, one record per logged step or eval
    model: dict[str, Any] | None  # model/kiln.json: the trained model's manifest
    export: dict[str, Any] | None  # export/kiln.json: the manifest with every verified artifact
    parity: dict[str, Any] | None  # export/parity.json
    bench: dict[str, Any] | None  # bench/report.json
    problems: tuple[str, ...] = ()  # files that are there but could not be read, and why

    @property
    def name(self) -> str:
        """The run's name: its folder's (what `kiln serve` serves it as)."""
        return self.run_dir.resolve().name

    @property
    def labels(self) -> list[str]:
        """The label names, in the model's order ([] before training finished)."""
        source = self.model or self.export or {}
        return [str(name) for name in source.get("labels", [])]

    @property
    def training(self) -> dict[str, Any]:
        """The manifest's record of the kept weights: step, selection, their eval."""
        training = (self.model or {}).get("training", {})
        return training if isinstance(training, dict) else {}

    def records(self, kind: str) -> list[dict[str, Any]]:
        """The metrics records of one kind (``train`` or ``eval``), in step order."""
        return [r for r in self.metrics if r.get("kind") == kind and _number(r.get("step"))]

    def setting(self, dotted: str, default: Any = None) -> Any:
        """A config value by its dotted key (``train.batch_size``), else ``default``."""
        node: Any = self.config or {}
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


def read_run(run_dir: Path) -> RunRecords:
    """Read every file of ``run_dir`` the report shows.

    Raises:
        RunDirError: ``run_dir`` is not a folder, or holds none of a run's files.
    """
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a run directory (no such folder); give the folder "
                          "that `kiln run` or `kiln train` wrote, e.g. runs/default")
    if not any((run_dir / name).exists() for name in ("config.yaml", "metrics.jsonl", "model")):
        raise RunDirError(f"{run_dir} is not a kiln run: it has no config.yaml, metrics.jsonl or "
                          "model/; train it first (`kiln run` or `kiln train run_dir=...`)")
    problems: list[str] = []
    metrics = _read_metrics(run_dir / "metrics.jsonl", problems)
    return RunRecords(
        run_dir=run_dir,
        config=_read_mapping(run_dir, "config.yaml", problems),
        metrics=metrics,
        model=_read_mapping(run_dir, "model/kiln.json", problems),
        export=_read_mapping(run_dir, "export/kiln.json", problems),
        parity=_read_parity(run_dir, problems),
        bench=_read_mapping(run_dir, "bench/report.json", problems),
        problems=tuple(problems),
    )


def _read_mapping(run_dir: Path, name: str, problems: list[str]) -> dict[str, Any] | None:
    """The object in ``run_dir/name`` (JSON, or YAML by extension); None if missing or bad."""
    path = run_dir / name
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) if path.suffix == ".yaml" else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        problems.append(f"{name}: could not be read ({_first_line(exc)})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{name}: not an object but {type(data).__name__}")
        return None
    return data


def _read_parity(run_dir: Path, problems: list[str]) -> dict[str, Any] | None:
    """parity.json as ``{"artifacts": [...], ...}``; a bare list of artifacts is accepted too."""
    path = run_dir / "export" / "parity.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        problems.append(f"export/parity.json: could not be read ({_first_line(exc)})")
        return None
    if isinstance(data, list):
        return {"artifacts": data}
    if isinstance(data, dict) and isinstance(data.get("artifacts"), dict):  # a map by name
        data["artifacts"] = [{"artifact": k, **v} for k, v in data["artifacts"].items()]
    return data if isinstance(data, dict) else None


def _read_metrics(path: Path, problems: list[str]) -> tuple[dict[str, Any], ...]:
    """The records of metrics.jsonl; lines that are not JSON objects are skipped and counted
    (a run being written can end in half a line)."""
    if not path.is_file():
        return ()
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        problems.append(f"metrics.jsonl: could not be read ({_first_line(exc)})")
        return ()
    records, bad = [], 0
    for line in filter(str.strip, lines):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    if bad:
        problems.append(f"metrics.jsonl: {bad} line(s) not a JSON object, skipped")
    return tuple(records)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
