"""Win rate and steps of ALFWorld's two experts and of a uniformly random legal policy, per task type.

    python tools/alfworld_policies.py data/alfworld/train [--random-episodes 3] [--max-steps 50] [--json OUT]

The folder holds games of `agentrl alfworld-gen` (one split, or both). The planner's steps are the
walkthrough in each game file (its winning run when the game was generated; the generator keeps only
games both experts win within 150 steps). The searching expert and the random policy play here on the
real engine: the expert once per game (it is deterministic) within 150 steps, the random policy
``--random-episodes`` times per game, each at most ``--max-steps`` steps, choosing uniformly among
the admissible commands. Tells a study which room size lets a random policy win sometimes.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import time
from pathlib import Path
from typing import Any


def play_search(gamefile: str) -> int | None:
    """Steps the searching expert takes to win ``gamefile`` (None: not within 150)."""
    from agentrl.envs.alfworld.engine import expert_walkthrough

    commands = expert_walkthrough(gamefile, 0, expert="search")
    return None if commands is None else len(commands)


def play_random(gamefile: str, episodes: int, max_steps: int, rng: random.Random) -> list[int | None]:
    """Per episode, the step a uniformly random admissible command won at (None: not within ``max_steps``)."""
    from agentrl.envs.alfworld.engine import start_engine

    env = start_engine(gamefile)
    out: list[int | None] = []
    try:
        for _ in range(episodes):
            state = env.reset()
            won = None
            for step in range(1, max_steps + 1):
                state, _, _ = env.step(rng.choice(state["admissible_commands"]))
                if state["won"]:
                    won = step
                    break
            out.append(won)
    finally:
        env.close()
    return out


def measure(root: Path, episodes: int, max_steps: int, seed: int) -> dict[str, dict[str, Any]]:
    """Per task type (and "all"): games, receptacles per room, planner / search / random results."""
    from agentrl.envs.alfworld.engine import read_traj
    from agentrl.envs.alfworld.state import SHORT_NAMES

    rng = random.Random(seed)
    rows: dict[str, list[dict[str, Any]]] = {}
    for gamefile in sorted(str(p) for p in root.rglob("game.tw-pddl")):
        game = json.loads(Path(gamefile).read_text())
        objects = game["pddl_problem"].split("(:objects", 1)[1].split("(:init", 1)[0]
        row = {
            "receptacles": len(re.findall(r" - receptacle$", objects, flags=re.M)),
            "planner": len(game.get("walkthrough") or []) or None,
            "search": play_search(gamefile),
            "random": play_random(gamefile, episodes, max_steps, rng),
        }
        rows.setdefault(SHORT_NAMES[read_traj(gamefile)["task_type"]], []).append(row)
    if not rows:
        raise SystemExit(f"no games under {root}; generate some with 'agentrl alfworld-gen --out DIR'")
    rows["all"] = [r for kind in list(rows) for r in rows[kind]]
    return {kind: _summary(r) for kind, r in rows.items()}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def steps(values: list[int | None]) -> dict[str, Any]:
        won = [v for v in values if v is not None]
        return {"won": len(won), "of": len(values), "mean_steps": round(statistics.mean(won), 1) if won else None,
                "max_steps": max(won) if won else None}

    return {
        "games": len(rows),
        "receptacles": round(statistics.mean(r["receptacles"] for r in rows), 1),
        "planner": steps([r["planner"] for r in rows]),
        "search": steps([r["search"] for r in rows]),
        "random": steps([v for r in rows for v in r["random"]]),
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("games", type=Path, help="a folder of generated games (a split, or both)")
    parser.add_argument("--random-episodes", type=int, default=3, help="random-policy episodes per game")
    parser.add_argument("--max-steps", type=int, default=50, help="step limit of a random episode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = measure(args.games, args.random_episodes, args.max_steps, args.seed)

    def cell(s: dict[str, Any]) -> str:
        return f"{s['won']}/{s['of']} ({100 * s['won'] / s['of']:.0f}%) mean {s['mean_steps']} max {s['max_steps']}"

    print(f"{args.games}: random policy at most {args.max_steps} steps, {args.random_episodes} episodes per game")
    print(f"{'type':6} {'games':>5} {'recep':>5}  {'planner (walkthrough)':34} {'search':34} random")
    for kind, s in result.items():
        print(f"{kind:6} {s['games']:5} {s['receptacles']:5}  {cell(s['planner']):34} {cell(s['search']):34} "
              f"{cell(s['random'])}")
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
