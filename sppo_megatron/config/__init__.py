"""Run configuration: one schema (schema.py), loading + validation (loader.py)."""

from sppo_megatron.config.loader import load_config, save_config
from sppo_megatron.config.schema import Config

__all__ = ["Config", "load_config", "save_config"]
