"""Models: the Transformer classifier, a pretrained Hugging Face encoder with a head, a registry by
name, and the model folder with its manifest."""

from kiln.models.hf_encoder import HFEncoderClassifier
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
from kiln.models.registry import (
    MODELS,
    build_model,
    init_model,
    model_kwargs,
    ort_optimizer_options,
)
from kiln.models.transformer import TransformerClassifier

__all__ = [
    "MANIFEST",
    "MODELS",
    "HFEncoderClassifier",
    "LoadedModel",
    "TransformerClassifier",
    "build_manifest",
    "build_model",
    "file_digest",
    "init_model",
    "load_model_dir",
    "model_kwargs",
    "ort_optimizer_options",
    "read_manifest",
    "resolve_model_dir",
    "save_model_dir",
    "save_model_files",
    "verify_files",
    "versions",
]
