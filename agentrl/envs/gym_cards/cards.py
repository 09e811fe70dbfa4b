"""Playing cards shared by the points games and Blackjack: ranks, suits, values, dealing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RANKS = ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")
SUITS = ("S", "H", "D", "C")
"""Spades, hearts, diamonds, clubs (drawn as shapes; hearts and diamonds red)."""


@dataclass(frozen=True)
class Card:
    """One card: display rank ("A", "7", "K") and suit letter."""

    rank: str
    suit: str

    def value(self, face_cards_as_10: bool = True) -> int:
        """Ace 1, number cards their number, J/Q/K 10 (or 11/12/13)."""
        index = RANKS.index(self.rank) + 1
        return min(index, 10) if face_cards_as_10 else index


def deal(rng: np.random.Generator, n: int) -> list[Card]:
    """``n`` cards from an infinite deck (each card independent and uniform)."""
    ranks = rng.integers(len(RANKS), size=n)
    suits = rng.integers(len(SUITS), size=n)
    return [Card(RANKS[r], SUITS[s]) for r, s in zip(ranks, suits)]
