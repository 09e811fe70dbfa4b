"""Components chosen by name: one small dict per axis, plus "pkg.module:Attr" for your own.

Values are import paths, not objects, so naming an env does not import the
others (ALFWorld's engine is an optional extra). :class:`Components` resolves
every axis of a config once, before any work, and builds each component from
its own config section; fit, sft and eval all go through it, so a user's class
given by dotted path is built exactly like a shipped one.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from agentrl.config import Config, ConfigError

ENVS: dict[str, str] = {
    "numberline": "agentrl.envs.gym_cards:NumberLineModule",
    "ezpoints": "agentrl.envs.gym_cards:EZPointsModule",
    "points24": "agentrl.envs.gym_cards:Points24Module",
    "blackjack": "agentrl.envs.gym_cards:BlackjackModule",
    "alfworld": "agentrl.envs.alfworld:AlfworldModule",
}

TEMPLATES: dict[str, str] = {
    "gym_cards": "agentrl.prompting.templates:GymCardsTemplate",
    "alfworld": "agentrl.prompting.templates:AlfworldTemplate",
}

PARSERS: dict[str, str] = {
    "json": "agentrl.prompting.parsing:JsonActionParser",
    "admissible": "agentrl.prompting.parsing:AdmissibleCommandParser",
}

POLICIES: dict[str, str] = {
    "actor_critic": "agentrl.policy.module:PolicyModule",
}

DATA_MODULES: dict[str, str] = {
    "on_policy": "agentrl.data.rollout:RolloutDataModule",
    "grouped": "agentrl.data.groups:GroupRolloutDataModule",
}

ESTIMATORS: dict[str, str] = {
    "gae": "agentrl.algorithms.advantage:GAE",
    "grpo": "agentrl.algorithms.advantage:GRPO",
    "rloo": "agentrl.algorithms.advantage:RLOO",
    "gigpo": "agentrl.algorithms.advantage:GiGPO",
}

# Default template and parser per env family ("auto" in the config).
FAMILY_DEFAULTS: dict[str, tuple[str, str]] = {
    "gym_cards": ("gym_cards", "json"),
    "alfworld": ("alfworld", "admissible"),
}


def resolve(axis: str, key: str, name: str, table: dict[str, str], base: str | None = None) -> Any:
    """The object named ``name`` in ``table``, or at the dotted path ``pkg.module:Attr``.

    ``axis`` ("env", "template", ...) and ``key`` (the config key) only shape the
    error. With ``base`` ("pkg.module:Class"), the object must be a subclass of it.
    """
    target = table.get(name)
    if target is None:
        if ":" not in name:
            known = ", ".join(sorted(table))
            raise ConfigError(
                f"{key}: unknown {axis} {name!r}; known: {known} (or give 'pkg.module:Class' for your own)"
            )
        target = name
    obj = _import(axis, key, name, target)
    if base is not None:
        base_cls = _import(axis, key, name, base)
        if not (isinstance(obj, type) and issubclass(obj, base_cls)):
            raise ConfigError(f"{key}={name!r} must be a subclass of {base.replace(':', '.')}")
    return obj


def _import(axis: str, key: str, name: str, target: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        hint = " (pip install 'agentrl[alfworld]')" if e.name in {"alfworld", "textworld"} else ""
        raise ConfigError(f"{key}: cannot import {module_name!r} for {axis} {name!r}: {e}{hint}") from None
    except Exception as e:  # a user's module that does not import: empty or relative name, syntax error, ...
        raise ConfigError(f"{key}: importing {module_name!r} for {axis} {name!r} failed: "
                          f"{type(e).__name__}: {e} (give 'pkg.module:Class')") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{key}: module {module_name!r} has no {attr!r} (from {axis} {name!r})") from None


@dataclass(frozen=True)
class Components:
    """The classes a config names on every axis, imported and checked; ``make_*`` builds one from its section."""

    env: type
    template: type
    parser: type
    policy: type
    data: type
    estimator: type

    @classmethod
    def resolve(cls, cfg: Config) -> Components:
        """Every axis of ``cfg``; a :class:`ConfigError` naming the key before any work is done."""
        env_cls = resolve("env", "env.name", cfg.env.name, ENVS, base="agentrl.envs.base:EnvModule")
        family = getattr(env_cls, "family", "gym_cards")
        tmpl_name, parser_name = FAMILY_DEFAULTS.get(family, ("gym_cards", "json"))
        template = cfg.prompt.template if cfg.prompt.template != "auto" else tmpl_name
        parser = cfg.parser.name if cfg.parser.name != "auto" else parser_name
        data_name = cfg.rollout.name
        if data_name == "on_policy" and cfg.rollout.group_size > 1:  # groups play whole episodes together
            data_name = "grouped"
        if cfg.policy.kl_coef and cfg.model.finetune != "lora":
            raise ConfigError("policy.kl_coef > 0 needs model.finetune=lora (the reference policy is the base "
                              "model with adapters disabled)")
        return cls(
            env=env_cls,
            template=resolve("template", "prompt.template", template, TEMPLATES, base="agentrl.prompting.templates:PromptTemplate"),
            parser=resolve("parser", "parser.name", parser, PARSERS, base="agentrl.prompting.parsing:ActionParser"),
            policy=resolve("policy", "policy.name", cfg.policy.name, POLICIES, base="agentrl.policy.module:PolicyModule"),
            data=resolve("data module", "rollout.name", data_name, DATA_MODULES,
                         base="agentrl.data.rollout:RolloutDataModule"),
            estimator=resolve("advantage estimator", "advantage.estimator", cfg.advantage.estimator, ESTIMATORS,
                              base="agentrl.algorithms.advantage:AdvantageEstimator"),
        )

    def make_env(self, cfg: Config, split: str = "train") -> Any:
        return self.env(cfg.env, split=split)

    def make_template(self, cfg: Config) -> Any:
        return self.template.from_config(cfg.prompt)

    def make_parser(self, cfg: Config) -> Any:
        return self.parser.from_config(cfg.parser)

    def make_policy(self, cfg: Config) -> Any:
        """The policy, with a value head only when the estimator uses values (a critic-free one does not)."""
        return self.policy.from_config(cfg, critic=getattr(self.estimator, "uses_values", True))

    def make_data(self, cfg: Config, rank: int = 0, world_size: int = 1) -> Any:
        return self.data.from_config(cfg, rank=rank, world_size=world_size)

    def make_estimator(self, cfg: Config) -> Any:
        estimator = self.estimator.from_config(cfg)
        if not callable(estimator):
            raise ConfigError(f"advantage.estimator={cfg.advantage.estimator!r}: {self.estimator.__name__}.from_config "
                              f"returned {estimator!r}, not an estimator")
        return estimator
