"""The PPO epochs' data: a loader over one rollout's shuffled minibatches, each cut into micro-batches.

:meth:`RolloutDataModule.train_dataloader() <agentrl.data.rollout.RolloutDataModule.train_dataloader>`
returns a :class:`RolloutLoader`; iterating it once is one PPO epoch (a fresh shuffled order each time),
and each :class:`Minibatch` it yields is one optimizer step, collated into
:class:`~agentrl.algorithms.batches.MicroBatch`\\ es one at a time as the learner asks for them (only one
micro-batch's padded inputs exist at once).

A plain iterable, not torch's ``DataLoader``: the samples are already in memory with their processor
outputs, and collating needs the policy's batcher, so worker processes would gain nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from agentrl.algorithms.batches import MicroBatch, Rollout


class Minibatch:
    """One optimizer step's samples of a rollout (indices, sorted by length so micro-batches pad less)."""

    def __init__(self, rollout: Rollout, indices: Tensor, *, micro_batch_size: int, collate: Callable,
                 token_level: bool = False, share: bool | None = None) -> None:
        self.rollout, self.indices = rollout, indices
        self.micro_batch_size = micro_batch_size
        self.collate, self.token_level, self.share = collate, token_level, share

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def num_micro(self) -> int:
        """Micro-batches of this minibatch."""
        return math.ceil(len(self.indices) / self.micro_batch_size)

    @property
    def token_weight(self) -> float:
        """Total per-token weight of the minibatch's answers (``ppo.loss_type=token`` divides by it)."""
        return float(sum(self.rollout.weights[i].sum() for i in self.indices.tolist()))

    def micro_batches(self, sample_scale: float | None = None, token_scale: float | None = None,
                      at_least: int = 0) -> Iterator[MicroBatch]:
        """The minibatch's micro-batches, collated one at a time; ``sample_scale`` and ``token_scale``
        default to this rank's own counts (one process). ``at_least``: stand-ins (a repeat of the first
        sample, :attr:`MicroBatch.stand_in`) follow until there are that many."""
        sample_scale = 1.0 / len(self) if sample_scale is None else sample_scale
        token_scale = 1.0 / max(self.token_weight, 1e-8) if token_scale is None else token_scale
        parts = list(self.indices.split(self.micro_batch_size))
        real = len(parts)
        parts += [parts[0][:1]] * (at_least - real)
        for j, idx in enumerate(parts):
            yield self._collate(idx, sample_scale, token_scale, stand_in=j >= real)

    def _collate(self, idx: Tensor, sample_scale: float, token_scale: float, stand_in: bool) -> MicroBatch:
        r, ix = self.rollout, idx.tolist()
        scored = {} if r.candidates is None else {"candidates": [r.candidates[i] for i in ix]}
        inputs = self.collate([r.prompts[i] for i in ix], [r.gen_ids[i] for i in ix], [r.weights[i] for i in ix],
                              share=self.share, **scored)
        old_tokens = None
        if self.token_level:
            old_tokens = torch.zeros_like(inputs.weights)
            for row, i in enumerate(ix):
                old_tokens[row, : len(r.token_logp[i])] = r.token_logp[i]
        return MicroBatch(inputs=inputs, old_logp=r.logp[idx], advantages=r.advantages[idx], old_values=r.values[idx],
                          returns=r.returns[idx], old_token_logp=old_tokens, sample_scale=sample_scale,
                          token_scale=token_scale, stand_in=stand_in)


class RolloutLoader:
    """One rollout's minibatches: each iteration is one PPO epoch over a fresh shuffled order.

    ``count``: exactly this many minibatches an epoch (of near-equal size) when ``minibatch_size``
    would give another number (a grouped rollout larger than planned), so the optimizer steps per
    update, hence the LR schedule, stay as planned. Each minibatch is sorted by length (``sort``), so its
    micro-batches pad less; the minibatch, hence its gradient, is the same up to float round-off.
    """

    def __init__(self, rollout: Rollout, *, minibatch_size: int, micro_batch_size: int, generator: torch.Generator,
                 collate: Callable, count: int | None = None, token_level: bool = False,
                 share: bool | None = None, sort: bool = True) -> None:
        self.rollout, self.sort = rollout, sort
        self.minibatch_size, self.micro_batch_size, self.count = minibatch_size, micro_batch_size, count
        self.generator = generator
        self.collate, self.token_level, self.share = collate, token_level, share

    def __len__(self) -> int:
        return self.count if self.count is not None else math.ceil(self.rollout.size / self.minibatch_size)

    def __iter__(self) -> Iterator[Minibatch]:
        if self.rollout.advantages is None or self.rollout.returns is None:
            raise RuntimeError("the rollout's advantages and returns are not filled: run the advantage estimator "
                               "on it first (rollout.advantages, rollout.returns = estimator(rollout))")
        order = torch.randperm(self.rollout.size, generator=self.generator)
        chunks = order.split(self.minibatch_size)
        if self.count is not None and len(chunks) != self.count:
            chunks = order.tensor_split(self.count)
        lengths = self.rollout.lengths
        for mb in chunks:
            yield self.minibatch(mb[torch.argsort(lengths[mb], stable=True)] if self.sort else mb)

    def minibatch(self, indices: Tensor) -> Minibatch:
        """The samples ``indices`` of the rollout as one minibatch (in that order)."""
        return Minibatch(self.rollout, indices, micro_batch_size=self.micro_batch_size, collate=self.collate,
                         token_level=self.token_level, share=self.share)
