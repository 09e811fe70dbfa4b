"""The critic: an MLP on the last prompt token's final hidden state, kept in float32; or none at all for the
critic-free estimators (GRPO, RLOO, GiGPO)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ValueHead(nn.Module):
    """MLP on the last prompt token's final hidden state -> scalar value, in float32."""

    def __init__(self, hidden: int, widths: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for w in widths:
            layers += [nn.Linear(hidden, w), nn.ReLU()]
            hidden = w
        last = nn.Linear(hidden, 1)
        nn.init.normal_(last.weight, std=1e-3)  # start near V = 0: early advantages are the rewards
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last).float()

    def forward(self, h: Tensor) -> Tensor:
        with torch.autocast(h.device.type, enabled=False):  # float32 under bf16 autocast too
            # a new tensor, not a view: FSDP2 hooks the sharded policy's backward on its outputs
            return self.net(h.float()).squeeze(-1).clone()


class NoValueHead(nn.Module):
    """A critic-free policy's stand-in: no parameters, V = 0 (nothing is built, trained or saved)."""

    def forward(self, h: Tensor) -> Tensor:
        return torch.zeros(h.shape[0], device=h.device)
