"""The learning math, pure and tested against hand-computed values: :mod:`.ppo` (GAE, clipped policy and value
losses, the lambda-weighted log-prob, approximate KL), :mod:`.advantage` (the estimators chosen by
``advantage.estimator``: GAE, GRPO, RLOO, GiGPO), :mod:`.batches` (the Rollout and MicroBatch they read) and
:mod:`.collectives` (sums and gathers over ranks)."""
