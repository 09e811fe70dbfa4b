"""PPO math against values computed by hand (worked out in the comments)."""

import math

import pytest
import torch

from agentrl.algorithms import ppo


def col(*xs):
    return torch.tensor(xs, dtype=torch.float64)[:, None]  # (T, N=1)


def test_gae_no_episode_end():
    # gamma = lam = 0.5, so gamma * lam = 0.25
    # deltas: 1 + .5*1 - .5 = 1.0 ; 0 + .5*1.5 - 1 = -.25 ; 2 + .5*2 - 1.5 = 1.5
    # adv2 = 1.5 ; adv1 = -.25 + .25*1.5 = .125 ; adv0 = 1 + .25*.125 = 1.03125
    r, v = col(1, 0, 2), col(0.5, 1.0, 1.5)
    nxt = ppo.next_values_for(v, torch.tensor([2.0], dtype=torch.float64), torch.zeros_like(v), torch.zeros_like(v))
    zeros = torch.zeros_like(v)
    adv, ret = ppo.gae(r, v, nxt, zeros, zeros, gamma=0.5, lam=0.5)
    assert adv[:, 0].tolist() == pytest.approx([1.03125, 0.125, 1.5])
    assert ret[:, 0].tolist() == pytest.approx([1.53125, 1.125, 3.0])


def test_gae_terminal_does_not_bootstrap_or_leak():
    # terminated at t1: delta1 = 0 - 1 = -1 ; adv1 = -1 (adv2 does not flow back) ; adv0 = 1 + .25*-1 = .75
    r, v = col(1, 0, 2), col(0.5, 1.0, 1.5)
    term = col(0, 1, 0)
    nxt = ppo.next_values_for(v, torch.tensor([2.0], dtype=torch.float64), torch.zeros_like(v), torch.zeros_like(v))
    adv, _ = ppo.gae(r, v, nxt, term, term, gamma=0.5, lam=0.5)
    assert adv[:, 0].tolist() == pytest.approx([0.75, -1.0, 1.5])


def test_gae_truncation_bootstraps_from_final_observation():
    # truncated at t1 with V(final obs) = 4: delta1 = 0 + .5*4 - 1 = 1 ; adv1 = 1 ; adv0 = 1 + .25*1 = 1.25
    r, v = col(1, 0, 2), col(0.5, 1.0, 1.5)
    trunc = col(0, 1, 0)
    final = col(0, 4.0, 0)
    nxt = ppo.next_values_for(v, torch.tensor([2.0], dtype=torch.float64), final, trunc)
    assert nxt[:, 0].tolist() == [1.0, 4.0, 2.0]
    adv, _ = ppo.gae(r, v, nxt, torch.zeros_like(v), trunc, gamma=0.5, lam=0.5)
    assert adv[:, 0].tolist() == pytest.approx([1.25, 1.0, 1.5])


def test_gae_envs_are_independent():
    r = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.zeros(2, 2)
    nxt = torch.zeros(2, 2)
    adv, _ = ppo.gae(r, v, nxt, torch.zeros(2, 2), torch.zeros(2, 2), gamma=1.0, lam=1.0)
    assert adv.tolist() == [[1.0, 1.0], [0.0, 1.0]]


def test_policy_loss_clips_only_in_the_direction_that_helps():
    logp = torch.tensor([0.0, math.log(2.0), math.log(2.0)])
    old = torch.zeros(3)
    adv = torch.tensor([1.0, 1.0, -1.0])
    # ratios 1, 2, 2: A>0 clipped at 1.1 -> -1.1 ; A<0 keeps the pessimistic -2 * -1 = 2
    assert ppo.policy_loss(logp, old, adv, clip=0.1).tolist() == pytest.approx([-1.0, -1.1, 2.0])


def test_value_loss_clipped_and_unclipped():
    v, old, ret = torch.tensor([1.5]), torch.tensor([1.0]), torch.tensor([2.0])
    # unclipped .5*(1.5-2)^2 = .125 ; clipped V = 1.2 -> .5*.64 = .32 ; max = .32
    assert ppo.value_loss(v, old, ret, clip=0.2).item() == pytest.approx(0.32)
    assert ppo.value_loss(v, old, ret, clip=None).item() == pytest.approx(0.125)


def test_approx_kl_clipfrac_and_explained_variance():
    logp, old = torch.tensor([math.log(2.0), 0.0]), torch.zeros(2)
    assert ppo.approx_kl(logp, old).tolist() == pytest.approx([1 - math.log(2.0), 0.0])
    assert ppo.clip_fraction(logp, old, 0.1).tolist() == [1.0, 0.0]
    ret = torch.tensor([1.0, 2.0, 3.0])
    assert ppo.explained_variance(ret, ret) == pytest.approx(1.0)
    assert ppo.explained_variance(torch.full((3,), 2.0), ret) == pytest.approx(0.0)
    assert math.isnan(ppo.explained_variance(ret, torch.ones(3)))


def test_whiten():
    x = torch.tensor([1.0, 2.0, 3.0])
    out = ppo.whiten(x, x.mean(), x.var(unbiased=False), eps=0.0)
    assert out.tolist() == pytest.approx([-math.sqrt(1.5), 0.0, math.sqrt(1.5)])


def test_token_weights_and_weighted_logprob():
    assert ppo.token_weights(5, 2, 0.5, cot=True) == [0.5, 0.5, 1.0, 1.0, 1.0]
    assert ppo.token_weights(3, None, 0.2, cot=True) == [0.2, 0.2, 0.2]
    assert ppo.token_weights(3, 1, 0.2, cot=False) == [1.0, 1.0, 1.0]
    # lambda * (log .5 + log .25) + log .5 with a zero-weight pad token at the end
    tlp = torch.log(torch.tensor([[0.5, 0.25, 0.5, 0.9]]))
    w = torch.tensor([[0.5, 0.5, 1.0, 0.0]])
    expected = 0.5 * (math.log(0.5) + math.log(0.25)) + math.log(0.5)
    assert ppo.weighted_logprob(tlp, w).item() == pytest.approx(expected)


def test_ppo_losses_accumulate_like_one_batch():
    g = torch.Generator().manual_seed(0)
    n = 8
    logp, old, adv, v, ov, ret, ent = (torch.randn(n, generator=g) for _ in range(7))
    kw = dict(clip=0.2, value_clip=0.2, vf_coef=0.5, entropy_coef=0.01)
    full = ppo.ppo_losses(logp, old, adv, v, ov, ret, ent, scale=1 / n, **kw)
    parts = [ppo.ppo_losses(*(t[i : i + 2] for t in (logp, old, adv, v, ov, ret, ent)), scale=1 / n, **kw)
             for i in range(0, n, 2)]
    assert sum(p.total for p in parts).item() == pytest.approx(full.total.item())
    assert sum(p.approx_kl for p in parts).item() == pytest.approx(full.approx_kl.item())
