"""Advantage estimators, chosen by name (``advantage.estimator``): rollout -> per-sample advantages and returns.

An estimator sees a whole :class:`~agentrl.algorithms.batches.Rollout` (T steps x N envs)
and returns ``(advantages, returns)``, both (B,) flattened step-major like the
rollout's samples. Whitening across ranks happens after it, in the learner.
An estimator with running statistics (GAE's :class:`ReturnScaler`) hands them to
checkpoints through ``state_dict`` / ``load_state_dict``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor

from agentrl.algorithms import ppo
from agentrl.algorithms.collectives import gather_objects

if TYPE_CHECKING:
    from agentrl.algorithms.batches import Rollout


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

    def state_dict(self) -> dict[str, Any]:
        """What this rank's estimator carries from update to update (saved in checkpoints); none here."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output (a resumed run)."""


class ReturnScaler:
    """Rewards divided by the running std of the discounted return (``advantage.reward_scaling=return_std``).

    The math of SB3's ``VecNormalize(norm_reward=True)`` and gymnasium's ``NormalizeReward`` (cleanrl's
    PPO): per env a discounted return G <- gamma * G + r, set to 0 after the step that ends an episode
    (it carries over from one rollout to the next); at each step t the running mean and variance of G
    take in that step's G of every env (Chan et al.'s parallel update, starting from mean 0, var 1,
    count 1e-4) and the step's rewards are divided by sqrt(var + 1e-8). No mean is subtracted (a
    shift would change which episodes pay) and nothing is clipped (SB3 clips at 10; a rare ALFWorld
    win must stay large against the step rewards). The statistics take in every rank's envs (one
    gather of the rollout's G per update), so every rank scales alike; G itself is per env.
    """

    COUNT0, EPS = 1e-4, 1e-8

    def __init__(self, gamma: float) -> None:
        self.gamma = gamma
        self.mean, self.var, self.count = 0.0, 1.0, self.COUNT0
        self.discounted: Tensor | None = None
        """(N,) float64 this rank's discounted return of each env's episode so far."""

    def __call__(self, rewards: Tensor, episode_end: Tensor) -> Tensor:
        """Scaled rewards (T, N) from rewards (T, N) and episode ends (T, N, terminated or truncated)."""
        T, N = rewards.shape
        g = torch.zeros(N, dtype=torch.float64) if self.discounted is None else self.discounted.clone()
        returns = torch.empty(T, N, dtype=torch.float64)
        for t in range(T):
            g = self.gamma * g + rewards[t].double().cpu()
            returns[t] = g
            g = torch.where(episode_end[t].bool().cpu(), torch.zeros_like(g), g)
        self.discounted = g
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        everyone = torch.cat(gather_objects(returns, world), dim=1)  # (T, N over all ranks), rank order
        scale = torch.empty(T, dtype=torch.float64)
        for t in range(T):
            self.update(everyone[t])
            scale[t] = math.sqrt(self.var + self.EPS)
        return (rewards.double() / scale.to(rewards.device)[:, None]).to(rewards.dtype)

    def update(self, batch: Tensor) -> None:
        """Take a batch of returns (K,) into the running mean and (population) variance."""
        n, b_mean, b_var = batch.numel(), float(batch.mean()), float(batch.var(unbiased=False))
        total = self.count + n
        delta = b_mean - self.mean
        m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / total
        self.mean, self.var, self.count = self.mean + delta * n / total, m2 / total, total

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "var": self.var, "count": self.count,
                "discounted": None if self.discounted is None else self.discounted.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]
        self.discounted = None if state["discounted"] is None else state["discounted"].clone()


class GAE(AdvantageEstimator):
    """Generalised advantage estimation over the (T, N) grid (``ppo.gamma``, ``ppo.gae_lambda``).

    Truncated episodes bootstrap from the value of their final observation,
    terminated ones do not (see :func:`agentrl.algorithms.ppo.gae`). With ``reward_scaling="return_std"``
    the rewards are first divided by the running std of the discounted return (:class:`ReturnScaler`),
    so the value head learns returns of order 1 whatever the env's reward scale (ALFWorld's won 50).
    """

    def __init__(self, gamma: float, lam: float, reward_scaling: str = "none") -> None:
        if reward_scaling not in ("none", "return_std"):
            raise ValueError(f"reward_scaling must be none or return_std, got {reward_scaling!r}")
        self.gamma, self.lam = gamma, lam
        self.scaler = ReturnScaler(gamma) if reward_scaling == "return_std" else None

    @classmethod
    def from_config(cls, cfg: Any) -> GAE:
        return cls(cfg.ppo.gamma, cfg.ppo.gae_lambda, cfg.advantage.reward_scaling)

    def __call__(self, rollout: Rollout) -> tuple[Tensor, Tensor]:
        T, N = rollout.rewards.shape
        ends = rollout.terminated | rollout.truncated
        rewards = rollout.rewards if self.scaler is None else self.scaler(rollout.rewards, ends)
        adv, ret = ppo.gae(
            rewards, rollout.values.view(T, N), rollout.next_values, rollout.terminated, ends, self.gamma, self.lam,
        )
        return adv.reshape(-1), ret.reshape(-1)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.scaler is None else {"return_scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None:
            self.scaler.load_state_dict(state["return_scaler"])


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

    Needs a grouped rollout (``rollout.group_size`` >= 2, see :mod:`agentrl.data.groups`): whole episodes,
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
        adv = self.episode_advantages(returns, group)[episode].float()
        if rollout.kl_penalty is not None:  # after the comparison, so it keeps its size (see agentrl.data.groups)
            adv = adv - rollout.kl_penalty
        return adv, returns[episode].float()

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
