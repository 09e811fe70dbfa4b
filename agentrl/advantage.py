"""Advantage estimators, chosen by name (``advantage.estimator``): rollout -> per-sample advantages and returns.

An estimator sees a whole :class:`~agentrl.rollout.Rollout` (T steps x N envs)
and returns ``(advantages, returns)``, both (B,) flattened step-major like the
rollout's samples. Whitening across ranks happens after it, in the learner.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from agentrl import ppo

if TYPE_CHECKING:
    from agentrl.rollout import Rollout


class AdvantageEstimator(ABC):
    """The base of every estimator; build one with :meth:`from_config`."""

    uses_values: ClassVar[bool] = True
    """False: critic-free; the policy is built without a value head and nothing bootstraps."""
    whiten: ClassVar[bool] = True
    """Whiten the advantages across the batch afterwards (``ppo.normalize_advantages``)."""

    @classmethod
    def from_config(cls, cfg: Any) -> AdvantageEstimator:
        """Build from the whole run config (``advantage.*``, the discounting in ``ppo.*``); here ``cls()``."""
        return cls()

    @abstractmethod
    def __call__(self, rollout: Rollout) -> tuple[Tensor, Tensor]:
        """(advantages (B,), returns (B,)) for the rollout's samples, b = t * N + i."""


class GAE(AdvantageEstimator):
    """Generalised advantage estimation over the (T, N) grid (``ppo.gamma``, ``ppo.gae_lambda``).

    Truncated episodes bootstrap from the value of their final observation,
    terminated ones do not (see :func:`agentrl.ppo.gae`).
    """

    def __init__(self, gamma: float, lam: float) -> None:
        self.gamma, self.lam = gamma, lam

    @classmethod
    def from_config(cls, cfg: Any) -> GAE:
        return cls(cfg.ppo.gamma, cfg.ppo.gae_lambda)

    def __call__(self, rollout: Rollout) -> tuple[Tensor, Tensor]:
        T, N = rollout.rewards.shape
        adv, ret = ppo.gae(
            rollout.rewards, rollout.values.view(T, N), rollout.next_values, rollout.terminated,
            rollout.terminated | rollout.truncated, self.gamma, self.lam,
        )
        return adv.reshape(-1), ret.reshape(-1)


# ---------------------------------------------------------------- critic-free group estimators

EPS = 1e-6
"""Added to a group's standard deviation before dividing (a group of equal returns gets advantage 0)."""


def group_normalise(x: Tensor, groups: Tensor, scale_by_std: bool = True) -> Tensor:
    """``x`` minus its group's mean, divided by the group's (unbiased) std + EPS when ``scale_by_std``.

    A group of one gets 0: nothing to compare it with. Shapes (K,).
    """
    out = torch.zeros_like(x)
    for g in groups.unique():
        member = groups == g
        if int(member.sum()) < 2:
            continue
        v = x[member]
        centred = v - v.mean()
        out[member] = centred / (v.std() + EPS) if scale_by_std else centred
    return out


def episode_returns(rollout: Rollout) -> tuple[Tensor, Tensor, Tensor]:
    """(R (E,) each episode's undiscounted return, its group (E,), each sample's episode (B,)).

    Needs a grouped rollout (``rollout.group_size`` >= 2, see :mod:`agentrl.groups`): whole episodes,
    samples of each episode in step order, ``episode_of`` and ``group_of`` per sample.
    """
    if rollout.episode_of is None or rollout.group_of is None:
        raise ValueError("a group estimator needs grouped rollouts: set rollout.group_size >= 2")
    rewards = rollout.rewards.reshape(-1).double()
    episode = rollout.episode_of
    count = int(episode.max()) + 1
    returns = torch.zeros(count, dtype=torch.float64).index_add_(0, episode, rewards)
    group = torch.zeros(count, dtype=torch.long).index_copy_(0, episode, rollout.group_of)
    return returns, group, episode


def returns_to_go(rollout: Rollout, gamma: float) -> Tensor:
    """(B,) discounted return from each sample's step to the end of its episode."""
    rewards = rollout.rewards.reshape(-1).double()
    out = torch.zeros_like(rewards)
    running, episode = 0.0, rollout.episode_of.tolist()
    for b in range(len(rewards) - 1, -1, -1):
        if b == len(rewards) - 1 or episode[b + 1] != episode[b]:
            running = 0.0
        running = float(rewards[b]) + gamma * running
        out[b] = running
    return out


class GroupEstimator(AdvantageEstimator):
    """Base of the critic-free estimators: the advantage compares episodes of one group."""

    uses_values = False
    whiten = False  # already normalised within groups; whitening again would undo Dr. GRPO's choice

    def __init__(self, scale_by_std: bool = True) -> None:
        self.scale_by_std = scale_by_std

    @classmethod
    def from_config(cls, cfg: Any) -> GroupEstimator:
        return cls(cfg.advantage.scale_by_std)

    def __call__(self, rollout: Rollout) -> tuple[Tensor, Tensor]:
        returns, group, episode = episode_returns(rollout)
        adv = self.episode_advantages(returns, group)
        return adv[episode].float(), returns[episode].float()

    def episode_advantages(self, returns: Tensor, group: Tensor) -> Tensor:
        """(E,) advantage of each episode from the returns (E,) and groups (E,) of the rollout's episodes."""
        return group_normalise(returns, group, self.scale_by_std)


class GRPO(GroupEstimator):
    """Group-relative: (R - mean of the group) / (std of the group + EPS), given to every step of the episode.

    ``advantage.scale_by_std=false`` is Dr. GRPO (no division). The std is the unbiased one, as TRL's and verl's.
    """


class RLOO(GroupEstimator):
    """REINFORCE leave-one-out: R_i minus the mean of the other G - 1 returns of its group."""

    def episode_advantages(self, returns: Tensor, group: Tensor) -> Tensor:
        out = torch.zeros_like(returns)
        for g in group.unique():
            member = group == g
            k = int(member.sum())
            if k >= 2:
                r = returns[member]
                out[member] = r - (r.sum() - r) / (k - 1)
        return out


class GiGPO(GroupEstimator):
    """Group-in-group: GRPO's episode-level advantage plus ``step_weight`` x a step-level one.

    Step level: the steps of a group's episodes that saw the same observation (an anchor state:
    identical text and image) form a step group; each step's discounted return to go (``ppo.gamma``)
    is normalised within its step group (as the episode level: mean, optionally std). A state seen
    twice in one episode contributes both steps; a state seen once gets 0.
    """

    def __init__(self, scale_by_std: bool = True, step_weight: float = 1.0, gamma: float = 0.9) -> None:
        super().__init__(scale_by_std)
        self.step_weight, self.gamma = step_weight, gamma

    @classmethod
    def from_config(cls, cfg: Any) -> GiGPO:
        return cls(cfg.advantage.scale_by_std, cfg.advantage.step_weight, cfg.ppo.gamma)

    def __call__(self, rollout: Rollout) -> tuple[Tensor, Tensor]:
        if rollout.anchors is None:
            raise ValueError("gigpo needs each sample's anchor (observation id): use grouped rollouts")
        episode_adv, returns = super().__call__(rollout)
        togo = returns_to_go(rollout, self.gamma)
        # a step group is (episode group, anchor): renumber the pairs densely
        pairs = torch.stack([rollout.group_of, rollout.anchors], dim=1)
        step_group = torch.unique(pairs, dim=0, return_inverse=True)[1]
        step_adv = group_normalise(togo, step_group, self.scale_by_std)
        return (episode_adv.double() + self.step_weight * step_adv).float(), togo.float()
