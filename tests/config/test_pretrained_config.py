"""Config of a pretrained encoder (model.name=hf_encoder): what is required and what is refused.

None of these need the kiln[hf] extra: they check the config and the model folder, not the model.
"""

import json
from pathlib import Path

import pytest

from kiln.config import dump_config, load_config
from kiln.config.pretrained import max_positions, resolve_pretrained_dir
from kiln.data import prepare_data
from kiln.errors import ConfigError
from kiln.train import train


def test_hf_encoder_needs_model_path() -> None:
    with pytest.raises(ConfigError, match="model.name=hf_encoder needs model.path"):
        load_config(overrides=["model.name=hf_encoder"])


@pytest.mark.parametrize("key", ["embed_dim=256", "num_layers=4", "vocab_size=900"])
def test_size_fields_are_refused_rather_than_silently_ignored(key: str) -> None:
    with pytest.raises(ConfigError, match=f"model.{key} cannot be set with model.name=hf_encoder"):
        load_config(overrides=["model.name=hf_encoder", "model.path=minilm", f"model.{key}"])


def test_a_trained_tokenizers_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="data.tokenizer.* cannot be set"):
        load_config(overrides=["model.name=hf_encoder", "model.path=minilm",
                               "data.tokenizer.kind=bpe"])


def test_model_path_without_hf_encoder_is_refused() -> None:
    with pytest.raises(ConfigError, match="model.path is only read by model.name=hf_encoder"):
        load_config(overrides=["model.path=minilm"])


def test_hf_encoder_config_has_no_sizes_and_reloads_where_the_folder_is_absent(
        tmp_path: Path) -> None:
    # A finished run's config.yaml must load (export, bench) on a machine without model.path.
    cfg = load_config(overrides=["model.name=hf_encoder", f"model.path={tmp_path / 'gone'}"])
    assert (cfg.model.embed_dim, cfg.model.num_heads, cfg.model.vocab_size) == (0, 0, 0)
    dump_config(cfg, tmp_path / "config.yaml", {"kiln": "test"})
    assert load_config(tmp_path / "config.yaml") == cfg


def model_folder(root: Path, files: dict[str, str]) -> Path:
    root.mkdir()
    for name, text in files.items():
        (root / name).write_text(text)
    return root


CONFIG = json.dumps({"model_type": "bert", "max_position_embeddings": 64})


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (None, "is not a folder"),
        ({}, "has no config.json"),
        ({"config.json": CONFIG}, "has no weights (looked for model.safetensors"),
    ],
)
def test_a_bad_model_folder_is_named(tmp_path: Path, files: dict[str, str] | None,
                                     message: str) -> None:
    folder = tmp_path / "encoder"
    if files is not None:
        model_folder(folder, files)
    with pytest.raises(ConfigError, match="model.path .*encoder") as err:
        resolve_pretrained_dir(str(folder))
    assert message in str(err.value)


def test_max_length_longer_than_the_encoders_positions_is_an_error(
        small_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "encoder", {"config.json": CONFIG, "model.safetensors": ""})
    cfg = load_config(overrides=[
        "model.name=hf_encoder", f"model.path={folder}", "data.max_length=128",
        f"data.train={small_dataset[0]}", f"data.eval={small_dataset[1]}"])
    with pytest.raises(ConfigError, match=r"data.max_length=128 is longer than the 64 positions"):
        prepare_data(cfg, tmp_path / "run")


def test_roberta_style_position_offset_is_not_usable_length() -> None:
    assert max_positions({"model_type": "bert", "max_position_embeddings": 512}) == 512
    assert max_positions({"model_type": "roberta", "max_position_embeddings": 514,
                          "pad_token_id": 1}) == 512


def test_training_from_a_missing_folder_fails_before_any_step(
        small_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    cfg = load_config(overrides=[
        "model.name=hf_encoder", f"model.path={tmp_path / 'nowhere'}",
        f"data.train={small_dataset[0]}", f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="model.path .*nowhere is not a folder"):
        train(cfg, progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()
