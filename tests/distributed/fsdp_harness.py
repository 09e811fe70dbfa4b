"""Run by tests/training/test_sharding.py as `python fsdp_harness.py OUT MODE [PRECISION]`; Fabric relaunches it for rank 1.

Both ranks build the same LoRA policy and collect the same 8-sample rollout before
anything is sharded; the single-process reference is one backward over all 8
samples on the plain module. Then the policy is sharded with FSDP2
(trainer.strategy=fsdp, agentrl's Learner) and each rank back-propagates its share.

MODE even: samples rank::2. uneven: 3 samples on rank 0, 5 on rank 1 with micro-batches
of 2, so rank 1 runs one micro-batch more: the ranks must still make the same
collectives. kl: a Learner.update where only rank 0's local KL crosses ppo.target_kl.
Each rank writes what it saw to OUT/rank<r>.json.
"""

import json
import sys
from pathlib import Path

import torch
from harness_rollout import same_rollout_on_every_rank  # beside this script
from lightning.fabric import Fabric

import agentrl.training.learner as learner_module
from agentrl.algorithms import ppo
from agentrl.config import load_config
from agentrl.policy.sharding import fsdp_units, gathered
from agentrl.training.distributed import make_strategy
from agentrl.training.learner import Learner, accumulate_gradients

ROOT = Path(__file__).resolve().parents[2]


def main(out: Path, mode: str, precision: str = "32-true") -> None:
    torch.set_num_threads(1)
    sixteen = ["model.dtype=bfloat16"] if precision != "32-true" else []
    cfg = load_config(ROOT / "conf/numberline.yaml", [
        "env.num_envs=4", "rollout.steps_per_update=8", "ppo.minibatch_size=8", "ppo.micro_batch_size=2",
        "rollout.max_new_tokens=12", "model.finetune=lora", "model.lora.r=8", "trainer.devices=2",
        "trainer.accelerator=cpu", "trainer.strategy=fsdp", f"trainer.precision={precision}",
        "ppo.epochs=3", "ppo.target_kl=1.0", *sixteen])
    fabric = Fabric(accelerator="cpu", devices=2, strategy=make_strategy(cfg.trainer), precision=precision)
    fabric.launch()
    rank = fabric.global_rank
    policy, data, rollout, adv, ret, full = same_rollout_on_every_rank(fabric, cfg, lora_noise=True)
    rollout.advantages, rollout.returns = full, ret
    mine = (torch.arange(0, 3) if rank == 0 else torch.arange(3, 8)) if mode == "uneven" else torch.arange(rank, 8, 2)

    # single-process reference on the plain module: one pass over all 8 samples (16-bit: the ranks' micro-batches)
    groups = [torch.arange(8)] if precision == "32-true" else [m for r in (0, 1) for m in
                                                               torch.arange(r, 8, 2).split(cfg.ppo.micro_batch_size)]
    for idx in groups:
        ix = idx.tolist()
        inputs = policy.collate_train([rollout.prompts[i] for i in ix], [rollout.gen_ids[i] for i in ix],
                                      [rollout.weights[i] for i in ix], share=False)
        with fabric.autocast():
            token_logp, values, entropy = policy(inputs)
        terms = ppo.ppo_losses(ppo.weighted_logprob(token_logp.float(), inputs.weights), rollout.logp[idx],
                               full[idx], values.float(), rollout.values[idx], ret[idx], entropy.float(), clip=0.1,
                               value_clip=cfg.ppo.value_clip, vf_coef=cfg.ppo.vf_coef, entropy_coef=0.0, scale=1 / 8)
        terms.total.backward()
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    ref = {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}
    total = sum(p.numel() for p in policy.parameters())
    policy.zero_grad(set_to_none=True)

    learner = Learner(fabric, policy, cfg)  # shards the policy (FSDP2), then the optimizer over the shards
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in policy.parameters())
    result: dict = {"rank": rank, "units": len(fsdp_units(policy)), "local_fraction": local / total,
                    "trainable_dtypes": sorted({str(p.dtype) for p in policy.parameters() if p.requires_grad})}
    if mode == "kl":  # only rank 0's local KL is above target_kl (1.0): the mean over both ranks is too
        real = learner_module.accumulate_gradients

        def inflated(*args, **kwargs):
            terms = real(*args, **kwargs)
            terms["approx_kl"] = 4.0 * len(args[2]) if rank == 0 else 0.0
            return terms

        learner_module.accumulate_gradients = inflated
        with gathered(policy), fabric.autocast():  # as fit does before an update: a rollout, sharded model
            data.collect()
        policy.train()
        losses = learner.update(data.loader(rollout))
        result["optimizer_steps"] = losses["optimizer_steps"]
        result["planned_per_epoch"] = data.minibatches
    else:
        accumulate_gradients(fabric, learner.policy_f, data.loader(rollout).minibatch(mine), sharded=True)
        got = {n: p.grad.full_tensor() for n, p in policy.named_parameters() if p.requires_grad}
        result["grad_rel_error"] = float(torch.cat([(got[n] - ref[n]).flatten() for n in names]).norm()
                                         / torch.cat([ref[n].flatten() for n in names]).norm())
        result["grad_norm"] = float(torch.cat([ref[n].flatten() for n in names]).norm())
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    data.envs.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "32-true")
