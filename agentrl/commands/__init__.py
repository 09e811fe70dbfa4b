"""One module per verb of the ``agentrl`` command (:mod:`agentrl.cli` parses and dispatches): :mod:`.fit` (PPO),
:mod:`.sft` (the supervised warm start), :mod:`.evaluate` (held-out evaluation of a checkpoint), :mod:`.sweep`
(grids of runs over seeds) and :mod:`.play` (a game by hand); ``export``, ``make-tiny-model`` and
``alfworld-gen`` live beside what they build (:mod:`agentrl.training.checkpoint`,
:mod:`agentrl.policy.tiny.build`, :mod:`agentrl.envs.alfworld.gen`)."""
