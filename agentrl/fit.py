"""`agentrl fit`: PPO on a VLM with Lightning Fabric.

The loop, per update: 1. collect rollouts, 2. score them (inside collect),
3. advantages, 4. PPO epochs, 5. log and checkpoint.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.fabric import Fabric
from lightning.fabric.loggers import TensorBoardLogger

from agentrl import ppo
from agentrl.checkpoint import (
    FORMAT_VERSION,
    load_trainable,
    load_trainer_state,
    resolve_resume,
    run_meta,
    save_checkpoint,
)
from agentrl.config import Config, ConfigError, to_yaml
from agentrl.distributed import Meeting, gather_objects, make_strategy, reduce_sums
from agentrl.policy import PolicyModule
from agentrl.registry import ENVS, FAMILY_DEFAULTS, PARSERS, TEMPLATES, resolve
from agentrl.report import Reporter
from agentrl.rollout import Rollout, RolloutDataModule


def components(cfg: Config) -> tuple[Any, Any, Any]:
    """(env class, template class, parser class) named by the config; ConfigError before any work is done."""
    env_cls = resolve("env", "env.name", cfg.env.name, ENVS)
    family = getattr(env_cls, "family", "gym_cards")
    tmpl_name, parser_name = FAMILY_DEFAULTS.get(family, ("gym_cards", "json"))
    template_cls = resolve("template", "prompt.template",
                           tmpl_name if cfg.prompt.template == "auto" else cfg.prompt.template, TEMPLATES)
    parser_cls = resolve("parser", "parser.name", parser_name if cfg.parser.name == "auto" else cfg.parser.name,
                         PARSERS)
    if cfg.policy.kl_coef and cfg.model.finetune != "lora":
        raise ConfigError("policy.kl_coef > 0 needs model.finetune=lora (the reference policy is the base "
                          "model with adapters disabled)")
    return env_cls, template_cls, parser_cls


def build(cfg: Config, split: str = "train", rank: int = 0, world_size: int = 1
          ) -> tuple[PolicyModule, RolloutDataModule]:
    """Model, policy, envs, template and parser from the config, connected; envs seeded per rank."""
    env_cls, template_cls, parser_cls = components(cfg)
    policy = PolicyModule.from_config(cfg)
    envs = env_cls(cfg.env, split=split)
    data = RolloutDataModule(
        cfg.steps_per_env(world_size), seed=cfg.seed + 100_003 * rank, cot=cfg.prompt.cot,
        failure_penalty=cfg.parser.failure_penalty, score_batch_size=cfg.ppo.micro_batch_size,
        kl_coef=cfg.policy.kl_coef, logprobs_from=cfg.rollout.logprobs_from,
    )
    template = template_cls(cot=cfg.prompt.cot, text_state=cfg.prompt.text_state, image_position=cfg.prompt.image_position)
    data.connect(policy, envs, template, parser_cls())
    policy.freeze_unreachable(data.current_prompts()[0])
    if cfg.policy.init_from:  # after the freeze: a fit checkpoint holds only what fit could train
        load_trainable(policy, resolve_resume(cfg.policy.init_from, "policy.init_from"), value_head=False)
    return policy, data


def set_threads(num_threads: int | None, world_size: int) -> None:
    """One thread per process when several share the CPU (2 threads on a busy core ran 100x slower)."""
    if num_threads is None and world_size > 1:
        num_threads = 1
    if num_threads:
        torch.set_num_threads(num_threads)


@dataclass
class FitResult:
    """What a finished run leaves in memory (the files are under trainer.out_dir)."""

    metrics: dict[str, float]
    """The last update's metrics (the TensorBoard scalars)."""
    policy: PolicyModule
    """The trained policy on this rank."""
    counters: dict[str, int]
    """Totals over all ranks: env_steps, episodes."""
    checkpoint: Path | None
    """The last checkpoint written (rank 0), if any."""


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had NaN or inf gradients."""


def fit(cfg: Config, argv: list[str] | None = None) -> FitResult:
    """Train with PPO. Writes events, checkpoints, the resolved config and the command to out_dir."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bar is the one to watch
    t = cfg.trainer
    out_dir = Path(t.out_dir)
    logger = TensorBoardLogger(root_dir=str(out_dir), name="tensorboard", version="")
    fabric = Fabric(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=make_strategy(t),
                    precision=t.precision, loggers=logger)
    fabric.launch()
    world, rank = fabric.world_size, fabric.global_rank
    cfg.check_world_size(world)
    components(cfg)  # unknown names fail here, before the run dir is written
    set_threads(t.num_threads, world)
    fabric.seed_everything(cfg.seed, verbose=False)  # identical initial weights on every rank
    config_yaml, meta = to_yaml(cfg), run_meta(list(argv or sys.argv))
    if fabric.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(config_yaml)
        (out_dir / "command.txt").write_text(" ".join(meta["argv"]) + f"\n# git {meta['git_sha']}\n")

    policy, data = build(cfg, rank=rank, world_size=world)
    optimizer = torch.optim.Adam([
        {"params": [p for p in policy.model.parameters() if p.requires_grad], "lr": cfg.ppo.lr},
        {"params": list(policy.value_head.parameters()), "lr": cfg.ppo.value_lr or cfg.ppo.lr},
    ])
    local_mb = cfg.ppo.minibatch_size // world
    opt_steps = cfg.ppo.epochs * math.ceil(cfg.rollout.steps_per_update / cfg.ppo.minibatch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, t.max_updates * opt_steps), eta_min=cfg.ppo.min_lr)
    policy_f, optimizer = fabric.setup(policy, optimizer)
    policy.value_head.float()  # the critic stays float32 under bf16-true
    shuffle = torch.Generator().manual_seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed + 7919 * rank)  # per-rank sampling stream
    meeting = Meeting(world, t.collective_timeout_s)

    window: deque[bool] = deque(maxlen=t.success_window)
    counters = {"env_steps": 0, "episodes": 0}
    guard = {"bad_in_a_row": 0}
    start = 0
    if t.resume:
        ckpt = resolve_resume(t.resume)
        load_trainable(policy, ckpt)
        state = load_trainer_state(ckpt)
        if len(state["ranks"]) != world:
            raise ConfigError(f"checkpoint {ckpt} was written by {len(state['ranks'])} processes; resume it with "
                              f"trainer.devices={len(state['ranks'])}")
        mine = state["ranks"][rank]
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(mine["torch_rng"])
        shuffle.set_state(mine["shuffle_rng"])
        data.load_state_dict(mine["data"], update=state["update"])
        window.extend(mine["window"])
        counters.update(state["counters"])
        start = state["update"]
        fabric.print(f"resumed from {ckpt} at update {start}")

    reporter = Reporter(fabric, logger, total=t.max_updates, start=start)
    metrics: dict[str, float] = {}
    last_ckpt: Path | None = None
    for update in range(start, t.max_updates):
        t0 = time.perf_counter()
        # 1-2. collect a fixed number of env steps per rank and score them (old log-probs and values)
        policy.eval()
        with fabric.autocast():
            rollout = data.collect()
        t_collect = time.perf_counter() - t0
        meeting.wait("collecting rollouts")  # every rank meets here, or the slow one is named

        # 3. advantages, whitened with statistics over every rank
        adv, ret = rollout.advantages_and_returns(cfg.ppo.gamma, cfg.ppo.gae_lambda)
        if cfg.ppo.normalize_advantages:
            adv = whiten_global(fabric, adv)
        rollout.advantages, rollout.returns = adv, ret

        # 4. PPO epochs over shuffled minibatches, gradients accumulated over micro-batches
        t1 = time.perf_counter()
        policy.train()  # activation checkpointing runs in train mode; dropout stays off (PolicyModule.train)
        losses = ppo_update(fabric, policy, policy_f, optimizer, scheduler, data, rollout, cfg, shuffle, local_mb,
                            guard)
        t_update = time.perf_counter() - t1

        # 5. log and checkpoint
        window.extend(e.success for e in rollout.episodes)
        metrics = update_metrics(fabric, rollout, losses, window, t_collect, t_update, data.envs.dropped_episodes)
        counters["env_steps"] += int(metrics.pop("_samples"))
        counters["episodes"] += int(metrics["charts/episodes"])
        metrics["lr"] = scheduler.get_last_lr()[0]
        reporter.update(update + 1, metrics, rollout, counters, every=t.log_every, image_every=t.image_log_every)
        done = update + 1 == t.max_updates
        if done or (t.checkpoint_every and (update + 1) % t.checkpoint_every == 0):
            mine = {"torch_rng": torch.get_rng_state(), "shuffle_rng": shuffle.get_state(),
                    "data": data.state_dict(), "window": list(window)}
            ranks = gather_objects(mine, world)  # env and sampling state of every rank
            if fabric.is_global_zero:
                state = {"format_version": FORMAT_VERSION, "update": update + 1, "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "counters": dict(counters), "ranks": ranks}
                last_ckpt = save_checkpoint(out_dir / "checkpoints" / f"update_{update + 1:06d}", policy=policy,
                                            trainer_state=state, config_yaml=config_yaml, meta=meta)
            fabric.barrier()
    data.envs.close()
    reporter.finish(metrics, counters, out_dir, last_ckpt)
    logger.finalize("success")
    return FitResult(metrics, policy, counters, last_ckpt)


def whiten_global(fabric: Fabric, x: torch.Tensor) -> torch.Tensor:
    """Whiten with mean and variance over every rank's samples (one all-reduce each)."""
    count = fabric.all_reduce(torch.tensor(float(x.numel())), reduce_op="sum")
    mean = fabric.all_reduce(x.sum(), reduce_op="sum") / count
    var = fabric.all_reduce(((x - mean) ** 2).sum(), reduce_op="sum") / count
    return ppo.whiten(x, mean, var)


def ppo_update(fabric: Fabric, policy: PolicyModule, policy_f: Any, optimizer: Any, scheduler: Any,
               data: RolloutDataModule, rollout: Rollout, cfg: Config, shuffle: torch.Generator, minibatch_size: int,
               guard: dict[str, int]) -> dict[str, float]:
    """``ppo.epochs`` passes over this rank's rollout in minibatches of ``minibatch_size``.

    Returns mean loss terms per sample. An optimizer step whose gradient is NaN
    or inf is skipped; ``trainer.max_bad_steps`` of them in a row stop the run
    (``guard`` carries the count across updates) before anything is checkpointed.
    """
    p = cfg.ppo
    sums: dict[str, float] = {}
    n_steps = skipped = epochs = 0
    for _ in range(p.epochs):
        epochs += 1
        epoch_kl = 0.0
        for mb in data.minibatches(rollout.size, minibatch_size, shuffle, lengths=rollout.lengths):
            terms = accumulate_gradients(fabric, policy, policy_f, rollout, mb, cfg)
            grad_norm = fabric.clip_gradients(policy_f, optimizer, max_norm=p.max_grad_norm, error_if_nonfinite=False)
            if torch.isfinite(grad_norm):  # device sync, once per optimizer step
                optimizer.step()
                guard["bad_in_a_row"] = 0
            else:  # a NaN/inf gradient: skip the step rather than poison the weights
                skipped += 1
                guard["bad_in_a_row"] += 1
                if guard["bad_in_a_row"] >= cfg.trainer.max_bad_steps:
                    raise NonFiniteError(
                        f"{guard['bad_in_a_row']} optimizer steps in a row had NaN/inf gradients "
                        f"(trainer.max_bad_steps={cfg.trainer.max_bad_steps}); stopped without writing a checkpoint, "
                        f"the last one is intact. Lower ppo.lr, check model.dtype, or resume from the checkpoint."
                    )
            optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # the schedule counts planned steps, skipped ones too
                warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before", UserWarning)
                scheduler.step()
            n_steps += 1
            terms["grad_norm"] = float(grad_norm) * len(mb)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            epoch_kl += terms["approx_kl"]
        if p.target_kl is not None and epoch_kl / rollout.size > p.target_kl:
            break
    out = {k: v / (rollout.size * epochs) for k, v in sums.items()}
    out["explained_variance"] = ppo.explained_variance(rollout.values, rollout.returns)
    out["skipped_steps"] = float(skipped)
    out["optimizer_steps"] = float(n_steps)
    return out


def accumulate_gradients(fabric: Fabric, policy: PolicyModule, policy_f: Any, rollout: Rollout, mb: torch.Tensor,
                         cfg: Config) -> dict[str, float]:
    """Backward over the minibatch ``mb`` in micro-batches; returns loss terms summed over its samples.

    Each micro-batch's loss is a sum scaled by 1 / len(mb), so the accumulated
    gradient equals one pass over the whole minibatch, whatever the micro size.
    """
    p = cfg.ppo
    micro = mb.split(p.micro_batch_size)
    names = ("policy", "value", "entropy", "approx_kl", "clipfrac")
    sums = torch.zeros(len(names))
    for j, idx in enumerate(micro):
        ix = idx.tolist()
        inputs = policy.collate_train([rollout.prompts[i] for i in ix], [rollout.gen_ids[i] for i in ix],
                                      [rollout.weights[i] for i in ix])
        with fabric.no_backward_sync(policy_f, enabled=j < len(micro) - 1):
            token_logp, values, entropy = policy_f(inputs, with_entropy=cfg.policy.entropy_coef > 0)
            dev = values.device
            logp = ppo.weighted_logprob(token_logp.float(), inputs.weights.to(dev))
            terms = ppo.ppo_losses(
                logp, rollout.logp[idx].to(dev), rollout.advantages[idx].to(dev), values.float(),
                rollout.values[idx].to(dev), rollout.returns[idx].to(dev), entropy.float(),
                clip=p.clip, value_clip=p.value_clip, vf_coef=p.vf_coef,
                entropy_coef=cfg.policy.entropy_coef, scale=1.0 / len(mb),
            )
            fabric.backward(terms.total)
        sums += torch.stack([getattr(terms, n).detach().float().cpu() for n in names]) * len(mb)
    return dict(zip(names, sums.tolist()))  # plain sums over the minibatch's samples


def update_metrics(fabric: Fabric, rollout: Rollout, losses: dict[str, float], window: deque,
                   t_collect: float, t_update: float, dropped: int = 0) -> dict[str, float]:
    """The documented TensorBoard scalars: counts summed over ranks, losses and timings averaged."""
    eps = rollout.episodes
    s = reduce_sums(fabric, {
        "episodes": len(eps), "ret": sum(e.ret for e in eps), "len": sum(e.length for e in eps),
        "win_ok": sum(window), "win_n": len(window), "failures": rollout.parse_failures,
        "samples": rollout.size, "tokens": rollout.gen_tokens, "reward": float(rollout.rewards.sum()),
        "dropped": dropped,
    })
    nan = float("nan")
    m = {
        "charts/success_rate": s["win_ok"] / s["win_n"] if s["win_n"] else nan,
        "charts/episode_return": s["ret"] / s["episodes"] if s["episodes"] else nan,
        "charts/episode_length": s["len"] / s["episodes"] if s["episodes"] else nan,
        "charts/episodes": s["episodes"],
        "charts/reward_mean": s["reward"] / s["samples"],
        "parse/failure_rate": s["failures"] / s["samples"],
        "charts/dropped_episodes": s["dropped"],
    }
    local = {
        "perf/env_steps_per_s": rollout.size / t_collect,
        "perf/tokens_per_s": rollout.gen_tokens / max(rollout.timings["generate"], 1e-9),
        "perf/generate_s": rollout.timings["generate"],
        "perf/env_s": rollout.timings["env"],
        "perf/score_s": rollout.timings["score"],
        "perf/update_s": t_update,
        **{f"losses/{k}": v for k, v in losses.items()},
    }
    if fabric.world_size > 1:
        keys = sorted(local)
        vals = fabric.all_reduce(torch.tensor([local[k] for k in keys], dtype=torch.float64), reduce_op="mean")
        local = dict(zip(keys, vals.tolist()))
        local["perf/env_steps_per_s"] *= fabric.world_size  # throughput of all ranks together
        local["perf/tokens_per_s"] *= fabric.world_size
    m.update(local)
    m["_samples"] = s["samples"]
    return m
