"""Tables of the Blackjack CPU study: held-out success and return, start and after PPO, per seed and mean.

    python experiments/blackjack_cpu/combine.py runs/blackjack_cpu
"""

import json
import sys
from pathlib import Path
from statistics import mean


def main(out: Path) -> None:
    rows = {}
    for f in sorted((out / "eval").glob("*.json")):
        stage, seed, mode = f.stem.split("-")
        rows[(int(seed.split("=")[1]), stage, mode)] = json.loads(f.read_text())
    seeds = sorted({k[0] for k in rows})
    print("| seed | mode | SFT start: success | return | PPO: success | return | change |")
    print("|---|---|---|---|---|---|---|")
    for mode in ("sampled", "greedy"):
        gains = []
        for s in seeds:
            a, b = rows.get((s, "sft", mode)), rows.get((s, "ppo", mode))
            if not (a and b):
                continue
            gains.append((a["success_rate"], b["success_rate"], a["mean_return"], b["mean_return"]))
            print(f"| {s} | {mode} | {a['success_rate']:.1%} | {a['mean_return']:+.3f} | {b['success_rate']:.1%} | "
                  f"{b['mean_return']:+.3f} | {b['success_rate'] - a['success_rate']:+.1%} |")
        if gains:
            m = [mean(g[i] for g in gains) for i in range(4)]
            print(f"| mean | {mode} | {m[0]:.1%} | {m[2]:+.3f} | {m[1]:.1%} | {m[3]:+.3f} | {m[1] - m[0]:+.1%} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/blackjack_cpu"))
