"""Models: the Transformer classifier, a registry by name, and the model folder with its manifest."""

from kiln.models.package import (
    MANIFEST,
    LoadedModel,
    build_manifest,
    file_digest,
    load_model_dir,
    read_manifest,
    resolve_model_dir,
    save_model_dir,
    save_model_files,
    verify_files,
    versions,
)
from kiln.models.registry import MODELS, build_model, model_kwargs
from kiln.models.transformer import TransformerClassifier

__all__ = [
    "MANIFEST",
    "MODELS",
    "LoadedModel",
    "TransformerClassifier",
    "build_manifest",
    "build_model",
    "file_digest",
    "load_model_dir",
    "model_kwargs",
    "read_manifest",
    "resolve_model_dir",
    "save_model_dir",
    "save_model_files",
    "verify_files",
    "versions",
]
