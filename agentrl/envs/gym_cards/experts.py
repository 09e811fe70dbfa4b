"""Expert policies with their chain of thought: the source of SFT data and of env tests.

- NumberLine: step toward the target.
- EZPoints / Points24: an exact solver over card orders, operators and
  parenthesisations; it can continue a partial formula that is still a prefix
  of one of its solutions.
- Blackjack: basic strategy restricted to hit/stand.

Each ``*_fields`` function returns the JSON fields the prompt asks for, in its
order, ending with "thoughts" and "action".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fractions import Fraction
from functools import lru_cache
from itertools import combinations
from typing import Any

# ---------------------------------------------------------------- NumberLine


def numberline_fields(current: int, target: int) -> dict[str, Any]:
    """Move one step toward the target."""
    if current < target:
        thoughts = (
            f"The current number {current} is less than the target {target}, so I increase it with '+'."
        )
        action = "+"
    elif current > target:
        thoughts = (
            f"The current number {current} is greater than the target {target}, so I decrease it with '-'."
        )
        action = "-"
    else:  # only seen on a finished episode's last frame
        thoughts = f"The current number {current} already equals the target {target}; any move leaves it."
        action = "-"
    return {"current number": current, "target number": target, "thoughts": thoughts, "action": action}


# ---------------------------------------------------------------- points games

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
Expr = tuple[tuple[str, ...], str | None]
"""Tokens of an expression and its top operator (None for a single number)."""


def _splits(cards: tuple[int, ...]) -> set[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every ordered way to split a sorted multiset into two non-empty sorted parts."""
    out = set()
    idx = range(len(cards))
    for r in range(1, len(cards)):
        for chosen in combinations(idx, r):
            left = tuple(cards[i] for i in chosen)
            right = tuple(cards[i] for i in idx if i not in chosen)
            out.add((left, right))
    return out


@lru_cache(maxsize=4096)
def _values(cards: tuple[int, ...], ops: str) -> frozenset[Fraction]:
    """Every value a formula using each of ``cards`` exactly once can take."""
    if len(cards) == 1:
        return frozenset({Fraction(cards[0])})
    out = set()
    for left, right in _splits(cards):
        for a in _values(left, ops):
            for b in _values(right, ops):
                for op in ops:
                    if op == "+":
                        out.add(a + b)
                    elif op == "-":
                        out.add(a - b)
                    elif op == "*":
                        out.add(a * b)
                    elif b != 0:
                        out.add(a / b)
    return frozenset(out)


def _partners(op: str, a: Fraction, target: Fraction, candidates: frozenset[Fraction]) -> Iterable[Fraction]:
    """The right operands b in ``candidates`` with ``a op b == target``."""
    if op == "+":
        need = [target - a]
    elif op == "-":
        need = [a - target]
    elif op == "*":
        need = list(candidates) if a == 0 == target else [] if a == 0 else [target / a]
    else:
        need = list(candidates) if a == 0 == target else [] if target == 0 else [a / target]
        need = [b for b in need if b != 0]
    return [b for b in need if b in candidates]


def _render(op: str, left: Expr, right: Expr) -> Expr:
    """Join two expressions with the fewest parentheses that keep their meaning."""
    lt, lop = left
    rt, rop = right
    if lop is not None and _PREC[lop] < _PREC[op]:
        lt = ("(", *lt, ")")
    if rop is not None and (_PREC[rop] < _PREC[op] or (_PREC[rop] == _PREC[op] and op in "-/")):
        rt = ("(", *rt, ")")
    return (*lt, op, *rt), op


@lru_cache(maxsize=4096)
def _exprs(cards: tuple[int, ...], target: Fraction, ops: str) -> frozenset[Expr]:
    """Every expression over ``cards`` (each once) whose value is ``target``."""
    if len(cards) == 1:
        return frozenset({((str(cards[0]),), None)}) if cards[0] == target else frozenset()
    out = set()
    for left, right in _splits(cards):
        right_values = _values(right, ops)
        for a in _values(left, ops):
            for op in ops:
                for b in _partners(op, a, target, right_values):
                    for le in _exprs(left, a, ops):
                        for re in _exprs(right, b, ops):
                            out.add(_render(op, le, re))
    return frozenset(out)


@lru_cache(maxsize=1024)
def solutions(
    values: tuple[int, ...], target: int, ops: str = "+-*/", parentheses: bool = True
) -> tuple[tuple[str, ...], ...]:
    """All formulas (token tuples ending in "=") that use each value once and equal ``target``.

    Formulas carry the fewest parentheses needed; with ``parentheses=False`` only
    those needing none are kept. Sorted: fewest tokens first, then fewest
    divisions, then by text, so the first one is the expert's pick.
    """
    cards = tuple(sorted(values))
    found = [tokens + ("=",) for tokens, _ in _exprs(cards, Fraction(target), ops)]
    if not parentheses:
        found = [t for t in found if "(" not in t]
    return tuple(sorted(found, key=lambda t: (len(t), t.count("/"), t)))


def solvable(values: Sequence[int], target: int, ops: str = "+-*/", parentheses: bool = True) -> bool:
    """Whether some formula over ``values`` (each once) equals ``target``."""
    if parentheses:
        return Fraction(target) in _values(tuple(sorted(values)), ops)
    return bool(solutions(tuple(values), target, ops, parentheses))


def solve(
    values: Sequence[int],
    target: int,
    prefix: Sequence[str] = (),
    ops: str = "+-*/",
    parentheses: bool = True,
) -> list[str] | None:
    """A full token sequence (ending in "=") that starts with ``prefix``, or None if there is none.

    None means the deal has no solution, or ``prefix`` is not the start of any
    solution the solver knows (it writes the fewest parentheses needed).
    """
    prefix = tuple(prefix)
    for tokens in solutions(tuple(values), target, ops, parentheses):
        if tokens[: len(prefix)] == prefix:
            return list(tokens)
    return None


def points_fields(
    cards: Sequence[str],
    values: Sequence[int],
    formula: Sequence[str],
    target: int,
    ops: str,
    parentheses: bool,
) -> dict[str, Any]:
    """The next token of a solution that continues ``formula``, with the reasoning."""
    so_far = "".join(formula)
    worth = ", ".join(str(v) for v in values)
    thoughts = f"The cards {', '.join(cards)} count as {worth}. "
    tokens = solve(values, target, formula, ops, parentheses)
    if tokens is None:
        if not formula:
            thoughts += f"No formula using each card once reaches {target}, so I end the episode with '='."
        else:
            thoughts += f"The formula '{so_far}' cannot be completed to {target}, so I end it with '='."
        action = "="
    else:
        full = "".join(tokens[:-1])
        action = tokens[len(formula)]
        thoughts += f"{full} = {target} uses each card once. "
        if action == "=":
            thoughts += f"The formula '{so_far}' is complete, so I finish with '='."
        elif formula:
            thoughts += f"The formula so far is '{so_far}', so the next token is '{action}'."
        else:
            thoughts += f"The formula is empty, so I start with '{action}'."
    return {"cards": list(cards), "current formula": so_far, "thoughts": thoughts, "action": action}


# ---------------------------------------------------------------- Blackjack


def basic_strategy(player_sum: int, usable_ace: bool, dealer_value: int) -> str:
    """Hit or stand by basic strategy (no doubling or splitting); ``dealer_value`` 1 is an ace."""
    dealer = 11 if dealer_value == 1 else dealer_value
    if usable_ace:
        if player_sum <= 17:
            return "hit"
        if player_sum == 18:
            return "hit" if dealer >= 9 else "stand"
        return "stand"
    if player_sum <= 11:
        return "hit"
    if player_sum == 12:
        return "stand" if 4 <= dealer <= 6 else "hit"
    if player_sum <= 16:
        return "stand" if dealer <= 6 else "hit"
    return "stand"


def blackjack_fields(player_sum: int, usable_ace: bool, dealer_value: int) -> dict[str, Any]:
    """Basic strategy's choice, explained."""
    action = basic_strategy(player_sum, usable_ace, dealer_value)
    kind = "soft" if usable_ace else "hard"
    dealer = "an ace" if dealer_value == 1 else str(dealer_value)
    if action == "hit":
        why = (
            "one more card cannot bust me"
            if usable_ace or player_sum <= 11
            else "the dealer is likely to beat it"
        )
    else:
        why = "my total is strong enough" if player_sum >= 17 else "the dealer is likely to bust"
    thoughts = (
        f"My cards make a {kind} {player_sum} and the dealer shows {dealer}. "
        f"Against that, {why}, so I {action}."
    )
    return {"thoughts": thoughts, "action": action}
