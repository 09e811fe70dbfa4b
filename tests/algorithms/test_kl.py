"""The optional KL penalty: the reference policy is the same model with its LoRA adapters disabled."""

import pytest
import torch
from lightning.fabric import seed_everything

from agentrl.config import ConfigError, load_config
from agentrl.training.build import build

LORA = ["model.finetune=lora", "model.lora.r=4", "model.lora.alpha=8", "env.num_envs=2",
        "rollout.steps_per_update=4", "ppo.minibatch_size=4", "ppo.micro_batch_size=2", "rollout.max_new_tokens=8"]


def test_reference_scores_equal_policy_at_init_and_differ_after_adapters_move(tiny_path):
    seed_everything(0)
    policy, data = build(load_config("conf/numberline.yaml", LORA))
    obs = data.envs.reset(0)
    prompts = [data.encode(o) for o in obs]
    gen = policy.generate(prompts)
    spans = [data.parser.parse(t, o.legal_actions).action_span for t, o in zip(gen.texts, obs)]
    weights = [policy.token_weights(g, s[0] if s else None, True) for g, s in zip(gen.ids, spans)]
    logp, _ = data.score(prompts, gen.ids, weights)
    ref, _ = data.score(prompts, gen.ids, weights, reference=True)
    torch.testing.assert_close(logp, ref)  # LoRA B starts at zero: policy == reference
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    moved, _ = data.score(prompts, gen.ids, weights)
    ref_after, _ = data.score(prompts, gen.ids, weights, reference=True)
    torch.testing.assert_close(ref_after, ref)  # the reference ignores the adapters
    assert (moved - ref_after).abs().max() > 1e-3  # the policy does not
    data.envs.close()


def test_kl_penalty_is_subtracted_from_rewards(tiny_path):
    seed_everything(0)
    policy, data = build(load_config("conf/numberline.yaml", [*LORA, "policy.kl_coef=0.5"]))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    torch.manual_seed(0)
    rollout = data.collect()
    ref, _ = data.score(rollout.prompts, rollout.gen_ids, rollout.weights, reference=True)
    data.kl_coef = 0.0
    data._obs, data._prompts = None, None  # replay the same episode start without the penalty
    data.rng = type(data.rng)(type(data.rng.bit_generator)(0))
    torch.manual_seed(0)
    plain = data.collect()
    assert all(torch.equal(a, b) for a, b in zip(plain.gen_ids, rollout.gen_ids))  # same samples
    expected = plain.rewards - 0.5 * (plain.logp - ref).view_as(plain.rewards)
    torch.testing.assert_close(rollout.rewards, expected, rtol=1e-4, atol=1e-4)
    data.envs.close()


def test_kl_needs_lora():
    with pytest.raises(ConfigError, match="policy.kl_coef"):
        build(load_config("conf/numberline.yaml", ["policy.kl_coef=0.1"]))
