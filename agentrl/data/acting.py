"""Choosing the actions of one env step from the policy, for both action heads (``policy.action_head``).

``generate``: one batched generate; the parser maps each answer to a legal action (a failed parse takes a
random legal one and is counted). ``score``: the step's legal actions become candidate answers
(:mod:`agentrl.prompting.candidates`), the policy gives their distribution in one pass
(:meth:`~agentrl.policy.module.PolicyModule.score_candidates`), and the action is drawn from it (arg-max when
greedy): every answer is legal, nothing is parsed. Rollouts (:mod:`agentrl.data.rollout`,
:mod:`agentrl.data.groups`) and evaluation (:mod:`agentrl.data.episodes`) act here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from agentrl.envs.base import EnvObs
from agentrl.prompting.batching import Prompt
from agentrl.prompting.candidates import Candidates, build_candidates


@dataclass
class Decisions:
    """One env step's choices for a batch of envs (row k: ``obs[k]``)."""

    actions: list[str]
    """The legal action each env takes."""
    failed: list[bool]
    """Whether the answer named no legal action (generate head; a random legal action was taken)."""
    ids: list[Tensor]
    """Each answer's tokens (L_k,): generated, or the chosen candidate's."""
    texts: list[str]
    """Each answer as text."""
    weights: list[Tensor]
    """Each answer's per-token weights (L_k,): the lambda-weighted log-prob's (generate head), or ones."""
    logp: list[Tensor] | None = None
    """Each answer's log-prob under the acting pass (when asked for): lambda-weighted, or the candidate's."""
    token_logp: list[Tensor] | None = None
    """Generate head, when asked for: each answer's per-token log-probs (L_k,)."""
    values: Tensor | None = None
    """(B,) V(prompt) of the acting pass, when asked for."""
    candidates: list[Candidates] | None = None
    """Score head: each row's candidates, ``chosen`` set."""


def score_and_choose(policy: Any, template: Any, prompts: list[Prompt], obs: list[EnvObs], *, greedy: bool,
                     rng: np.random.Generator) -> tuple[list[Candidates], list[Tensor], Tensor]:
    """The score head's step: candidates of every observation, their log-probs (K_k,) and values (B,), and each
    row's choice (``Candidates.chosen``): a draw from its distribution (Gumbel-max on ``rng``) or the arg-max."""
    cands = [build_candidates(policy.tokenizer, template, o.legal_actions, eos_id=policy.sampler.eos_id,
                              normalization=policy.normalization, max_tokens=policy.decoder.max_new_tokens)
             for o in obs]
    logp, values = policy.score_candidates(prompts, cands)
    for c, lp in zip(cands, logp):
        scores = lp.double().numpy()
        c.chosen = int(np.argmax(scores if greedy else scores + rng.gumbel(size=len(scores))))
    return cands, logp, values


def decide(policy: Any, template: Any, parser: Any, prompts: list[Prompt], obs: list[EnvObs], *, greedy: bool,
           rng: np.random.Generator, with_logp: bool, act: Any) -> Decisions:
    """The actions for ``obs`` (see the module docstring); ``with_logp``: also the acting pass's log-probs and
    values; ``act(obs, text, ids) -> (action, failed, weights)`` maps a generated answer (the generate head)."""
    if getattr(policy, "action_head", "generate") == "score":  # a user policy without one generates
        cands, logp, values = score_and_choose(policy, template, prompts, obs, greedy=greedy, rng=rng)
        ids = [c.ids[c.chosen] for c in cands]
        return Decisions(
            actions=[c.actions[c.chosen] for c in cands], failed=[False] * len(cands), ids=ids,
            texts=policy.tokenizer.batch_decode(ids, skip_special_tokens=True),
            weights=[torch.ones(len(x)) for x in ids],
            logp=[lp[c.chosen] for lp, c in zip(logp, cands)] if with_logp else None,
            values=values if with_logp else None, candidates=cands,
        )
    gen = policy.generate(prompts, greedy=greedy, score=True) if with_logp else policy.generate(prompts, greedy=greedy)
    actions, failed, weights, logps = [], [], [], []
    ids = gen.ids or [None] * len(gen.texts)  # a user's policy may return texts only
    for i, (o, text) in enumerate(zip(obs, gen.texts)):
        action, bad, w = act(o, text, ids[i])
        actions.append(action)
        failed.append(bad)
        weights.append(w)
        if with_logp:
            logps.append((gen.token_logp[i] * w).sum())
    return Decisions(actions=actions, failed=failed, ids=gen.ids, texts=gen.texts, weights=weights,
                     logp=logps if with_logp else None,
                     token_logp=[t.float().cpu() for t in gen.token_logp] if with_logp else None,
                     values=gen.values if with_logp else None)

