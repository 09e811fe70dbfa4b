"""The EnvModule contract: a batch of environments that speak in action strings.

The rollout side never sees gymnasium spaces or env internals. Each step it gets,
per environment, an :class:`EnvObs` (image, text state, legal actions) and hands
back one action string per environment, already mapped to a legal action by the
ActionParser. Finished environments reset themselves (auto-reset); the last
observation of the finished episode travels in ``EnvStep.final_obs`` so the
learner can bootstrap a truncated episode from its value.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


@dataclass
class EnvObs:
    """What the agent sees in one environment at one step."""

    image: np.ndarray | None
    """RGB image, shape (H, W, 3), uint8; None for text-only environments."""
    text: str
    """Text state shown in the prompt (formula so far, scene description, ...)."""
    legal_actions: list[str]
    """Every action string the environment accepts now."""
    env_id: str
    """Which game this is (e.g. "numberline", "alfworld"); selects prompt details."""
    task: str = ""
    """The goal in words, for tasks that have one (ALFWorld); empty otherwise."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Game facts for templates and logging (cards, target, task type, ...)."""
    recap: str | None = None
    """What an earlier step shows of this observation in a later prompt (``prompt.history``); None: ``text``.
    ALFWorld's is the step's feedback alone: the room's description is in every observation already."""


@dataclass
class EpisodeStats:
    """Summary of an episode that just ended."""

    ret: float
    """Undiscounted sum of rewards."""
    length: int
    """Number of steps taken."""
    success: bool
    """Whether the task counts as solved (paper's definition: positive return, or won)."""
    task_type: str = ""
    """Sub-task for per-type reporting (ALFWorld: pick, look, clean, heat, cool, pick2)."""


@dataclass
class EnvStep:
    """Result of one batched step over N environments."""

    obs: list[EnvObs]
    """Next observation per env; for an env whose episode ended, the first obs of its new episode."""
    reward: np.ndarray
    """Shape (N,), float32."""
    terminated: np.ndarray
    """Shape (N,), bool: the episode ended by the task's rules (no bootstrap)."""
    truncated: np.ndarray
    """Shape (N,), bool: the episode was cut by a step limit (bootstrap from the value)."""
    final_obs: list[EnvObs | None]
    """Last observation of the episode that ended at this step, else None."""
    episodes: list[EpisodeStats | None]
    """Stats of the episode that ended at this step, else None."""


class EnvModule(ABC):
    """A batch of ``num_envs`` environments of one game, auto-resetting."""

    family: ClassVar[str]
    """Game family ("gym_cards", "alfworld"): picks the default prompt template and parser."""

    num_envs: int
    dropped_episodes: int = 0
    """Episodes lost because an env worker died and was restarted (counted, logged, never silent)."""

    @abstractmethod
    def reset(self, seed: int) -> list[EnvObs]:
        """Reset every env; env i is seeded from ``seed`` and i so runs are reproducible."""

    @abstractmethod
    def step(self, actions: list[str]) -> EnvStep:
        """Apply one legal action string per env."""

    @abstractmethod
    def expert_fields(self) -> list[dict[str, Any]]:
        """For the current obs of each env, the expert's answer as JSON fields.

        Keys in the order the prompt's output format asks for, ending with
        "thoughts" (a short chain of thought) and "action" (a legal action string).
        Used for SFT data and tests.
        """

    def reset_slots(self, slots: list[int], key: int) -> list[EnvObs]:
        """Restart the envs ``slots`` on the same start state, named by ``key``; their new observations.

        Grouped rollouts (``rollout.group_size``) need it: a group's envs start each episode from
        identical states (a gym_cards seed, an ALFWorld game file), so their returns compare.
        The other envs are left as they are.
        """
        raise NotImplementedError(
            f"{type(self).__name__} cannot restart chosen envs on a shared start state (reset_slots), which "
            "rollout.group_size > 1 needs; implement reset_slots or use advantage.estimator=gae"
        )

    def state_dict(self) -> dict[str, Any] | None:
        """Everything needed to continue the current episodes exactly, or None if this module can't.

        Used by checkpoints; a module that returns None restarts its envs on fresh
        seeds when a run resumes.
        """
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        raise TypeError(f"{type(self).__name__} does not save env state; resume restarts its envs")

    def close(self) -> None:
        """Release worker processes and files."""
