"""Points24 (make 24 from four cards) and the rules engine it shares with EZPoints.

Each action appends one token to the formula:

- a number: legal when it is the value of a card not yet used (the card is
  then used); otherwise -1, and the token is still appended;
- an operator or parenthesis: always appended, reward 0. Syntax is judged
  only at "=", so the agent can write a formula in any order it likes;
- "=": ends the episode. +10 when the formula is well formed, equals the
  target and uses every card exactly once; -1 otherwise (malformed formulas,
  division by zero and leftover cards included; never an exception).

The episode is truncated (reward 0 for that) when the formula grows longer
than ``formula_limit`` tokens without "=".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agentrl.envs.formula import FormulaError, evaluate
from agentrl.envs.gym_cards import experts
from agentrl.envs.gym_cards.base import CardGameEnv
from agentrl.envs.gym_cards.cards import Card, deal
from agentrl.envs.gym_cards.render import BASE, points_image

WIN_REWARD = 10.0
ILLEGAL_REWARD = -1.0
_MAX_DEALS = 10_000


class PointsEnv(CardGameEnv):
    """Cards on the table, build a formula token by token that equals ``target``."""

    def __init__(
        self,
        num_cards: int = 4,
        target: int = 24,
        operators: str = "+-*/",
        parentheses: bool = True,
        formula_limit: int = 20,
        solvable_only: bool = False,
        face_cards_as_10: bool = True,
        image_size: int = BASE,
        render_mode: str | None = None,
    ) -> None:
        if num_cards < 1:
            raise ValueError(f"num_cards must be >= 1, got {num_cards}")
        if not operators or set(operators) - set("+-*/"):
            raise ValueError(f"operators must be a non-empty subset of '+-*/', got {operators!r}")
        self.num_cards = num_cards
        self.target = target
        self.operators = operators
        self.parentheses = parentheses
        self.formula_limit = formula_limit
        self.solvable_only = solvable_only
        self.face_cards_as_10 = face_cards_as_10
        max_value = 10 if face_cards_as_10 else 13
        numbers = [str(v) for v in range(1, max_value + 1)]
        self._setup(numbers + list(operators) + (["(", ")"] if parentheses else []) + ["="], image_size, render_mode)
        self.cards: list[Card] = []
        self.values: list[int] = []
        self.remaining: list[int] = []
        self.formula: list[str] = []

    # ---------------------------------------------------------------- gym API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        for _ in range(_MAX_DEALS):
            self.cards = deal(self.np_random, self.num_cards)
            self.values = [c.value(self.face_cards_as_10) for c in self.cards]
            if not self.solvable_only or experts.solvable(
                self.values, self.target, self.operators, self.parentheses
            ):
                break
        else:
            raise RuntimeError(
                f"no solvable deal of {self.num_cards} cards for target {self.target} in {_MAX_DEALS} tries; "
                "change target or set solvable_only=False"
            )
        self.remaining = list(self.values)
        self.formula = []
        return self._obs(), self._info()

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(
                f"action {action!r} is not in 0..{self.action_space.n - 1} ({self.action_names})"
            )
        token = self.action_names[int(action)]
        self.formula.append(token)
        reward, terminated = 0.0, False
        if token == "=":
            terminated = True
            reward = WIN_REWARD if self.solved() else ILLEGAL_REWARD
        elif token.isdigit():
            if int(token) in self.remaining:
                self.remaining.remove(int(token))
            else:
                reward = ILLEGAL_REWARD
        truncated = not terminated and len(self.formula) > self.formula_limit
        return self._obs(), reward, terminated, truncated, self._info()

    # ---------------------------------------------------------------- state

    def solved(self) -> bool:
        """Whether the formula before "=" equals the target and uses every card exactly once."""
        body = self.formula[:-1] if self.formula[-1:] == ["="] else self.formula
        numbers = [int(t) for t in body if t.isdigit()]
        if sorted(numbers) != sorted(self.values):
            return False
        try:
            return evaluate(body) == self.target
        except FormulaError:
            return False

    def text(self) -> str:
        """The state in words, for prompts and ``render_mode="ansi"``."""
        cards = ", ".join(c.rank for c in self.cards)
        return f"Cards: {cards}\nFormula: {''.join(self.formula)}\nTarget: {self.target}"

    def expert_fields(self) -> dict[str, Any]:
        """The solver's next token for the current state, with its reasoning."""
        return experts.points_fields(
            [c.rank for c in self.cards],
            self.values,
            self.formula,
            self.target,
            self.operators,
            self.parentheses,
        )

    def _obs(self) -> np.ndarray:
        return points_image(self.cards, self.formula, self.image_size)

    def _info(self) -> dict[str, Any]:
        return {
            "text": self.text(),
            "legal_actions": list(self.action_names),
            "cards": [c.rank for c in self.cards],
            "card_values": list(self.values),
            "formula": list(self.formula),
            "target": self.target,
        }


class Points24Env(PointsEnv):
    """Four cards (face cards 10, or 11-13 with ``face_cards_as_10=False``), target 24, all four operators."""

    def __init__(
        self,
        target: int = 24,
        solvable_only: bool = False,
        face_cards_as_10: bool = True,
        formula_limit: int = 20,
        image_size: int = BASE,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(
            num_cards=4,
            target=target,
            operators="+-*/",
            parentheses=True,
            formula_limit=formula_limit,
            solvable_only=solvable_only,
            face_cards_as_10=face_cards_as_10,
            image_size=image_size,
            render_mode=render_mode,
        )
