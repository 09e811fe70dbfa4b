"""Fixed policies on the study's held-out Blackjack episodes, for scale: always stand, uniform random, basic strategy.

    python experiments/blackjack_cpu/baselines.py --episodes 1000 --seeds 1,2,3

Each plays the same episodes `agentrl eval -c conf/study/blackjack_ppo.yaml seed=S --episodes N`
plays (``agentrl.data.episodes.run_episodes``, eval split, 8 envs), reading the state from the
prompt's text (the study writes it there: prompt.text_state=true).
"""

import argparse
import re
from statistics import mean

import numpy as np

from agentrl.config import load_config
from agentrl.config.registry import Components
from agentrl.data.episodes import run_episodes, summarize
from agentrl.envs.gym_cards.cards import Card
from agentrl.envs.gym_cards.experts import basic_strategy
from agentrl.policy.decoding import Generation

STATE = re.compile(r"Dealer shows: (\w+)\nYour cards: .* \(sum (\d+)(, usable ace)?\)")


class RulePolicy:
    """Answers '{"action": ...}' from a rule on (player sum, usable ace, dealer card value)."""

    def __init__(self, rule, seed: int) -> None:
        self.rule, self.rng = rule, np.random.default_rng(seed)

    def encode(self, messages, image):
        text = next(part["text"] for part in messages[0]["content"] if part["type"] == "text")
        dealer, total, ace = STATE.search(text).groups()
        return (int(total), ace is not None, Card(dealer, "S").value())

    def generate(self, states, greedy=False):
        return Generation(ids=[], texts=[f'{{"action": "{self.rule(s, self.rng)}"}}' for s in states])


RULES = {
    "always stand": lambda s, rng: "stand",
    "uniform random": lambda s, rng: rng.choice(["stand", "hit"]),
    "basic strategy": lambda s, rng: basic_strategy(*s),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--seeds", default="1,2,3")
    args = p.parse_args()
    print("| policy | success (mean over seeds) | return | per seed |")
    print("|---|---|---|---|")
    for name, rule in RULES.items():
        results = []
        for seed in map(int, args.seeds.split(",")):
            cfg = load_config("conf/study/blackjack_ppo.yaml", [f"seed={seed}"])
            parts = Components.resolve(cfg)
            envs = parts.make_env(cfg, split="eval")
            template = parts.template(cot=cfg.prompt.cot, text_state=True)
            records = run_episodes(RulePolicy(rule, seed), envs, template, parts.make_parser(cfg), args.episodes, seed=seed,
                                   greedy=True)
            envs.close()
            results.append(summarize(records))
        per_seed = ", ".join(f"{r['success_rate']:.1%}" for r in results)
        print(f"| {name} | {mean(r['success_rate'] for r in results):.1%} | "
              f"{mean(r['mean_return'] for r in results):+.3f} | {per_seed} |")


if __name__ == "__main__":
    main()
