"""Configs: one frozen dataclass per component, loaded from YAML with type-checked dotted overrides."""

from .checks import check_out_dir
from ..echo import cut, shown
from .loader import (apply_overrides, config_from_dict, config_to_dict, dump_config, load_config,
                     parse_override, read_yaml, save_config)
from .schema import (ALGORITHMS, ALLOWED_BITS, AlgorithmConfig, CommConfig, CompressionConfig, Config,
                     ConfigError, DataConfig, EmulationConfig, ModelConfig, PSConfig, RunConfig,
                     TopologyConfig)

__all__ = [
    "ALGORITHMS", "ALLOWED_BITS", "AlgorithmConfig", "CommConfig", "CompressionConfig", "Config",
    "ConfigError", "DataConfig", "EmulationConfig", "ModelConfig", "PSConfig", "RunConfig", "TopologyConfig",
    "apply_overrides", "check_out_dir", "config_from_dict", "config_to_dict", "cut", "dump_config", "load_config",
    "parse_override", "read_yaml", "save_config", "shown",
]
