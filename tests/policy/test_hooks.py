"""PolicyModule's Lightning hooks on the tiny model: configure_optimizers' param groups and training_step's loss."""

from pathlib import Path

import pytest
import torch
from lightning.fabric import seed_everything

from agentrl.algorithms import ppo
from agentrl.algorithms.advantage import GAE
from agentrl.config import load_config
from agentrl.policy.module import VISION_KEYS
from agentrl.training.build import build

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["env.num_envs=4", "rollout.steps_per_update=8", "ppo.minibatch_size=8", "ppo.micro_batch_size=4",
         "rollout.max_new_tokens=16", "trainer.num_threads=1"]
LORA = ["model.finetune=lora", "model.lora.r=4", "model.lora.alpha=8"]


def names_of(policy, group):
    ids = {id(p) for p in group["params"]}
    return [n for n, p in policy.named_parameters() if id(p) in ids]


@pytest.mark.parametrize("extra", [[], LORA], ids=["full", "lora"])
def test_configure_optimizers_groups_base_vision_and_value_head(tiny_path, extra):
    cfg = load_config(ROOT / "conf/numberline.yaml", [*SMALL, *extra, "ppo.lr=2e-5", "ppo.value_lr=3e-4"])
    policy, data = build(cfg)
    data.envs.close()
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]

    one = policy.configure_optimizers()  # no ppo.vision_lr: the vision path trains at ppo.lr, in place
    assert isinstance(one, torch.optim.Adam)
    assert [g["lr"] for g in one.param_groups] == [2e-5, 3e-4]
    base, head = (names_of(policy, g) for g in one.param_groups)
    assert base == [n for n in trainable if not n.startswith("value_head.")]  # the model's own order
    assert head == [n for n in trainable if n.startswith("value_head.")] and head
    assert any(k in n for n in base for k in VISION_KEYS)

    policy.ppo_config.vision_lr = 1e-6
    three = policy.configure_optimizers()
    assert [g["lr"] for g in three.param_groups] == [2e-5, 1e-6, 3e-4]
    base, vision, head = (names_of(policy, g) for g in three.param_groups)
    assert vision and all(any(k in n for k in VISION_KEYS) for n in vision)
    assert not any(k in n for n in base for k in VISION_KEYS)
    assert sorted(base + vision + head) == sorted(trainable)  # every trainable parameter exactly once
    if extra:
        assert all("lora_" in n for n in base + vision)


def test_configure_optimizers_without_a_critic_has_no_value_group(tiny_path):
    cfg = load_config(ROOT / "conf/numberline.yaml", [*SMALL, "advantage.estimator=grpo", "rollout.group_size=2"])
    policy, data = build(cfg)
    data.envs.close()
    groups = policy.configure_optimizers().param_groups
    assert len(groups) == 1 and not any(n.startswith("value_head.") for n in names_of(policy, groups[0]))


@pytest.mark.parametrize("loss_type", ["sequence", "token"])
def test_training_step_is_the_ppo_loss_of_a_micro_batch(tiny_path, loss_type):
    cfg = load_config(ROOT / "conf/numberline.yaml", [*SMALL, f"ppo.loss_type={loss_type}", "policy.entropy_coef=0.01"])
    seed_everything(0)
    policy, data = build(cfg)
    rollout = data.collect()
    data.envs.close()
    adv, ret = GAE(0.9, 0.95)(rollout)
    rollout.advantages, rollout.returns = ppo.whiten(adv, adv.mean(), adv.var(unbiased=False)), ret
    minibatch = data.loader(rollout).minibatch(torch.arange(8))
    micro = next(minibatch.micro_batches())
    assert micro.inputs.gen_ids.shape[0] == 4 and micro.sample_scale == pytest.approx(1 / 8)
    policy.train()
    terms = policy.training_step(micro)

    # the same loss put together by hand from the policy's forward and the PPO math
    token_logp, values, entropy = policy(micro.inputs, with_entropy=True)
    logp = ppo.weighted_logprob(token_logp, micro.inputs.weights)
    idx = minibatch.indices[:4]
    assert torch.equal(micro.old_logp, rollout.logp[idx]) and torch.equal(micro.advantages, rollout.advantages[idx])
    tokens = None
    if loss_type == "token":
        old = torch.zeros_like(token_logp)
        for row, i in enumerate(idx.tolist()):
            old[row, : len(rollout.token_logp[i])] = rollout.token_logp[i]
        weight = sum(float(rollout.weights[i].sum()) for i in range(8))
        tokens = (token_logp, old, micro.inputs.weights, 1 / weight)
        assert micro.token_scale == pytest.approx(1 / weight)
    want = ppo.ppo_losses(logp, rollout.logp[idx], rollout.advantages[idx], values, rollout.values[idx],
                          rollout.returns[idx], entropy, clip=cfg.ppo.clip, value_clip=cfg.ppo.value_clip,
                          vf_coef=cfg.ppo.vf_coef, entropy_coef=0.01, scale=1 / 8, tokens=tokens)
    for name in ("total", "policy", "value", "entropy", "approx_kl", "clipfrac"):
        torch.testing.assert_close(getattr(terms, name), getattr(want, name), rtol=1e-5, atol=1e-7, msg=name)
    assert float(terms.value) > 0 and float(terms.entropy) > 0
    # sampling is scoring: before any step every ratio is 1 up to float round-off
    torch.testing.assert_close(terms.ratio, torch.ones(4), rtol=0, atol=1e-4)
    terms.total.backward()
    grads = [p.grad for p in policy.parameters() if p.requires_grad]
    assert sum(g is not None and float(g.abs().sum()) > 0 for g in grads) > len(grads) // 2
