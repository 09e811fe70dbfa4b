"""Building a run's parts from its config: the policy, the data module and what it drives (envs, template,
parser), connected; and the CPU threads of a process. fit and eval start here."""

from __future__ import annotations

import torch

from agentrl.config import Config
from agentrl.config.registry import Components
from agentrl.data.rollout import RolloutDataModule
from agentrl.policy.module import PolicyModule
from agentrl.training.checkpoint import load_trainable, resolve_resume


def build(cfg: Config, split: str = "train", rank: int = 0, world_size: int = 1,
          parts: Components | None = None, device: torch.device | str = "cpu") -> tuple[PolicyModule, RolloutDataModule]:
    """Model, policy, envs, template and parser from the config, connected; envs seeded per rank.

    The policy is moved to ``device`` first, so the reachability probe runs there.
    """
    parts = parts or Components.resolve(cfg)
    policy = parts.make_policy(cfg).to(device)
    data = parts.make_data(cfg, rank=rank, world_size=world_size)
    data.connect(policy, parts.make_env(cfg, split), parts.make_template(cfg), parts.make_parser(cfg))
    policy.freeze_unreachable(data.current_prompts()[0])
    if cfg.policy.init_from:  # after the freeze: a fit checkpoint holds only what fit could train
        load_trainable(policy, resolve_resume(cfg.policy.init_from, "policy.init_from"), value_head=False)
    return policy.eval(), data  # eval mode: from_pretrained + PEFT leave LoRA's dropout active


def set_threads(num_threads: int | None, world_size: int) -> None:
    """One thread per process when several share the CPU (2 threads on a busy core ran 100x slower)."""
    if num_threads is None and world_size > 1:
        num_threads = 1
    if num_threads:
        torch.set_num_threads(num_threads)
