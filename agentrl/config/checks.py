"""Value checks the schema's ``__post_init__`` methods share, and the error they raise."""

from __future__ import annotations

import math


class ConfigError(ValueError):
    """A config value is wrong; the message names the dotted key and the fix."""


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def check_ranges(prefix: str, obj: object, **allowed: str) -> None:
    """Each named field in its range: "> 0", ">= 1" (a unit may follow: "> 0 seconds"), "[0, 1]", "(0, 1]",
    "[0, 1)" or "finite", optionally after "None or " (None passes) or "all " (a list: every item); NaN and inf
    never pass. The message names the dotted key, the value and what is allowed."""
    for name, spec in allowed.items():
        value, each, rule = getattr(obj, name), spec[:4] == "all ", spec.split(" or ")[-1].removeprefix("all ")
        if value is None and spec.startswith("None or "):
            continue
        items = value if each else [value]
        if not isinstance(items, list | tuple) or not all(_within(v, rule) for v in items):
            what = "a finite number" if rule == "finite" else f"in {rule}" if rule[0] in "[(" else rule
            what = f"a list of integers each {what}" if each else spec.replace(rule, what)
            raise ConfigError(f"{prefix}{name} must be {what}, got {value}")


def _within(value: object, rule: str) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float) or not -math.inf < value < math.inf:
        return False
    if rule[0] in "[(":
        lo, hi = (float(x) for x in rule[1:-1].split(","))
        above = lo <= value if rule[0] == "[" else lo < value
        return above and (value <= hi if rule[-1] == "]" else value < hi)
    op, bound, *_ = rule.split() if rule != "finite" else (">", "-inf")
    return value >= float(bound) if op == ">=" else value > float(bound)


GROUP_ESTIMATORS = ("grpo", "rloo", "gigpo")
"""Built-in estimators that compare the episodes of a group (rollout.group_size) instead of using a critic."""


def check_groups(estimator: str, group_size: int, num_envs: int) -> None:
    """``rollout.group_size`` fits ``env.num_envs`` and the estimator uses groups exactly when it is > 1."""
    if num_envs % group_size:
        raise ConfigError(f"rollout.group_size ({group_size}) must divide env.num_envs ({num_envs}): "
                          f"each group is {group_size} envs of one process")
    if estimator in GROUP_ESTIMATORS and group_size < 2:
        raise ConfigError(f"advantage.estimator={estimator} compares the episodes of a group: set "
                          f"rollout.group_size >= 2 (e.g. 4) and env.num_envs a multiple of it")
    if estimator == "gae" and group_size > 1:
        raise ConfigError(f"rollout.group_size={group_size} only serves the group estimators "
                          f"({', '.join(GROUP_ESTIMATORS)}); with advantage.estimator=gae leave it at 1")


def check_strategy(strategy: str, processes: int) -> None:
    """``trainer.strategy``: what agentrl runs and tests; DeepSpeed is refused with the reason."""
    if strategy.startswith("deepspeed"):
        raise ConfigError(
            f"trainer.strategy={strategy}: DeepSpeed is not supported (its engine owns gradient clipping, "
            f"accumulation and checkpoints, which agentrl's PPO update and exact resume do themselves); use "
            f"trainer.strategy=fsdp to shard weights, gradients and optimizer state (FSDP2, ZeRO-3's equivalent), "
            f"or ddp")
    check_choice("trainer.strategy", strategy, ("auto", "ddp", "ddp_spawn", "fsdp"))
    if strategy == "fsdp" and _torch_version() < (2, 6):
        raise ConfigError("trainer.strategy=fsdp needs torch 2.6 or newer (FSDP2's public fully_shard); this is "
                          f"torch {'.'.join(map(str, _torch_version()))}: upgrade torch, or use trainer.strategy=ddp")
    if strategy == "fsdp" and processes < 2:
        raise ConfigError(f"trainer.strategy=fsdp shards over processes, and trainer.devices x trainer.num_nodes is "
                          f"{processes}: set trainer.devices=2 or more, or use trainer.strategy=auto for one")


def _torch_version() -> tuple[int, int]:
    """(major, minor) of the installed torch, read without importing it."""
    from importlib.metadata import version

    major, minor = version("torch").split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)
