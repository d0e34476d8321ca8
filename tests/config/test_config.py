from pathlib import Path

import pytest

from kiln.config import MODEL_PRESETS, dump_config, load_config
from kiln.errors import ConfigError


def test_defaults_validate_and_small_preset_fills_model_sizes() -> None:
    cfg = load_config()
    assert cfg.model.embed_dim == MODEL_PRESETS["small"]["embed_dim"]
    assert cfg.train.precision == "auto"


def test_reference_preset_is_the_reference_design() -> None:
    m = load_config(overrides=["model.preset=reference"]).model
    assert (m.embed_dim, m.num_heads, m.num_layers, m.vocab_size) == (512, 8, 6, 10000)


def test_explicit_size_overrides_preset() -> None:
    m = load_config(overrides=["model.preset=reference", "model.num_layers=2"]).model
    assert m.num_layers == 2 and m.embed_dim == 512


def test_yaml_file_then_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 1e-3\n  batch_size: 8\ndata:\n  labels: [neg, pos]\n")
    cfg = load_config(f, ["train.batch_size=4"])
    assert cfg.train.lr == pytest.approx(1e-3)  # YAML reads 1e-3 as a string; we accept it
    assert cfg.train.batch_size == 4
    assert cfg.data.labels == ["neg", "pos"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.lrr=1", "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
        ("bogus=1", "unknown config key 'bogus'"),
        ("train.lr=-1", "train.lr: Input should be greater than 0"),
        ("train.batch_size=0", "train.batch_size: Input should be greater than or equal to 1"),
        ("train.batch_size=abc", "train.batch_size: Input should be a valid integer"),
        ("train.precision=fp8", "train.precision: Input should be 'auto', 'fp32', 'bf16' or 'fp16'"),
        ("model.num_heads=3", "must be divisible by model.num_heads (3)"),
        ("data.persistent_workers=true", "need data.num_workers > 0"),
        ("train", "must look like key=value"),
    ],
)
def test_bad_config_names_the_key(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert expected in str(info.value)


def test_bad_yaml_file_is_named(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_dumped_config_reloads_identically_with_versions(tmp_path: Path) -> None:
    cfg = load_config(overrides=["train.lr=0.002", "model.preset=tiny", "data.labels=[a,b,c]"])
    dump_config(cfg, tmp_path / "config.yaml", {"kiln": "x", "torch": "y"})
    text = (tmp_path / "config.yaml").read_text()
    assert "torch: y" in text
    assert load_config(tmp_path / "config.yaml") == cfg
