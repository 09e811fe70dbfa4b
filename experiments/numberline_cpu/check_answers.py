"""What a NumberLine checkpoint writes on held-out states: digits, thoughts, action.

    python experiments/numberline_cpu/check_answers.py CHECKPOINT [--states 120] [--out X.json] [overrides ...]
    e.g. python experiments/numberline_cpu/check_answers.py "runs/numberline_cpu/sft/cot=True/seed=1" prompt.cot=true

Decodes held-out (eval-split, seed 1) states once greedily and once sampled at rollout.temperature and
prints, per mode, the share of answers that are valid JSON, read the current and target numbers right,
whose thoughts name the right move, whose action is right, and whose action is the move the thoughts
name. Config: conf/study/numberline_ppo.yaml plus the overrides (prompt.cot must match the checkpoint).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from agentrl.commands import sft as S
from agentrl.config import load_config
from agentrl.data.sft import expert_examples
from agentrl.training.build import build
from agentrl.training.checkpoint import load_trainable, resolve_resume


def named_move(thoughts: object) -> str | None:
    """The move a thought names ("... with '+'."), or None."""
    found = re.findall(r"with '([+-])'", thoughts) if isinstance(thoughts, str) else []
    return found[-1] if found else None


def check(policy, examples, greedy: bool, batch: int = 24) -> dict[str, float]:
    """Share of ``examples`` per key; keys the expert answer lacks (no-CoT: all but json, action) are left out."""
    hits: dict[str, int] = {}
    totals: dict[str, int] = {}

    def count(key: str, ok: bool) -> None:
        hits[key] = hits.get(key, 0) + bool(ok)
        totals[key] = totals.get(key, 0) + 1

    for ex, (want, got, _) in zip(examples, S.answers(policy, examples, greedy=greedy, batch=batch)):
        count("json", bool(got))
        for k in ("current number", "target number", "action"):
            if k in want:
                count(k, got.get(k) == want[k])
        if "thoughts" in want:
            move = named_move(got.get("thoughts"))
            count("thoughts move", move is not None and move == ex.expert_action)
            count("action = thoughts move", move is not None and move == got.get("action"))
    return {k: hits[k] / totals[k] for k in totals}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--states", type=int, default=120)
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args()
    torch.set_num_threads(1)
    cfg = load_config("conf/study/numberline_ppo.yaml", ["sft.noise=0.0", "policy.init_from=null", *args.overrides])
    torch.manual_seed(0)
    policy, data = build(cfg, split="eval")  # as agentrl eval: freezes what PPO checkpoints leave out
    data.envs.close()
    load_trainable(policy, resolve_resume(args.checkpoint, "checkpoint"), value_head=False)
    policy.eval()
    examples = expert_examples(cfg, args.states, split="eval", seed=1)
    # a finished episode's frame (current == target) has no right move; leave those out
    examples = [e for e in examples if e.obs is None or "already equals" not in e.answer]
    out = {"checkpoint": args.checkpoint, "cot": cfg.prompt.cot, "states": len(examples)}
    for mode, greedy in (("greedy", True), ("sampled", False)):
        out[mode] = {k: round(v, 3) for k, v in check(policy, examples, greedy).items()}
    print(json.dumps(out))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
