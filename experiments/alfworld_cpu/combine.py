"""Tables and the plot of the ALFWorld CPU study (run.sh's last step) and of the NumberLine head comparison.

    python experiments/alfworld_cpu/combine.py [runs/alfworld_cpu/study] [runs/numberline_heads]

ALFWorld: held-out evals named ``<phase>,seed=<s>-<greedy|sampled>.json`` under ``<study>/eval`` (phase: start,
ppo, start-default, ppo-default, expert-agreement files aside) give the per-task-type table (the paper's columns:
pick, look, clean, heat, cool, pick2, avg), mean and spread over seeds; each PPO run's held-out curve
(``eval/success_rate`` against env steps in ``<study>/ppo/seed=<s>/tensorboard``) goes to ``curve.png`` here.
NumberLine: ``<phase>,seed=<s>-<mode>.json`` with phases start-generate, start-score, ppo-generate, ppo-score.
Writes ``results.md`` here and prints it.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKS = ("pick", "look", "clean", "heat", "cool", "pick2")
NAME = re.compile(r"(?P<phase>[\w-]+),seed=(?P<seed>\d+)-(?P<mode>greedy|sampled)\.json")


def pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}"


def spread(xs: list[float]) -> str:
    """mean ± std (n-1) over seeds, in points."""
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return "-"
    sd = f" ± {pct(statistics.stdev(xs))}" if len(xs) > 1 else ""
    return f"{pct(statistics.fmean(xs))}{sd}"


def load(folder: Path) -> dict[tuple[str, str], dict[int, dict]]:
    """(phase, mode) -> seed -> the eval JSON."""
    out: dict[tuple[str, str], dict[int, dict]] = {}
    for path in sorted(folder.glob("*.json")):
        m = NAME.fullmatch(path.name)
        if m:
            out.setdefault((m["phase"], m["mode"]), {})[int(m["seed"])] = json.loads(path.read_text())
    return out


def per_task(result: dict) -> dict[str, float]:
    """Success per task type and their mean over the types present ("avg", the paper's average)."""
    rates = {t: math.nan for t in TASKS}
    for t, v in result.get("by_task_type", {}).items():
        rates[t] = v["success_rate"] if isinstance(v, dict) else float(v)
    present = [rates[t] for t in TASKS if not math.isnan(rates[t])]
    rates["avg"] = statistics.fmean(present) if present else math.nan
    rates["all"] = result["success_rate"]
    return rates


def alfworld_tables(evals: dict[tuple[str, str], dict[int, dict]]) -> list[str]:
    lines = ["| phase | decoding | seeds | episodes | " + " | ".join(TASKS) + " | avg | all episodes |",
             "|---|---|---|---|" + "---|" * (len(TASKS) + 2)]
    for (phase, mode), by_seed in sorted(evals.items()):
        rows = [per_task(r) for r in by_seed.values()]
        eps = sorted({r["episodes"] for r in by_seed.values()})
        cells = [spread([r[t] for r in rows]) for t in (*TASKS, "avg", "all")]
        lines.append(f"| {phase} | {mode} | {','.join(map(str, sorted(by_seed)))} | {'/'.join(map(str, eps))} | "
                     + " | ".join(cells) + " |")
    for mode in ("greedy", "sampled"):
        start, after = evals.get(("start", mode), {}), evals.get(("ppo", mode), {})
        seeds = sorted(set(start) & set(after))
        if seeds:
            gains = [after[s]["success_rate"] - start[s]["success_rate"] for s in seeds]
            lines.append(f"\nPPO minus its SFT start, {mode}, all held-out episodes: {spread(gains)} points "
                         f"(seeds {','.join(map(str, seeds))}: {', '.join(pct(g) for g in gains)})")
    return lines


def curves(study: Path) -> dict[int, list[tuple[float, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for run in sorted(study.glob("ppo/seed=*")):
        acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0}).Reload()
        if "eval/success_rate" in acc.Tags()["scalars"]:
            out[int(run.name.split("=")[1])] = [(e.step, e.value) for e in acc.Scalars("eval/success_rate")]
    return out


def plot(points: dict[int, list[tuple[float, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for seed, pts in sorted(points.items()):
        x, y = zip(*pts)
        ax.plot(x, y, marker="o", label=f"seed {seed}")
    ax.set(xlabel="env steps", ylabel="held-out success (eval rooms)", ylim=(-0.02, 1.02),
           title="ALFWorld, tiny model, score head: held-out success during PPO")
    ax.grid(alpha=0.3)
    if points:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def numberline_table(evals: dict[tuple[str, str], dict[int, dict]]) -> list[str]:
    lines = ["| phase | greedy | sampled | seeds |", "|---|---|---|---|"]
    for phase in ("start-generate", "ppo-generate", "start-score", "ppo-score"):
        g, s = evals.get((phase, "greedy"), {}), evals.get((phase, "sampled"), {})
        seeds = sorted(set(g) | set(s))
        lines.append(f"| {phase} | {spread([r['success_rate'] for r in g.values()])} | "
                     f"{spread([r['success_rate'] for r in s.values()])} | {','.join(map(str, seeds))} |")
    return lines


def main(argv: list[str]) -> str:
    study = Path(argv[0]) if argv else Path("runs/alfworld_cpu/study")
    heads = Path(argv[1]) if len(argv) > 1 else Path("runs/numberline_heads")
    parts = ["# Results (written by combine.py)", ""]
    if (study / "eval").is_dir():
        parts += ["## ALFWorld held-out success (%), per task type", "", *alfworld_tables(load(study / "eval")), ""]
        points = curves(study)
        if points:
            plot(points, HERE / "curve.png")
            parts += ["Held-out success during PPO: `curve.png`.", ""]
    if (heads / "eval").is_dir():
        parts += ["## NumberLine, generate vs score head (held-out success %, 200 episodes)", "",
                  *numberline_table(load(heads / "eval")), ""]
    text = "\n".join(parts)
    (HERE / "results.md").write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
