"""Offline ALFWorld game generator: official layout, checked by both experts.

``generate(out, per_type, seed, split)`` writes
``<out>/<split>/<task_type>-<Obj>-None-<Recep>-<room>/trial_<k>/{game.tw-pddl,traj_data.json}``
for all six task types. Each drawn game is played on the real engine in a child process
(fast-downward may exit the process on a bad problem) by the fixed handcoded expert and by
the searching expert, and kept only if both win within WALKTHROUGH_MAX_STEPS; the planner's
winning commands become the game's ``walkthrough``. ``max_receptacles`` / ``max_distractors``
author small rooms (see :mod:`.author`); they are recorded in ``summary.json`` and each
``traj_data.json``'s generator block when set. Same seed and limits, same files.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from agentrl.envs.alfworld.author import SHORT_NAMES, TASK_TYPES, Game, check_limits, draw_game
from agentrl.envs.alfworld.engine import checked_walkthrough, domain_and_grammar
from agentrl.envs.alfworld.expert import apply_expert_fix
from agentrl.envs.alfworld.rooms import SPLITS, floorplans, load_room

GAMES_VERSION = "alfworld-games-v1"
DEFAULT_PER_TYPE = 4
_MAX_DRAWS_PER_GAME = 50


def generate(out_dir: str | Path, per_type: int, seed: int, split: str = "train", max_receptacles: int | None = None,
             max_distractors: int | None = None) -> dict[str, Any]:
    """Write ``per_type`` expert-solvable games of each task type under ``out_dir/split``, in rooms of at most
    ``max_receptacles`` receptacles and ``max_distractors`` non-target objects (None: no limit).

    Returns a summary: games kept per task type, draws rejected, the limits set, seconds taken.
    """
    if per_type < 1:
        raise ValueError(f"per_type must be >= 1, got {per_type}")
    check_limits(max_receptacles, max_distractors)
    limits = {k: v for k, v in (("max_receptacles", max_receptacles), ("max_distractors", max_distractors))
              if v is not None}  # recorded only when set: the default set's files stay as they were
    rooms = floorplans(split)  # also checks the split name
    root = Path(out_dir) / split
    if root.exists():
        shutil.rmtree(root)  # a rerun replaces the split: same seed, same files
    root.mkdir(parents=True)
    start = time.perf_counter()
    kept = {t: 0 for t in TASK_TYPES}
    rejected = {t: 0 for t in TASK_TYPES}
    workers = max(1, min(2, os.cpu_count() or 1))
    rngs = {t: random.Random(f"{seed}/{split}/{t}") for t in TASK_TYPES}
    made = {t: 0 for t in TASK_TYPES}
    with _progress() as progress:
        bar = progress.add_task(f"ALFWorld {split}", total=per_type * len(TASK_TYPES), rejected=0)
        pool = _pool(workers)
        try:
            while any(kept[t] < per_type for t in TASK_TYPES):
                # one round: draw what every type still lacks, check them all in parallel
                batch = [(t, g) for t in TASK_TYPES
                         for g in _draw(t, per_type - kept[t], rooms, rngs[t], split, limits)]
                trials = []
                for task_type, game in batch:
                    trials.append(root / game.folder_name() / f"trial_{made[task_type]:05d}")
                    made[task_type] += 1
                    _write(game, trials[-1], split, limits)
                jobs = [(str(trial / "game.tw-pddl"), g.seed) for (_, g), trial in zip(batch, trials)]
                results, pool = _check_all(pool, workers, jobs)
                for (task_type, game), trial, walkthrough in zip(batch, trials, results):
                    if walkthrough is None:
                        rejected[task_type] += 1
                        shutil.rmtree(trial)
                        if not any(trial.parent.iterdir()):
                            trial.parent.rmdir()
                        continue
                    _write(game, trial, split, limits, walkthrough)
                    kept[task_type] += 1
                    progress.advance(bar)
                progress.update(bar, rejected=sum(rejected.values()))
        finally:
            pool.shutdown(cancel_futures=True)
    summary = {
        "split": split,
        "seed": seed,
        "per_type": per_type,
        "games": {SHORT_NAMES[t]: n for t, n in kept.items()},
        "rejected": {SHORT_NAMES[t]: n for t, n in rejected.items()},
        "rooms": len(rooms),
        **limits,
        "seconds": round(time.perf_counter() - start, 1),
    }
    (root / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "seconds"}, indent=1))
    return summary


def main(out: str, per_type: int, seed: int, max_receptacles: int | None = None,
         max_distractors: int | None = None) -> int:
    """CLI entry (``agentrl alfworld-gen``): generate both splits and print a count table."""
    from rich.console import Console
    from rich.table import Table

    summaries = [generate(out, per_type, seed, split, max_receptacles, max_distractors) for split in SPLITS]
    size = "".join(f", at most {value} {what}" for value, what in ((max_receptacles, "receptacles"),
                                                                   (max_distractors, "distractors"))
                   if value is not None)
    table = Table(title=f"ALFWorld games in {out} (seed {seed}{size})")
    table.add_column("split")
    for short in SHORT_NAMES.values():
        table.add_column(short, justify="right")
    table.add_column("rejected", justify="right")
    table.add_column("seconds", justify="right")
    for s in summaries:
        counts = [str(s["games"][k]) for k in SHORT_NAMES.values()]
        table.add_row(s["split"], *counts, str(sum(s["rejected"].values())), str(s["seconds"]))
    Console().print(table)
    return 0


def cache_root() -> Path:
    """``$AGENTRL_CACHE`` or ``~/.cache/agentrl``."""
    return Path(os.environ.get("AGENTRL_CACHE") or Path.home() / ".cache" / "agentrl")


def ensure_default_games(cache_dir: str | Path | None = None) -> Path:
    """The small default game set (both splits) under ``cache_dir/alfworld-games-v1``, made on first use.

    ``cache_dir`` defaults to ``$AGENTRL_CACHE`` or ``~/.cache/agentrl``; returns the set's root.
    Generation starts spawn workers, so a calling script needs ``if __name__ == "__main__":``.
    """
    root = Path(cache_dir if cache_dir is not None else cache_root()) / GAMES_VERSION
    if _complete(root):
        return root
    tmp = root.with_name(f"{root.name}.tmp{os.getpid()}")  # concurrent first runs must not mix files
    for split in SPLITS:
        generate(tmp, DEFAULT_PER_TYPE, seed=0, split=split)
    if root.exists() and not _complete(root):  # left over from an interrupted run
        shutil.rmtree(root, ignore_errors=True)
    try:
        tmp.rename(root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    if not _complete(root):
        raise RuntimeError(f"could not set up the default ALFWorld games in {root}; remove it and retry")
    return root


def _complete(root: Path) -> bool:
    return all((root / split / "summary.json").is_file() for split in SPLITS)


def _draw(task_type: str, n: int, rooms: list[int], rng: random.Random, split: str,
          limits: dict[str, int]) -> list[Game]:
    """``n`` games of ``task_type`` drawn from ``rooms`` (cut to ``limits``)."""
    games: list[Game] = []
    for _ in range(n * _MAX_DRAWS_PER_GAME):
        if len(games) == n:
            return games
        game = draw_game(load_room(rng.choice(rooms)), task_type, rng, **limits)
        if game is not None:
            games.append(game)
    if len(games) < n:
        raise RuntimeError(
            f"could not draw {n} {task_type} games in split {split!r} after {n * _MAX_DRAWS_PER_GAME} tries; "
            "check that alfworld==0.4.2 with its scene layouts is installed"
        )
    return games


def _write(game: Game, trial: Path, split: str, limits: dict[str, int], walkthrough: list[str] | None = None) -> None:
    domain, grammar = domain_and_grammar()
    trial.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "pddl_domain": domain,
        "grammar": grammar.replace("UNKNOWN GOAL", game.goal_text),
        "pddl_problem": game.problem,
        "solvable": True,
    }
    if walkthrough is not None:
        data["walkthrough"] = walkthrough
    (trial / "game.tw-pddl").write_text(json.dumps(data))
    traj = {
        "task_type": game.task_type,
        "pddl_params": game.params,
        "scene": {"floor_plan": f"FloorPlan{game.floorplan}", "scene_num": game.floorplan},
        "task_desc": game.goal_text,
        "generator": {"name": GAMES_VERSION, "split": split, "seed": game.seed, **limits},
    }
    (trial / "traj_data.json").write_text(json.dumps(traj, indent=1))


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=apply_expert_fix)


def _check_all(
    pool: ProcessPoolExecutor, workers: int, jobs: list[tuple[str, int]]
) -> tuple[list[list[str] | None], ProcessPoolExecutor]:
    """Walkthroughs for ``jobs`` in child processes (None: an expert lost); a crashed child rejects only its game."""
    futures = [pool.submit(checked_walkthrough, *job) for job in jobs]
    results: list[list[str] | None] = []
    for i, future in enumerate(futures):
        try:
            results.append(future.result())
        except BrokenProcessPool:  # a child died: retry the rest one per fresh process
            pool.shutdown(cancel_futures=True)
            return results + [_check_alone(job) for job in jobs[i:]], _pool(workers)
    return results, pool


def _check_alone(job: tuple[str, int]) -> list[str] | None:
    single = _pool(1)
    try:
        return single.submit(checked_walkthrough, *job).result()
    except BrokenProcessPool:
        return None
    finally:
        single.shutdown(cancel_futures=True)


def _progress() -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from agentrl.console import make_console

    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("games kept, {task.fields[rejected]} rejected"),
        TimeElapsedColumn(),
        console=make_console(),  # stderr: a command's stdout (fit --show-prompt, eval's JSON path) stays its own
    )
