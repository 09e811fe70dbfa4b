"""Blackjack drawn as cards: the classic game of gymnasium's toy-text Blackjack.

Infinite deck; ace 1 or 11, face cards 10. The player sees both own cards
and one dealer card; "hit" draws (bust: -1, the episode ends), "stand" lets
the dealer draw to 17 or more (standing on soft 17) and compares: +1 win, 0
draw, -1 loss. ``natural=True`` pays 1.5 for a winning two-card 21;
``sab=True`` follows Sutton & Barto: a two-card 21 beats any dealer hand but
a dealer's two-card 21 (``natural`` is then ignored).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from agentrl.envs.gym_cards import experts
from agentrl.envs.gym_cards.base import CardGameEnv
from agentrl.envs.gym_cards.cards import Card, deal
from agentrl.envs.gym_cards.render import BASE, blackjack_image


def hand_total(cards: Sequence[Card]) -> tuple[int, bool]:
    """Best total of a hand and whether an ace counts as 11 in it (a usable ace)."""
    total = sum(c.value() for c in cards)
    usable = any(c.rank == "A" for c in cards) and total + 10 <= 21
    return (total + 10 if usable else total), usable


def is_natural(cards: Sequence[Card]) -> bool:
    """A two-card 21."""
    return len(cards) == 2 and hand_total(cards)[0] == 21


class BlackjackEnv(CardGameEnv):
    """Hit or stand against a dealer; the dealer's hole card stays hidden until the end."""

    def __init__(
        self, natural: bool = False, sab: bool = False, image_size: int = BASE, render_mode: str | None = None
    ) -> None:
        self.natural = natural
        self.sab = sab
        self._setup(["stand", "hit"], image_size, render_mode)
        self.player: list[Card] = []
        self.dealer: list[Card] = []
        self.done = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.player = deal(self.np_random, 2)
        self.dealer = deal(self.np_random, 2)
        self.done = False
        return self._obs(), self._info()

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not 0 ('stand') or 1 ('hit')")
        if int(action) == 1:
            self.player += deal(self.np_random, 1)
            if hand_total(self.player)[0] > 21:
                self.done = True
                return self._obs(), -1.0, True, False, self._info()
            return self._obs(), 0.0, False, False, self._info()
        self.done = True
        while hand_total(self.dealer)[0] < 17:
            self.dealer += deal(self.np_random, 1)
        return self._obs(), self._settle(), True, False, self._info()

    def _settle(self) -> float:
        """Reward after the dealer has played."""
        player, dealer = hand_total(self.player)[0], hand_total(self.dealer)[0]
        dealer = 0 if dealer > 21 else dealer
        reward = float(np.sign(player - dealer))
        if self.sab:
            if is_natural(self.player) and not is_natural(self.dealer):
                reward = 1.0
        elif self.natural and is_natural(self.player) and reward == 1.0:
            reward = 1.5
        return reward

    def text(self) -> str:
        """The state in words, for prompts and ``render_mode="ansi"``."""
        total, usable = hand_total(self.player)
        ace = ", usable ace" if usable else ""
        cards = ", ".join(c.rank for c in self.player)
        if self.done:
            dealer_total = hand_total(self.dealer)[0]
            dealer = f"Dealer has: {', '.join(c.rank for c in self.dealer)} (sum {dealer_total})"
        else:
            dealer = f"Dealer shows: {self.dealer[0].rank}"
        return f"{dealer}\nYour cards: {cards} (sum {total}{ace})"

    def expert_fields(self) -> dict[str, Any]:
        """Basic strategy (hit/stand) for the current hand."""
        total, usable = hand_total(self.player)
        return experts.blackjack_fields(total, usable, self.dealer[0].value())

    def _obs(self) -> np.ndarray:
        dealer = self.dealer if self.done else [self.dealer[0], None]
        return blackjack_image(dealer, self.player, self.image_size)

    def _info(self) -> dict[str, Any]:
        total, usable = hand_total(self.player)
        return {
            "text": self.text(),
            "legal_actions": list(self.action_names),
            "player_sum": total,
            "usable_ace": usable,
            "dealer_card": self.dealer[0].rank,
            "dealer_value": self.dealer[0].value(),
            "player_cards": [c.rank for c in self.player],
            "dealer_cards": [c.rank for c in self.dealer] if self.done else [self.dealer[0].rank, "?"],
        }
