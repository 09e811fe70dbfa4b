"""ALFWorld on its real text engine, with an offline game generator and the fixed expert.

Needs the optional extra: ``pip install 'agentrl[alfworld]'`` (alfworld 0.4.2, textworld[pddl]).
"""

from agentrl.envs.alfworld.expert import apply_expert_fix
from agentrl.envs.alfworld.gen import ensure_default_games, generate, main
from agentrl.envs.alfworld.module import AlfworldModule

__all__ = ["AlfworldModule", "apply_expert_fix", "ensure_default_games", "generate", "main"]
