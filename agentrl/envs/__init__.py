"""Environments: :mod:`.base` (EnvModule, the contract the rollout reads: batched reset and step, each
observation's image, text and legal actions), :mod:`.gym_cards` (NumberLine, EZPoints, Points24, Blackjack),
:mod:`.alfworld` (the real TextWorld engine, the offline game generator) and :mod:`.formula` (exact arithmetic).
Importing this registers the gym_cards games with gymnasium.

``gymnasium.make("agentrl/NumberLine-v0")`` (also EZPoints, Points24,
Blackjack) works after ``import agentrl.envs``. Entry points are strings, so
nothing heavy is imported until an env is made.
"""

from __future__ import annotations

import gymnasium

GYM_IDS: dict[str, str] = {
    "numberline": "agentrl/NumberLine-v0",
    "ezpoints": "agentrl/EZPoints-v0",
    "points24": "agentrl/Points24-v0",
    "blackjack": "agentrl/Blackjack-v0",
}

_ENTRY_POINTS = {
    "numberline": "agentrl.envs.gym_cards.numberline:NumberLineEnv",
    "ezpoints": "agentrl.envs.gym_cards.ezpoints:EZPointsEnv",
    "points24": "agentrl.envs.gym_cards.points24:Points24Env",
    "blackjack": "agentrl.envs.gym_cards.blackjack:BlackjackEnv",
}

for _name, _gym_id in GYM_IDS.items():
    if _gym_id not in gymnasium.registry:
        gymnasium.register(id=_gym_id, entry_point=_ENTRY_POINTS[_name])
