"""Sums and gathers over ranks: what the advantage estimators (GAE's return scaling), the run's metrics and the
held-out evaluation share. A single process gets its own values back, with no process group needed."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def gather_objects(obj: Any, world_size: int) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if world_size == 1 or not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def reduce_sums(fabric: Any, values: dict[str, float]) -> dict[str, float]:
    """Sum each value over ranks (one all-reduce)."""
    if fabric.world_size == 1:
        return dict(values)
    keys = sorted(values)
    summed = fabric.all_reduce(torch.tensor([values[k] for k in keys], dtype=torch.float64), reduce_op="sum")
    return dict(zip(keys, summed.tolist()))
