"""A small arithmetic evaluator with exact rational results; never ``eval``.

Grammar (no unary signs: every card-game formula can be written without them)::

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := NUMBER | "(" expr ")"

A formula is either a string (``"8/(3-8/3)"``) or a list of tokens, as the
points games build it (``["8", "/", "(", ...]``); in a token list two numbers in
a row are two numbers (a syntax error), not one longer number. Everything that
is not a well-formed formula raises :class:`FormulaError`, quickly: input
longer than :data:`MAX_CHARS` or nested deeper than :data:`MAX_DEPTH` is
refused before or during parsing, never by hitting Python's recursion limit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction

MAX_CHARS = 200
"""Longest formula (characters, or tokens for a token list) accepted."""
MAX_DEPTH = 32
"""Deepest parenthesis nesting accepted."""

_TOKEN = re.compile(r"\s*(?:([0-9]+)|(.))", re.DOTALL)


class FormulaError(ValueError):
    """The formula is malformed, divides by zero, or is too long or deep."""


def tokenize(text: str) -> list[str]:
    """Split a formula string into number, operator and parenthesis tokens."""
    if len(text) > MAX_CHARS:
        raise FormulaError(f"formula has {len(text)} characters; at most {MAX_CHARS} are accepted")
    tokens = []
    for number, other in _TOKEN.findall(text):
        if number:
            tokens.append(number)
        elif other and not other.isspace():
            if other not in "+-*/()":
                raise FormulaError(f"unexpected character {other!r} in {text!r}; use digits, + - * / ( )")
            tokens.append(other)
    return tokens


def evaluate(formula: str | Sequence[str]) -> Fraction:
    """The exact value of ``formula`` (a string or a token list)."""
    tokens = tokenize(formula) if isinstance(formula, str) else list(formula)
    if len(tokens) > MAX_CHARS:
        raise FormulaError(f"formula has {len(tokens)} tokens; at most {MAX_CHARS} are accepted")
    if not tokens:
        raise FormulaError("formula is empty")
    parser = _Parser(tokens)
    value = parser.expr(0)
    if parser.pos != len(tokens):
        raise FormulaError(f"unexpected {tokens[parser.pos]!r} at token {parser.pos} of {_show(tokens)}")
    return value


def numbers(formula: str | Sequence[str]) -> list[int]:
    """The numbers a formula uses, in order (no syntax check)."""
    tokens = tokenize(formula) if isinstance(formula, str) else formula
    return [int(t) for t in tokens if t.isdigit() and t.isascii()]


def _show(tokens: Sequence[str]) -> str:
    return repr("".join(tokens))


class _Parser:
    """Recursive descent over a token list; ``depth`` counts open parentheses."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def expr(self, depth: int) -> Fraction:
        value = self.term(depth)
        while self._peek() in ("+", "-"):
            op = self.tokens[self.pos]
            self.pos += 1
            rhs = self.term(depth)
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self, depth: int) -> Fraction:
        value = self.factor(depth)
        while self._peek() in ("*", "/"):
            op = self.tokens[self.pos]
            self.pos += 1
            rhs = self.factor(depth)
            if op == "*":
                value *= rhs
            elif rhs == 0:
                raise FormulaError(f"division by zero in {_show(self.tokens)}")
            else:
                value /= rhs
        return value

    def factor(self, depth: int) -> Fraction:
        token = self._peek()
        if token is None:
            raise FormulaError(f"{_show(self.tokens)} ends early; a number or '(' is missing")
        self.pos += 1
        if token == "(":
            if depth >= MAX_DEPTH:
                raise FormulaError(
                    f"parentheses nested deeper than {MAX_DEPTH} in {_show(self.tokens[:40])}..."
                )
            value = self.expr(depth + 1)
            if self._peek() != ")":
                raise FormulaError(f"missing ')' in {_show(self.tokens)}")
            self.pos += 1
            return value
        if token.isdigit() and token.isascii():
            return Fraction(int(token))
        raise FormulaError(
            f"expected a number or '(' at token {self.pos - 1} of {_show(self.tokens)}, got {token!r}"
        )
