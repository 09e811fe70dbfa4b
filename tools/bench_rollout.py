"""Rollout throughput: a reference-style loop vs agentrl's batched ``collect``, in one process and one run.

    python tools/bench_rollout.py                     # tiny model, NumberLine, CPU, 128 env steps
    python tools/bench_rollout.py --sizes 1 4 16 64 --steps 128 --json
    python tools/bench_rollout.py --model-path /models/llava --device cuda --dtype bfloat16
    python tools/bench_rollout.py --model-path DIR --vs-generate   # also each size on transformers' generate

(a) "reference": what the reference implementation does per process, written
    out faithfully: one env, per step a batch-1 transformers ``generate``
    (sampling with ``torch.multinomial``), then a SEPARATE batch-1
    teacher-forced forward for the old log-prob and the value, then parse and step.
(b) "agentrl": ``RolloutDataModule.collect`` with ``num_envs`` envs: per env
    step one batched pass of agentrl's decode loop (shared prompt prefix run
    once, Gumbel-max sampling, log-probs and values from that pass). The
    "agentrl, 1 env" row shows what the loop alone gives, without batching.
(c) with ``--vs-generate``, "agentrl, generate": the same ``collect`` with
    transformers' ``generate`` in place of agentrl's decode loop (the fallback
    of unverified families), everything else equal; the own loop's row then
    shows its speed over this one's at the same ``num_envs`` ("vs generate").

Every variant takes the same number of env steps (``--steps``) with the same
model weights, sampling settings (temperature, top_p, top_k=0) and
``max_new_tokens``, seeded the same.

Answer lengths: a randomly initialised tiny model emits answers of 2 to
``max_new_tokens`` tokens at random, and a batched generate runs until its
longest row stops, so the amount of work would differ from variant to
variant by chance. By default (``--lengths fixed``) every answer is forced to
exactly ``max_new_tokens`` tokens (``min_new_tokens = max_new_tokens``: EOS is
masked until then, in both loops), so every variant generates and scores the same number of
tokens and env-steps/s compare like for like. ``--lengths free`` samples
freely instead (closer to a trained model's short answers); compare tokens/s
then. A trained agent's answers are of similar length, so "fixed" is the
closer proxy for padding waste in batched generation too.

Peak memory is per variant: on CPU the process's resident-set high-water mark
(VmHWM, reset between variants through /proc/self/clear_refs; the RSS
includes the model and Python itself), on CUDA ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import benchlib
import numpy as np
import torch

from agentrl.algorithms import ppo
from agentrl.config import load_config
from agentrl.data.rollout import RolloutDataModule
from agentrl.policy.module import PolicyModule
from agentrl.training.build import build
from agentrl.training.peakmem import PeakMemory

# ---------------------------------------------------------------- memory


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- the two loops


@torch.no_grad()
def reference_loop(policy: PolicyModule, data: RolloutDataModule, steps: int, seed: int) -> dict[str, Any]:
    """One env, per step: batch-1 generate, then a second batch-1 forward for log-prob and value."""
    envs, template, parser, sampler = data.envs, data.template, data.parser, policy.sampler
    assert envs.num_envs == 1, "the reference runs one env per process"
    rng = np.random.default_rng(seed)
    obs = envs.reset(seed)
    tokens = 0
    t_gen = t_score = 0.0
    for _ in range(steps):
        prompt = policy.encode(template.messages(obs[0]), obs[0].image)
        t0 = time.perf_counter()
        inputs = {k: v.to(policy.device) for k, v in prompt.items()}
        out = policy.model.generate(
            **inputs, do_sample=True, temperature=sampler.temperature, top_p=sampler.top_p, top_k=0,
            max_new_tokens=policy.decoder.max_new_tokens, min_new_tokens=sampler.min_new_tokens or None,
            suppress_tokens=sampler.bad_ids or None, pad_token_id=policy.batcher.pad_id, eos_token_id=sampler.eos_id)
        ids = out[0, inputs["input_ids"].shape[1]:].cpu()
        if (ids == sampler.eos_id).any():
            ids = ids[: int((ids == sampler.eos_id).int().argmax()) + 1]
        text = policy.tokenizer.decode(ids, skip_special_tokens=True)
        sync(policy.device)
        t_parse = time.perf_counter()
        result = parser.parse(text, obs[0].legal_actions)  # untimed, as in agentrl's collect
        t1 = time.perf_counter()
        span = result.action_span
        weights = [policy.token_weights(ids, span[0] if span else None, data.cot)]
        inputs = policy.collate_train([prompt], [ids], weights)
        token_logp, value, _ = policy(inputs)
        logp = ppo.weighted_logprob(token_logp.float().cpu(), inputs.weights)  # noqa: F841 (stored by the reference)
        value = value.float().cpu()
        t_gen, t_score = t_gen + t_parse - t0, t_score + time.perf_counter() - t1
        action = result.action if result.ok else obs[0].legal_actions[rng.integers(len(obs[0].legal_actions))]
        obs = envs.step([action]).obs
        tokens += len(ids)
    return {"tokens": tokens, "generate_s": t_gen, "score_s": t_score}


def agentrl_collect(data: RolloutDataModule) -> dict[str, Any]:
    rollout = data.collect()
    assert rollout.size == data.steps_per_env * data.envs.num_envs
    return {"tokens": rollout.gen_tokens, "generate_s": rollout.timings["generate"],
            "score_s": rollout.timings["score"]}


# ---------------------------------------------------------------- harness


def make_data(base: RolloutDataModule, cfg: Any, num_envs: int, steps: int) -> RolloutDataModule:
    """A data module with ``num_envs`` fresh envs, sharing the policy, template and parser of ``base``."""
    cfg.env.num_envs = num_envs
    envs = type(base.envs)(cfg.env, split="train")
    data = RolloutDataModule(steps // num_envs, seed=cfg.seed, cot=base.cot, failure_penalty=base.failure_penalty,
                             score_batch_size=base.score_batch_size, log_samples=0,
                             logprobs_from=base.logprobs_from)
    data.connect(base.policy, envs, base.template, base.parser)
    return data


def timed(device: torch.device, seed: int, fn, *args) -> tuple[dict[str, Any], float, float]:
    torch.manual_seed(seed)
    peak = PeakMemory(device)
    peak.reset()
    sync(device)
    t0 = time.perf_counter()
    out = fn(*args)
    sync(device)
    return out, time.perf_counter() - t0, peak.gb() * 1024


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [f"env.name={args.env}", "env.num_envs=1", f"rollout.steps_per_update={args.steps}",
                 f"rollout.max_new_tokens={args.max_new_tokens}", f"model.path={args.model_path}",
                 f"model.dtype={args.dtype}", "ppo.minibatch_size=1", "ppo.micro_batch_size=1",
                 *args.override]
    cfg = load_config(args.config, overrides)
    for n in args.sizes:
        if args.steps % n:
            raise SystemExit(f"--steps ({args.steps}) must be a multiple of every --sizes value (got {n})")
    torch.manual_seed(args.seed)
    policy, base = build(cfg)
    device = torch.device(args.device)
    policy.to(device).eval()
    if args.lengths == "fixed":
        policy.sampler.min_new_tokens = args.max_new_tokens

    own_loop = policy.decoder.own_loop
    if args.vs_generate and not own_loop:
        raise SystemExit(f"--vs-generate: {policy.model.config.model_type} runs transformers' generate already "
                         f"(agentrl's own decode loop is not verified for it)")
    loops = {"agentrl": own_loop, "agentrl, generate": False} if args.vs_generate else {"agentrl": own_loop}

    # warm-up (lazy inits, allocator, kernels): a few steps of each code path, untimed
    reference_loop(policy, base, 2, args.seed)
    for own in loops.values():
        policy.decoder.own_loop = own
        agentrl_collect(make_data(base, cfg, 4, 4))

    rows = []
    out, wall, mem = timed(device, args.seed, reference_loop, policy, base, args.steps, args.seed)
    rows.append({"variant": "reference", "num_envs": 1, "steps": args.steps, "wall_s": wall, "peak_mb": mem, **out})
    base.envs.close()
    try:
        for n in args.sizes:
            for variant, own in loops.items():
                policy.decoder.own_loop = own
                data = make_data(base, cfg, n, args.steps)
                out, wall, mem = timed(device, args.seed, agentrl_collect, data)
                data.envs.close()
                rows.append({"variant": variant, "num_envs": n, "steps": args.steps, "wall_s": wall, "peak_mb": mem,
                             **out})
    finally:
        policy.decoder.own_loop = own_loop
    ref = rows[0]["steps"] / rows[0]["wall_s"]
    for r in rows:
        r["model_type"] = policy.model.config.model_type
        r["env_steps_per_s"] = r["steps"] / r["wall_s"]
        r["tokens_per_s"] = r["tokens"] / r["wall_s"]
        r["speedup"] = r["env_steps_per_s"] / ref
    if args.vs_generate:  # the own loop over generate, at the same number of envs
        hf = {r["num_envs"]: r for r in rows if r["variant"] == "agentrl, generate"}
        for r in rows:
            if r["variant"] == "agentrl":
                r["vs_generate"] = r["env_steps_per_s"] / hf[r["num_envs"]]["env_steps_per_s"]
    return rows


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    from rich.table import Table

    table = Table(title=f"rollout: {args.env}, {args.steps} env steps, max_new_tokens {args.max_new_tokens} "
                        f"({args.lengths} lengths), {args.device} {args.dtype}, model {args.model_path} "
                        f"({rows[0]['model_type']})")
    for col in ("variant", "envs", "env-steps/s", "tokens/s", "tokens", "generate s", "score s", "wall s",
                "peak MB", "speedup", *(["vs generate"] if args.vs_generate else [])):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        ratio = [f"{r['vs_generate']:.2f}x" if "vs_generate" in r else ""] if args.vs_generate else []
        table.add_row(r["variant"], str(r["num_envs"]), f"{r['env_steps_per_s']:.1f}", f"{r['tokens_per_s']:.0f}",
                      str(r["tokens"]), f"{r['generate_s']:.2f}", f"{r['score_s']:.2f}", f"{r['wall_s']:.2f}",
                      f"{r['peak_mb']:.0f}", f"{r['speedup']:.2f}x", *ratio)
    benchlib.print_rich(table)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = benchlib.parser(__doc__)
    p.add_argument("--steps", type=int, default=128, help="env steps per variant (a multiple of every size)")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16, 64], help="num_envs for agentrl's collect")
    p.add_argument("--lengths", choices=("fixed", "free"), default="fixed",
                   help="fixed: every answer is max_new_tokens long (equal work); free: sample EOS freely")
    p.add_argument("--vs-generate", action="store_true",
                   help="also run each size with transformers' generate in place of agentrl's decode loop")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    return benchlib.main(parse_args(argv), run, print_table)


if __name__ == "__main__":
    main()
