"""Advantage estimators, chosen by name (``advantage.estimator``): rollout -> per-sample advantages and returns.

An estimator sees a whole :class:`~agentrl.rollout.Rollout` (T steps x N envs)
and returns ``(advantages, returns)``, both (B,) flattened step-major like the
rollout's samples. Whitening across ranks happens after it, in the learner.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from torch import Tensor

from agentrl import ppo

if TYPE_CHECKING:
    from agentrl.rollout import Rollout


class AdvantageEstimator(ABC):
    """The base of every estimator; build one with :meth:`from_config`."""

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
