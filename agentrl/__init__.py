"""agentrl: fine-tune vision-language models as decision-making agents with PPO.

The packages follow the data's path, lowest layer first (a module imports only from its own layer or
a lower one; tests/test_layout.py checks it):

- :mod:`agentrl.config`: the typed schema, YAML loading, the registry of components by name;
  :mod:`agentrl.console`: the commands' console
- :mod:`agentrl.envs`: EnvModule and the games (gym_cards, ALFWorld)
- :mod:`agentrl.prompting`: PromptTemplate, ActionParser, prompt batching
- :mod:`agentrl.algorithms`: PPO math, advantage estimators, the Rollout container
- :mod:`agentrl.policy`: PolicyModule (a LightningModule), decoding, model loading, the tiny models
- :mod:`agentrl.data`: RolloutDataModule (a LightningDataModule), its loader, episode memory, SFT data
- :mod:`agentrl.training`: the learner, checkpoints and resume, signals, distributed, reports
- :mod:`agentrl.commands`: fit, sft, eval, sweep, play; :mod:`agentrl.cli`: the ``agentrl`` command
"""

__version__ = "0.1.0"
