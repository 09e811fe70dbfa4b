"""Loading a run's config: schema defaults, then the YAML chain, then dotted overrides; and its docs.

A YAML file may name ``base: other.yaml`` (resolved relative to itself). Any
unknown key or wrong type stops with a :class:`ConfigError` that names the
dotted key and where it came from.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import io
import textwrap
from dataclasses import MISSING, asdict, fields, is_dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from agentrl.config.schema import Config, ConfigError

# ---------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Schema defaults, then the YAML chain of ``path``, then dotted ``overrides``."""
    merged = _schema() if path is None else _merged_files(tuple(_yaml_chain(Path(path))))
    sources = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (for example ppo.clip=0.2)")
        key = item.split("=", 1)[0]
        try:
            data = OmegaConf.from_dotlist([item])
        except Exception as e:  # the YAML scanner, OmegaConf's grammar and the codecs all raise their own kinds
            raise ConfigError(f"override {item!r}: cannot parse the value of '{key}' ({_first_line(e)}); "
                              "quote a string that holds YAML syntax") from None
        sources.append((f"override {item!r}", data, key))
    merged = _merge_all(merged, sources)  # a copy: the cached configs are never written to
    try:
        return OmegaConf.to_object(merged)  # runs every __post_init__
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, "the resolved config")) from None


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (what a run writes next to its checkpoints)."""
    return OmegaConf.to_yaml(OmegaConf.create(asdict(cfg)))  # as OmegaConf.structured(cfg), in half the time


# Parsing and merging YAML costs milliseconds, and a sweep validates every run up front: the schema, each file
# and each chain are built once per content (a file that changes is read afresh) and only ever merged from.


@cache
def _schema() -> DictConfig:
    return OmegaConf.structured(Config)


@lru_cache(maxsize=256)
def _parse_yaml(source: str, text: str) -> tuple[DictConfig, Any]:
    """(the file's keys, its ``base:``) from a YAML file's text."""
    try:
        data = OmegaConf.load(io.StringIO(text))
    except Exception as e:  # YAML syntax errors come from several libraries
        raise ConfigError(f"{source}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, DictConfig):
        raise ConfigError(f"{source}: top level must be a mapping of keys, got {type(data).__name__}")
    return data, data.pop("base", None)


@lru_cache(maxsize=64)
def _merged_files(chain: tuple[tuple[str, str], ...]) -> DictConfig:
    return _merge_all(_schema(), [(source, _parse_yaml(source, text)[0], "") for source, text in chain])


def _yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, str]]:
    """[(source, text)] from the furthest ``base:`` ancestor down to ``path``."""
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML with -c")
    if path in seen:
        raise ConfigError(f"{path}: 'base:' chain loops back to itself")
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    _, base = _parse_yaml(str(path), text)
    chain: list[tuple[str, str]] = []
    if base is not None:
        chain = _yaml_chain(path.parent / str(base), (*seen, path))
    return [*chain, (str(path), text)]


def _merge_all(merged: DictConfig, sources: list[tuple[str, DictConfig, str]]) -> DictConfig:
    """Every (source, data, key) onto a copy of ``merged``: in one merge (one copy), else one at a time to name
    the source that fails."""
    if len(sources) > 1:
        try:
            return OmegaConf.merge(merged, *(data for _, data, _ in sources))
        except Exception:
            pass
    for source, data, key in sources:
        merged = _merge(merged, data, source, key)
    return merged if sources else OmegaConf.merge(merged)


def _merge(merged: DictConfig, data: DictConfig, source: str, key: str = "") -> DictConfig:
    try:
        return OmegaConf.merge(merged, data)
    except Exception as e:  # OmegaConf's own errors, and e.g. TypeError for a mapping merged into a list
        key = getattr(e, "full_key", None) or key or _culprit(merged, data)
        if isinstance(e, OmegaConfBaseException):
            raise ConfigError(_describe(e, source, key)) from None
        raise ConfigError(f"{source}: bad value for '{key}': {_first_line(e)}") from None


def _culprit(merged: Any, data: Any, prefix: str = "") -> str:
    """The dotted key of ``data`` that does not merge (OmegaConf names none when a section is set to a scalar)."""
    try:
        items = OmegaConf.to_container(data).items() if isinstance(data, DictConfig) else data.items()
        for k, v in items:
            try:
                OmegaConf.merge(merged, {k: v})
            except Exception:
                sub = merged[k] if isinstance(merged, DictConfig) and k in merged else None
                if isinstance(v, dict) and isinstance(sub, DictConfig):
                    return _culprit(sub, v, f"{prefix}{k}.")
                return f"{prefix}{k}"
    except Exception:  # only a better message was at stake
        pass
    return f"{prefix}?" if prefix else "?"


def _first_line(e: BaseException) -> str:
    return (str(getattr(e, "msg", "") or e).strip().splitlines() or [type(e).__name__])[0]


def _describe(e: OmegaConfBaseException, source: str, key: str | None = None) -> str:
    key = getattr(e, "full_key", None) or key or "?"
    text = _first_line(e)
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


def key_values(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Every dotted leaf key of a resolved config (a :class:`Config` or one of its sections) and its value."""
    values = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            values.update(key_values(value, f"{prefix}{f.name}."))
        else:
            values[f"{prefix}{f.name}"] = value
    return values


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
