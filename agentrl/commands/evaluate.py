"""`agentrl eval`: held-out evaluation of a checkpoint.

Episodes come from the env's "eval" split, whose seeds never meet training's
("train") (see :func:`agentrl.envs.gym_cards.module.env_seed`); an ALFWorld
``env.data_path`` without an eval split is refused (exit 2), never played on its training games. ``env.num_envs``
envs step together with one batched generate per step; episodes are numbered
in the order they start and exactly the first ``--episodes`` count (an env
whose next episode would exceed the quota idles), so the result does not
favour short episodes. Answers are greedy (``--greedy``) or sampled at
``rollout.temperature``; an answer naming no legal action takes a random legal
one, as in training, and counts as a parse failure.

The JSON goes to ``--out FILE`` (replacing a file there, and saying so) or by default into the
checkpoint as ``eval-<split>-<greedy|sampled>.json`` (split "eval": the held-out one); an existing
result is never replaced: the next run of that split and mode writes ``eval-eval-greedy-2.json``,
``-3`` and so on. The path written is printed. The JSON has these keys:
  env, split ("eval"), checkpoint, greedy, seed, episodes   what was run
  success_rate       share of episodes with success (positive return, or won)
  mean_return        mean undiscounted episode return
  mean_length        mean steps per episode
  parse_failure_rate share of steps whose answer named no legal action
  steps, seconds     env steps taken by counted episodes, wall time
  by_task_type       {task_type: the same five metrics and episodes}, when the env reports types (ALFWorld)
  per_episode        [{return, length, success, task_type, parse_failures}] in start order
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from itertools import count
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agentrl.config import Config, ConfigError
from agentrl.console import make_console
from agentrl.data.episodes import run_episodes, summarize
from agentrl.training.checkpoint import load_trainable, resolve_resume
from agentrl.training.distributed import make_fabric


def evaluate(cfg: Config, checkpoint: str | None, episodes: int, *, greedy: bool = False, out: str | None = None,
             console: Console | None = None) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (or the config's model as is) on held-out episodes; writes and returns the JSON.

    Written to ``out``, else to a name of its own in the checkpoint (see the module docstring); the returned
    dict adds ``path``, where it went.
    """
    from transformers.utils import logging as hf_logging

    from agentrl.training.build import build, set_threads

    if episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {episodes}")
    if cfg.trainer.devices != 1 or cfg.trainer.num_nodes != 1:
        raise ConfigError(f"agentrl eval runs on one device (its envs step in one batch); got trainer.devices="
                          f"{cfg.trainer.devices}, trainer.num_nodes={cfg.trainer.num_nodes}: pass trainer.devices=1"
                          + (" trainer.strategy=auto" if cfg.trainer.strategy == "fsdp" else ""))
    hf_logging.disable_progress_bar()
    set_threads(cfg.trainer.num_threads, 1)
    fabric = make_fabric(cfg.trainer, devices=1)  # trainer.accelerator and trainer.precision, as fit
    console = console or make_console()
    ckpt = resolve_resume(checkpoint, "--checkpoint") if checkpoint else None
    cfg = replace(cfg, policy=replace(cfg.policy, init_from=None))
    torch.manual_seed(cfg.seed)
    policy, data = build(cfg, split="eval", device=fabric.device)
    if ckpt is not None:
        try:
            load_trainable(policy, ckpt, value_head=False)
        except ConfigError as e:
            made = _checkpoint_model(ckpt)
            raise ConfigError(f"{e} (checkpoint made with {made})" if made else str(e)) from None
    policy.eval()
    t0 = time.perf_counter()
    try:
        with fabric.autocast():
            records = run_episodes(policy, data.envs, data.template, data.parser, episodes, seed=cfg.seed,
                                   greedy=greedy, history=cfg.prompt.history,
                                   history_images=cfg.prompt.history_images,
                                   max_image_tokens=cfg.prompt.max_image_tokens)
    finally:
        data.envs.close()
    result: dict[str, Any] = {"env": cfg.env.name, "split": "eval", "checkpoint": str(ckpt) if ckpt else None,
                              "greedy": greedy, "seed": cfg.seed}
    result.update(summarize(records))
    result["seconds"] = time.perf_counter() - t0
    types = sorted({r["task_type"] for r in records if r["task_type"]})
    result["by_task_type"] = {t: summarize([r for r in records if r["task_type"] == t]) for t in types}
    result["per_episode"] = records
    text = json.dumps(result, indent=2)
    if out:
        path, replaced = Path(out), Path(out).exists()
        _write(path, text)
    else:
        path, replaced = write_new(ckpt or Path(cfg.trainer.out_dir), f"eval-{result['split']}-{_mode(greedy)}",
                                   text), False
    console.print(table(result))
    console.print(escape(f"wrote {path}" + (" (replacing the file that was there)" if replaced else "")))
    return {**result, "path": str(path)}


def write_new(directory: Path, stem: str, text: str) -> Path:
    """Write ``text`` to ``directory/stem.json``, or the first of ``stem-2.json``, ``stem-3.json``, ... not taken.

    A name is claimed by creating it exclusively, so two evals of one checkpoint at once never share one.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for n in count(1):
        path = directory / (f"{stem}.json" if n == 1 else f"{stem}-{n}.json")
        try:
            path.open("x").close()
        except FileExistsError:
            continue
        _write(path, text)
        return path
    raise AssertionError("unreachable")


def _write(path: Path, text: str) -> None:
    """Whole or not at all: a temp file renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _mode(greedy: bool) -> str:
    return "greedy" if greedy else "sampled"


def table(result: dict[str, Any]) -> Table:
    """The rich table of a result: the env's row, then one per task type."""
    mode = _mode(result["greedy"])
    t = Table(title=f"agentrl eval: {result['env']} (held-out split, {mode})")
    for col in ("", "episodes", "success", "mean return", "mean length", "parse failures"):
        t.add_column(col, justify="left" if not col else "right")
    rows = [(result["env"], result), *((f"  {k}", v) for k, v in result["by_task_type"].items())]
    for name, m in rows:
        t.add_row(name, str(m["episodes"]), f"{m['success_rate']:.1%}", f"{m['mean_return']:.2f}",
                  f"{m['mean_length']:.2f}", f"{m['parse_failure_rate']:.1%}")
    return t


def _checkpoint_model(ckpt: Path) -> str:
    """'model.path=..., model.finetune=...' from the checkpoint's config.yaml, or ''."""
    try:
        from omegaconf import OmegaConf

        made = OmegaConf.load(ckpt / "config.yaml").model
        return f"model.path={made.path}, model.finetune={made.finetune}"
    except Exception:
        return ""
