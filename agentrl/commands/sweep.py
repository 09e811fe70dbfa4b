"""`agentrl sweep`: a grid of config overrides over seeds, one `agentrl fit` subprocess per run.

The sweep dir (default ``runs/sweep-<config stem>``) holds::

    <combination>/seed=<s>/   each run's trainer.out_dir, plus fit.log (its stdout and stderr)
    results.csv               one row per run and logged update
    summary.csv               final success rate per combination: mean, sample std (n-1), min, max over seeds
    success.png               success rate against env steps, mean over seeds with a min-max band

A combination is named from its grid values (``cot=false,thought_coef=0.1``), with
the last part of each dotted key unless two keys share it.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agentrl.config import ConfigError, load_config
from agentrl.console import make_console, number, percent

TAGS = {"env_steps": "charts/env_steps", "success_rate": "charts/success_rate",
        "episode_return": "charts/episode_return", "parse_failure_rate": "parse/failure_rate"}
"""results.csv column -> the TensorBoard tag it is read from."""
RESERVED = {"seed": "--seeds", "trainer.out_dir": "--out"}
"""Keys the sweep sets itself, and the flag to use instead."""


@dataclass(frozen=True)
class Run:
    """One fit: a grid combination ((dotted key, value as typed) in grid order), its dir name, a seed."""

    combo: tuple[tuple[str, str], ...]
    combo_name: str
    seed: int

    @property
    def name(self) -> str:
        """The run's dir relative to the sweep dir."""
        return f"{self.combo_name}/seed={self.seed}"

    @property
    def overrides(self) -> list[str]:
        """The dotted overrides that make this run (grid values, then the seed)."""
        return [*(f"{k}={v}" for k, v in self.combo), f"seed={self.seed}"]


# ---------------------------------------------------------------- grid (pure)


def split_values(key: str, text: str) -> list[str]:
    """``'0.1,0.5'`` -> ``['0.1', '0.5']``; commas inside ``[...]`` or quotes do not split.

    ``'[256],[128,64]'`` -> two list values; ``'"q_proj,v_proj",all-linear'`` -> two strings.
    """
    values, cur, depth, quote = [], "", 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0 and not quote:
            values.append(cur.strip())
            cur = ""
        else:
            cur += ch
    values.append(cur.strip())
    if depth or quote:
        raise ConfigError(f"--grid {key}={text}: unbalanced brackets or quotes; write lists as [1,2] and "
                          f"strings holding commas in quotes, e.g. {key}='\"a,b\"',c")
    if "" in values:
        raise ConfigError(f"--grid {key}={text}: empty value; separate values with single commas")
    if len(set(values)) < len(values):
        raise ConfigError(f"--grid {key}={text}: a value is repeated; list each value once")
    return values


def parse_grid(items: Sequence[str], overrides: Sequence[str] = ()) -> dict[str, list[str]]:
    """``['prompt.cot=true,false', ...]`` -> ``{'prompt.cot': ['true', 'false'], ...}`` in the given order."""
    fixed = {o.split("=", 1)[0] for o in overrides}
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--grid {item!r} is not key=v1,v2 (for example --grid policy.thought_coef=0.1,0.5)")
        if key in RESERVED:
            raise ConfigError(f"--grid {key}: the sweep sets {key} itself; use {RESERVED[key]} instead")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice; put all its values in one --grid {key}=v1,v2")
        if key in fixed:
            raise ConfigError(f"{key} is both a fixed override and a --grid key; drop one of them")
        grid[key] = split_values(key, text)
    for key, flag in RESERVED.items():
        if key in fixed:
            raise ConfigError(f"override {key}=... would be the same for every run; use {flag} instead")
    return grid


def parse_seeds(text: str) -> list[int]:
    """``'1,2,3'`` -> ``[1, 2, 3]``."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected a comma list of integers, e.g. --seeds 1,2,3") from None
    if len(set(seeds)) < len(seeds):
        raise ConfigError(f"--seeds {text!r}: a seed is repeated; list each seed once")
    return seeds


def _slug(value: str) -> str:
    """A value as a readable, shell-safe path part: ``[256,128]`` -> ``256-128``, ``a/b`` -> ``a_b``."""
    value = re.sub(r"[\[\]{}'\" ]", "", value).replace(",", "-")
    return re.sub(r"[^A-Za-z0-9._+-]", "_", value) or "_"


def expand(grid: dict[str, list[str]], seeds: list[int]) -> list[Run]:
    """The cartesian product of the grid values, times the seeds, as named runs."""
    lasts = [k.rsplit(".", 1)[-1] for k in grid]
    short = {k: (s if lasts.count(s) == 1 else k) for k, s in zip(grid, lasts)}
    runs, names = [], {}
    for values in itertools.product(*grid.values()):
        combo = tuple(zip(grid, values))
        name = ",".join(f"{short[k]}={_slug(v)}" for k, v in combo) or "default"
        if name in names:
            raise ConfigError(f"grid values {names[name]} and {combo} both make the directory name {name!r}; "
                              f"use values that differ in letters or digits")
        names[name] = combo
        runs += [Run(combo, name, s) for s in seeds]
    return runs


# ---------------------------------------------------------------- aggregation (pure but for reading)


def read_events(tb_dir: Path) -> list[dict[str, float]]:
    """One dict per logged update of a run: update and the TAGS columns (NaN where not logged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0}).Reload()
    logged = set(acc.Tags()["scalars"])
    # the axis is env steps, charts/update names the update (runs from before it was logged: the axis is it)
    update = {ev.step: int(ev.value) for ev in acc.Scalars("charts/update")} if "charts/update" in logged else {}
    by_update: dict[int, dict[str, float]] = {}
    for col, tag in TAGS.items():
        for ev in acc.Scalars(tag) if tag in logged else []:
            by_update.setdefault(update.get(ev.step, ev.step), {})[col] = ev.value
    return [{"update": u, **{c: v.get(c, math.nan) for c in TAGS}} for u, v in sorted(by_update.items())]


def _finite(xs: list[float]) -> list[float]:
    return [x for x in xs if not math.isnan(x)]


def _mean(xs: list[float]) -> float:
    return statistics.fmean(_finite(xs)) if _finite(xs) else math.nan


def summarise(rows: list[dict], keys: list[str]) -> list[dict]:
    """Per combination: final (last logged) metrics averaged over seeds; success also std (n-1), min, max."""
    groups: dict[str, dict[int, list[dict]]] = {}
    for r in rows:
        groups.setdefault(r["combination"], {}).setdefault(r["seed"], []).append(r)
    out = []
    for combo, by_seed in groups.items():
        final = {c: [] for c in TAGS}
        for seed_rows in by_seed.values():
            for c in TAGS:
                logged = [r[c] for r in sorted(seed_rows, key=lambda r: r["update"]) if not math.isnan(r[c])]
                final[c].append(logged[-1] if logged else math.nan)
        succ = _finite(final["success_rate"])
        first = next(iter(by_seed.values()))[0]
        out.append({"combination": combo, **{k: first[k] for k in keys}, "seeds": len(by_seed),
                    "success_mean": _mean(succ), "success_std": statistics.stdev(succ) if len(succ) > 1 else math.nan,
                    "success_min": min(succ, default=math.nan), "success_max": max(succ, default=math.nan),
                    "episode_return_mean": _mean(final["episode_return"]),
                    "parse_failure_rate_mean": _mean(final["parse_failure_rate"]),
                    "env_steps": _mean(final["env_steps"])})
    return out


def curves(rows: list[dict]) -> dict[str, list[tuple[float, float, float, float]]]:
    """Per combination, per update with a success rate: (mean env steps, mean, min, max) over seeds."""
    points: dict[str, dict[int, list[dict]]] = {}
    for r in rows:
        if not math.isnan(r["success_rate"]):
            points.setdefault(r["combination"], {}).setdefault(r["update"], []).append(r)
    return {combo: [(_mean([r["env_steps"] for r in rs]), _mean([r["success_rate"] for r in rs]),
                     min(r["success_rate"] for r in rs), max(r["success_rate"] for r in rs))
                    for _, rs in sorted(by_update.items())]
            for combo, by_update in points.items()}


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows of dicts with the same keys; NaN is written as an empty cell."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["combination"])
        w.writeheader()
        w.writerows({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows)


def plot_success(rows: list[dict], path: Path, title: str) -> None:
    """success.png: success rate against env steps, one line per combination, min-max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for combo, pts in curves(rows).items():
        x, mean, lo, hi = zip(*pts)
        (line,) = ax.plot(x, mean, marker="o" if len(x) < 20 else None, label=combo)
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)
    ax.set(xlabel="env steps", ylabel="success rate (training window)", ylim=(-0.02, 1.02),
           title=f"{title}: mean over seeds, band min-max")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- running


@dataclass
class Job:
    """A validated run: where it goes and the `agentrl fit` argv that makes it."""

    run: Run
    out_dir: Path
    argv: list[str]
    max_updates: int

    def complete(self) -> bool:
        """The final checkpoint exists (a finished run; re-running skips it)."""
        from agentrl.training.checkpoint import latest_checkpoint

        ckpt = latest_checkpoint(self.out_dir / "checkpoints")
        return ckpt is not None and ckpt.name == f"update_{self.max_updates:06d}"


def plan(config: str | None, overrides: list[str], runs: list[Run], sweep_dir: Path, parallel: int) -> list[Job]:
    """Validate every run's config up front (ConfigError names the run and key) and build its argv."""
    threads = ["trainer.num_threads=1"] if parallel > 1 else []  # the user's own overrides may still set it
    jobs = []
    for run in runs:
        out_dir = sweep_dir / run.name
        args = [*threads, *overrides, *run.overrides, f"trainer.out_dir={out_dir}"]
        try:
            cfg = load_config(config, args)
        except ConfigError as e:
            raise ConfigError(f"sweep run {run.name}: {e}") from None
        argv = [sys.executable, "-m", "agentrl.cli", "fit", *(["-c", str(config)] if config else []), *args]
        jobs.append(Job(run, out_dir, argv, cfg.trainer.max_updates))
    return jobs


def execute(jobs: list[Job], parallel: int, force: bool, console: Console) -> list[Job]:
    """Run the jobs, ``parallel`` at a time, with a progress display; returns the failed ones."""
    todo = [j for j in jobs if force or not j.complete()]
    if len(todo) < len(jobs):
        console.print(f"skipping {len(jobs) - len(todo)} finished run(s) (--force reruns them)")
    env = dict(os.environ, **({"OMP_NUM_THREADS": "1"} if parallel > 1 else {}))
    running: dict[subprocess.Popen, tuple[Job, int, float]] = {}
    failed: list[Job] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        total = progress.add_task("[bold]sweep", total=len(jobs), completed=len(jobs) - len(todo))
        try:
            while todo or running:
                while todo and len(running) < parallel:
                    job = todo.pop(0)
                    shutil.rmtree(job.out_dir, ignore_errors=True)  # a partial or forced run starts afresh
                    job.out_dir.mkdir(parents=True)
                    with (job.out_dir / "fit.log").open("w") as log:
                        proc = subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
                    running[proc] = (job, progress.add_task(f"  {job.run.name}", total=job.max_updates),
                                     time.monotonic())
                for proc, (job, task, t0) in list(running.items()):
                    if proc.poll() is None:
                        progress.update(task, completed=_updates_done(job.out_dir / "fit.log"))
                        continue
                    del running[proc]
                    progress.remove_task(task)
                    progress.advance(total)
                    took = f"{time.monotonic() - t0:.0f}s"
                    if proc.returncode == 0:
                        progress.console.log(f"[green]done[/] {job.run.name} ({took})")
                    else:
                        failed.append(job)
                        progress.console.log(f"[red]FAILED[/] {job.run.name} (exit {proc.returncode}, {took}); "
                                             f"log: {job.out_dir / 'fit.log'}")
                time.sleep(0.2)
        finally:
            for proc in running:  # interrupted: stop the runs this sweep started
                proc.terminate()
                proc.wait()
    return failed


def _die_with_parent() -> None:
    """In the child, Linux only: get SIGTERM when the sweep process dies, even by SIGKILL (no orphan runs)."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _updates_done(log: Path) -> int:
    """The last ``update N:`` line a fit has logged so far."""
    with log.open("rb") as f:
        f.seek(max(0, log.stat().st_size - 4096))
        found = re.findall(rb"update (\d+):", f.read())
    return int(found[-1]) if found else 0


def run_sweep(config: str | None, overrides: list[str], grid_items: list[str], seeds: str, parallel: int = 1,
              out: str | None = None, force: bool = False, console: Console | None = None) -> int:
    """The `agentrl sweep` command; returns the exit status (1 if any run failed)."""
    console = console or make_console()
    if parallel < 1:
        raise ConfigError(f"--parallel {parallel}: must be >= 1")
    grid = parse_grid(grid_items, overrides)
    runs = expand(grid, parse_seeds(seeds))
    sweep_dir = Path(out or f"runs/sweep-{Path(config).stem if config else 'default'}")
    jobs = plan(config, overrides, runs, sweep_dir, parallel)
    n_combos = len({r.combo_name for r in runs})
    console.print(f"sweep: {n_combos} combination(s) x {len(runs) // n_combos} seed(s) -> {sweep_dir}")
    failed = execute(jobs, parallel, force, console)

    keys = list(grid)
    rows = []
    for job in jobs:  # a failed run's partial curve would skew the means: left out
        if job not in failed and (job.out_dir / "tensorboard").is_dir():
            combo = {"combination": job.run.combo_name, **dict(job.run.combo), "seed": job.run.seed}
            rows += [{**combo, **r} for r in read_events(job.out_dir / "tensorboard")]
    summary = summarise(rows, keys)
    write_csv(sweep_dir / "results.csv", rows)
    write_csv(sweep_dir / "summary.csv", summary)
    plot_success(rows, sweep_dir / "success.png", sweep_dir.name)

    table = Table(title=f"agentrl sweep: final success rate over seeds ({sweep_dir})")
    for col in ("combination", "seeds", "mean", "std", "min-max", "return", "parse fail", "env steps"):
        table.add_column(col, justify="left" if col == "combination" else "right")
    for s in summary:
        table.add_row(s["combination"], str(s["seeds"]), percent(s["success_mean"]), percent(s["success_std"]),
                      f"{percent(s['success_min'])}-{percent(s['success_max'])}", number(s["episode_return_mean"]),
                      percent(s["parse_failure_rate_mean"]), number(s["env_steps"], 0))
    console.print(table)
    console.print(f"wrote {sweep_dir / 'results.csv'}, summary.csv and success.png")
    for job in failed:
        console.print(f"[red]failed[/]: {job.run.name}: see {job.out_dir / 'fit.log'}")
    return 1 if failed else 0
