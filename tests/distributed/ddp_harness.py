"""Run by tests/training/test_distributed.py as `python ddp_harness.py OUT [PRECISION] [uneven]`; Fabric relaunches it for rank 1.

With PRECISION bf16-mixed the model is a bfloat16 base with float32 LoRA
adapters (the paper configs' setting), every forward under autocast.

Both ranks build the same policy and collect the same 8-sample rollout. The
single-process reference is one backward over all 8 samples; the DDP path has
each rank back-propagate its half (samples rank::2; with UNEVEN 3 and 5 samples)
with gradients averaged by DDP. Each rank writes what it saw to OUT/rank<r>.json.
"""

import json
import sys
from pathlib import Path

import torch
from harness_rollout import same_rollout_on_every_rank  # beside this script
from lightning.fabric import Fabric

from agentrl.algorithms import ppo
from agentrl.config import load_config
from agentrl.training.learner import accumulate_gradients, whiten_global

ROOT = Path(__file__).resolve().parents[2]


def main(out: Path, precision: str, uneven: bool = False) -> None:
    torch.set_num_threads(1)
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp", precision=precision)
    fabric.launch()
    rank = fabric.global_rank
    sixteen = ["model.dtype=bfloat16", "model.finetune=lora", "model.lora.r=8", f"trainer.precision={precision}"]
    cfg = load_config(ROOT / "conf/numberline.yaml", [
        "env.num_envs=4", "rollout.steps_per_update=8", "ppo.minibatch_size=8", "ppo.micro_batch_size=2",
        "rollout.max_new_tokens=12", "prompt.image_position=last",  # the shared-prefix path, under DDP too
        *(sixteen if precision != "32-true" else [])])
    policy, data, rollout, adv, ret, full = same_rollout_on_every_rank(fabric, cfg, lora_noise=precision != "32-true")
    # uneven: 3 samples on rank 0, 5 on rank 1 (grouped rollouts differ in size per rank)
    mine = (torch.arange(0, 3) if rank == 0 else torch.arange(3, 8)) if uneven else torch.arange(rank, 8, 2)
    sharded = whiten_global(fabric, adv[mine])  # global statistics from two halves
    rollout.advantages, rollout.returns = full, ret

    # single-process reference: one pass over all 8 samples. Under 16-bit autocast a row's result depends
    # on the batch it is padded with (bf16 round-off, x5 at temperature 0.2), so there the reference runs
    # the very micro-batches the two ranks run, one after the other, and sums them.
    groups = [torch.arange(8)] if precision == "32-true" else [m for r in (0, 1) for m in
                                                               torch.arange(r, 8, 2).split(cfg.ppo.micro_batch_size)]
    policy_loss = value_loss = 0.0
    for idx in groups:
        ix = idx.tolist()
        inputs = policy.collate_train([rollout.prompts[i] for i in ix], [rollout.gen_ids[i] for i in ix],
                                      [rollout.weights[i] for i in ix])
        assert inputs.prefix is not None
        with fabric.autocast():
            token_logp, values, entropy = policy(inputs)
        terms = ppo.ppo_losses(ppo.weighted_logprob(token_logp.float(), inputs.weights), rollout.logp[idx],
                               full[idx], values.float(), rollout.values[idx], ret[idx], entropy.float(), clip=0.1,
                               value_clip=0.1, vf_coef=0.5, entropy_coef=0.0, scale=1 / 8)
        terms.total.backward()
        policy_loss, value_loss = policy_loss + float(terms.policy), value_loss + float(terms.value)
    ref = {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}
    policy.zero_grad(set_to_none=True)

    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-3)
    policy_f, optimizer = fabric.setup(policy, optimizer)
    local = accumulate_gradients(fabric, policy_f, data.loader(rollout).minibatch(mine))  # scale 1/4, DDP averages
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    got = dict(policy.named_parameters())
    whole = float(torch.cat([(got[n].grad - ref[n]).flatten() for n in names]).norm()
                  / torch.cat([ref[n].flatten() for n in names]).norm())
    # per tensor, for tensors whose true gradient is not ~0 (attention key biases have an exactly-zero one)
    worst = max(float((got[n].grad - ref[n]).norm() / ref[n].norm()) for n in names if ref[n].norm() > 1e-5)
    parts = {"trunk": [n for n in names if not n.startswith("value_head.")],
             "head": [n for n in names if n.startswith("value_head.")]}
    part_error = {k: float(torch.cat([(got[n].grad - ref[n]).flatten() for n in v]).norm()
                           / torch.cat([ref[n].flatten() for n in v]).norm()) for k, v in parts.items()}
    # gradients synced: both ranks hold the same averaged gradient
    grads = torch.cat([got[n].grad.flatten() for n in names])
    grads_synced = bool(torch.equal(*fabric.all_gather(grads)))
    loss_sum = fabric.all_reduce(torch.tensor(local["policy"] + 0.5 * local["value"]), reduce_op="sum")
    optimizer.step()
    flat = torch.cat([p.detach().flatten() for p in policy.parameters() if p.requires_grad])
    gathered = fabric.all_gather(flat)
    result = {
        "rank": rank,
        "global_batch": int(fabric.all_reduce(torch.tensor(len(mine)), reduce_op="sum")),
        "whiten_error": float((sharded - full[mine]).abs().max()),
        "grad_rel_error": whole,
        "grad_rel_error_per_tensor": worst,
        "loss_ddp": float(loss_sum) / 8,
        "loss_single": policy_loss + 0.5 * value_loss,
        "params_equal_across_ranks": bool(torch.equal(gathered[0], gathered[1])),
        "grad_rel_error_trunk": part_error["trunk"],
        "grad_rel_error_head": part_error["head"],
        "grads_synced": grads_synced,
        "trainable_dtypes": sorted({str(p.dtype) for p in policy.parameters() if p.requires_grad}),
        "frozen_dtypes": sorted({str(p.dtype) for p in policy.parameters() if not p.requires_grad}),
        "params_moved": bool(fabric.all_reduce(flat.abs().sum()) > 0),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    data.envs.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "32-true", "uneven" in sys.argv[3:])
