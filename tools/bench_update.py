"""PPO update throughput: micro-batch 1 x accumulation (the reference) vs larger micro-batches.

    python tools/bench_update.py                          # tiny model, NumberLine, CPU
    python tools/bench_update.py --micro 1 8 16 --minibatch 32 --json
    python tools/bench_update.py --model-path /models/llava --device cuda --dtype bfloat16

One rollout is collected once; then, for every micro-batch size, one PPO epoch
of gradient accumulation (``learner.accumulate_gradients`` over
``RolloutDataModule.loader``, the same shuffled order every time, each
minibatch sorted by length as ``fit`` does unless ``--no-sort``) runs on
the same weights: no optimizer step, so every size must produce the same
loss terms and the same accumulated gradients. Both are ASSERTED to match
micro-batch 1 within float32 round-off before any speed is reported.
samples/s = rollout samples / wall time of the epoch.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import benchlib
import torch
from lightning.fabric import Fabric

from agentrl.algorithms import ppo
from agentrl.algorithms.advantage import GAE
from agentrl.config import load_config
from agentrl.training.build import build
from agentrl.training.learner import accumulate_gradients


def epoch(fabric: Fabric, policy: Any, policy_f: Any, data: Any, rollout: Any, cfg: Any, seed: int,
          sort: bool = True) -> tuple[dict[str, float], dict[str, torch.Tensor], float]:
    """One pass of gradient accumulation; returns summed loss terms, accumulated gradients, seconds."""
    policy.zero_grad(set_to_none=True)
    order = torch.Generator().manual_seed(seed)
    sums: dict[str, float] = {}
    t0 = time.perf_counter()
    for mb in data.loader(rollout, micro_batch_size=cfg.ppo.micro_batch_size, generator=order, sort=sort):
        terms = accumulate_gradients(fabric, policy_f, mb)
        terms.pop("first_micro_ratio_error")  # of the first micro-batch: differs with the micro size by design
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v
    if fabric.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    grads = {n: p.grad.detach().float().cpu().clone() for n, p in policy.named_parameters() if p.grad is not None}
    return sums, grads, seconds


def check_same(ref: tuple[dict, dict], got: tuple[dict, dict], micro: int, rtol: float) -> float:
    """Assert loss terms and gradients match micro-batch 1; returns the worst relative gradient error."""
    (t1, g1), (tm, gm) = ref, got
    for k in t1:
        # absolute slack rtol / 5: the policy loss is a mean of +-A terms that nearly cancel, so at 16 bits its
        # round-off (~1e-2 per sample) is not small against its value
        assert abs(t1[k] - tm[k]) <= rtol * abs(t1[k]) + max(1e-4, rtol / 5), f"micro {micro}: loss {k} {tm[k]} != {t1[k]}"
    assert g1.keys() == gm.keys() and g1, f"micro {micro}: different parameters got gradients"
    total = sum(float(g.norm()) ** 2 for g in g1.values()) ** 0.5
    for n in g1:  # per parameter, with a floor for the ones whose gradient is ~0 anyway
        diff = float((g1[n] - gm[n]).norm())
        assert diff <= rtol * float(g1[n].norm()) + 1e-6 * total, f"micro {micro}: gradient of {n} off by {diff:.2e}"
    return sum(float((g1[n] - gm[n]).norm()) ** 2 for n in g1) ** 0.5 / total  # relative error of the whole


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [f"env.name={args.env}", f"env.num_envs={args.num_envs}", f"rollout.steps_per_update={args.samples}",
                 f"rollout.max_new_tokens={args.max_new_tokens}", f"model.path={args.model_path}",
                 f"model.dtype={args.dtype}", f"ppo.minibatch_size={args.minibatch}", "ppo.micro_batch_size=1",
                 *args.override]
    cfg = load_config(args.config, overrides)
    torch.manual_seed(args.seed)
    policy, data = build(cfg)
    fabric = Fabric(accelerator="cuda" if args.device.startswith("cuda") else "cpu", devices=1,
                    precision=args.precision)
    policy_f = fabric.setup_module(policy)
    policy.value_head.float()
    policy.eval()
    rollout = data.collect()
    data.envs.close()
    policy.train()  # as fit: activation checkpointing (if configured) on, dropout off
    adv, ret = GAE.from_config(cfg)(rollout)
    rollout.advantages, rollout.returns = ppo.whiten(adv, adv.mean(), adv.var(unbiased=False)), ret

    cfg.ppo.micro_batch_size = min(args.micro)  # warm-up, untimed
    epoch(fabric, policy, policy_f, data, rollout, cfg, args.seed)
    rows, ref = [], None
    for micro in args.micro:
        cfg.ppo.micro_batch_size = micro
        terms, grads, seconds = epoch(fabric, policy, policy_f, data, rollout, cfg, args.seed, sort=not args.no_sort)
        if ref is None:
            ref, err = (terms, grads), 0.0
        else:
            err = check_same(ref, (terms, grads), micro, args.rtol)
        rows.append({"micro_batch": micro, "accumulation": -(-args.minibatch // micro), "samples": rollout.size,
                     "seconds": seconds, "samples_per_s": rollout.size / seconds, "grad_rel_err": err,
                     "loss_policy": terms["policy"], "loss_value": terms["value"],
                     "gen_tokens": rollout.gen_tokens})
    for r in rows:
        r["speedup"] = r["samples_per_s"] / rows[0]["samples_per_s"]
    return rows


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    from rich.table import Table

    table = Table(title=f"PPO update: {rows[0]['samples']} samples ({rows[0]['gen_tokens']} answer tokens), "
                        f"minibatch {args.minibatch}, {args.device} {args.precision}, model {args.model_path}")
    for col in ("micro-batch", "accumulation", "samples/s", "seconds", "value loss", "grad rel err", "speedup"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["micro_batch"]), str(r["accumulation"]), f"{r['samples_per_s']:.1f}",
                      f"{r['seconds']:.2f}", f"{r['loss_value']:.6f}", f"{r['grad_rel_err']:.1e}",
                      f"{r['speedup']:.2f}x")
    benchlib.print_rich(table)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = benchlib.parser(__doc__)
    p.add_argument("--samples", type=int, default=64, help="rollout size (env steps)")
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--minibatch", type=int, default=32, help="samples per optimizer step")
    p.add_argument("--micro", type=int, nargs="+", default=[1, 8, 16, 32], help="micro-batch sizes; the first is "
                   "the reference every other is checked against")
    p.add_argument("--precision", default="32-true", help="Fabric precision (bf16-mixed, ...)")
    p.add_argument("--rtol", type=float, default=None, help="tolerance on loss terms and gradients vs the first "
                   "size [default: 1e-4 at 32-true precision, 5e-2 at 16-bit ones, whose round-off is ~1e-2]")
    p.add_argument("--no-sort", action="store_true", help="micro-batches in shuffled order, not sorted by length")
    args = p.parse_args(argv)
    if args.rtol is None:
        args.rtol = 1e-4 if args.precision.startswith("32") and args.dtype == "float32" else 5e-2
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    return benchlib.main(parse_args(argv), run, print_table)


if __name__ == "__main__":
    main()
