"""The config: schema (``schema.py``), loading and validation (``loader.py``), the original
project's layout (``original.py``). ``load_config(path, opts) -> Config``."""
from libs.config.loader import (add_config_args, config_to_yaml, describe_schema, dump_config,
                                load_config, resolve_config)
from libs.config.schema import Config, NmsConfig

__all__ = ["Config", "NmsConfig", "add_config_args", "config_to_yaml", "describe_schema",
           "dump_config", "load_config", "resolve_config"]
