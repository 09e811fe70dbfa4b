"""Several processes: the Fabric strategy, a barrier that names slow ranks, gathering rank state.

Every rank collects the same fixed number of env steps, so ranks finish their
rollouts at nearly the same time whatever the episode lengths; they then meet
at a monitored barrier. If one is still busy after ``trainer.collective_timeout_s``
the run stops with an error that names it, instead of hanging in a collective
(the NCCL timeouts users of the reference hit).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from agentrl.config import TrainerConfig


class SlowRankError(RuntimeError):
    """A rank did not reach the meeting point in time."""


def make_strategy(t: TrainerConfig) -> Any:
    """The Fabric strategy for ``trainer.strategy``.

    Its process-group timeout covers start-up (every process joining) and
    every collective: ``trainer.startup_timeout_s``, never below
    ``trainer.collective_timeout_s`` (which the post-rollout :class:`Meeting`
    enforces on its own). A short collective timeout must not fail a process
    that is still importing torch.
    """
    timeout = timedelta(seconds=max(t.startup_timeout_s, t.collective_timeout_s))
    if t.strategy in ("ddp", "ddp_spawn"):
        from lightning.fabric.strategies import DDPStrategy

        return DDPStrategy(timeout=timeout, start_method="spawn" if t.strategy == "ddp_spawn" else "popen")
    if t.strategy == "fsdp":  # FSDP2 on CPU (gloo) and CUDA (NCCL) alike; Fabric's FSDPStrategy refuses the CPU
        from lightning.fabric.strategies import ModelParallelStrategy

        from agentrl.policy.sharding import fsdp_parallelize

        return ModelParallelStrategy(parallelize_fn=fsdp_parallelize(),
                                     data_parallel_size=t.devices * t.num_nodes, tensor_parallel_size=1,
                                     save_distributed_checkpoint=False, timeout=timeout)
    return t.strategy  # "auto" as Fabric understands it


def make_fabric(t: TrainerConfig, loggers: Any = None, devices: int | None = None) -> Any:
    """The Fabric every command runs on: ``trainer.accelerator``, devices, nodes, strategy and precision."""
    from lightning.fabric import Fabric

    return Fabric(accelerator=t.accelerator, devices=t.devices if devices is None else devices,
                  num_nodes=t.num_nodes if devices is None else 1, strategy=make_strategy(t) if devices is None else "auto",
                  precision=t.precision, loggers=loggers)


class Meeting:
    """A barrier across ranks with a timeout that names the ranks that did not arrive."""

    def __init__(self, world_size: int, timeout_s: float) -> None:
        self.active = world_size > 1 and dist.is_available() and dist.is_initialized()
        self.timeout = timedelta(seconds=timeout_s)
        self.timeout_s = timeout_s
        self.group = None
        if self.active and dist.get_backend() != "gloo":
            self.group = dist.new_group(backend="gloo")  # monitored_barrier needs gloo; NCCL runs get a side group

    def wait(self, what: str) -> None:
        """Block until every rank has finished ``what``; raise :class:`SlowRankError` past the timeout."""
        if not self.active:
            return
        try:
            dist.monitored_barrier(group=self.group, timeout=self.timeout, wait_all_ranks=True)
        except RuntimeError as e:
            ranks = re.findall(r"[Rr]anks? ([\d, ]+) failed", str(e))
            who = f"rank(s) {ranks[0].strip()}" if ranks else "another rank"
            raise SlowRankError(
                f"{who} did not finish {what} within trainer.collective_timeout_s={self.timeout_s:g}s "
                f"(rank {dist.get_rank()} waited); raise trainer.collective_timeout_s or lower "
                f"rollout.steps_per_update / rollout.max_new_tokens. ({str(e).splitlines()[0]})"
            ) from None


