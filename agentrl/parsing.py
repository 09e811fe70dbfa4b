"""ActionParsers: generated text -> one legal action, or a reason why not.

A parser never raises and never hangs, whatever the model wrote: the text is
cut to a bounded length and only linear-time scans run on it. The rollout
takes a random legal action when parsing fails (as the paper's reference does)
and counts the failure.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

MAX_TEXT_CHARS = 8192
"""Longer generations are cut before parsing (no scan is ever quadratic in model output)."""

_ACTION_KEY = re.compile(r'"action"\s*:')
_WS = re.compile(r"\s+")
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class ParseResult:
    """The parsed action, or None with a short reason (counted in parse/* metrics)."""

    action: str | None
    reason: str = ""
    """"" on success; else no_action_key, no_match or ambiguous."""

    @property
    def ok(self) -> bool:
        return self.action is not None


def action_span_start(text: str) -> int | None:
    """Character offset where the ``"action":`` key starts in ``text``, or None.

    Everything before it is chain of thought; the key and everything after it
    is the action span of the log-probability (METHOD.md).
    """
    m = _ACTION_KEY.search(text)
    return m.start() if m else None


def normalise(s: str) -> str:
    """Case-folded, whitespace-collapsed, stripped of quotes and trailing punctuation."""
    return _WS.sub(" ", s).strip().strip("\"'`").strip().rstrip(".,;").strip().casefold()


class JsonActionParser:
    """JSON first, then the text after ``"action":``, then exact or normalised match to the legal actions."""

    def parse(self, text: str, legal: list[str]) -> ParseResult:
        """Map ``text`` to one of ``legal``; never raises."""
        try:
            return self._parse(str(text)[:MAX_TEXT_CHARS], legal)
        except Exception as e:  # a parser bug must cost one sample, not the run
            return ParseResult(None, f"error:{type(e).__name__}")

    def _parse(self, text: str, legal: list[str]) -> ParseResult:
        value = _json_action(text)
        if value is None:
            value = _raw_action_value(text)
        if value is None:
            return ParseResult(None, "no_action_key")
        return self.match(value, legal)

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


def _json_action(text: str) -> str | None:
    """The "action" value of the first JSON object in ``text`` that has one."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    tries = 0
    while start != -1 and tries < 8:  # bounded: a few candidate objects, each parsed in linear time
        tries += 1
        try:
            obj, _ = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict) and "action" in obj:
            value = obj["action"]
            if isinstance(value, list) and len(value) == 1:
                value = value[0]
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                return str(value)
            return None
        start = text.find("{", start + 1)
    return None


def _raw_action_value(text: str) -> str | None:
    """The value after the first ``"action":`` in text that is not valid JSON."""
    m = _ACTION_KEY.search(text)
    if not m:
        return None
    rest = text[m.end() : m.end() + 512].lstrip()
    if rest.startswith('"'):
        end = rest.find('"', 1)
        return rest[1:end] if end != -1 else rest[1:].split("\n", 1)[0]
    return re.split(r"[,}\n]", rest, maxsplit=1)[0]
