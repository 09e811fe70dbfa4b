"""Per-step agreement of a policy with the env's expert on held-out expert states.

    python tools/expert_agreement.py -c conf/study/alfworld_ppo.yaml --checkpoint CKPT --states 96 [KEY=VALUE ...]

The states are those the expert meets on the eval split (``sft.explore`` of the config mixes in random legal
steps, as SFT data; ``sft.noise`` is not applied: the label is the expert's own action), with the prompts
training uses (``prompt.history``). The policy answers greedily with its action head (``policy.action_head``);
each answer counts as the expert's action, another legal action, or (generate head) no legal action. The
expert is the config's (``sft.expert``). Prints the counts and writes them as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--checkpoint", default=None, help="policy.init_from: an SFT or fit checkpoint")
    parser.add_argument("--states", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8, help="states per policy pass")
    parser.add_argument("--json", default=None, help="also write the counts here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from agentrl.config import load_config
    from agentrl.data.acting import decide
    from agentrl.data.episodes import parsed
    from agentrl.data.sft import expert_examples
    from agentrl.training.build import build

    overrides = [*args.overrides, "trainer.num_threads=1"]
    if args.checkpoint:
        overrides.append(f"policy.init_from={args.checkpoint}")
    cfg = load_config(args.config, overrides)
    torch.set_num_threads(1)
    examples = expert_examples(cfg, args.states, split="eval")
    policy, data = build(cfg)
    data.envs.close()
    rng = np.random.default_rng(0)
    counts: Counter[str] = Counter()
    with torch.no_grad():
        for lo in range(0, len(examples), args.batch):
            batch = examples[lo : lo + args.batch]
            prompts = [policy.encode(e.messages, e.image) for e in batch]
            obs = [e.obs for e in batch]
            chosen = decide(policy, data.template, data.parser, prompts, obs, greedy=True, rng=rng, with_logp=False,
                            act=lambda o, text, ids: parsed(data.parser, o, text, rng))
            for e, action, failed in zip(batch, chosen.actions, chosen.failed):
                counts["not legal" if failed else "expert" if action == e.expert_action else "other legal"] += 1
    result = {"states": len(examples), **{k: counts[k] for k in ("expert", "other legal", "not legal")},
              "action_head": cfg.policy.action_head, "expert_kind": getattr(cfg.sft, "expert", "planner")}
    print(f"{result['expert']} of {result['states']} held-out expert states agree with the expert "
          f"({cfg.policy.action_head} head); another legal action {result['other legal']}, not legal "
          f"{result['not legal']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
