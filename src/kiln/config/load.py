"""Build a :class:`Config` from a YAML file plus dotted ``key=value`` overrides."""

from __future__ import annotations

import difflib
import os
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kiln.config.schema import Config
from kiln.errors import ConfigError
from kiln.files import write_text_atomic


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> Config:
    """Read, merge and validate a config.

    Args:
        path: YAML file, or None for the defaults.
        overrides: ``section.key=value`` strings; values are parsed as YAML scalars/lists.
        base: a raw config (e.g. a run's saved config) that the file and overrides are laid over.

    Returns:
        The validated config.

    Raises:
        ConfigError: unreadable YAML, an override without ``=``, an unknown key, a wrong type or
            an impossible value. The message names the key and what is allowed.
    """
    raw: dict[str, Any] = _deep_copy(base) if base else {}
    if path is not None:
        _merge(raw, read_yaml(path))
    _merge(raw, parse_overrides(overrides))
    raw.pop("versions", None)  # informational only
    return validate(raw)


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping from ``path``, raising ConfigError that names the file on failure."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} cannot be read: {exc}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys, got {type(loaded).__name__}")
    return loaded


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn ``["train.lr=1e-3", "data.labels=[a,b]"]`` into a nested dict."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like key=value, e.g. train.lr=1e-3")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text  # an unparseable value is a string; validation decides if that is allowed
        if isinstance(value, str):
            value = _maybe_number(value)
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier override of '{part}'")
            node = child
        node[parts[-1]] = value
    return nested


def validate(raw: Mapping[str, Any]) -> Config:
    """Validate a raw nested dict into a Config, translating pydantic errors into ConfigError."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming the dotted key, what was given and what is allowed."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc) or "config"
        if err["type"] == "extra_forbidden":
            lines.append(_unknown_key_message(loc))
        elif err["type"] in ("value_error", "assertion_error"):
            # our model validators already name the keys involved
            lines.append("config: " + err["msg"].removeprefix("Value error, "))
        else:
            lines.append(f"config key {key}: {err['msg']} (got {err['input']!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def _unknown_key_message(loc: list[str]) -> str:
    section: type[BaseModel] = Config
    for part in loc[:-1]:
        field = section.model_fields.get(part)
        annotation = field.annotation if field else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            section = annotation
    known = [k for k in section.model_fields if k != "versions"]
    prefix = ".".join(loc[:-1])
    close = difflib.get_close_matches(loc[-1], known, n=1)
    hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else ""
    where = f"in '{prefix}'" if prefix else "at the top level"
    return f"unknown config key '{'.'.join(loc)}'{hint}. Known keys {where}: {', '.join(known)}"


def iter_keys(section: type[BaseModel] = Config, prefix: str = "") -> Iterator[tuple[str, str, Any, str]]:
    """Yield ``(dotted key, type, default, description)`` for every leaf key, for --help."""
    for name, field in section.model_fields.items():
        if name == "versions":
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from iter_keys(annotation, f"{prefix}{name}.")
            continue
        type_name = _type_name(annotation)
        default = field.get_default(call_default_factory=True)
        yield f"{prefix}{name}", type_name, default, field.description or ""


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def dump_config(cfg: Config, path: str | os.PathLike[str], versions: Mapping[str, str]) -> None:
    """Write the resolved config (reloadable by load_config) with the versions that ran it."""
    data = cfg.model_dump(mode="json")
    data["versions"] = dict(versions)
    write_text_atomic(Path(path), yaml.safe_dump(data, sort_keys=False))


def _maybe_number(text: str) -> Any:
    # YAML 1.1 reads "1e-3" as a string; users mean a number.
    try:
        return float(text) if any(c in text for c in ".eE") else text
    except ValueError:
        return text


def _merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = _deep_copy(value) if isinstance(value, Mapping) else value


def _deep_copy(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in d.items()}
