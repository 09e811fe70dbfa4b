"""``trainer.strategy=fsdp``: FSDP2 (torch's ``fully_shard``) through Fabric's ``ModelParallelStrategy``.

What is sharded: every transformer block the model names as unsplittable
(``_no_split_modules``: decoder layers, vision blocks) is its own FSDP unit,
LoRA adapters sharded with their layer; the rest (embedding table, LM head,
final norm, value head) forms the root unit. Gradients, Adam's moments and
the float32 trainable weights stay sharded: 1/N of them per rank (each
micro-batch's gradient is reduce-scattered into the shards as it is made,
so no rank ever holds a full gradient; the price is one reduce-scatter per
micro-batch instead of one per optimizer step). Weights are gathered in the dtype they are stored in (the frozen
base in ``model.dtype``, what trains in float32) and gradients reduced in
float32; ``trainer.precision=bf16-mixed`` computes in bfloat16 by autocast,
as under DDP, so both strategies compute the same numbers.

Rollouts: each rank's episodes make a different number of forwards (answers
of different lengths, episodes ending at different steps), but every forward
of a sharded unit is a collective all ranks must make. So a rollout (and a
held-out evaluation) runs inside :func:`gathered`: each unit is all-gathered
ONCE, in the same order on every rank, the forwards that follow are local,
and the units are resharded before the PPO update. The cost: during a
rollout a rank holds the full weights (in their stored dtype: 2 bytes per
frozen parameter at model.dtype=bfloat16) on top of its shard, what DDP
holds all the time; the update, where gradients, optimizer state and
activations peak, runs sharded. The update makes the same collectives on
every rank: the planned number of minibatches, each rank running as many
micro-batches as the rank with the most (stand-ins weigh 0), each one
forward without a shared prompt prefix (whether a batch has one depends
on its prompts).

Checkpoints keep the layout of :mod:`agentrl.training.checkpoint`: every rank takes
part in gathering the full trainable weights (one all-gather per parameter)
and a full optimizer state keyed by parameter name (torch.distributed.
checkpoint's state-dict API); only rank 0 keeps them, on the CPU, and writes
them, so an FSDP checkpoint is the same weight files as a DDP one
(``agentrl eval``, ``policy.init_from`` and the Hugging Face export read it
unchanged). A resume reads the full state on every rank, memory-mapped (the
ranks of a node share one copy in the page cache), to cut its shard from.

``trainer.checkpoint_format=sharded`` skips the full copy: every rank writes
its own shard of the trainable weights and of the optimizer state into the
checkpoint's ``sharded/`` folder (torch.distributed.checkpoint, one
``__<rank>_0.distcp`` file per rank and a ``.metadata`` index), and a resume
reads back only its own shard. :func:`read_sharded_weights` assembles the
full weights from those files in one process, with no process group, so
``agentrl eval``, ``policy.init_from`` and ``agentrl export`` (which writes
the full ``trainable.pt`` and the Hugging Face folder) read it too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def block_classes(module: nn.Module) -> set[str]:
    """Class names of the transformer blocks every Hugging Face model inside ``module`` declares unsplittable."""
    names: set[str] = set()
    for m in module.modules():
        declared = getattr(m, "_no_split_modules", None)
        if declared and hasattr(m, "config"):  # a PreTrainedModel (PEFT wrappers carry no list of their own)
            names.update(declared)
    return names


def fsdp_parallelize():
    """The ``parallelize_fn`` of Fabric's ``ModelParallelStrategy``: FSDP2 per block, then the root."""

    def parallelize(module: nn.Module, device_mesh: Any) -> nn.Module:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = device_mesh["data_parallel"] if "data_parallel" in (device_mesh.mesh_dim_names or ()) else device_mesh
        # weights gathered as stored (the frozen base in model.dtype, what trains in float32) and 16-bit
        # compute left to autocast, as under DDP: the same numbers, sampling = scoring included
        mp = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)
        blocks = block_classes(module)
        units = [m for m in module.modules() if type(m).__name__ in blocks]
        if not units:
            raise ValueError(f"trainer.strategy=fsdp: {type(module).__name__} names no transformer blocks "
                             f"(_no_split_modules) to shard; use trainer.strategy=ddp for this model")
        for m in units:
            fully_shard(m, mesh=mesh, mp_policy=mp, reshard_after_forward=True)
        fully_shard(module, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
        return module

    return parallelize


def fsdp_units(module: nn.Module) -> list[nn.Module]:
    """The FSDP2 units inside ``module`` (none when it is not sharded)."""
    if not torch.distributed.is_available():  # a torch built without distributed shards nothing
        return []
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def is_sharded(module: nn.Module) -> bool:
    return bool(fsdp_units(module))


@contextmanager
def gathered(module: nn.Module) -> Iterator[None]:
    """Hold ``module``'s full weights on every rank for the block: forwards inside are collective-free.

    Every rank must enter it together (the gathers are collectives, one per unit, in
    module order). A no-op for a module that is not sharded.
    """
    units = fsdp_units(module)
    if not units:
        yield
        return
    root = units[0]
    # FSDP2 takes the first unit to run forward for the root; rollouts call the VLM inside it, so
    # initialise the policy as the root first (torch has no public call for it; idempotent)
    root._get_fsdp_state()._lazy_init()
    for m in units:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in units:  # the setting first: reshard() does nothing to a unit left mid-forward by an exception
            m.set_reshard_after_forward(m is not root, recurse=False)
            m.reshard()


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state unsharded and keyed by parameter name (complete on rank 0; every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Give every rank its shard of a :func:`full_optimizer_state` (every rank calls it with the full state)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))


def load_full_weights(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy full tensors (trainable.pt's) into the shards they cut into, on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    result = set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, strict=False))
    unknown = list(result.unexpected_keys)
    if unknown:
        raise KeyError(f"checkpoint weights not in the sharded model: {unknown[:3]}")


def full_weights(module: nn.Module, trainable_only: bool = True) -> dict[str, torch.Tensor]:
    """``module``'s parameters (trainable ones, or all) as full float tensors on the CPU, in stored dtype.

    Every rank calls it (each sharded parameter is one all-gather, in the same order everywhere);
    rank 0 gets the full tensors, the other ranks an empty dict (no rank but the writer holds a
    second copy of the weights in host memory).
    """
    keep = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    out = {}
    for name, p in module.named_parameters():
        if trainable_only and not p.requires_grad:
            continue
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        if keep:
            out[name] = full.detach().cpu().clone()
        del full
    return out


SHARDED_DIR = "sharded"
"""The folder of a checkpoint that holds the per-rank shard files (``trainer.checkpoint_format=sharded``)."""


def _sharded_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """This rank's shards of the trainable weights and of the optimizer state, keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    names = {n for n, p in module.named_parameters() if p.requires_grad}
    weights = {n: t for n, t in get_model_state_dict(module).items() if n in names}
    return {"model": weights, "optim": get_optimizer_state_dict(module, optimizer)}


def save_sharded(module: nn.Module, optimizer: torch.optim.Optimizer, path: Any) -> None:
    """Every rank writes its shard under ``path`` (a folder all ranks see; every rank calls it with the same one)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_sharded_state(module, optimizer), checkpoint_id=str(path))


def load_sharded(module: nn.Module, optimizer: torch.optim.Optimizer, path: Any) -> None:
    """Every rank reads back its shard of :func:`save_sharded`'s weights and optimizer state (all ranks call it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    state = _sharded_state(module, optimizer)  # a fresh Adam gets its state made (zero step at lr 0) to load into
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(module, state["model"], options=StateDictOptions(strict=False))
    set_optimizer_state_dict(module, optimizer, optim_state_dict=state["optim"])


def read_sharded_weights(path: Any) -> dict[str, torch.Tensor]:
    """The full trainable weights of a sharded checkpoint folder, assembled in this process (no process group)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(str(path))
    tensors = {key.removeprefix("model."): torch.empty(tuple(md.size), dtype=md.properties.dtype)
               for key, md in reader.read_metadata().state_dict_metadata.items()
               if key.startswith("model.") and isinstance(md, TensorStorageMetadata)}
    dcp.load({"model": tensors}, storage_reader=reader, no_dist=True)
    return tensors


def refuse_mixed_images(fabric: Any, prompts: list[dict[str, Any]]) -> None:
    """Under FSDP, stop (ConfigError on every rank at once) when some of a rollout's prompts have an image and others none.

    A sharded vision tower runs, and gathers its blocks, only in the forwards of micro-batches with
    images, so ranks holding different mixes would make different collectives and hang in the update.
    """
    counts = torch.tensor([float(sum("pixel_values" in p for p in prompts)), float(len(prompts))])
    if fabric.world_size > 1:
        counts = fabric.all_reduce(counts, reduce_op="sum").cpu()
    have, total = (int(x) for x in counts.tolist())
    if 0 < have < total:
        from agentrl.config import ConfigError

        raise ConfigError(f"trainer.strategy=fsdp: {have} of this rollout's {total} observations have an image and "
                          f"the rest none; a sharded vision tower gathers its weights only for batches with images, "
                          f"so the ranks would wait on each other. Use an env that gives every observation an image "
                          f"(or none: env.image=none where the env offers it), or trainer.strategy=ddp")
