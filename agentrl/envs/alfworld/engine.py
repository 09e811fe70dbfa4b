"""The real ALFWorld text engine (TextWorld PDDL + alfworld's wrappers), one game at a time."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from agentrl.envs.alfworld.expert import ExpertTracker, apply_expert_fix
from agentrl.envs.alfworld.search import SearchExpert

# The expert gives up (raises inside the env) after this many steps.
EXPERT_MAX_STEPS = 200
WALKTHROUGH_MAX_STEPS = 150
"""The generator keeps only games both experts win within this many steps (the planner's longest took 138 in the
default set, the searching expert's 31)."""
EXPERTS = {"planner": ExpertTracker, "search": SearchExpert}
"""``env.options.expert``: alfworld's handcoded planner (it reads the engine's facts) or the searching expert."""


@cache
def domain_and_grammar() -> tuple[str, str]:
    """The PDDL domain and the text grammar shipped in the alfworld package."""
    import alfworld.info as info

    return Path(info.ALFRED_PDDL_PATH).read_text(), Path(info.ALFRED_TWL2_PATH).read_text()


def start_engine(gamefile: str) -> Any:
    """A TextWorld PDDL env on ``gamefile``, with alfworld's name demangler and infos."""
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

    infos = textworld.EnvInfos(won=True, admissible_commands=True, facts=True, feedback=True, extras=["gamefile"])
    return textworld.start(gamefile, infos, wrappers=[AlfredDemangler(shuffle=False), AlfredInfos])


def read_traj(gamefile: str | Path) -> dict[str, Any]:
    """The ``traj_data.json`` next to a game file."""
    return json.loads((Path(gamefile).parent / "traj_data.json").read_text())


def visible(state: dict[str, Any]) -> dict[str, Any]:
    """What the agent sees of an engine state: the feedback and the admissible commands (no facts)."""
    return {"feedback": state["feedback"], "admissible_commands": list(state["admissible_commands"])}


def expert_walkthrough(gamefile: str, seed: int, max_steps: int = WALKTHROUGH_MAX_STEPS,
                       expert: str = "planner") -> list[str] | None:
    """Play ``expert`` (a key of EXPERTS) on ``gamefile``; its commands if it wins within ``max_steps``, else None.

    The searching expert sees only :func:`visible` states.
    Runs fast-downward in this process: call it in a child process for untrusted
    problems (a bad problem can exit the whole process).
    """
    apply_expert_fix()
    try:
        env = start_engine(gamefile)
        state = env.reset()
        player = EXPERTS[expert](EXPERT_MAX_STEPS)
        shown = visible if expert == "search" else (lambda full: full)
        player.reset(gamefile, shown(state), seed)
        commands: list[str] = []
        while not state["won"] and len(commands) < max_steps and not player.failed:
            command = player.action
            state, _, _ = env.step(command)
            commands.append(command)
            player.update(shown(state), command)
        env.close()
    except (Exception, SystemExit):  # fast-downward raises SystemExit on a bad problem: not kept
        return None
    return commands if state["won"] else None


def checked_walkthrough(gamefile: str, seed: int) -> list[str] | None:
    """The planner's winning commands if both experts win ``gamefile`` within WALKTHROUGH_MAX_STEPS, else None."""
    planner = expert_walkthrough(gamefile, seed)
    if planner is None or expert_walkthrough(gamefile, seed, expert="search") is None:
        return None
    return planner
