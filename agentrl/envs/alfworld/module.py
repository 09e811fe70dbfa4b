"""AlfworldModule: N ALFWorld text games on the real engine, behind the EnvModule contract.

Games come from ``env.data_path`` (its split's subfolder; the eval split is never taken from
training games, see :func:`find_data`), else ``$ALFWORLD_DATA/json_2.1.1/{train,valid_unseen}``,
else the offline set this package generates on first use. ``env.vector=async``
runs each game in its own worker process.

``env.options`` keys (all optional):

- ``won_reward`` (50.0): reward on the step that wins.
- ``goal_condition_reward`` (1.0): weight of the goal-condition term.
- ``goal_condition_mode`` ("rate"): "rate" adds the current share of goal
  conditions met every step (the reference); "delta" adds only its change.
- ``image_size`` (224): side of the drawn scene image in pixels.
- ``task_types`` (all): short names to keep (pick, look, clean, heat, cool, pick2).
- ``start_method`` ("spawn"): how async workers start (spawn, forkserver, fork).
- ``expert`` ("planner"): who labels ``expert_fields()`` (SFT data, ``agentrl play``'s hint): "planner"
  (alfworld's handcoded expert, with a memory of the whole episode and the engine's facts) or "search"
  (:mod:`.search`: acts only on what the prompt shows, predictable with ``prompt.history >= 3``).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from agentrl.config import ConfigError, EnvConfig
from agentrl.envs.alfworld.engine import EXPERT_MAX_STEPS, EXPERTS, WALKTHROUGH_MAX_STEPS
from agentrl.envs.alfworld.game import AlfworldGame, GameSettings, SlotStep
from agentrl.envs.alfworld.state import SHORT_NAMES
from agentrl.envs.alfworld.worker import START_S, WorkerDied
from agentrl.envs.base import EnvModule, EnvObs, EnvStep

DEFAULT_MAX_STEPS = WALKTHROUGH_MAX_STEPS
"""``env.max_episode_steps`` unset: every generated game's expert walkthrough fits (50 cut off 3 of the 48 default games)."""
OPTIONS: dict[str, Any] = {
    "won_reward": 50.0,
    "goal_condition_reward": 1.0,
    "goal_condition_mode": "rate",
    "image_size": 224,
    "task_types": list(SHORT_NAMES.values()),
    "start_method": "spawn",
    "expert": "planner",
}
_OFFICIAL_SPLIT = {"train": "train", "eval": "valid_unseen"}


class AlfworldModule(EnvModule):
    """``cfg.num_envs`` ALFWorld games (TextWorld PDDL engine), auto-resetting."""

    family: ClassVar[str] = "alfworld"

    def __init__(self, cfg: EnvConfig, split: str = "train") -> None:
        if split not in _OFFICIAL_SPLIT:
            raise ConfigError(f"ALFWorld split must be 'train' or 'eval', got {split!r}")
        opts = _options(cfg.options)
        max_steps = cfg.max_episode_steps or DEFAULT_MAX_STEPS
        if not 1 <= max_steps < EXPERT_MAX_STEPS:
            raise ConfigError(
                f"env.max_episode_steps must be in [1, {EXPERT_MAX_STEPS - 1}] for ALFWorld "
                f"(the expert gives up at {EXPERT_MAX_STEPS}), got {max_steps}"
            )
        if cfg.image == "thor":
            raise ConfigError(
                "env.image=thor needs alfworld's 3D THOR env (pip install 'alfworld[full]', an X server and the "
                "official json_2.1.1 data with ALFRED trajectories); agentrl does not drive it yet. "
                "Use env.image=scene (drawn from the text state) or env.image=none"
            )
        self.num_envs = cfg.num_envs
        self.split = split
        self.data_dir = find_data(cfg.data_path, split)
        gamefiles = collect_games(self.data_dir, opts["task_types"])
        self.settings = GameSettings(
            gamefiles=tuple(gamefiles),
            max_steps=max_steps,
            image="none" if cfg.image == "none" else "scene",
            image_size=opts["image_size"],
            won_reward=opts["won_reward"],
            goal_condition_reward=opts["goal_condition_reward"],
            goal_condition_mode=opts["goal_condition_mode"],
            expert=opts["expert"],
        )
        self._workers = None
        self._games: list[AlfworldGame] = []
        self.restarts = 0
        self.dropped_episodes = 0
        if cfg.vector == "async":
            from agentrl.envs.alfworld.worker import GameWorkers

            self._workers = GameWorkers(self.settings, cfg.num_envs, opts["start_method"], cfg.step_timeout_s)
        else:
            self._games = [AlfworldGame(self.settings) for _ in range(cfg.num_envs)]

    def reset(self, seed: int) -> list[EnvObs]:
        self._seed = seed
        try:
            self._last = self._call("reset", [(f"{seed}/{i}",) for i in range(self.num_envs)])
        except WorkerDied as e:  # the lost workers restart on their own fresh game; nothing was in progress
            slots = self._recover(e, during_reset=True)
            self._last = [s.obs if i in e.dead else s for i, s in enumerate(slots)]
        return self._last

    def step(self, actions: list[str]) -> EnvStep:
        if len(actions) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} actions (one per env), got {len(actions)}")
        try:
            slots = self._call("step", [(a,) for a in actions])
        except WorkerDied as e:
            slots = self._recover(e)
        self._last = [s.obs for s in slots]
        return EnvStep(
            obs=[s.obs for s in slots],
            reward=np.array([s.reward for s in slots], dtype=np.float32),
            terminated=np.array([s.terminated for s in slots], dtype=bool),
            truncated=np.array([s.truncated for s in slots], dtype=bool),
            final_obs=[s.final_obs for s in slots],
            episodes=[s.episode for s in slots],
        )

    def _recover(self, error: WorkerDied, during_reset: bool = False) -> list[SlotStep]:
        """Restart only the lost (dead or hung) workers; their episodes are dropped (truncated at the last
        obs) and counted. A worker that fails again right after its restart ends the run with the reason."""
        slots = list(error.results)
        for i in error.dead:
            self.restarts += 1
            self.dropped_episodes += 0 if during_reset else 1
            self._workers.restart(i)
            conn = self._workers.conns[i]
            conn.send(("reset", (f"{self._seed}/{i}/restart{self.restarts}",)))
            if not self._workers.wait(i):
                raise RuntimeError(f"ALFWorld worker {i} gave no answer to reset within env.step_timeout_s="
                                   f"{self._workers.timeout:g} s (+{START_S:g} s to start) right after a restart; "
                                   f"raise env.step_timeout_s if games load slowly")
            status, obs = conn.recv()
            self._workers.fresh[i] = False
            if status != "ok":
                raise RuntimeError(f"ALFWorld worker {i} failed to reset after a restart:\n{obs}")
            slots[i] = SlotStep(obs=obs, reward=0.0, terminated=False, truncated=True,
                                final_obs=None if during_reset else self._last[i], episode=None)
        lost = "; ".join(part for part in (f"{[i for i in error.dead if i not in error.hung]} died",
                                          f"{error.hung} hung (no answer within env.step_timeout_s="
                                          f"{self._workers.timeout} s, killed)" if error.hung else "")
                         if not part.startswith("[] "))
        warnings.warn(f"ALFWorld worker(s) {lost}; restarted them and dropped their episodes "
                      f"({self.dropped_episodes} dropped so far)", stacklevel=3)
        return slots

    def reset_slots(self, slots: list[int], key: int) -> list[EnvObs]:
        """Envs ``slots`` restart on the game drawn by ``key`` (the same game file for all)."""
        if self._workers is None:
            if not self._games:
                raise RuntimeError("this AlfworldModule is closed; make a new one")
            obs = [self._games[i].reset(f"group/{key}") for i in slots]
        else:
            for i in slots:
                self._workers.conns[i].send(("reset", (f"group/{key}",)))
            obs = []
            for i in slots:
                if not self._workers.wait(i) or not self._workers.procs[i].is_alive():
                    self._workers.restart(i)
                    self.restarts += 1
                    warnings.warn(f"ALFWorld worker {i} died or hung starting a group's episode; restarted it "
                                  f"(restart {self.restarts})", stacklevel=2)
                    self._workers.conns[i].send(("reset", (f"group/{key}",)))
                    if not self._workers.wait(i):
                        raise RuntimeError(f"ALFWorld worker {i} gave no answer to reset after a restart")
                status, value = self._workers.conns[i].recv()
                self._workers.fresh[i] = False
                if status != "ok":
                    raise RuntimeError(f"ALFWorld worker {i} failed in 'reset':\n{value}")
                obs.append(value)
        for i, o in zip(slots, obs):
            self._last[i] = o
        return obs

    def expert_fields(self) -> list[dict[str, Any]]:
        return self._call("expert_fields", [() for _ in range(self.num_envs)])

    def close(self) -> None:
        if self._workers is not None:
            self._workers.close()
            self._workers = None
        for game in self._games:
            game.close()
        self._games = []

    def _call(self, method: str, args: list[tuple[Any, ...]]) -> list[Any]:
        if self._workers is not None:
            return self._workers.call(method, args)
        if not self._games:
            raise RuntimeError("this AlfworldModule is closed; make a new one")
        return [getattr(g, method)(*a) for g, a in zip(self._games, args)]


def find_data(data_path: str | None, split: str) -> Path:
    """The folder to read games from (see the module docstring for the order).

    Under ``env.data_path``: its ``train`` or ``eval`` (official: ``valid_unseen``) subfolder, or the
    folder itself when it is named so. A folder of games without splits serves training only: the eval
    split (``agentrl eval``, held-out evaluation in fit) is refused rather than played on training games,
    and training is refused on a folder holding only an eval split.
    """
    if data_path:
        root = Path(os.path.expandvars(data_path)).expanduser()
        if not root.is_dir():
            raise ConfigError(
                f"env.data_path {str(root)!r} is not a folder; point it at ALFWorld games "
                "(e.g. $ALFWORLD_DATA/json_2.1.1) or generate some with 'agentrl alfworld-gen --out DIR'"
            )
        names = {s: (s, _OFFICIAL_SPLIT[s]) for s in _OFFICIAL_SPLIT}
        for sub in names[split]:
            if (root / sub).is_dir():
                return root / sub
        if root.name in names[split]:
            return root
        other = "eval" if split == "train" else "train"
        if split == "train" and root.name not in names[other] and not any((root / s).is_dir() for s in names[other]):
            return root  # games without splits: all of them train
        folders = " or ".join(f"{n}/" for n in dict.fromkeys(names[split]))
        raise ConfigError(
            f"env.data_path {str(root)!r} has no {split} split (no {folders} folder in it): "
            + ("it holds no held-out games, and playing its training games would report them as held-out"
               if split == "eval" else "it holds only held-out games, which training must not play")
            + f"; generate both splits with 'agentrl alfworld-gen --out DIR' and pass env.data_path=DIR, or pass "
            f"an env.data_path with the games in {folders}"
        )
    official = os.environ.get("ALFWORLD_DATA")
    if official and (Path(official) / "json_2.1.1" / _OFFICIAL_SPLIT[split]).is_dir():
        return Path(official) / "json_2.1.1" / _OFFICIAL_SPLIT[split]
    from agentrl.envs.alfworld.gen import ensure_default_games

    return ensure_default_games() / split


def collect_games(root: Path, task_types: list[str]) -> list[str]:
    """Sorted playable game files under ``root`` of the wanted task types (as AlfredTWEnv filters)."""
    wanted = {full for full, short in SHORT_NAMES.items() if short in task_types}
    games = []
    for traj_path in sorted(root.rglob("traj_data.json")):
        folder = traj_path.parent
        game_path = folder / "game.tw-pddl"
        if "movable" in str(folder) or "Sliced" in str(folder) or not game_path.is_file():
            continue
        if json.loads(traj_path.read_text()).get("task_type") not in wanted:
            continue
        if not json.loads(game_path.read_text()).get("solvable", False):
            continue
        games.append(str(game_path))
    if not games:
        raise ConfigError(
            f"no playable ALFWorld games of types {task_types} under {root}; "
            "check env.data_path or generate games with 'agentrl alfworld-gen --out DIR'"
        )
    return games


def _options(given: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"env.options: unknown key(s) {unknown} for alfworld; known: {', '.join(OPTIONS)}")
    opts = {**OPTIONS, **dict(given)}
    if opts["goal_condition_mode"] not in ("rate", "delta"):
        raise ConfigError(f"env.options.goal_condition_mode must be 'rate' or 'delta', got {opts['goal_condition_mode']!r}")
    bad = sorted(set(opts["task_types"]) - set(SHORT_NAMES.values()))
    if bad or not opts["task_types"]:
        raise ConfigError(f"env.options.task_types must be a non-empty subset of {list(SHORT_NAMES.values())}, got {opts['task_types']}")
    if int(opts["image_size"]) < 64:
        raise ConfigError(f"env.options.image_size must be >= 64, got {opts['image_size']}")
    if opts["start_method"] not in ("spawn", "forkserver", "fork"):
        raise ConfigError(f"env.options.start_method must be spawn, forkserver or fork, got {opts['start_method']!r}")
    if opts["expert"] not in EXPERTS:
        raise ConfigError(f"env.options.expert must be one of {', '.join(EXPERTS)}, got {opts['expert']!r}")
    opts["task_types"] = list(opts["task_types"])
    for key in ("won_reward", "goal_condition_reward"):
        opts[key] = float(opts[key])
    opts["image_size"] = int(opts["image_size"])
    return opts
