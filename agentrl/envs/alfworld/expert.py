"""The handcoded ALFWorld expert, with alfworld 0.4.2's "move" bug fixed.

alfworld 0.4.2 renamed the command ``put X in/on Y`` to ``move X to Y``, but
the expert's state tracking still looks for "put" in the last action: after a
move it believes it still holds the object and loops (pick_two games fail).
:func:`apply_expert_fix` patches the tracking to read a "move" as a "put".
Call it in every process that runs the expert: a spawn-started worker does not
inherit the patch of its parent.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any

_PATCH_FLAG = "_agentrl_move_fix"

# Where the policies are read from: the expert's subgoals in words.
_SUBGOAL_WORDS = {
    "find": "find a {param}",
    "take": "take the {param}",
    "put": "put it in/on the {param}",
    "heat": "heat it with the microwave",
    "cool": "cool it with the fridge",
    "clean": "clean it with the sinkbasin",
    "use": "turn on the {param}",
    "goto": "go to the {param}",
    "open": "open the {param}",
    "close": "close the {param}",
    "slice": "slice the {param}",
}


def apply_expert_fix() -> None:
    """Make the handcoded expert read ``move X to Y`` as a put (idempotent)."""
    from alfworld.agents.expert import handcoded_expert as he

    policy = he.BasePolicy
    if getattr(policy.update_state_tracking, _PATCH_FLAG, False):
        return
    original = policy.update_state_tracking

    def update_state_tracking(self: Any, game_state: Any, last_action: str) -> Any:
        if last_action.startswith("move "):
            last_action = "put " + last_action[len("move ") :]
        return original(self, game_state, last_action)

    setattr(update_state_tracking, _PATCH_FLAG, True)
    policy.update_state_tracking = update_state_tracking


@contextmanager
def expert_random(rng: random.Random):
    """Run the expert with ``rng`` instead of the global ``random`` it draws from.

    The expert module calls ``random.choice``; swapping its module-level name
    gives each environment its own reproducible stream, even in one process.
    """
    from alfworld.agents.expert import handcoded_expert as he

    saved = he.random
    he.random = rng
    try:
        yield
    finally:
        he.random = saved


class ExpertTracker:
    """Follows one episode and knows the expert's next command after every step.

    Mirrors what alfworld's AlfredExpert wrapper does (observe the intro, then
    ``act`` after each command) but never lets an expert failure stop the game:
    when the expert is lost it proposes "look" (or the first admissible command).
    """

    def __init__(self, max_steps: int = 200) -> None:
        from alfworld.agents.expert import HandCodedTWAgent

        apply_expert_fix()
        self._agent = HandCodedTWAgent(max_steps=max_steps)
        self.rng = random.Random(0)
        self.action = "look"
        self.failed = False

    def reset(self, gamefile: str, state: Any, seed: int) -> None:
        """Start a new episode on ``gamefile`` whose first state is ``state``."""
        self.rng = random.Random(seed)
        self.failed = False
        self._agent.reset(gamefile)
        self._agent.observe(state["feedback"])
        self.action = self._legal("look", state)

    def update(self, state: Any, last_command: str) -> None:
        """Observe the state that ``last_command`` led to; compute the next command."""
        if self.failed:
            self.action = self._legal("look", state)
            return
        try:
            with expert_random(self.rng):
                action = self._agent.act(state, 0, state["won"], last_command)
        except Exception:  # the expert gives up (timeout, lost track): keep the game going
            self.failed = True
            action = "look"
        self.action = self._legal(action, state)

    def thoughts(self, goal: str) -> str:
        """A short chain of thought from the expert's current subgoal."""
        policy = getattr(self._agent, "policy", None)
        if policy is None or self.failed:
            return f"My task is to {goal}. I will look around first."
        subgoals = policy.subgoals
        idx = min(policy.subgoal_idx, len(subgoals) - 1)
        step = subgoals[idx]
        words = _SUBGOAL_WORDS.get(step["action"], "{param}").format(param=step["param"])
        return f"My task is to {goal}. Step {idx + 1} of {len(subgoals)}: {words}. So I will {self.action}."

    @staticmethod
    def _legal(action: str, state: Any) -> str:
        admissible = state["admissible_commands"]
        if action in admissible:
            return action
        return "look" if "look" in admissible else admissible[0]
