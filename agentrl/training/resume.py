"""A fit run's side of checkpoints: what it saves after an update and how it continues from one.

:func:`save_update` writes every rank's env, sampling and shuffle state (gathered) with the
weights; :func:`resume` restores them exactly, after :func:`resume_target` found the checkpoint
and :func:`resume_changes` checked which settings changed (some may, see :data:`MUTABLE_ON_RESUME`).
"""

from __future__ import annotations

import shutil
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agentrl.algorithms.collectives import gather_objects
from agentrl.config import ConfigError
from agentrl.policy.sharding import (
    SHARDED_DIR,
    full_optimizer_state,
    full_weights,
    load_full_optimizer_state,
    load_sharded,
    save_sharded,
)
from agentrl.training.checkpoint import (
    FORMAT_VERSION,
    CheckpointWriteError,
    begin_checkpoint,
    complete_checkpoints,
    load_trainable,
    load_trainer_state,
    prune,
    resolve_resume,
    save_checkpoint,
)


@dataclass
class RunState:
    """A fit run's progress besides weights, optimizer and data: what :func:`resume` restores."""

    window: deque[bool]
    """Success of the last ``trainer.success_window`` training episodes (this rank's)."""
    counters: dict[str, int] = field(default_factory=lambda: {"env_steps": 0, "episodes": 0})
    """Totals over all ranks."""
    update: int = 0
    """Updates completed."""
    best_eval: float = float("-inf")
    """Best held-out success so far (``trainer.eval_every``); its checkpoint is ``checkpoints/best``."""
    best_name: str = ""
    """That checkpoint's directory name (a resume re-points ``checkpoints/best`` at it)."""


def save_update(fabric: Any, ckpt_dir: Path, *, policy: Any, learner: Any, data: Any, run: RunState,
                config_yaml: str, meta: dict[str, Any], keep: int | None = None, estimator: Any = None) -> Path | None:
    """Checkpoint after ``run.update`` updates: every rank's env, sampling and shuffle state, written by rank 0.

    Every rank calls it (it gathers and meets); returns the directory on rank 0, else None. ``estimator``'s
    ``state_dict`` (running reward statistics, ``advantage.reward_scaling``) is saved per rank too.
    """
    mine = {"torch_rng": torch.get_rng_state(), "shuffle_rng": data.shuffle.get_state(),
            "data": data.state_dict(), "window": list(run.window),
            "estimator": estimator.state_dict() if hasattr(estimator, "state_dict") else {}}
    ranks = gather_objects(mine, fabric.world_size)  # env and sampling state of every rank
    weights, optimizer, prepared = None, None, None
    if writes_shards(learner):  # every rank writes its own shard into the folder rank 0 made
        prepared = _folder_from_rank_zero(fabric, ckpt_dir)
        try:
            save_sharded(policy, learner.optimizer.optimizer, prepared / SHARDED_DIR)
        except Exception:
            if fabric.is_global_zero:
                shutil.rmtree(prepared, ignore_errors=True)
            raise
        fabric.barrier()  # every shard is on disk before rank 0 completes the checkpoint
        optimizer = f"in {SHARDED_DIR}/"
    elif getattr(learner, "sharded", False):  # FSDP2: every rank takes part in gathering the full state
        weights = full_weights(policy, trainable_only=hasattr(policy.model, "peft_config"))
        optimizer = full_optimizer_state(policy, learner.optimizer.optimizer)
    written = None
    if fabric.is_global_zero:
        optimizer = learner.optimizer.state_dict() if optimizer is None else optimizer
        state = {"format_version": FORMAT_VERSION, "update": run.update, "optimizer": optimizer,
                 "scheduler": learner.scheduler.state_dict(), "counters": dict(run.counters), "ranks": ranks,
                 "best_eval": run.best_eval, "best_name": run.best_name}
        written = save_checkpoint(ckpt_dir, policy=policy, trainer_state=state, config_yaml=config_yaml, meta=meta,
                                  weights=weights, prepared=prepared, export=prepared is None)
        prune(ckpt_dir.parent, keep)  # trainer.keep_checkpoints
    fabric.barrier()
    return written


def _folder_from_rank_zero(fabric: Any, ckpt_dir: Path) -> Path:
    """The temp folder rank 0 makes for ``ckpt_dir``, on every rank; if rank 0 cannot make it, every rank raises
    :class:`CheckpointWriteError` with rank 0's reason (the others would otherwise wait in the broadcast)."""
    made, error = None, None
    if fabric.is_global_zero:
        try:
            made = begin_checkpoint(ckpt_dir)
        except OSError as e:
            error = str(e)
    made, error = fabric.broadcast((made, error), 0)
    if error is not None:
        raise CheckpointWriteError(f"could not write checkpoint {ckpt_dir}: rank 0 could not make its folder "
                                   f"({error}); the previous checkpoint is untouched")
    return made


def resume(fabric: Any, candidates: list[Path], *, policy: Any, learner: Any, data: Any, run: RunState,
           cfg: Any = None, estimator: Any = None) -> Path:
    """Continue from the first readable of ``candidates`` (newest first): weights, optimizer, schedule, RNGs, envs,
    the estimator's running statistics.

    A checkpoint whose files do not load (truncated, corrupt) is reported with its path and the
    next one is tried; none readable is a ConfigError listing each and why.
    """
    problems = []
    # FSDP: every rank reads the full state to cut its shard from; memory-mapped, the ranks of a node share
    # one copy in the page cache instead of each holding its own
    mmap = bool(getattr(learner, "sharded", False))
    for ckpt in candidates:
        try:
            shards = Path(ckpt) / SHARDED_DIR
            trainable = None if shards.is_dir() else \
                torch.load(Path(ckpt) / "trainable.pt", map_location="cpu", weights_only=True, mmap=mmap)
            state = load_trainer_state(Path(ckpt), mmap=mmap)
            if trainable is None:
                if not getattr(learner, "sharded", False):
                    raise ConfigError(f"checkpoint {ckpt} holds FSDP shards (trainer.checkpoint_format=sharded): "
                                      f"resume it with trainer.strategy=fsdp, or write its full files first with "
                                      f"`agentrl export --checkpoint {ckpt}`")
                _check_world(ckpt, state, fabric)
                load_sharded(policy, learner.optimizer.optimizer, shards)  # collective: a bad shard fails every rank
        except ConfigError:
            raise
        except Exception as e:  # a truncated or corrupt file: torch raises many kinds
            problems.append(f"{ckpt}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            warnings.warn(f"checkpoint {ckpt} is unreadable ({problems[-1].split(': ', 1)[1]}); "
                          f"trying the previous complete one", stacklevel=2)
            continue
        changes = resume_changes(Path(ckpt), cfg) if cfg is not None else []
        _apply(fabric, Path(ckpt), trainable, state, policy=policy, learner=learner, data=data, run=run,
               estimator=estimator)
        if changes:  # they take effect: the loop reads them live, the LR schedule is re-aimed
            if any(c.split()[0] in SCHEDULE_KEYS for c in changes):
                learner.follow_config()
            warnings.warn(f"resumed from {ckpt} with changed settings, which take effect: {'; '.join(changes)}",
                          stacklevel=2)
        return Path(ckpt)
    raise ConfigError("trainer.resume: no readable checkpoint (" + "; ".join(problems) + ")")


def _apply(fabric: Any, ckpt: Path, trainable: dict[str, Any], state: dict[str, Any], *, policy: Any,
           learner: Any, data: Any, run: RunState, estimator: Any = None) -> None:
    if trainable is not None:  # else the shards are loaded already
        load_trainable(policy, ckpt, state=trainable)
    _check_world(ckpt, state, fabric)
    mine = state["ranks"][fabric.global_rank]
    if trainable is None:
        pass
    elif getattr(learner, "sharded", False):  # a full state keyed by name: each rank takes its shard
        load_full_optimizer_state(policy, learner.optimizer.optimizer, state["optimizer"])
    else:
        learner.optimizer.load_state_dict(state["optimizer"])
    learner.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(mine["torch_rng"])
    data.shuffle.set_state(mine["shuffle_rng"])
    data.load_state_dict(mine["data"], update=state["update"])
    if hasattr(estimator, "state_dict") and estimator.state_dict():  # it keeps running statistics
        if not mine.get("estimator"):
            raise ConfigError(f"checkpoint {ckpt} has no advantage estimator state (running reward statistics, "
                              f"advantage.reward_scaling); it cannot continue exactly: start a new run")
        estimator.load_state_dict(mine["estimator"])
    run.window.extend(mine["window"])
    run.counters.update(state["counters"])
    run.update = state["update"]
    run.best_eval = state.get("best_eval", float("-inf"))
    run.best_name = state.get("best_name", "")


def _check_world(ckpt: Path, state: dict[str, Any], fabric: Any) -> None:
    if len(state["ranks"]) != fabric.world_size:
        raise ConfigError(f"checkpoint {ckpt} was written by {len(state['ranks'])} processes; resume it with "
                          f"trainer.devices={len(state['ranks'])}")


def writes_shards(learner: Any) -> bool:
    """``trainer.checkpoint_format=sharded`` on an FSDP learner: each rank writes its own shard."""
    cfg = getattr(learner, "cfg", None)
    return bool(getattr(learner, "sharded", False)) and cfg is not None and \
        cfg.trainer.checkpoint_format == "sharded"


MUTABLE_ON_RESUME = (
    "ppo.lr", "ppo.min_lr", "ppo.value_lr", "ppo.clip", "ppo.value_clip", "ppo.vf_coef", "ppo.epochs",
    "ppo.max_grad_norm", "ppo.target_kl", "policy.entropy_coef", "trainer.max_updates", "trainer.log_every",
    "trainer.image_log_every", "trainer.checkpoint_every", "trainer.checkpoint_format", "trainer.keep_checkpoints",
    "trainer.out_dir",
    "trainer.resume", "trainer.num_threads", "trainer.collective_timeout_s", "trainer.startup_timeout_s",
    "trainer.max_bad_steps", "trainer.accelerator", "env.step_timeout_s",
    "trainer.eval_every", "trainer.eval_episodes", "trainer.eval_greedy",
)
"""Keys a resumed run may change (they take effect; the LR schedule continues on the new horizon). Every other
key of fit (``sft.*`` aside) must match the checkpoint's: the model, envs, prompts, batch sizes and the
rest shape what the saved state means."""

SCHEDULE_KEYS = ("ppo.lr", "ppo.min_lr", "ppo.value_lr", "ppo.epochs", "trainer.max_updates")
"""Keys the LR schedule is built from: changing one re-aims the cosine from the step it reached."""


def resume_changes(ckpt: Path, cfg: Any) -> list[str]:
    """``key old -> new`` for each mutable key that differs from ``ckpt``'s config.yaml; ConfigError naming any
    other key that differs (before anything of the new run is written)."""
    from omegaconf import OmegaConf

    from agentrl.config import to_yaml
    from agentrl.config.loading import describe_keys

    try:
        saved = _flat(OmegaConf.to_container(OmegaConf.load(Path(ckpt) / "config.yaml")))
    except Exception:  # no or unreadable config.yaml (an old checkpoint): nothing to compare
        return []
    # a key newer than the checkpoint ran as its default (new keys keep the old behaviour by default)
    saved = {**{k: default for k, default, _ in describe_keys()}, **saved}
    now = _flat(OmegaConf.to_container(OmegaConf.create(to_yaml(cfg))))
    differ = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k)
                    and not k.startswith("sft.") and k not in ("trainer.resume", "trainer.out_dir"))
    fixed = [k for k in differ if k not in MUTABLE_ON_RESUME]
    if fixed:
        shown = ", ".join(f"{k}={saved.get(k)!r} (now {now.get(k)!r})" for k in fixed[:6])
        raise ConfigError(f"trainer.resume: checkpoint {ckpt} was made with {shown}{' ...' if len(fixed) > 6 else ''}; "
                          f"these cannot change on resume (only {', '.join(MUTABLE_ON_RESUME[:11])}, ... can): "
                          f"give the checkpoint's values or start a new run")
    return [f"{k} {saved.get(k)} -> {now.get(k)}" for k in differ]


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "options" else {f"{prefix}{k}": v})
        return out
    return {prefix.rstrip("."): tree}


def resume_target(resume: str | None, out_dir: Path) -> list[Path]:
    """The checkpoints ``trainer.resume`` names, newest first, found before anything is written.

    A checkpoint dir: itself. A run dir: its complete checkpoints (the one ``latest`` names first),
    ConfigError if none. ``auto``: out_dir's, or none (a fresh start), so one command line serves the
    first start and every restart.
    """
    if resume is None:
        return []
    if resume == "auto":
        return complete_checkpoints(Path(out_dir) / "checkpoints")
    path = Path(resume).expanduser()
    if (path / "trainer_state.pt").is_file():
        return [path]
    found = complete_checkpoints(path / "checkpoints") or complete_checkpoints(path)
    return found or [resolve_resume(resume)]  # resolve_resume raises the ConfigError that says what is missing
