"""Held-out evaluation during ``fit`` (``trainer.eval_every``): the eval split's episodes, the same each time.

Every process plays its share of ``trainer.eval_episodes`` on its own eval envs
(built once), greedy by default; the records are gathered so every rank
computes the same metrics (so every rank takes the same best-checkpoint
decision). The torch RNG is restored afterwards: a run with held-out
evaluations trains exactly as one without.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from agentrl.algorithms.collectives import gather_objects
from agentrl.data.episodes import run_episodes, summarize


class HeldOut:
    """Plays the held-out episodes with the current policy; ``__call__`` returns the eval/* scalars."""

    def __init__(self, cfg: Any, parts: Any, fabric: Any, template: Any, parser: Any) -> None:
        self.cfg, self.fabric, self.template, self.parser = cfg, fabric, template, parser
        self.envs = parts.make_env(cfg, split="eval")
        world, rank = fabric.world_size, fabric.global_rank
        share = math.ceil(cfg.trainer.eval_episodes / world)
        self.episodes = max(0, min(share, cfg.trainer.eval_episodes - rank * share))
        self.seed = cfg.seed + 104_729 * rank  # ranks play different eval episodes, each the same every time

    @torch.no_grad()
    def __call__(self, policy: Any) -> dict[str, float]:
        policy.eval()
        records: list[dict[str, Any]] = []
        device = self.fabric.device
        # the CPU generator and the accelerator's (sampling draws on the logits' device) come back as they were
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if self.episodes:
                with self.fabric.autocast():
                    records = run_episodes(policy, self.envs, self.template, self.parser, self.episodes,
                                           seed=self.seed, greedy=self.cfg.trainer.eval_greedy,
                                           history=self.cfg.prompt.history,
                                           history_images=self.cfg.prompt.history_images,
                                           max_image_tokens=self.cfg.prompt.max_image_tokens)
        everyone = [r for part in gather_objects(records, self.fabric.world_size) for r in part]
        s = summarize(everyone)
        out = {"eval/success_rate": s["success_rate"], "eval/return": s["mean_return"],
               "eval/parse_failure_rate": s["parse_failure_rate"], "eval/episode_length": s["mean_length"]}
        for task in sorted({r["task_type"] for r in everyone if r["task_type"]}):
            out[f"eval/success_rate/{task}"] = summarize([r for r in everyone if r["task_type"] == task])["success_rate"]
        return out

    def close(self) -> None:
        self.envs.close()
