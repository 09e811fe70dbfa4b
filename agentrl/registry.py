"""Components chosen by name: one small dict per axis, plus "pkg.module:Attr" for your own.

Values are import paths, not objects, so naming an env does not import the
others (ALFWorld's engine is an optional extra).
"""

from __future__ import annotations

import importlib
from typing import Any

from agentrl.config import ConfigError

ENVS: dict[str, str] = {
    "numberline": "agentrl.envs.gym_cards:NumberLineModule",
    "ezpoints": "agentrl.envs.gym_cards:EZPointsModule",
    "points24": "agentrl.envs.gym_cards:Points24Module",
    "blackjack": "agentrl.envs.gym_cards:BlackjackModule",
    "alfworld": "agentrl.envs.alfworld:AlfworldModule",
}

TEMPLATES: dict[str, str] = {
    "gym_cards": "agentrl.prompts:GymCardsTemplate",
    "alfworld": "agentrl.prompts:AlfworldTemplate",
}

PARSERS: dict[str, str] = {
    "json": "agentrl.parsing:JsonActionParser",
    "admissible": "agentrl.parsing:AdmissibleCommandParser",
}

# Default template and parser per env family ("auto" in the config).
FAMILY_DEFAULTS: dict[str, tuple[str, str]] = {
    "gym_cards": ("gym_cards", "json"),
    "alfworld": ("alfworld", "admissible"),
}


def resolve(axis: str, key: str, name: str, table: dict[str, str]) -> Any:
    """The object named ``name`` in ``table``, or at the dotted path ``pkg.module:Attr``.

    ``axis`` ("env", "template", ...) and ``key`` (the config key) only shape the error.
    """
    target = table.get(name)
    if target is None:
        if ":" not in name:
            known = ", ".join(sorted(table))
            raise ConfigError(
                f"{key}: unknown {axis} {name!r}; known: {known} (or give 'pkg.module:Class' for your own)"
            )
        target = name
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        hint = " (pip install 'agentrl[alfworld]')" if e.name in {"alfworld", "textworld"} else ""
        raise ConfigError(f"{key}: cannot import {module_name!r} for {axis} {name!r}: {e}{hint}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{key}: module {module_name!r} has no {attr!r} (from {axis} {name!r})") from None
