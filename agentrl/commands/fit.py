"""`agentrl fit`: PPO on a VLM with Lightning Fabric.

The loop, per update: 1. collect rollouts, 2. score them (both in
``RolloutDataModule.train_dataloader``), 3. advantages, 4. PPO epochs
(``PolicyModule.training_step`` per micro-batch, in :class:`~agentrl.training.learner.Learner`),
5. log and checkpoint.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.loggers import TensorBoardLogger

from agentrl.config import Config, ConfigError, to_yaml
from agentrl.config.registry import Components
from agentrl.data.rollout import CollectAbandoned
from agentrl.policy.module import PolicyModule
from agentrl.policy.sharding import gathered, refuse_mixed_images
from agentrl.training.build import build, set_threads
from agentrl.training.checkpoint import RunDirLock, best_checkpoint, clean_stale, mark_best, run_meta
from agentrl.training.distributed import Meeting, make_fabric
from agentrl.training.heldout import HeldOut
from agentrl.training.learner import Learner, whiten_global
from agentrl.training.peakmem import PeakMemory
from agentrl.training.report import Reporter, update_metrics
from agentrl.training.resume import RunState, resume, resume_changes, resume_target, save_update
from agentrl.training.signals import Preempted, StopSignals


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


def fit(cfg: Config, argv: list[str] | None = None) -> FitResult:
    """Train with PPO. Writes events, checkpoints, the resolved config and the command to out_dir.

    Holds a lock on ``trainer.out_dir`` for the run; SIGTERM or SIGINT stop it after a checkpoint
    of the last completed update (:class:`~agentrl.training.signals.Preempted`).
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bar is the one to watch
    t = cfg.trainer
    out_dir = Path(t.out_dir)
    logger = TensorBoardLogger(root_dir=str(out_dir), name="tensorboard", version="")
    fabric = make_fabric(t, loggers=logger)
    fabric.launch()
    cfg.check_world_size(fabric.world_size)
    parts = Components.resolve(cfg)  # unknown names fail here, before the run dir is written
    if cfg.rollout.top_p < 1.0:
        raise ConfigError(
            f"rollout.top_p={cfg.rollout.top_p}: PPO's old log-probs must be those of the distribution sampled, and "
            f"the update scores the full tempered softmax, not the nucleus; train with rollout.top_p=1 "
            f"(agentrl eval accepts top_p < 1)")
    start = resume_target(t.resume, out_dir)  # a bad trainer.resume fails before anything is written
    if start:
        resume_changes(start[0], cfg)  # so does a key that cannot change on resume
    with RunDirLock(out_dir) if fabric.is_global_zero else nullcontext(), StopSignals() as stop:
        return _train(cfg, fabric, logger, parts, start, stop, list(argv or sys.argv))


def _train(cfg: Config, fabric: Any, logger: TensorBoardLogger, parts: Components, start: list[Path],
           stop: StopSignals, argv: list[str]) -> FitResult:
    t, out_dir = cfg.trainer, Path(cfg.trainer.out_dir)
    world, rank = fabric.world_size, fabric.global_rank
    set_threads(t.num_threads, world)
    fabric.seed_everything(cfg.seed, verbose=False)  # identical initial weights on every rank
    config_yaml, meta = to_yaml(cfg), run_meta(argv)
    if fabric.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        clean_stale(out_dir / "checkpoints")  # what killed writes left (this run holds the lock)
        (out_dir / "config.yaml").write_text(config_yaml)
        (out_dir / "command.txt").write_text(" ".join(meta["argv"]) + f"\n# git {meta['git_sha']}\n")

    policy, data = build(cfg, rank=rank, world_size=world, parts=parts, device=fabric.device)
    learner = Learner(fabric, policy, cfg)
    estimator = parts.make_estimator(cfg)
    torch.manual_seed(cfg.seed + 7919 * rank)  # per-rank sampling stream
    meeting = Meeting(world, t.collective_timeout_s)
    run = RunState(window=deque(maxlen=t.success_window))
    last_ckpt = None
    if start:
        last_ckpt = resume(fabric, start, policy=policy, learner=learner, data=data, run=run, cfg=cfg,
                           estimator=estimator)
        fabric.print(f"resumed from {last_ckpt} at update {run.update}")
        named = out_dir / "checkpoints" / run.best_name
        if fabric.is_global_zero and run.best_name and (named / "trainer_state.pt").is_file() \
                and best_checkpoint(out_dir / "checkpoints") != named.resolve():
            mark_best(named)  # a kill between the checkpoint and its best link

    reporter = Reporter(fabric, logger, total=t.max_updates, start=run.update)
    metrics: dict[str, float] = {}
    saved_at = run.update
    heldout = HeldOut(cfg, parts, fabric, data.template, data.parser) if t.eval_every else None

    def evaluate_held_out() -> dict[str, float]:
        with gathered(policy):
            return heldout(policy)

    if heldout is not None and run.update == 0:  # the start, to compare the first evaluation with
        reporter.held_out(0, evaluate_held_out(), run.counters)

    def checkpoint() -> Path | None:
        return save_update(fabric, out_dir / "checkpoints" / f"update_{run.update:06d}", policy=policy,
                           learner=learner, data=data, run=run, config_yaml=config_yaml, meta=meta,
                           keep=t.keep_checkpoints, estimator=estimator)

    peak = PeakMemory(fabric.device)
    while run.update < t.max_updates:
        t0 = time.perf_counter()
        # 1-2. collect a fixed number of env steps per rank and score them (old log-probs and values)
        before = (data.state_dict(), torch.get_rng_state()) if world == 1 else None  # to abandon it on a signal
        policy.eval()
        peak.reset()
        try:
            with gathered(policy), fabric.autocast():  # FSDP: weights gathered once, the forwards are local
                loader = data.train_dataloader(should_stop=stop.local if world == 1 else None)
        except CollectAbandoned:
            data.load_state_dict(before[0], update=run.update)
            torch.set_rng_state(before[1])
            break
        rollout = loader.rollout
        t_collect = time.perf_counter() - t0
        mem_rollout = peak.gb()
        meeting.wait("collecting rollouts")  # every rank meets here, or the slow one is named
        if learner.sharded:
            refuse_mixed_images(fabric, rollout.prompts)

        # 3. advantages, whitened with statistics over every rank
        adv, ret = estimator(rollout)
        if cfg.ppo.normalize_advantages and getattr(estimator, "whiten", True):  # group ones are normalised
            adv = whiten_global(fabric, adv)
        rollout.advantages, rollout.returns = adv, ret

        # 4. PPO epochs over shuffled minibatches, gradients accumulated over micro-batches
        t1 = time.perf_counter()
        policy.train()  # activation checkpointing runs in train mode; dropout stays off (PolicyModule.train)
        peak.reset()
        losses = learner.update(loader)
        t_update = time.perf_counter() - t1
        mem = torch.tensor([mem_rollout, peak.gb()], dtype=torch.float64)

        # 5. log and checkpoint
        run.update += 1
        run.window.extend(e.success for e in rollout.episodes)
        metrics = update_metrics(fabric, rollout, losses, run.window, t_collect, t_update, data.envs.dropped_episodes)
        run.counters["env_steps"] += int(metrics.pop("_samples"))
        run.counters["episodes"] += int(metrics["charts/episodes"])
        metrics["lr"] = learner.lr
        if world > 1:  # the rank that held the most
            mem = fabric.all_reduce(mem, reduce_op="max").cpu()
        metrics["perf/peak_mem_rollout_gb"], metrics["perf/peak_mem_update_gb"] = mem.tolist()
        best = False
        if heldout is not None and run.update % t.eval_every == 0:
            held = evaluate_held_out()
            metrics.update(held)
            best = held["eval/success_rate"] > run.best_eval  # the same on every rank (gathered records)
            if best:  # in the checkpoint's state, so a kill before mark_best is repaired on resume
                run.best_eval, run.best_name = held["eval/success_rate"], f"update_{run.update:06d}"
        reporter.update(run.update, metrics, rollout, run.counters, every=t.log_every, image_every=t.image_log_every)
        if best or run.update == t.max_updates or (t.checkpoint_every and run.update % t.checkpoint_every == 0):
            last_ckpt, saved_at = checkpoint() or last_ckpt, run.update
            if best and fabric.is_global_zero and last_ckpt is not None:
                mark_best(last_ckpt)
        if stop.agreed(fabric):  # every rank the same answer: they leave the loop together
            break
    signum = stop.agreed(fabric)
    if signum is not None and run.update < t.max_updates:
        if saved_at != run.update:  # the last completed update is not on disk yet
            last_ckpt = checkpoint() or last_ckpt
        data.teardown("fit")
        if heldout is not None:
            heldout.close()
        reporter.finish(metrics, run.counters, out_dir, last_ckpt)
        logger.finalize("preempted")
        raise Preempted(signum, last_ckpt if fabric.is_global_zero else None, run.update)
    data.teardown("fit")
    if heldout is not None:
        heldout.close()
    reporter.finish(metrics, run.counters, out_dir, last_ckpt)
    logger.finalize("success")
    return FitResult(metrics, policy, run.counters, last_ckpt)
