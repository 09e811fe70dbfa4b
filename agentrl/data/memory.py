"""Episode memory and prompt encoding: what the prompt may see of an episode's earlier steps
(``prompt.history``, ``prompt.history_images``), and the policy's input for an observation after them,
within ``prompt.max_image_tokens``. Rollouts, evaluation and SFT data encode prompts the same way here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from agentrl.config import ConfigError
from agentrl.envs.base import EnvObs
from agentrl.prompting.batching import Prompt
from agentrl.prompting.templates import PromptTemplate, Step

if TYPE_CHECKING:
    from agentrl.policy.module import PolicyModule

def has_frames(history: list[Step]) -> bool:
    """Whether any earlier step carries its image (``prompt.history_images``)."""
    return any(len(step) > 2 for step in history)


def encode_prompt(policy: PolicyModule, template: PromptTemplate, obs: EnvObs, history: Sequence[Step] = (),
                  max_image_tokens: int | None = None) -> Prompt:
    """The policy's input for ``obs`` after ``history``, within ``max_image_tokens`` (``prompt.max_image_tokens``).

    Earlier steps' images that would take the prompt past the budget are left
    out, oldest first, each with its image tokens and pixel values (the step
    stays, as text). The observation's own image is never left out: a budget
    below it is a :class:`ConfigError`.
    """
    history = list(history)
    while True:
        prompt = policy.encode(*template.render(obs, history))
        if max_image_tokens is None:
            return prompt
        framed = [k for k, step in enumerate(history) if len(step) > 2]
        if not framed:
            return within_budget(policy, prompt, max_image_tokens)
        if policy.batcher.image_tokens(prompt) <= max_image_tokens:
            return prompt
        history[framed[0]] = tuple(history[framed[0]][:2])


def within_budget(policy: PolicyModule, prompt: Prompt, max_image_tokens: int | None) -> Prompt:
    """``prompt``, checked against ``max_image_tokens``: a prompt whose own image(s) pass it is a
    :class:`ConfigError` (every encoding path checks it the same way, so the first prompt fails, not a later eval)."""
    if max_image_tokens is not None:
        used = policy.batcher.image_tokens(prompt)
        if used > max_image_tokens:
            raise ConfigError(f"prompt.max_image_tokens={max_image_tokens} is below the {used} image tokens of the "
                              f"observation's own image: raise it (or set null for no budget)")
    return prompt


class EpisodeMemory:
    """What the prompt may see of earlier steps: per env slot, the current episode's last ``keep`` steps.

    A step is (the observation's text state, or its ``recap`` where it has one, and the action taken); the last
    ``frames`` of them also keep the observation's image (``prompt.history_images``).
    A slot is cleared when its episode ends; ``keep=0`` remembers nothing (the
    prompt sees the current observation only). Saved with the data module's
    state, so a resumed run sees the same prompts.
    """

    def __init__(self, num_envs: int, keep: int, frames: int = 0) -> None:
        self.keep = keep
        self.frames = min(frames, keep)
        self.slots: list[list[Step]] = [[] for _ in range(num_envs)]

    def history(self, slot: int) -> list[Step]:
        return list(self.slots[slot])

    def record(self, slot: int, obs: EnvObs, action: str) -> None:
        if self.keep:
            state = obs.text if obs.recap is None else obs.recap
            step = (state, action, obs.image) if self.frames and obs.image is not None else (state, action)
            self.slots[slot] = self._cut([*self.slots[slot], step])

    def _cut(self, steps: list[Step]) -> list[Step]:
        """The last ``keep`` steps, images kept on the last ``frames`` of them only."""
        steps = steps[-self.keep :] if self.keep else []
        older = len(steps) - self.frames
        return [tuple(step[:2]) if k < older else tuple(step) for k, step in enumerate(steps)]

    def clear(self, slot: int) -> None:
        self.slots[slot] = []

    def state_dict(self) -> list[list[Step]]:
        return [list(s) for s in self.slots]

    def load_state_dict(self, state: list[list[Step]] | None) -> None:
        """Restore saved slots, each cut to this memory's ``keep`` and ``frames`` (a resume may lower them)."""
        if state is not None:
            self.slots = [self._cut([tuple(step) for step in s]) for s in state]
