"""RolloutDataModule as a LightningDataModule: train_dataloader() collects a fresh on-policy rollout and yields
its shuffled minibatches, one PPO epoch per pass, each cut into micro-batches."""

from pathlib import Path

import lightning as L
import pytest
import torch

from agentrl.algorithms.advantage import GAE
from agentrl.config import load_config
from agentrl.data.loader import RolloutLoader
from agentrl.training.build import build

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["env.num_envs=4", "rollout.steps_per_update=16", "ppo.minibatch_size=8", "ppo.micro_batch_size=4",
         "rollout.max_new_tokens=16", "trainer.num_threads=1"]


def test_train_dataloader_collects_a_fresh_rollout_and_yields_its_minibatches(tiny_path):
    cfg = load_config(ROOT / "conf/numberline.yaml", SMALL)
    policy, data = build(cfg)
    assert isinstance(data, L.LightningDataModule)
    loader = data.train_dataloader()
    assert isinstance(loader, RolloutLoader) and loader.rollout.size == 16
    rollout = loader.rollout
    rollout.advantages, rollout.returns = GAE(0.9, 0.95)(rollout)
    assert len(loader) == 2

    epochs = []
    for _ in range(2):  # one pass is one epoch: every sample once, in minibatches of 8
        order = []
        for mb in loader:
            assert len(mb) == 8 and mb.num_micro == 2
            lengths = rollout.lengths[mb.indices]
            assert torch.equal(lengths, lengths.sort(stable=True).values)  # sorted: micro-batches pad less
            micros = list(mb.micro_batches())
            assert [m.inputs.gen_ids.shape[0] for m in micros] == [4, 4]
            assert all(m.sample_scale == pytest.approx(1 / 8) and not m.stand_in for m in micros)
            seen = torch.cat([m.old_logp for m in micros])
            assert torch.equal(seen, rollout.logp[mb.indices])
            order += mb.indices.tolist()
        assert sorted(order) == list(range(16))
        epochs.append(order)
    assert epochs[0] != epochs[1]  # a new shuffle each epoch

    again = data.train_dataloader()  # the next epoch's data is collected anew, from where the envs are
    assert again.rollout is not rollout and again.rollout.size == 16
    assert again.rollout.advantages is None  # the estimator fills them, as fit does
    with pytest.raises(RuntimeError, match=r"rollout's advantages and returns are not filled: .*advantage estimator"):
        next(iter(again))  # named, not a TypeError from deep inside the collation
    assert any(not torch.equal(a["pixel_values"], b["pixel_values"])  # the envs moved on: other images
               for a, b in zip(rollout.prompts, again.rollout.prompts))
    data.teardown("fit")


def test_a_minibatch_in_micro_batches_of_any_size_with_stand_ins_after(tiny_path):
    cfg = load_config(ROOT / "conf/numberline.yaml", SMALL)
    policy, data = build(cfg)
    rollout = data.collect()
    data.envs.close()
    rollout.advantages, rollout.returns = GAE(0.9, 0.95)(rollout)
    mb = data.loader(rollout, micro_batch_size=3).minibatch(torch.arange(8))
    assert [m.inputs.gen_ids.shape[0] for m in mb.micro_batches()] == [3, 3, 2]
    micros = list(mb.micro_batches(at_least=5))  # FSDP: as many forwards as the rank with the most
    assert [m.stand_in for m in micros] == [False, False, False, True, True]
    assert all(m.inputs.gen_ids.shape[0] == 1 for m in micros[3:])
