"""The score action head (``policy.action_head=score``): the policy is a softmax over the step's legal actions of
each one's normalised log-likelihood after the prompt (TWOSOME, GLAM), all candidates scored on the prompt's
key/value cache. Checked against a plain teacher-forced forward of every [prompt | answer] alone."""

from pathlib import Path

import pytest
import torch

from agentrl.config import ConfigError, load_config
from agentrl.envs.base import EnvObs
from agentrl.prompting.candidates import build_candidates
from agentrl.training.build import build

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["env.num_envs=4", "rollout.steps_per_update=8", "ppo.minibatch_size=8", "ppo.micro_batch_size=4",
         "rollout.max_new_tokens=24", "trainer.num_threads=1"]
SCORE = ["policy.action_head=score", "prompt.cot=false"]
ACTIONS = [["go to cabinet 1", "open fridge 1", "take apple 1 from countertop 2", "look"],
           ["-", "+"],
           ["go to shelf 3", "inventory", "examine desk 1"],
           ["put mug 2 in/on coffeemachine 1"]]


@pytest.fixture(scope="module")
def scored(tiny_path):
    # the image after the text: the prompts share a prefix (the shared-prefix path is the one checked)
    cfg = load_config(ROOT / "conf/numberline.yaml", [*SMALL, *SCORE, "prompt.image_position=last"])
    policy, data = build(cfg)
    obs = data.envs.reset(0)
    data.envs.close()
    return cfg, policy, data, obs


def candidates_for(cfg, policy, data, actions, normalization="word"):
    return build_candidates(policy.tokenizer, data.template, actions, eos_id=policy.sampler.eos_id,
                            normalization=normalization, max_tokens=cfg.rollout.max_new_tokens)


def teacher_forced(policy, prompt, answer_ids):
    """log p(answer token t | prompt, answer[:t]) (L,) from one plain forward of [prompt | answer], no cache."""
    ids = torch.cat([prompt["input_ids"], answer_ids[None]], dim=1)
    inputs = {**prompt, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    logits = policy.model(**inputs).logits[0].float()
    p = prompt["input_ids"].shape[1]
    logp = torch.log_softmax(logits[p - 1 : p - 1 + len(answer_ids)], dim=-1)
    return logp.gather(-1, answer_ids[:, None]).squeeze(-1)


def test_candidates_are_the_answers_tokens_with_their_normaliser(scored):
    cfg, policy, data, _ = scored
    actions = ACTIONS[0]
    c = candidates_for(cfg, policy, data, actions)
    tok = policy.tokenizer
    for action, ids in zip(actions, c.ids):
        want = tok(data.template.answer({"action": action}), add_special_tokens=False).input_ids
        assert ids.tolist() == want + [policy.sampler.eos_id]
    # the tokens every candidate starts with ('{"action": "') are the same for all: not scored
    first = [ids.tolist() for ids in c.ids]
    common = 0
    while all(len(f) > common + 1 and f[common] == first[0][common] for f in first):
        common += 1
    assert c.start == common and common > 0
    assert c.norms.tolist() == [4.0, 3.0, 6.0, 1.0]  # words of each action (TWOSOME's word normalisation)
    tokens = candidates_for(cfg, policy, data, actions, "token")
    assert tokens.norms.tolist() == [float(len(ids) - common) for ids in c.ids]
    assert candidates_for(cfg, policy, data, actions, "sum").norms.tolist() == [1.0] * 4


def test_only_the_answer_format_is_left_unscored_not_words_the_actions_share(scored):
    """Actions that all begin "go to cabinet" keep those words in their likelihood (TWOSOME scores the whole
    action): what is left out is what every answer of the template begins with, whatever the legal set."""
    cfg, policy, data, _ = scored
    mixed = candidates_for(cfg, policy, data, ACTIONS[0])
    cabinets = candidates_for(cfg, policy, data, ["go to cabinet 1", "go to cabinet 2", "go to cabinet 10"])
    assert cabinets.start == mixed.start
    tok = policy.tokenizer
    assert "go" in tok.decode(cabinets.ids[0][cabinets.start :].tolist())
    assert cabinets.norms.tolist() == [4.0, 4.0, 4.0]


@pytest.mark.parametrize("normalization", ["word", "token", "sum"])
def test_score_logprobs_are_a_softmax_of_teacher_forced_likelihoods(scored, normalization):
    cfg, policy, data, obs = scored
    prompts = data.encode_all(obs)
    cands = [candidates_for(cfg, policy, data, a, normalization) for a in ACTIONS]
    with torch.no_grad():
        logp, values = policy.score_candidates(prompts, cands)
        for prompt, c, got in zip(prompts, cands, logp):
            likelihood = torch.stack([teacher_forced(policy, prompt, ids)[c.start :].sum() for ids in c.ids])
            want = torch.log_softmax(likelihood / c.norms, dim=0)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        assert [len(x) for x in logp] == [4, 2, 3, 1] and float(logp[3][0]) == 0.0  # one legal action: p = 1
        torch.testing.assert_close(values, policy.values(prompts), rtol=0, atol=1e-5)


def test_shared_prefix_scores_equal_unshared_ones(scored):
    cfg, policy, data, obs = scored
    prompts = data.encode_all(obs)
    cands = [candidates_for(cfg, policy, data, a) for a in ACTIONS]
    assert policy.batcher.split_prefix(prompts)[0] is not None  # the prompts do share a prefix
    with torch.no_grad():
        shared, v_shared = policy.score_candidates(prompts, cands)
        alone, v_alone = policy.score_candidates(prompts, cands, share=False)
        one_by_one = [policy.score_candidates([p], [c])[0][0] for p, c in zip(prompts, cands)]
    for a, b, c in zip(shared, alone, one_by_one):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        torch.testing.assert_close(a, c, rtol=0, atol=1e-5)
    torch.testing.assert_close(v_shared, v_alone, rtol=0, atol=1e-5)


def test_training_forward_has_gradients_through_prompt_and_candidates(scored):
    cfg, policy, data, obs = scored
    prompts = data.encode_all(obs)
    cands = [candidates_for(cfg, policy, data, a) for a in ACTIONS]
    for c in cands:
        c.chosen = len(c.ids) - 1
    inputs = policy.collate_train(prompts, [c.ids[c.chosen] for c in cands], [torch.ones(1)] * 4, candidates=cands)
    policy.train()
    logp, values, entropy = policy(inputs, with_entropy=True)
    with torch.no_grad():
        want, _ = policy.score_candidates(prompts, cands)
    torch.testing.assert_close(logp.detach(), torch.stack([w[c.chosen] for w, c in zip(want, cands)]),
                               rtol=0, atol=1e-5)
    p = [w.exp() for w in want]
    torch.testing.assert_close(entropy.detach(), torch.stack([-(q * q.log()).sum() for q in p]), rtol=0, atol=1e-5)
    (logp.sum() + values.sum()).backward()
    grads = [q.grad for n, q in policy.named_parameters() if q.requires_grad and "value_head" not in n]
    assert sum(g is not None and float(g.abs().sum()) > 0 for g in grads) > len(grads) // 2
    policy.zero_grad(set_to_none=True)
    policy.eval()


def test_bad_candidates_are_refused_with_what_to_change(scored):
    cfg, policy, data, _ = scored
    with pytest.raises(ConfigError, match="no legal actions"):
        candidates_for(cfg, policy, data, [])
    long = "take the " + "very " * 40 + "old mug"
    with pytest.raises(ConfigError, match=r"rollout\.max_new_tokens"):
        candidates_for(cfg, policy, data, ["look", long])


def test_score_head_with_chain_of_thought_is_refused_at_config_load():
    with pytest.raises(ConfigError, match="prompt.cot"):
        load_config(ROOT / "conf/numberline.yaml", ["policy.action_head=score", "prompt.cot=true"])
    with pytest.raises(ConfigError, match="policy.action_head"):
        load_config(ROOT / "conf/numberline.yaml", ["policy.action_head=pick"])
    with pytest.raises(ConfigError, match="policy.normalization"):
        load_config(ROOT / "conf/numberline.yaml", [*SCORE, "policy.normalization=chars"])
    with pytest.raises(ConfigError, match="loss_type"):
        load_config(ROOT / "conf/numberline.yaml", [*SCORE, "ppo.loss_type=token"])
    # activation checkpointing drops the prompt's cache in training: the candidates would be scored without it
    with pytest.raises(ConfigError, match="model.gradient_checkpointing"):
        load_config(ROOT / "conf/numberline.yaml", [*SCORE, "model.gradient_checkpointing=true"])


def test_an_env_without_legal_actions_stops_the_score_head_by_name(scored):
    cfg, policy, data, obs = scored
    free = EnvObs(image=obs[0].image, text=obs[0].text, legal_actions=[], env_id="numberline")
    with pytest.raises(ConfigError, match="policy.action_head=generate"):
        data.decide(data.encode_all([free]), [free])
