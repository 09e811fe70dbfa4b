"""The typed containers the algorithms read: a :class:`Rollout` (one update's samples, what the advantage
estimators and the learner consume) and a :class:`MicroBatch` (one forward/backward of the update, the
batch of :meth:`agentrl.policy.module.PolicyModule.training_step`).

:class:`~agentrl.data.rollout.RolloutDataModule` fills a Rollout; its loader
(:mod:`agentrl.data.loader`) cuts it into minibatches of micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from agentrl.envs.base import EnvObs, EpisodeStats
from agentrl.prompting.batching import Prompt, TrainInputs
from agentrl.prompting.candidates import CandidateInputs, Candidates


@dataclass
class Rollout:
    """One update's data: T steps x N envs, flattened step-major to B = T * N samples (b = t * N + i)."""

    prompts: list[Prompt]
    """B processed prompts."""
    gen_ids: list[Tensor]
    """B generated answers (L_b,), EOS included."""
    weights: list[Tensor]
    """B per-token weights (L_b,): thought_coef on CoT tokens, 1 on action tokens."""
    texts: list[str]
    """B decoded answers."""
    logp: Tensor
    """(B,) weighted log-prob of each answer under the sampling policy."""
    values: Tensor
    """(B,) V(o) under the sampling policy."""
    rewards: Tensor
    """(T, N) env reward plus any parse-failure penalty."""
    terminated: Tensor
    """(T, N) bool."""
    truncated: Tensor
    """(T, N) bool."""
    next_values: Tensor
    """(T, N) value of the observation that follows each step in its episode (see ppo.gae)."""
    episodes: list[EpisodeStats]
    """Episodes that ended during this rollout."""
    parse_failures: int
    """Answers that named no legal action (a random legal action was taken)."""
    gen_tokens: int
    """Tokens generated in total."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent in generate, env.step and scoring."""
    samples_for_log: list[tuple[EnvObs, str, str]] = field(default_factory=list)
    """A few (observation, answer, the prompt's text as the model got it) to show in TensorBoard."""
    token_logp: list[Tensor] | None = None
    """B per-token log-probs (L_b,) under the sampling policy (``ppo.loss_type=token`` needs them)."""
    episode_of: Tensor | None = None
    """Grouped rollouts (:mod:`agentrl.data.groups`): (B,) the episode (0..E-1) each sample belongs to."""
    group_of: Tensor | None = None
    """Grouped rollouts: (B,) the group (envs that started from the same state) of each sample."""
    anchors: Tensor | None = None
    """Grouped rollouts: (B,) int64 id of each sample's observation; identical observations share it."""
    kl_penalty: Tensor | None = None
    """Grouped rollouts with policy.kl_coef: (B,) kl_coef * (log p - log p_ref), subtracted from the advantage."""
    candidates: list[Candidates] | None = None
    """The score head (``policy.action_head=score``): each sample's legal actions as scored candidates, the
    one taken marked; ``gen_ids`` then hold the chosen candidate's tokens."""
    advantages: Tensor | None = None
    """(B,) filled by the trainer."""
    returns: Tensor | None = None
    """(B,) filled by the trainer."""

    @property
    def size(self) -> int:
        return len(self.prompts)

    @property
    def lengths(self) -> Tensor:
        """(B,) prompt + answer tokens of each sample: what a micro-batch pads to."""
        return torch.tensor([p["input_ids"].shape[-1] + len(g) for p, g in zip(self.prompts, self.gen_ids)])


class MicroBatch:
    """b samples of a rollout collated for one teacher-forced forward/backward, with what the PPO loss needs.

    The loss of a micro-batch is a sum over its samples times ``sample_scale``, so that gradients
    accumulated over a minibatch's micro-batches equal one pass over the whole minibatch
    (:func:`agentrl.algorithms.ppo.ppo_losses`).

    A plain class, not a dataclass: on its way through DDP's forward (``training_step``) Fabric casts the
    float tensors of any dataclass it is given to 16 bits under bf16-mixed, the advantages and old log-probs too.
    """

    __slots__ = ("inputs", "old_logp", "advantages", "old_values", "returns", "old_token_logp", "sample_scale",
                 "token_scale", "stand_in")

    def __init__(self, inputs: TrainInputs | CandidateInputs, old_logp: Tensor, advantages: Tensor, old_values: Tensor,
                 returns: Tensor, old_token_logp: Tensor | None = None, sample_scale: float = 1.0,
                 token_scale: float = 1.0, stand_in: bool = False) -> None:
        self.inputs = inputs
        """[left-padded prompt | right-padded answer] model inputs and the per-token weights (b, L); the score
        head's prompts and candidates."""
        self.old_logp = old_logp
        """(b,) weighted log-prob of each answer under the sampling policy."""
        self.advantages = advantages
        """(b,)"""
        self.old_values = old_values
        """(b,) V(o) under the sampling policy."""
        self.returns = returns
        """(b,)"""
        self.old_token_logp = old_token_logp
        """(b, L) per-token log-probs under the sampling policy, 0 past each answer (``ppo.loss_type=token``)."""
        self.sample_scale = sample_scale
        """Each sample's weight in its minibatch's loss: 1 / the minibatch's samples (world / all ranks' under DDP)."""
        self.token_scale = token_scale
        """``ppo.loss_type=token``: 1 / the minibatch's total token weight (world / all ranks' under DDP)."""
        self.stand_in = stand_in
        """A repeat of a real sample that only keeps this rank's FSDP collectives in step with the others': its
        gradient is scaled to 0 and its terms are not counted."""
