"""EZPoints: two cards, reach 12 with "+" and "*" (rules in :mod:`.points24`)."""

from __future__ import annotations

from agentrl.envs.gym_cards.points24 import PointsEnv
from agentrl.envs.gym_cards.render import BASE


class EZPointsEnv(PointsEnv):
    """Two cards (J, Q, K count 10 by default), always dealt so that "+" or "*" reaches the target.

    Actions "1".."10", "+", "*", "="; truncated when the formula is longer than 5 tokens.
    """

    def __init__(
        self,
        target: int = 12,
        solvable_only: bool = True,
        face_cards_as_10: bool = True,
        formula_limit: int = 5,
        image_size: int = BASE,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(
            num_cards=2,
            target=target,
            operators="+*",
            parentheses=False,
            formula_limit=formula_limit,
            solvable_only=solvable_only,
            face_cards_as_10=face_cards_as_10,
            image_size=image_size,
            render_mode=render_mode,
        )
