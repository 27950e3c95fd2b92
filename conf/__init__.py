"""fedlocal configuration: YAML defaults in this folder, the typed schema, the funnel."""

from conf.load import ConfigError, check_nodes, from_flat, load_config, to_flat, to_yaml
from conf.schema import Config

__all__ = ["Config", "ConfigError", "check_nodes", "from_flat", "load_config", "to_flat", "to_yaml"]
