"""What the four card games share: an image observation, named actions, two render modes."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class CardGameEnv(gym.Env):
    """Base of the gym_cards games; each game defines ``text()`` and ``_obs()`` (the image)."""

    metadata = {"render_modes": ["rgb_array", "ansi"], "render_fps": 4}

    def _setup(self, action_names: list[str], image_size: int, render_mode: str | None) -> None:
        """Spaces, action names and render mode, after checking the render mode."""
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}"
            )
        self.image_size = image_size
        self.render_mode = render_mode
        self.action_names: list[str] = list(action_names)
        self.action_space = gym.spaces.Discrete(len(self.action_names))
        self.observation_space = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)

    def render(self) -> Any:
        if self.render_mode == "ansi":
            return self.text()
        if self.render_mode == "rgb_array":
            return self._obs()
        return None
