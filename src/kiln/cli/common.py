"""Argument helpers shared by the subcommands that take a config."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from kiln.config import Config, iter_keys, load_config
from kiln.errors import ConfigError
from kiln.run.run_dir import saved_config


def config_help() -> str:
    """Every config key with its type, default and meaning, for --help."""
    lines = ["config keys (set in CONFIG.yaml or as key=value; unknown keys are errors):"]
    for key, type_name, default, description in iter_keys():
        lines.append(f"  {key} ({type_name}, default {default!r})")
        lines.extend(textwrap.wrap(description, width=88, initial_indent="      ",
                                   subsequent_indent="      "))
    return "\n".join(lines)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "settings", nargs="*", metavar="[CONFIG.yaml] [key=value ...]",
        help="an optional YAML config file, then dotted overrides such as train.lr=1e-3",
    )
    parser.add_argument(
        "--fresh", action="store_true",
        help="start over even if run_dir holds checkpoints (default: resume from the latest one)",
    )


def resolve_config(settings: list[str], fresh: bool) -> Config:
    """Config from ``[CONFIG.yaml] [key=value ...]``; laid over the run's saved config when resuming.

    Raises:
        ConfigError: bad file, key or value.
    """
    path: Path | None = None
    overrides = list(settings)
    if overrides and "=" not in overrides[0]:
        path = Path(overrides.pop(0))
    stray = [s for s in overrides if "=" not in s]
    if stray:
        raise ConfigError(f"expected key=value after the config file, got {stray[0]!r}")
    cfg = load_config(path, overrides)
    if not fresh:
        saved = saved_config(Path(cfg.run_dir))
        if saved is not None:
            # Resuming: what the user gives now is laid over what the run was started with.
            cfg = load_config(path, overrides, base=saved)
    return cfg
