"""The validated config tree (YAML + ``key=value`` overrides) and its loader."""

from kiln.config.load import (
    dump_config,
    format_validation_error,
    iter_keys,
    load_config,
    parse_overrides,
    read_yaml,
    validate,
    write_text_atomic,
)
from kiln.config.schema import (
    MODEL_PRESETS,
    Config,
    DataConfig,
    KerasConfig,
    ModelConfig,
    ProfilerConfig,
    TokenizerConfig,
    TrainConfig,
)

__all__ = [
    "MODEL_PRESETS",
    "Config",
    "DataConfig",
    "KerasConfig",
    "ModelConfig",
    "ProfilerConfig",
    "TokenizerConfig",
    "TrainConfig",
    "dump_config",
    "format_validation_error",
    "iter_keys",
    "load_config",
    "parse_overrides",
    "read_yaml",
    "validate",
    "write_text_atomic",
]
