"""The PPO update: epochs over shuffled minibatches of one rollout, gradients accumulated over
micro-batches, the optimizer and its cosine schedule, and the guard against non-finite gradients.

:class:`Learner` is the update's state between updates (optimizer, schedule,
shuffle RNG, the count of bad steps in a row); the loss math is in
:mod:`agentrl.ppo`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from lightning.fabric import Fabric

from agentrl import ppo
from agentrl.config import Config
from agentrl.policy import PolicyModule
from agentrl.rollout import Rollout, RolloutDataModule


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had NaN or inf gradients."""


class Learner:
    """Adam over the policy's trainable weights and its value head (own lr), set up by Fabric.

    ``policy_f`` is the Fabric-wrapped policy (DDP...), whose forward syncs
    gradients; ``policy`` stays the plain module for everything else.
    """

    def __init__(self, fabric: Fabric, policy: PolicyModule, cfg: Config) -> None:
        p, world = cfg.ppo, fabric.world_size
        self.fabric, self.policy, self.cfg = fabric, policy, cfg
        self.sharded = cfg.trainer.strategy == "fsdp"
        """FSDP2 (:mod:`agentrl.sharding`): the optimizer is made over the shards, after the model is set up."""
        if self.sharded:
            self.policy_f = fabric.setup_module(policy)
        groups = [{"params": [q for q in policy.model.parameters() if q.requires_grad], "lr": p.lr}]
        if policy.has_critic:  # a critic-free estimator's policy has no value head to train
            groups.append({"params": list(policy.value_head.parameters()), "lr": p.value_lr or p.lr})
        optimizer = torch.optim.Adam(groups)
        opt_steps = p.epochs * math.ceil(cfg.rollout.steps_per_update / p.minibatch_size)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, cfg.trainer.max_updates * opt_steps), eta_min=p.min_lr)
        if self.sharded:
            self.optimizer = fabric.setup_optimizers(optimizer)
        else:  # every trainable weight is float32 already
            self.policy_f, self.optimizer = fabric.setup(policy, optimizer)
        self.minibatch_size = p.minibatch_size // world  # this rank's share of each minibatch
        self.minibatches = math.ceil(cfg.steps_per_env(world) * cfg.env.num_envs / self.minibatch_size)
        """Optimizer steps per epoch, as planned (a grouped rollout, larger than planned, keeps the count)."""
        self.shuffle = torch.Generator().manual_seed(cfg.seed + fabric.global_rank)
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
        sched.base_lrs = [p.lr, p.value_lr or p.lr][: len(self.optimizer.param_groups)]
        progress = math.cos(math.pi * sched.last_epoch / sched.T_max)
        for group, base in zip(self.optimizer.param_groups, sched.base_lrs):
            group["lr"] = p.min_lr + (base - p.min_lr) * (1 + progress) / 2
        sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def update(self, rollout: Rollout, data: RolloutDataModule) -> dict[str, float]:
        """``ppo.epochs`` passes over this rank's rollout; returns mean loss terms per sample.

        An optimizer step whose gradient is NaN or inf is skipped;
        ``trainer.max_bad_steps`` of them in a row stop the run before anything
        is checkpointed.
        """
        p = self.cfg.ppo
        sums: dict[str, float] = {}
        n_steps = skipped = epochs = 0
        start_ratio_error = float("nan")
        for _ in range(p.epochs):
            epochs += 1
            epoch_kl = 0.0
            for mb in data.minibatches(rollout.size, self.minibatch_size, self.shuffle, lengths=rollout.lengths,
                                       count=self.minibatches):
                terms = accumulate_gradients(self.fabric, self.policy, self.policy_f, rollout, mb, self.cfg)
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


def accumulate_gradients(fabric: Fabric, policy: PolicyModule, policy_f: Any, rollout: Rollout, mb: torch.Tensor,
                         cfg: Config) -> dict[str, float]:
    """Backward over the minibatch ``mb`` in micro-batches; returns loss terms summed over its samples.

    Each micro-batch's loss is a sum scaled by 1 / len(mb) (under DDP: by world / the minibatch's size over
    all ranks), so the accumulated gradient equals one pass over the whole minibatch, whatever the micro size
    and however the samples are shared between ranks.
    Also ``first_micro_ratio_error``: mean |ratio - 1| over the first micro-batch.
    """
    p = cfg.ppo
    micro = mb.split(p.micro_batch_size)
    names = ("policy", "value", "entropy", "approx_kl", "clipfrac")
    sums = torch.zeros(len(names))
    by_token = p.loss_type == "token"
    # Each sample weighs 1 / (the minibatch's samples over all ranks); DDP averages the ranks' gradients, so a
    # rank scales by world / global count (= 1 / len(mb) when the ranks' shares are equal, as without groups).
    counts = torch.tensor([float(len(mb)), float(sum(rollout.weights[i].sum() for i in mb.tolist()))],
                          dtype=torch.float64)
    world = fabric.world_size
    if world > 1:
        counts = fabric.all_reduce(counts, reduce_op="sum").cpu()
    sample_scale = world / float(counts[0]) if world > 1 else 1.0 / len(mb)
    token_scale = world / max(float(counts[1]), 1e-8)  # the policy term of loss_type=token: per weighted token
    vf_coef = p.vf_coef if policy.has_critic else 0.0
    sharded = cfg.trainer.strategy == "fsdp"
    real = len(micro)
    if sharded and world > 1:  # every forward/backward is a collective: each rank runs the most micro-batches any
        most = int(fabric.all_reduce(torch.tensor(float(real)), reduce_op="max"))  # rank has; extra ones weigh 0
        micro = list(micro) + [micro[0][:1]] * (most - real)
    for j, idx in enumerate(micro):
        ix = idx.tolist()
        inputs = policy.collate_train([rollout.prompts[i] for i in ix], [rollout.gen_ids[i] for i in ix],
                                      [rollout.weights[i] for i in ix],
                                      share=False if sharded else None)  # one forward per micro-batch, as on every rank
        weight = 1.0 if j < real else 0.0
        # DDP: gradients all-reduced once, after the last micro-batch. FSDP2 reduce-scatters every micro-batch's
        # into the shards instead: skipping it would hold a full unsharded gradient on every rank until the last
        with fabric.no_backward_sync(policy_f, enabled=j < len(micro) - 1 and not sharded):
            token_logp, values, entropy = policy_f(inputs, with_entropy=cfg.policy.entropy_coef > 0)
            dev = values.device
            logp = ppo.weighted_logprob(token_logp.float(), inputs.weights.to(dev))
            tokens = None
            if by_token:
                w = inputs.weights.to(dev)
                old = torch.zeros_like(w)
                for row, i in enumerate(ix):
                    old[row, : len(rollout.token_logp[i])] = rollout.token_logp[i].to(dev)
                tokens = (token_logp.float(), old, w, token_scale)
            terms = ppo.ppo_losses(
                logp, rollout.logp[idx].to(dev), rollout.advantages[idx].to(dev), values.float(),
                rollout.values[idx].to(dev), rollout.returns[idx].to(dev), entropy.float(),
                clip=p.clip, value_clip=p.value_clip, vf_coef=vf_coef,
                entropy_coef=cfg.policy.entropy_coef, scale=sample_scale, tokens=tokens,
            )
            fabric.backward(terms.total * weight)
        if j >= real:  # a stand-in that keeps this rank's collectives in step with the others'
            continue
        sums += torch.stack([getattr(terms, n).detach().float().cpu() for n in names]) / sample_scale
        if j == 0:
            ratio = torch.exp(logp.detach() - rollout.logp[idx].to(dev))
            first_micro = float((ratio - 1).abs().mean())  # device sync, once per minibatch
    out = dict(zip(names, sums.tolist()))  # plain sums over the minibatch's samples
    out["first_micro_ratio_error"] = first_micro
    return out
