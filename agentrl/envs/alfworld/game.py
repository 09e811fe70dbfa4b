"""One ALFWorld environment slot: the real engine, an expert (the fixed planner or the searching one),
rewards and auto-reset.

Runs in the main process (``vector=sync``) or alone in a worker process
(``vector=async``); everything it returns pickles.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from agentrl.envs.alfworld.engine import EXPERT_MAX_STEPS, EXPERTS, read_traj, start_engine, visible
from agentrl.envs.alfworld.expert import apply_expert_fix
from agentrl.envs.alfworld.scene import draw_scene
from agentrl.envs.alfworld.state import SHORT_NAMES, goal_condition, scene_state
from agentrl.envs.base import EnvObs, EpisodeStats

ENV_ID = "alfworld"


@dataclass(frozen=True)
class GameSettings:
    """What one slot needs to know; built from EnvConfig by the module."""

    gamefiles: tuple[str, ...]
    max_steps: int
    image: str  # "none" or "scene"
    image_size: int
    won_reward: float
    goal_condition_reward: float
    goal_condition_mode: str  # "rate" (reference: every step) or "delta" (change since last step)
    expert: str = "planner"  # a key of EXPERTS: who labels expert_fields()


@dataclass
class SlotStep:
    """One slot's share of an EnvStep."""

    obs: EnvObs
    reward: float
    terminated: bool
    truncated: bool
    final_obs: EnvObs | None
    episode: EpisodeStats | None


class AlfworldGame:
    """One environment: plays games drawn from ``settings.gamefiles``, resetting itself when one ends."""

    def __init__(self, settings: GameSettings) -> None:
        apply_expert_fix()
        self.s = settings
        self.rng = random.Random(0)
        self.env: Any = None
        self.expert = EXPERTS[settings.expert](EXPERT_MAX_STEPS)
        self._shown = visible if settings.expert == "search" else (lambda state: state)  # what it may read

    def reset(self, seed: int | str) -> EnvObs:
        """Seed this slot's stream of games and start the first one."""
        self.rng = random.Random(seed)
        return self._new_episode()

    def step(self, command: str) -> SlotStep:
        """Apply one admissible command; on episode end, auto-reset and report the episode."""
        self.state, _, _ = self.env.step(command)
        self.steps += 1
        self.expert.update(self._shown(self.state), command)
        won = bool(self.state["won"])
        gc = goal_condition(self.state["facts"], self.traj["task_type"], self.params)
        shaped = gc if self.s.goal_condition_mode == "rate" else gc - self.gc
        self.gc = gc
        reward = self.s.won_reward * won + self.s.goal_condition_reward * shaped
        self.ret += reward
        obs = self._obs(self.state["feedback"])
        truncated = not won and self.steps >= self.s.max_steps
        if not (won or truncated):
            return SlotStep(obs, reward, False, False, None, None)
        episode = EpisodeStats(self.ret, self.steps, won, SHORT_NAMES[self.traj["task_type"]])
        return SlotStep(self._new_episode(), reward, won, truncated, obs, episode)

    def expert_fields(self) -> dict[str, str]:
        """The expert's next command and a short reason for it."""
        return {"thoughts": self.expert.thoughts(self.task), "action": self.expert.action}

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    # ---------------------------------------------------------------- internals

    def _new_episode(self) -> EnvObs:
        gamefile = self.rng.choice(self.s.gamefiles)
        if self.env is None:
            self.env = start_engine(gamefile)
        else:
            self.env.load(gamefile)
        self.gamefile = gamefile
        self.traj = read_traj(gamefile)
        self.params = self.traj["pddl_params"]
        self.state = self.env.reset()
        intro = self.state["feedback"]
        self.room, self.task = _split_intro(intro)
        self.expert.reset(gamefile, self._shown(self.state), self.rng.getrandbits(31))
        self.steps, self.ret = 0, 0.0
        self.gc = goal_condition(self.state["facts"], self.traj["task_type"], self.params)
        return self._obs("")

    def _obs(self, feedback: str) -> EnvObs:
        scene = scene_state(self.state["facts"], self.task)
        image = draw_scene(scene, self.s.image_size) if self.s.image == "scene" else None
        text = f"{self.room}\n\n{feedback}" if feedback else self.room
        return EnvObs(
            image=image,
            text=text,
            recap=feedback,  # what this step adds to the room's description, for later prompts' history
            legal_actions=list(self.state["admissible_commands"]),
            env_id=ENV_ID,
            task=self.task,
            extra={
                "task_type": SHORT_NAMES[self.traj["task_type"]],
                "gamefile": self.gamefile,
                "holding": scene.holding,
                "location": scene.agent_at,
                "step": self.steps,
                "won": bool(self.state["won"]),
                "goal_condition": self.gc,
            },
        )


def _split_intro(intro: str) -> tuple[str, str]:
    """(room description, task) from the game's opening text."""
    body = intro.replace("-= Welcome to TextWorld, ALFRED! =-", "").strip()
    room, _, task = body.partition("Your task is to:")
    return room.strip(), task.strip().rstrip(".")
