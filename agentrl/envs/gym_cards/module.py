"""The gym_cards games as an :class:`~agentrl.envs.base.EnvModule`: a vector of auto-resetting envs.

Seeding: ``reset(seed)`` seeds env ``i`` of split ``split`` with a 63-bit
number drawn from ``numpy.random.SeedSequence(seed, spawn_key=(split_index, i))``,
so each (seed, split, env) triple gets its own independent deal stream: seed 1
does not replay seed 0 shifted by one env, and "eval" and "test" never replay
"train". Later episodes continue each env's own random stream (auto-reset
does not reseed), so a run is reproducible from ``seed`` alone.
"""

from __future__ import annotations

import contextlib
import inspect
import multiprocessing as mp
import pickle
import warnings
from functools import partial
from typing import Any, ClassVar

import gymnasium
import numpy as np

from agentrl.config import ConfigError, EnvConfig
from agentrl.envs import GYM_IDS
from agentrl.envs.base import EnvModule, EnvObs, EnvStep, EpisodeStats

START_S = 120.0
"""Seconds fresh async workers get on top of ``env.step_timeout_s`` for their first answer (they import first)."""

SPLITS: dict[str, int] = {"train": 0, "eval": 1, "test": 2}
"""Split name -> index in the seed's spawn key."""


def env_seed(seed: int, split: str, index: int) -> int:
    """The reset seed of env ``index`` for run ``seed`` and ``split`` (see the module docstring)."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    sequence = np.random.SeedSequence(seed, spawn_key=(SPLITS[split], index))
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def make_env(gym_id: str, options: dict[str, Any], max_episode_steps: int | None) -> gymnasium.Env:
    """One game; a module-level function so worker processes can unpickle it."""
    import agentrl.envs  # noqa: F401  (registers the ids in a fresh worker process)

    return gymnasium.make(gym_id, max_episode_steps=max_episode_steps, **options)


def _check_options(gym_id: str, options: dict[str, Any]) -> None:
    """Fail in this process, naming the key, before workers start."""
    env_cls = gymnasium.spec(gym_id).entry_point
    if isinstance(env_cls, str):
        module, _, name = env_cls.partition(":")
        env_cls = getattr(__import__(module, fromlist=[name]), name)
    accepted = [p for p in inspect.signature(env_cls).parameters if p != "render_mode"]
    for key in options:
        if key not in accepted:
            raise ConfigError(
                f"env.options.{key}: {gym_id} has no option {key!r}; it accepts {', '.join(accepted)}"
            )


def _py(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _unbatch(infos: dict[str, Any], i: int) -> dict[str, Any]:
    """Env ``i``'s own info dict out of gymnasium's batched one."""
    out = {}
    for key, values in infos.items():
        if key.startswith("_") or key in ("final_obs", "final_info"):
            continue
        if infos.get(f"_{key}", np.ones(i + 1, bool))[i]:
            out[key] = _py(values[i])
    return out


class GymCardsModule(EnvModule):
    """``cfg.num_envs`` copies of one gym_cards game, stepped with action strings."""

    family: ClassVar[str] = "gym_cards"
    game: ClassVar[str]
    """Key in :data:`agentrl.envs.GYM_IDS` and the EnvObs env_id."""

    def __init__(self, cfg: EnvConfig, split: str = "train") -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        if cfg.image not in ("auto", "none"):
            raise ConfigError(f"env.image={cfg.image!r} is not available for {self.game}; use auto or none")
        gym_id = GYM_IDS[self.game]
        options = dict(cfg.options)
        _check_options(gym_id, options)
        self.split = split
        self.num_envs = cfg.num_envs
        self.with_image = cfg.image == "auto"
        self._fns = [partial(make_env, gym_id, options, cfg.max_episode_steps) for _ in range(cfg.num_envs)]
        self._async = cfg.vector == "async"
        self.timeout = cfg.step_timeout_s if self._async else None
        self.envs = self._make_vector()
        self.action_names: list[str] = list(self.envs.get_attr("action_names")[0])
        self._index = {name: i for i, name in enumerate(self.action_names)}
        self._returns = np.zeros(self.num_envs)
        self._lengths = np.zeros(self.num_envs, dtype=int)
        self._started = False
        self.restarts = 0
        self.dropped_episodes = 0

    def _wait_s(self) -> float | None:
        """env.step_timeout_s, plus START_S for workers that have not answered yet (they import first)."""
        if self.timeout is None:
            return None
        wait = self.timeout + (START_S if self._fresh else 0.0)
        self._fresh = False  # set again by the next _make_vector; a timeout restarts them anyway
        return wait

    def _make_vector(self) -> gymnasium.vector.VectorEnv:
        mode = gymnasium.vector.AutoresetMode.SAME_STEP
        self._fresh = True
        if self._async:
            return gymnasium.vector.AsyncVectorEnv(self._fns, context="spawn", autoreset_mode=mode)
        return gymnasium.vector.SyncVectorEnv(self._fns, autoreset_mode=mode)

    def reset(self, seed: int, _attempt: int = 0) -> list[EnvObs]:
        self._seed = seed
        seeds = [env_seed(seed, self.split, i) for i in range(self.num_envs)]
        if self._async:
            try:
                self.envs.reset_async(seed=seeds)
                obs, infos = self.envs.reset_wait(timeout=self._wait_s())
            except (EOFError, ConnectionError, mp.TimeoutError) as e:
                if _attempt >= 2:
                    raise RuntimeError(f"{self.game}: the env workers failed to reset 3 times in a row ({e!r}); "
                                       "check the game, or raise env.step_timeout_s if resets are just slow") from e
                self._restart(e, "reset")
                return self.reset(seed + 1_000_003 * self.restarts, _attempt + 1)
        else:
            obs, infos = self.envs.reset(seed=seeds)
        self._returns[:] = 0
        self._lengths[:] = 0
        self._started = True
        self._last = [self._obs(obs[i], _unbatch(infos, i)) for i in range(self.num_envs)]
        return self._last

    def reset_slots(self, slots: list[int], key: int) -> list[EnvObs]:
        """Envs ``slots`` restart from the deal of seed ``key`` (all the same); the others keep going."""
        if not self._started:
            self.reset(self._seed if hasattr(self, "_seed") else 0)
        mask = np.zeros(self.num_envs, bool)
        mask[slots] = True
        seed = env_seed(key, self.split, 0)
        seeds = [seed if m else None for m in mask]
        try:
            if self._async:
                self.envs.reset_async(seed=seeds, options={"reset_mask": mask})
                obs, infos = self.envs.reset_wait(timeout=self._wait_s())
            else:
                obs, infos = self.envs.reset(seed=seeds, options={"reset_mask": mask})
        except (EOFError, ConnectionError, mp.TimeoutError) as e:
            if not self._async:
                raise
            self._restart(e, "reset")  # every env restarted; the caller's groups begin again from here
            self.reset(self._seed + 1_000_003 * self.restarts)
            return self.reset_slots(slots, key)
        self._returns[slots] = 0
        self._lengths[slots] = 0
        for i in slots:
            self._last[i] = self._obs(obs[i], _unbatch(infos, i))
        return [self._last[i] for i in slots]

    def _restart(self, error: Exception, during: str) -> None:
        """Kill every worker (SIGKILL: a stopped or deadlocked one ignores SIGTERM) and start new ones."""
        self.restarts += 1
        self.dropped_episodes += self.num_envs
        why = (f"no answer within env.step_timeout_s={self.timeout:g} s" if isinstance(error, mp.TimeoutError)
               else f"an env worker died ({type(error).__name__}: {error})")
        warnings.warn(f"{self.game}: {why} during {during}; killed and restarted the workers, dropped "
                      f"{self.num_envs} episodes in progress (restart {self.restarts})", stacklevel=4)
        for proc in self.envs.processes:
            with contextlib.suppress(Exception):
                proc.kill()
        with contextlib.suppress(Exception):  # the broken pipe that brought us here may fail the close too
            self.envs.close(terminate=True)
        self.envs = self._make_vector()

    def _recover(self, error: Exception) -> EnvStep:
        """A worker process died or hung: restart the workers on fresh seeds, drop the episodes in progress.

        Every env's episode is lost with the vector env, so all are reported as
        truncated at their last observation (the learner bootstraps from its value)
        and counted in ``dropped_episodes``.
        """
        self._restart(error, "step")
        final = self._last
        obs = self.reset(self._seed + 1_000_003 * self.restarts)
        n = self.num_envs
        return EnvStep(obs=obs, reward=np.zeros(n, np.float32), terminated=np.zeros(n, bool),
                       truncated=np.ones(n, bool), final_obs=list(final), episodes=[None] * n)

    def step(self, actions: list[str]) -> EnvStep:
        if not self._started:
            raise RuntimeError("call reset(seed) before step()")
        if len(actions) != self.num_envs:
            raise ValueError(f"got {len(actions)} actions for {self.num_envs} envs; pass one per env")
        for action in actions:
            if action not in self._index:
                raise ValueError(f"action {action!r} is not one of {self.action_names} ({self.game})")
        indices = np.array([self._index[a] for a in actions])
        if self._async:
            try:
                self.envs.step_async(indices)
                obs, reward, terminated, truncated, infos = self.envs.step_wait(timeout=self._wait_s())
            except (EOFError, ConnectionError, mp.TimeoutError) as e:  # died (killed, segfault, OOM) or hung
                return self._recover(e)
        else:
            obs, reward, terminated, truncated, infos = self.envs.step(indices)
        self._returns += reward
        self._lengths += 1
        final_obs: list[EnvObs | None] = [None] * self.num_envs
        episodes: list[EpisodeStats | None] = [None] * self.num_envs
        for i in np.flatnonzero(terminated | truncated):
            final_obs[i] = self._obs(infos["final_obs"][i], _unbatch(infos["final_info"], i))
            ret = float(self._returns[i])
            episodes[i] = EpisodeStats(ret=ret, length=int(self._lengths[i]), success=ret > 0)
            self._returns[i] = 0
            self._lengths[i] = 0
        self._last = [self._obs(obs[i], _unbatch(infos, i)) for i in range(self.num_envs)]
        return EnvStep(
            obs=self._last,
            reward=np.asarray(reward, dtype=np.float32),
            terminated=np.asarray(terminated, dtype=bool),
            truncated=np.asarray(truncated, dtype=bool),
            final_obs=final_obs,
            episodes=episodes,
        )

    def expert_fields(self) -> list[dict[str, Any]]:
        return list(self.envs.call("expert_fields"))

    def state_dict(self) -> dict[str, Any] | None:
        """The games themselves, pickled (sync mode only: async workers hold theirs out of reach)."""
        if not isinstance(self.envs, gymnasium.vector.SyncVectorEnv):
            return None
        return {"envs": pickle.dumps(self.envs.envs), "returns": self._returns.copy(),
                "lengths": self._lengths.copy(), "started": self._started}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(self.envs, gymnasium.vector.SyncVectorEnv):
            raise TypeError("env state can only be restored into env.vector=sync")
        envs = pickle.loads(state["envs"])
        if len(envs) != self.num_envs:
            raise ValueError(f"saved state has {len(envs)} envs, this module has {self.num_envs} (env.num_envs)")
        self.envs.envs = envs
        self._returns[:], self._lengths[:] = state["returns"], state["lengths"]
        self._started = state["started"]

    def close(self) -> None:
        self.envs.close()

    def _obs(self, image: np.ndarray, info: dict[str, Any]) -> EnvObs:
        extra = {k: v for k, v in info.items() if k not in ("text", "legal_actions")}
        return EnvObs(
            image=image if self.with_image else None,
            text=info["text"],
            legal_actions=list(info["legal_actions"]),
            env_id=self.game,
            extra=extra,
        )


class NumberLineModule(GymCardsModule):
    """NumberLine: reach the target with "-" / "+"."""

    game = "numberline"


class EZPointsModule(GymCardsModule):
    """EZPoints: two cards to 12 with "+" / "*"."""

    game = "ezpoints"


class Points24Module(GymCardsModule):
    """Points24: four cards to 24 with + - * / and parentheses."""

    game = "points24"


class BlackjackModule(GymCardsModule):
    """Blackjack: hit or stand."""

    game = "blackjack"
