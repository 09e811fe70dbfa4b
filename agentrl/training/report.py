"""What a run shows: TensorBoard scalars and sample images, a rich progress bar, a closing table.

TensorBoard tags (also in docs/metrics.md), logged against env steps (``charts/update`` is the update):
  charts/success_rate   share of successful episodes among the last trainer.success_window (training-time,
                        the paper's metric)
  charts/episode_return mean undiscounted return of episodes that ended this update
  losses/*              PPO terms averaged over the update (policy, value, entropy, approx_kl, clipfrac,
                        explained_variance, grad_norm)
  parse/failure_rate    share of answers that named no legal action
  perf/*                env_steps_per_s, tokens_per_s (generation), seconds per phase
  perf/peak_mem_*_gb    peak memory of the rollout and of the update (the rank that held the most; GPU:
                        allocated, CPU: resident set, see agentrl.training.peakmem)
"""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agentrl.algorithms.batches import Rollout
from agentrl.algorithms.collectives import reduce_sums
from agentrl.console import make_console, number, percent


class Reporter:
    """Rank-zero display and logging of a fit run."""

    def __init__(self, fabric: Any, logger: Any, total: int, start: int = 0) -> None:
        self.fabric, self.logger = fabric, logger
        self.console = make_console()
        self.enabled = fabric.is_global_zero
        self.progress = Progress(
            TextColumn("[bold]PPO"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(), console=self.console, disable=not self.enabled,
        )
        self.task = self.progress.add_task("fit", total=total, completed=start, status="collecting")
        self.progress.start()
        self.evals: list[tuple[int, float]] = []
        """(update, held-out success) of each evaluation during the run."""

    def held_out(self, step: int, metrics: dict[str, float], counters: dict[str, int]) -> None:
        """Log a held-out evaluation made outside an update (the one before the first)."""
        if not self.enabled:
            return
        self._note_eval(step, metrics)
        self.logger.log_metrics({**metrics, "charts/env_steps": counters["env_steps"], "charts/update": step},
                                step=counters["env_steps"])

    def _note_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.evals.append((step, metrics["eval/success_rate"]))
        self.progress.console.log(f"held-out at update {step}: success {percent(metrics['eval/success_rate'])}  "
                                  f"return {number(metrics['eval/return'])}  "
                                  f"parse-fail {percent(metrics['eval/parse_failure_rate'])}")

    def update(self, step: int, metrics: dict[str, float], rollout: Rollout, counters: dict[str, int],
               every: int, image_every: int) -> None:
        if not self.enabled:
            return
        status = (f"success {percent(metrics['charts/success_rate'])}  return {number(metrics['charts/episode_return'])}"
                  f"  parse-fail {percent(metrics['parse/failure_rate'])}")
        self.progress.update(self.task, completed=step, status=status)
        self.progress.console.log(
            f"update {step}: {status}  policy {metrics['losses/policy']:+.4f}"
            + (f"  value {metrics['losses/value']:.4f}" if "losses/value" in metrics else "")
            + f"  kl {metrics['losses/approx_kl']:.4f}  {metrics['perf/env_steps_per_s']:.1f} steps/s"
        )
        if "eval/success_rate" in metrics:
            self._note_eval(step, metrics)
        x = counters["env_steps"]  # TensorBoard's axis: env steps (runs of any batch size compare)
        if every and step % every == 0:
            scalars = {k: v for k, v in metrics.items() if not math.isnan(v)}
            scalars.update({"charts/env_steps": x, "charts/total_episodes": counters["episodes"],
                            "charts/update": step})
            self.logger.log_metrics(scalars, step=x)
        if image_every and step % image_every == 0:
            writer = self.logger.experiment
            for k, (obs, text, prompt) in enumerate(rollout.samples_for_log):
                if obs.image is not None:
                    writer.add_image(f"samples/{k}", obs.image, x, dataformats="HWC")
                writer.add_text(f"samples/{k}", f"    state: {obs.text}\n\n    answer: {text}\n\n    prompt "
                                f"(the image: samples/{k}):\n\n" + _indent(prompt), x)

    def _eval_rows(self, out_dir: Path) -> list[tuple[str, str]]:
        return _eval_rows_of(self.evals, out_dir)

    def finish(self, metrics: dict[str, float], counters: dict[str, int], out_dir: Path,
               checkpoint: Path | None) -> None:
        if not self.enabled:
            return
        self.progress.stop()
        table = Table(title="agentrl fit: summary", show_header=False)
        rows = [
            ("env steps", str(counters["env_steps"])),
            ("episodes", str(counters["episodes"])),
            ("success rate (training window)", percent(metrics.get("charts/success_rate", float("nan")))),
            ("mean episode return (last update)", number(metrics.get("charts/episode_return", float("nan")))),
            ("parse failure rate (last update)", percent(metrics.get("parse/failure_rate", float("nan")))),
            ("env steps / s (last update)", number(metrics.get("perf/env_steps_per_s", float("nan")))),
            *self._eval_rows(out_dir),
            ("TensorBoard", f"tensorboard --logdir {out_dir / 'tensorboard'}"),
            ("checkpoint", str(checkpoint) if checkpoint else "-"),
        ]
        for k, v in rows:
            table.add_row(k, v)
        self.console.print(table)


def _indent(text: str) -> str:
    """Markdown code block (TensorBoard renders text as markdown)."""
    return "\n".join("    " + line for line in text.splitlines())


def _eval_rows_of(evals: list[tuple[int, float]], out_dir: Path) -> list[tuple[str, str]]:
    if not evals:
        return []
    (u0, s0), (u1, s1) = evals[0], evals[-1]
    rows = [(f"held-out success (update {u0} -> {u1})", f"{percent(s0)} -> {percent(s1)}")]
    trained = [e for e in evals if e[0] > 0]  # checkpoints/best is the first update that reached the best
    if trained:
        ub, sb = max(trained, key=lambda e: e[1])
        rows.append(("best held-out", f"{percent(sb)} at update {ub} ({out_dir / 'checkpoints' / 'best'})"))
    return rows


def update_metrics(fabric: Any, rollout: Rollout, losses: dict[str, float], window: deque,
                   t_collect: float, t_update: float, dropped: int = 0) -> dict[str, float]:
    """The documented TensorBoard scalars: counts summed over ranks, losses and timings averaged."""
    eps = rollout.episodes
    s = reduce_sums(fabric, {
        "episodes": len(eps), "ret": sum(e.ret for e in eps), "len": sum(e.length for e in eps),
        "win_ok": sum(window), "win_n": len(window), "failures": rollout.parse_failures,
        "samples": rollout.size, "tokens": rollout.gen_tokens, "reward": float(rollout.rewards.sum()),
        "dropped": dropped,
    })
    nan = float("nan")
    m = {
        "charts/success_rate": s["win_ok"] / s["win_n"] if s["win_n"] else nan,
        "charts/episode_return": s["ret"] / s["episodes"] if s["episodes"] else nan,
        "charts/episode_length": s["len"] / s["episodes"] if s["episodes"] else nan,
        "charts/episodes": s["episodes"],
        "charts/reward_mean": s["reward"] / s["samples"],
        "parse/failure_rate": s["failures"] / s["samples"],
        "charts/dropped_episodes": s["dropped"],
    }
    local = {
        "perf/env_steps_per_s": rollout.size / t_collect,
        "perf/tokens_per_s": rollout.gen_tokens / max(rollout.timings["generate"], 1e-9),
        "perf/generate_s": rollout.timings["generate"],
        "perf/env_s": rollout.timings["env"],
        "perf/score_s": rollout.timings["score"],
        "perf/update_s": t_update,
        **{f"losses/{k}": v for k, v in losses.items()},
    }
    if fabric.world_size > 1:
        keys = sorted(local)
        vals = fabric.all_reduce(torch.tensor([local[k] for k in keys], dtype=torch.float64), reduce_op="mean")
        local = dict(zip(keys, vals.tolist()))
        local["perf/env_steps_per_s"] *= fabric.world_size  # throughput of all ranks together
        local["perf/tokens_per_s"] *= fabric.world_size
    m.update(local)
    m["_samples"] = s["samples"]
    return m
