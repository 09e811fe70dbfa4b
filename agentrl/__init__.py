"""agentrl: fine-tune vision-language models as decision-making agents with PPO."""

__version__ = "0.1.0"
