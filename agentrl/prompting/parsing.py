"""ActionParsers: generated text -> one legal action, or a reason why not.

A parser never raises and never hangs, whatever the model wrote: the text is
cut to a bounded length and only linear-time scans run on it. The rollout
takes a random legal action when parsing fails (as the paper's reference does)
and counts the failure.
"""

from __future__ import annotations

import inspect
import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any

from agentrl.config import ConfigError

MAX_TEXT_CHARS = 8192
"""Longer generations are cut before parsing (no scan is ever quadratic in model output)."""

_ACTION_KEY = re.compile(r'"action"\s*:')
_WS = re.compile(r"\s+")
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class ParseResult:
    """The parsed action, or None with a short reason (counted in parse/* metrics), and where it was read."""

    action: str | None
    reason: str = ""
    """"" on success; else no_action_key, no_match, ambiguous or error:<type>."""
    action_span: tuple[int, int] | None = None
    """Character span [start, end) in the generated text of the action the parser read: from its
    ``"action"`` key to the end of its value (JSON: up to the next ``,`` or ``}``). The rollout weights
    the tokens from ``start`` on as the action (the paper's method) and those before it as thought. Set also when the value matched no
    legal action (the text chose those tokens; a random legal action ran); None when the text has no
    action key."""

    @property
    def ok(self) -> bool:
        return self.action is not None


def action_span_start(text: str) -> int | None:
    """Character offset of the first ``"action":`` key in ``text``, or None (a plain text search;
    :meth:`ActionParser.parse` says which key the executed action came from)."""
    m = _ACTION_KEY.search(text)
    return m.start() if m else None


def normalise(s: str) -> str:
    """Case-folded, whitespace-collapsed, stripped of quotes and trailing punctuation."""
    return _WS.sub(" ", s).strip().strip("\"'`").strip().rstrip(".,;").strip().casefold()


class ActionParser(ABC):
    """The base of every parser: generated text + the legal actions -> :class:`ParseResult`.

    :meth:`parse` bounds the text and turns any exception into a failed result,
    so an implementation's :meth:`read` may assume nothing about the model's
    output but need not guard against it. A parser's constructor takes its
    options as keywords: ``parser.options`` in the config (:meth:`from_config`).
    """

    @classmethod
    def from_config(cls, cfg: Any) -> ActionParser:
        """Build from the ``parser`` config section: ``cls(**cfg.options)``."""
        options = dict(cfg.options)
        try:
            inspect.signature(cls).bind(**options)
        except TypeError as e:
            raise ConfigError(f"parser.options {options}: {e} (for {cls.__name__})") from None
        return cls(**options)

    def parse(self, text: str, legal: list[str]) -> ParseResult:
        """Map ``text`` to one of ``legal``; never raises."""
        try:
            return self.read(str(text)[:MAX_TEXT_CHARS], legal)
        except Exception as e:  # a parser bug must cost one sample, not the run
            return ParseResult(None, f"error:{type(e).__name__}")

    @abstractmethod
    def read(self, text: str, legal: list[str]) -> ParseResult:
        """The action ``text`` names among ``legal``, with its span (text already cut to MAX_TEXT_CHARS)."""


class JsonActionParser(ActionParser):
    """JSON first, then the text after ``"action":``, then exact or normalised match to the legal actions."""

    def read(self, text: str, legal: list[str]) -> ParseResult:
        found = _json_action(text)
        if found is None:
            found = _raw_action_value(text)
        if found is None:
            return ParseResult(None, "no_action_key")
        value, span = found
        return replace(self.match(value, legal), action_span=span)

    def match(self, value: str, legal: list[str]) -> ParseResult:
        """Exact match, then normalised match."""
        if value in legal:
            return ParseResult(value)
        key = normalise(value)
        hits = [a for a in legal if normalise(a) == key]
        if len(hits) == 1:
            return ParseResult(hits[0])
        return ParseResult(None, "ambiguous" if hits else "no_match")


class AdmissibleCommandParser(JsonActionParser):
    """For free-text commands (ALFWorld): exact, normalised, then the closest by word overlap.

    The closest rule: the admissible command with the highest Jaccard overlap of
    words with the value, if that overlap is at least ``min_overlap`` and no
    other command ties with it.
    """

    def __init__(self, min_overlap: float = 0.5) -> None:
        self.min_overlap = min_overlap

    def match(self, value: str, legal: list[str]) -> ParseResult:
        result = super().match(value, legal)
        if result.ok or result.reason == "ambiguous":
            return result
        words = set(_WORD.findall(value.casefold()))
        if not words:
            return result
        scored = []
        for a in legal:
            other = set(_WORD.findall(a.casefold()))
            union = words | other
            scored.append((len(words & other) / len(union) if union else 0.0, a))
        scored.sort(key=lambda x: -x[0])
        best = scored[0][0] if scored else 0.0
        if best < self.min_overlap:
            return result
        if len(scored) > 1 and scored[1][0] == best:
            return ParseResult(None, "ambiguous")
        return ParseResult(scored[0][1])


def _json_action(text: str) -> tuple[str, tuple[int, int]] | None:
    """(the "action" value, its span) of the first JSON object in ``text`` that has an "action" key.

    None when there is no such object, or its value is not a string, number or
    one-element list (then the raw text after the key is read instead).
    """
    decoder = json.JSONDecoder()
    start = text.find("{")
    tries = 0
    while start != -1 and tries < 8:  # bounded: a few candidate objects, each parsed in linear time
        tries += 1
        try:
            obj, end = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict) and "action" in obj:
            value = obj["action"]
            if isinstance(value, list) and len(value) == 1:
                value = value[0]
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                return str(value), _key_span(text, start, end)
            return None
        start = text.find("{", start + 1)
    return None


def _key_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Span of the top-level ``"action": value`` pair of the JSON object ``text[start:end]``.

    One linear scan that tracks strings and nesting; the last "action" key
    wins, as it does for ``json.loads``.
    """
    span = (start, end)
    depth, i, key_at, in_value = 0, start, None, False
    while i < end:
        c = text[i]
        if c == '"':
            close = i + 1
            while text[close] != '"':
                close += 2 if text[close] == "\\" else 1
            if depth == 1 and not in_value:
                after = close + 1
                while text[after] in " \t\r\n":
                    after += 1
                if text[after] == ":" and json.loads(text[i : close + 1]) == "action":
                    key_at = i
            i = close + 1
            continue
        if c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
        if depth == 1 and c == ":":
            in_value = True
        elif (depth == 1 and c == ",") or depth == 0:
            if key_at is not None and in_value:
                span = (key_at, i)
                key_at = None
            in_value = False
        i += 1
    return span


def _raw_action_value(text: str) -> tuple[str, tuple[int, int]] | None:
    """(the value after the first ``"action":``, its span) in text that is not valid JSON."""
    m = _ACTION_KEY.search(text)
    if not m:
        return None
    window = text[m.end() : m.end() + 512]
    rest = window.lstrip()
    at = m.end() + len(window) - len(rest)  # the value's first character
    if rest.startswith('"'):
        close = rest.find('"', 1)
        if close != -1:
            return rest[1:close], (m.start(), at + close + 1)
        value = rest[1:].split("\n", 1)[0]
        return value, (m.start(), at + 1 + len(value))
    value = re.split(r"[,}\n]", rest, maxsplit=1)[0]
    return value, (m.start(), at + len(value))
