"""The data a run learns from: :mod:`.rollout` (RolloutDataModule, a LightningDataModule that collects a fresh
on-policy rollout every update), :mod:`.loader` (its minibatches and micro-batches), :mod:`.groups` (grouped
rollouts for the critic-free estimators), :mod:`.memory` (episode memory in the prompt), :mod:`.episodes`
(whole episodes for evaluation) and :mod:`.sft` (expert and JSONL examples for the supervised warm start)."""
