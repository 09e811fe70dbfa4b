"""ALFWorld rollout throughput of the two action heads, in one process and one run: env-steps/s of
``policy.action_head=score`` vs ``generate``.

    python tools/bench_actionhead.py                       # tiny model, default games, 4 envs, 2 x 32 env steps
    python tools/bench_actionhead.py --checkpoint runs/alfworld_cpu/sft/... --data runs/alfworld_cpu/data

(a) "generate": ``RolloutDataModule.collect`` writes each answer token by token, then parses it. A trained
    agent's answer is the JSON action (``{"action": "go to cabinet 3"}``, about 10 tokens with the tiny
    tokenizer); an untrained one writes until ``max_new_tokens``. So that the work compares, every answer is
    forced to exactly ``--answer-tokens`` tokens (EOS masked before), by default the mean length of the
    candidate answers at the first step (what a trained agent writes).
(b) "score": the same ``collect`` with the score head: the prompt runs once, every admissible command is
    scored as an answer on its cache in one batch, the action is drawn from their softmax.

Both use the same config (text only, no chain of thought, ``prompt.history``), seeds and games; the env's
own time is in both (``env s``). The ratio printed is score's env-steps/s over generate's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(head: str, args: argparse.Namespace, answer_tokens: int | None) -> dict[str, float]:
    from lightning.fabric import seed_everything

    from agentrl.config import load_config
    from agentrl.training.build import build

    overrides = [f"policy.action_head={head}", "prompt.cot=false", "env.image=none", f"env.num_envs={args.num_envs}",
                 f"rollout.steps_per_update={args.steps}", f"rollout.max_new_tokens={args.max_new_tokens}",
                 f"prompt.history={args.history}", "trainer.num_threads=1", "rollout.logprobs_from=generate"]
    if args.data:
        overrides.append(f"env.data_path={args.data}")
    if args.checkpoint:
        overrides.append(f"policy.init_from={args.checkpoint}")
    seed_everything(0)
    policy, data = build(load_config(ROOT / "conf/alfworld.yaml", overrides))
    try:
        if head == "generate":
            policy.decoder.max_new_tokens = answer_tokens
            policy.sampler.min_new_tokens = answer_tokens
        data.collect()  # warm-up: workers started, first games loaded
        t_all = t_policy = t_env = 0.0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            rollout = data.collect()
            t_all += time.perf_counter() - t0
            t_policy += rollout.timings["generate"]
            t_env += rollout.timings["env"]
        steps = args.steps * args.repeats
        cands = [len(c.ids) for c in rollout.candidates] if rollout.candidates else []
        return {"steps_per_s": steps / t_all, "policy_ms": 1e3 * t_policy / steps, "env_ms": 1e3 * t_env / steps,
                "candidates": sum(cands) / len(cands) if cands else float("nan"),
                "answer_tokens": rollout.gen_tokens / rollout.size}
    finally:
        data.envs.close()


def candidate_length(args: argparse.Namespace) -> int:
    """Mean tokens of the first step's candidate answers (the generate head is forced to write as many)."""
    from agentrl.config import load_config
    from agentrl.prompting.candidates import build_candidates
    from agentrl.training.build import build

    overrides = ["policy.action_head=score", "prompt.cot=false", "env.image=none", "env.num_envs=1",
                 "env.vector=sync", "rollout.steps_per_update=1", "ppo.minibatch_size=1", "ppo.micro_batch_size=1",
                 f"rollout.max_new_tokens={args.max_new_tokens}"]
    if args.data:
        overrides.append(f"env.data_path={args.data}")
    policy, data = build(load_config(ROOT / "conf/alfworld.yaml", overrides))
    obs = data._obs[0]
    c = build_candidates(policy.tokenizer, data.template, obs.legal_actions, eos_id=policy.sampler.eos_id,
                         normalization="word", max_tokens=args.max_new_tokens)
    data.envs.close()
    return round(sum(len(x) for x in c.ids) / len(c.ids))


def main(argv: list[str] | None = None) -> list[tuple[str, dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-envs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=32, help="env steps per collect (all envs together)")
    parser.add_argument("--repeats", type=int, default=2, help="timed collects per head (after one warm-up)")
    parser.add_argument("--history", type=int, default=4, help="prompt.history")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--answer-tokens", type=int, default=None,
                        help="tokens every generated answer has (default: the mean candidate answer's)")
    parser.add_argument("--data", default=None, help="env.data_path (default: the generated offline set)")
    parser.add_argument("--checkpoint", default=None, help="policy.init_from: an SFT or fit checkpoint")
    args = parser.parse_args(argv)
    answer_tokens = args.answer_tokens or candidate_length(args)
    rows = [(head, run(head, args, answer_tokens)) for head in ("generate", "score")]
    print(f"ALFWorld, {args.num_envs} envs, {args.steps} x {args.repeats} env steps per head, prompt.history "
          f"{args.history}, generated answers forced to {answer_tokens} tokens")
    print(f"{'head':<10}{'env-steps/s':>12}{'policy ms/step':>16}{'env ms/step':>13}{'candidates':>12}"
          f"{'answer tokens':>15}")
    for head, r in rows:
        print(f"{head:<10}{r['steps_per_s']:>12.2f}{r['policy_ms']:>16.0f}{r['env_ms']:>13.0f}"
              f"{r['candidates']:>12.1f}{r['answer_tokens']:>15.1f}")
    ratio = rows[1][1]["steps_per_s"] / rows[0][1]["steps_per_s"]
    print(f"score / generate: {ratio:.2f}x env-steps/s")
    return rows


if __name__ == "__main__":
    sys.exit(main() and 0)
