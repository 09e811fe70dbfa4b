"""NumberLine: move the current number to the target with "-" and "+"."""

from __future__ import annotations

from typing import Any

import numpy as np

from agentrl.envs.gym_cards import experts
from agentrl.envs.gym_cards.base import CardGameEnv
from agentrl.envs.gym_cards.render import BASE, numberline_image


class NumberLineEnv(CardGameEnv):
    """Target and current number in 0..max_position (different at the start).

    Reward +1 on reaching the target (the episode ends), -1 for a move that
    does not get closer (including one pushed against either end), 0
    otherwise. Truncated after ``2 * max_position`` steps.
    """

    def __init__(self, max_position: int = 5, image_size: int = BASE, render_mode: str | None = None) -> None:
        if max_position < 1:
            raise ValueError(
                f"max_position must be >= 1 so target and current can differ, got {max_position}"
            )
        self.max_position = max_position
        self._setup(["-", "+"], image_size, render_mode)
        self.target = 0
        self.current = 0
        self.steps = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.target = int(self.np_random.integers(self.max_position + 1))
        # Any position but the target, uniformly.
        offset = int(self.np_random.integers(1, self.max_position + 1))
        self.current = (self.target + offset) % (self.max_position + 1)
        self.steps = 0
        return self._obs(), self._info()

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not 0 ('-') or 1 ('+')")
        old_distance = abs(self.current - self.target)
        move = 1 if int(action) == 1 else -1
        self.current = min(max(self.current + move, 0), self.max_position)
        self.steps += 1
        distance = abs(self.current - self.target)
        terminated = distance == 0
        reward = 1.0 if terminated else (0.0 if distance < old_distance else -1.0)
        truncated = not terminated and self.steps >= 2 * self.max_position
        return self._obs(), reward, terminated, truncated, self._info()

    def text(self) -> str:
        """The state in words, for prompts and ``render_mode="ansi"``."""
        return f"Target: {self.target}\nCurrent: {self.current}"

    def expert_fields(self) -> dict[str, Any]:
        """Step toward the target."""
        return experts.numberline_fields(self.current, self.target)

    def _obs(self) -> np.ndarray:
        return numberline_image(self.target, self.current, self.image_size)

    def _info(self) -> dict[str, Any]:
        return {
            "text": self.text(),
            "legal_actions": list(self.action_names),
            "target": self.target,
            "current": self.current,
        }
