"""Loading a run's config: schema defaults, then the YAML chain, then dotted overrides; and its docs.

A YAML file may name ``base: other.yaml`` (resolved relative to itself). Any
unknown key or wrong type stops with a :class:`ConfigError` that names the
dotted key and where it came from.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import textwrap
from dataclasses import MISSING, fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from agentrl.config.schema import Config, ConfigError

# ---------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Schema defaults, then the YAML chain of ``path``, then dotted ``overrides``."""
    merged = OmegaConf.structured(Config)
    if path is not None:
        for source, data in _yaml_chain(Path(path)):
            merged = _merge(merged, data, source)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (for example ppo.clip=0.2)")
        merged = _merge(merged, OmegaConf.from_dotlist([item]), f"override {item!r}")
    try:
        return OmegaConf.to_object(merged)  # runs every __post_init__
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, "the resolved config")) from None


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (what a run writes next to its checkpoints)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, DictConfig]]:
    """[(source, data)] from the furthest ``base:`` ancestor down to ``path``."""
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML with -c")
    if path in seen:
        raise ConfigError(f"{path}: 'base:' chain loops back to itself")
    try:
        data = OmegaConf.load(path)
    except Exception as e:  # YAML syntax errors come from several libraries
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, DictConfig):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    base = data.pop("base", None)
    chain: list[tuple[str, DictConfig]] = []
    if base is not None:
        chain = _yaml_chain(path.parent / str(base), (*seen, path))
    return [*chain, (str(path), data)]


def _merge(merged: DictConfig, data: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(merged, data)
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, source)) from None


def _describe(e: OmegaConfBaseException, source: str) -> str:
    key = getattr(e, "full_key", None) or "?"
    text = str(getattr(e, "msg", "") or e).splitlines()[0]
    if "not in struct" in text or "Key '" in text and "not" in text:
        hint = _suggest(key)
        return f"{source}: unknown key '{key}'{hint}"
    return f"{source}: bad value for '{key}': {text}"


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else " (agentrl fit --help lists every key)"


# ---------------------------------------------------------------- documentation


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the schema."""
    keys = []
    for f in fields(cls):
        default = _default(f)
        if is_dataclass(default):
            keys += all_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def describe_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, one-line doc) for every leaf, for --help."""
    docs = field_docs(cls)
    rows = []
    for f in fields(cls):
        default = _default(f)
        if is_dataclass(default):
            rows += describe_keys(type(default), f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", default, docs.get(f.name, "")))
    return rows


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass, read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _default(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None
