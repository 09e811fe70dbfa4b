"""What the DDP and FSDP harnesses share: the same policy and 8-sample rollout on every rank, before any wrapping."""

import torch
from lightning.fabric import seed_everything

from agentrl.algorithms import ppo
from agentrl.algorithms.advantage import GAE
from agentrl.training.build import build


def same_rollout_on_every_rank(fabric, cfg, *, lora_noise: bool):
    """Build the policy (seed 0) and collect one rollout (seed 1) under ``fabric.autocast``; GAE advantages.

    ``lora_noise``: LoRA B starts at zero, so draw it small for the adapters to get a gradient of their own.
    Returns (policy, data, rollout, raw advantages, returns, advantages whitened over the whole rollout).
    """
    seed_everything(0)
    policy, data = build(cfg)  # same seed on both ranks: identical weights and rollout
    if lora_noise:
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.02)
    torch.manual_seed(1)
    with fabric.autocast():
        rollout = data.collect()
    adv, ret = GAE(0.9, 0.95)(rollout)
    return policy, data, rollout, adv, ret, ppo.whiten(adv, adv.mean(), adv.var(unbiased=False))
