"""The run configuration: typed, strict, written down.

A run's config is built from, in order: the schema defaults (:mod:`.schema`, :mod:`.training`),
the YAML chain (a file may name ``base: other.yaml``, resolved relative to
itself), then dotted command-line overrides (``ppo.clip=0.2``) (:mod:`.loading`).
Any unknown key or wrong type stops with a :class:`ConfigError` that names the
dotted key and where it came from. Cross-field rules live in ``__post_init__``.
Components (envs, templates, parsers, policies, data modules, estimators) are chosen
by name in :mod:`.registry`.
"""

from agentrl.config.loading import all_keys, describe_keys, field_docs, load_config, to_yaml
from agentrl.config.schema import (
    IMAGE_POSITIONS,
    Config,
    ConfigError,
    EnvConfig,
    LoraConfig,
    ModelConfig,
    ParserConfig,
    PolicyConfig,
    PromptConfig,
)
from agentrl.config.training import AdvantageConfig, PPOConfig, RolloutConfig, SFTConfig, TrainerConfig

__all__ = [
    "IMAGE_POSITIONS", "AdvantageConfig", "Config", "ConfigError", "EnvConfig", "LoraConfig", "ModelConfig",
    "PPOConfig", "ParserConfig", "PolicyConfig", "PromptConfig", "RolloutConfig", "SFTConfig", "TrainerConfig",
    "all_keys", "describe_keys", "field_docs", "load_config", "to_yaml",
]
