"""PPO math as pure functions. Shapes in docstrings: T steps, N envs, B samples, L tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    episode_end: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimates and returns, all shapes (T, N).

    ``next_values[t]`` is the value of the observation that follows step t in
    the same episode: V(o_{t+1}) inside an episode, V(final obs) when step t was
    truncated, V(o_T) for the last collected step. ``terminated`` zeroes that
    bootstrap (the episode really ended); ``episode_end`` (terminated or
    truncated) stops the recursion from flowing into the next episode.
    """
    not_term = 1.0 - terminated.float()
    not_end = 1.0 - episode_end.float()
    deltas = rewards + gamma * next_values * not_term - values
    adv = torch.zeros_like(values)
    running = torch.zeros_like(values[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = deltas[t] + gamma * lam * not_end[t] * running
        adv[t] = running
    return adv, adv + values


def next_values_for(values: Tensor, last_values: Tensor, final_values: Tensor, truncated: Tensor) -> Tensor:
    """Build ``next_values`` for :func:`gae`, shapes (T, N) except ``last_values`` (N,).

    V(o_{t+1}) by default, V(o_T) = ``last_values`` for the last step, and the value
    of the episode's final observation where step t was truncated (after an
    auto-reset, o_{t+1} is the next episode's first observation, not this one's).
    """
    nxt = torch.cat([values[1:], last_values[None]], dim=0)
    return torch.where(truncated.bool(), final_values, nxt)


def whiten(x: Tensor, mean: Tensor | float, var: Tensor | float, eps: float = 1e-8) -> Tensor:
    """(x - mean) / sqrt(var + eps). Mean and var are passed in so they can be global across ranks."""
    return (x - mean) / torch.sqrt(torch.as_tensor(var, dtype=x.dtype) + eps)


def weighted_logprob(token_logp: Tensor, token_weights: Tensor) -> Tensor:
    """Sequence log-prob (B,) = sum_t w_t * log p_t over (B, L) tokens.

    The weights are ``thought_coef`` on chain-of-thought tokens, 1 on action
    tokens and 0 on padding (see :func:`token_weights`).
    """
    return (token_logp * token_weights).sum(dim=-1)


def token_weights(num_tokens: int, action_start: int | None, thought_coef: float, cot: bool) -> list[float]:
    """Per-token weights for one generated sequence of ``num_tokens`` tokens.

    ``action_start`` is the index of the first token of the ``"action":`` key
    (None when the text has no action key). Without CoT every token is action.
    With CoT and no action key, every token counts as thought: the text chose
    no action (a random one was taken).
    """
    if not cot:
        return [1.0] * num_tokens
    start = num_tokens if action_start is None else min(max(action_start, 0), num_tokens)
    return [thought_coef] * start + [1.0] * (num_tokens - start)


def policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, clip: float) -> Tensor:
    """Clipped surrogate loss, per sample (B,); average it (weighted) yourself.

    -min(r * A, clip(r, 1 - eps, 1 + eps) * A) with r = exp(logp - old_logp).
    """
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages
    return -torch.min(unclipped, clipped)


def token_policy_loss(token_logp: Tensor, old_token_logp: Tensor, advantages: Tensor, weights: Tensor,
                      clip: float) -> Tensor:
    """Clipped surrogate per token, times the token's weight, summed per sample (B,); shapes (B, L) and (B,).

    ``ppo.loss_type=token``: each answer token has its own ratio r_t = exp(logp_t - old_logp_t) and the
    sample's advantage; the lambda weight w_t (thought_coef on CoT tokens, 0 on padding) scales its term.
    Divide the sum by the minibatch's total weight for the per-token mean.
    """
    ratio = torch.exp(token_logp - old_token_logp)
    adv = advantages[:, None]
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * adv)
    return (per_token * weights).sum(dim=-1)


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip: float | None) -> Tensor:
    """Per-sample (B,) value loss 0.5 * (V - R)^2, or its pessimistic clipped form.

    Clipped: 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2).
    """
    loss = (values - returns) ** 2
    if clip is not None:
        v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        loss = torch.max(loss, (v_clipped - returns) ** 2)
    return 0.5 * loss


def approx_kl(logp: Tensor, old_logp: Tensor) -> Tensor:
    """Per-sample (B,) KL(old || new) estimate (r - 1) - log r, unbiased and >= 0 (Schulman's k3)."""
    log_ratio = logp - old_logp
    return torch.expm1(log_ratio) - log_ratio


def clip_fraction(logp: Tensor, old_logp: Tensor, clip: float) -> Tensor:
    """Per-sample (B,) 1.0 where the ratio left [1 - clip, 1 + clip], else 0.0."""
    return (torch.abs(torch.exp(logp - old_logp) - 1.0) > clip).float()


def explained_variance(values: Tensor, returns: Tensor) -> float:
    """1 - Var(R - V) / Var(R); 1 is perfect, 0 is no better than a constant, nan if Var(R) = 0."""
    var_r = torch.var(returns, unbiased=False)
    if var_r == 0:
        return float("nan")
    return float(1.0 - torch.var(returns - values, unbiased=False) / var_r)


@dataclass
class LossTerms:
    """One micro-batch's losses, each already a weighted mean over the minibatch."""

    total: Tensor
    policy: Tensor
    value: Tensor
    entropy: Tensor
    approx_kl: Tensor
    clipfrac: Tensor
    ratio: Tensor
    """(B,) each sample's ratio exp(logp - old_logp), detached (1 before the first optimizer step)."""


def ppo_losses(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    entropy: Tensor,
    *,
    clip: float,
    value_clip: float | None,
    vf_coef: float,
    entropy_coef: float,
    scale: float,
    tokens: tuple[Tensor, Tensor, Tensor, float] | None = None,
) -> LossTerms:
    """Sum of per-sample terms (B,) times ``scale`` (= 1 / minibatch size).

    Summing instead of averaging per micro-batch makes gradient accumulation over
    micro-batches exactly equal to one pass over the whole minibatch. ``tokens`` =
    (token_logp, old_token_logp, weights (B, L), token_scale = 1 / the minibatch's total
    weight): the policy term is :func:`token_policy_loss` instead (``ppo.loss_type=token``).
    """
    if tokens is None:
        pl = policy_loss(logp, old_logp, advantages, clip).sum() * scale
    else:
        token_logp, old_token_logp, weights, token_scale = tokens
        pl = token_policy_loss(token_logp, old_token_logp, advantages, weights, clip).sum() * token_scale
    vl = value_loss(values, old_values, returns, value_clip).sum() * scale
    ent = entropy.sum() * scale
    total = pl + vf_coef * vl - entropy_coef * ent
    with torch.no_grad():
        kl = approx_kl(logp, old_logp).sum() * scale
        cf = clip_fraction(logp, old_logp, clip).sum() * scale
        ratio = torch.exp(logp - old_logp)
    return LossTerms(total, pl.detach(), vl.detach(), ent.detach(), kl, cf, ratio)
