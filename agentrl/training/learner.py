"""The PPO update: epochs over one rollout's minibatches, gradients accumulated over micro-batches, the
optimizer and its cosine schedule, and the guard against non-finite gradients.

:class:`Learner` is the update's state between updates (optimizer, schedule, the count of bad steps in a
row). What it runs are the Lightning hooks: the optimizer is :meth:`PolicyModule.configure_optimizers
<agentrl.policy.module.PolicyModule.configure_optimizers>`, the loss of each micro-batch
:meth:`PolicyModule.training_step <agentrl.policy.module.PolicyModule.training_step>`, the data
:meth:`RolloutDataModule.train_dataloader <agentrl.data.rollout.RolloutDataModule.train_dataloader>`'s loader.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from lightning.fabric import Fabric

from agentrl.algorithms import ppo
from agentrl.config import Config
from agentrl.data.loader import Minibatch, RolloutLoader
from agentrl.policy.module import PolicyModule


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had NaN or inf gradients."""


class Learner:
    """Adam over the policy's trainable weights and its value head (own lr), set up by Fabric.

    ``policy_f`` is the Fabric-wrapped policy (DDP...), whose forward syncs
    gradients; ``policy`` stays the plain module for everything else.
    """

    def __init__(self, fabric: Fabric, policy: PolicyModule, cfg: Config) -> None:
        p = cfg.ppo
        self.fabric, self.policy, self.cfg = fabric, policy, cfg
        self.sharded = cfg.trainer.strategy == "fsdp"
        """FSDP2 (:mod:`agentrl.policy.sharding`): the optimizer is made over the shards, after the model is set up."""
        if self.sharded:
            self.policy_f = fabric.setup_module(policy)
        optimizer = policy.configure_optimizers()
        opt_steps = p.epochs * math.ceil(cfg.rollout.steps_per_update / p.minibatch_size)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, cfg.trainer.max_updates * opt_steps), eta_min=p.min_lr)
        if self.sharded:
            self.optimizer = fabric.setup_optimizers(optimizer)
        else:  # every trainable weight is float32 already
            self.policy_f, self.optimizer = fabric.setup(policy, optimizer)
        self.bad_in_a_row = 0
        """Optimizer steps with NaN/inf gradients in a row, across updates."""

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def follow_config(self) -> None:
        """After a resume with changed ``ppo.lr``/``ppo.value_lr``/``ppo.min_lr``/``trainer.max_updates``/
        ``ppo.epochs``: the cosine continues from the step it reached on the new start, end and horizon."""
        p, sched = self.cfg.ppo, self.scheduler
        opt_steps = p.epochs * math.ceil(self.cfg.rollout.steps_per_update / p.minibatch_size)
        sched.T_max = max(1, self.cfg.trainer.max_updates * opt_steps, sched.last_epoch)
        sched.eta_min = p.min_lr
        sched.base_lrs = [g["lr"] for g in self.policy.param_groups(p.lr, p.vision_lr, p.value_lr)]
        progress = math.cos(math.pi * sched.last_epoch / sched.T_max)
        for group, base in zip(self.optimizer.param_groups, sched.base_lrs):
            group["lr"] = p.min_lr + (base - p.min_lr) * (1 + progress) / 2
        sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def update(self, loader: RolloutLoader) -> dict[str, float]:
        """``ppo.epochs`` passes of ``loader`` (this rank's rollout, advantages filled); returns mean loss terms
        per sample.

        An optimizer step whose gradient is NaN or inf is skipped;
        ``trainer.max_bad_steps`` of them in a row stop the run before anything
        is checkpointed.
        """
        p, rollout = self.cfg.ppo, loader.rollout
        sums: dict[str, float] = {}
        n_steps = skipped = epochs = 0
        start_ratio_error = float("nan")
        for _ in range(p.epochs):
            epochs += 1
            epoch_kl = 0.0
            for mb in loader:
                terms = accumulate_gradients(self.fabric, self.policy_f, mb, sharded=self.sharded)
                first_micro = terms.pop("first_micro_ratio_error")
                if n_steps == 0:  # before any optimizer step: 0 up to round-off when sampling = scoring
                    start_ratio_error = first_micro
                grad_norm = self.fabric.clip_gradients(self.policy_f, self.optimizer, max_norm=p.max_grad_norm,
                                                       error_if_nonfinite=False)
                if hasattr(grad_norm, "full_tensor"):  # FSDP2: the norm over every shard, replicated
                    grad_norm = grad_norm.full_tensor()
                if torch.isfinite(grad_norm):  # device sync, once per optimizer step
                    self.optimizer.step()
                    self.bad_in_a_row = 0
                else:  # a NaN/inf gradient: skip the step rather than poison the weights
                    skipped += 1
                    self._count_bad_step()
                self.optimizer.zero_grad(set_to_none=True)
                with warnings.catch_warnings():  # the schedule counts planned steps, skipped ones too
                    warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before", UserWarning)
                    self.scheduler.step()
                n_steps += 1
                terms["grad_norm"] = float(grad_norm) * len(mb)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v
                epoch_kl += terms["approx_kl"]
            if p.target_kl is not None:  # over every rank's samples: all ranks stop after the same epoch
                kl, n = epoch_kl, float(rollout.size)
                if self.fabric.world_size > 1:
                    kl, n = self.fabric.all_reduce(torch.tensor([kl, n], dtype=torch.float64), reduce_op="sum").tolist()
                if kl / n > p.target_kl:
                    break
        out = {k: v / (rollout.size * epochs) for k, v in sums.items()}
        if self.policy.has_critic:
            out["explained_variance"] = ppo.explained_variance(rollout.values, rollout.returns)
        else:
            out.pop("value", None)
        out["start_ratio_error"] = start_ratio_error
        out["skipped_steps"] = float(skipped)
        out["optimizer_steps"] = float(n_steps)
        return out

    def _count_bad_step(self) -> None:
        self.bad_in_a_row += 1
        limit = self.cfg.trainer.max_bad_steps
        if self.bad_in_a_row >= limit:
            raise NonFiniteError(
                f"{self.bad_in_a_row} optimizer steps in a row had NaN/inf gradients "
                f"(trainer.max_bad_steps={limit}); stopped without writing a checkpoint, "
                f"the last one is intact. Lower ppo.lr, check model.dtype, or resume from the checkpoint."
            )


def whiten_global(fabric: Fabric, x: torch.Tensor) -> torch.Tensor:
    """Whiten with mean and variance over every rank's samples (one all-reduce each)."""
    count = fabric.all_reduce(torch.tensor(float(x.numel())), reduce_op="sum")
    mean = fabric.all_reduce(x.sum(), reduce_op="sum") / count
    var = fabric.all_reduce(((x - mean) ** 2).sum(), reduce_op="sum") / count
    return ppo.whiten(x, mean, var)


def accumulate_gradients(fabric: Fabric, policy_f: Any, mb: Minibatch, sharded: bool = False) -> dict[str, float]:
    """Backward over the minibatch ``mb`` in micro-batches (``policy_f.training_step`` each); returns loss terms
    summed over its samples.

    Each micro-batch's loss is a sum scaled by 1 / len(mb) (under DDP: by world / the minibatch's size over
    all ranks), so the accumulated gradient equals one pass over the whole minibatch, whatever the micro size
    and however the samples are shared between ranks.
    Also ``first_micro_ratio_error``: mean |ratio - 1| over the first micro-batch.
    """
    names = ("policy", "value", "entropy", "approx_kl", "clipfrac")
    sums = torch.zeros(len(names))
    # Each sample weighs 1 / (the minibatch's samples over all ranks); DDP averages the ranks' gradients, so a
    # rank scales by world / global count (= 1 / len(mb) when the ranks' shares are equal, as without groups).
    counts = torch.tensor([float(len(mb)), mb.token_weight], dtype=torch.float64)
    world = fabric.world_size
    if world > 1:
        counts = fabric.all_reduce(counts, reduce_op="sum").cpu()
    sample_scale = world / float(counts[0]) if world > 1 else 1.0 / len(mb)
    token_scale = world / max(float(counts[1]), 1e-8)  # the policy term of loss_type=token: per weighted token
    steps = mb.num_micro
    if sharded and world > 1:  # every forward/backward is a collective: each rank runs the most micro-batches any
        steps = int(fabric.all_reduce(torch.tensor(float(steps)), reduce_op="max"))  # rank has; extra ones weigh 0
    for j, micro in enumerate(mb.micro_batches(sample_scale, token_scale, at_least=steps)):
        # DDP: gradients all-reduced once, after the last micro-batch. FSDP2 reduce-scatters every micro-batch's
        # into the shards instead: skipping it would hold a full unsharded gradient on every rank until the last
        with fabric.no_backward_sync(policy_f, enabled=j < steps - 1 and not sharded):
            # Fabric sends training_step through DDP's forward (gradients sync) and its autocast there only;
            # with one device or FSDP2 it calls the method directly, so the autocast is entered here for all
            with fabric.autocast():
                terms = policy_f.training_step(micro)
            fabric.backward(terms.total * (0.0 if micro.stand_in else 1.0))
        if micro.stand_in:  # a stand-in that keeps this rank's collectives in step with the others'
            continue
        sums += torch.stack([getattr(terms, n).detach().float().cpu() for n in names]) / sample_scale
        if j == 0:
            first_micro = float((terms.ratio - 1).abs().mean())  # device sync, once per minibatch
    out = dict(zip(names, sums.tolist()))  # plain sums over the minibatch's samples
    out["first_micro_ratio_error"] = first_micro
    return out
