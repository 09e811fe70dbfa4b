"""The score action head's forward: every legal action's log-probability under the policy, in one pass.

Per batch (the envs of one step when acting, a micro-batch when training; the same function both times, so
sampling is scoring): the prompts run ONCE (continuing from their shared prefix's cache, if any), giving
each prompt's value (its last token's hidden state, as in the generate head) and its key/value cache. The
cache is then repeated for every candidate of its prompt, and all candidates of all prompts run as one
batch on it. A candidate's likelihood is the sum of its scored tokens' log-probs at temperature 1 (the
model's own likelihood; ``rollout.temperature`` shapes generated text only), divided by its normaliser
(:mod:`agentrl.prompting.candidates`); the policy is the softmax of those scores over each prompt's
candidates. Gradients reach the prompt pass through the repeated cache.

Works for the families whose own decode loop is verified (explicit per-row positions; see
:data:`~agentrl.prompting.batching.VERIFIED_FAMILIES`), without activation checkpointing (it drops the
cache; refused at config load). Memory: the prompt's cache is copied once per candidate, so a batch holds
(candidates x prompt length) cached tokens per layer; with a 7B model and long ALFWorld prompts keep
``env.num_envs`` and ``ppo.micro_batch_size`` small (no slicing of the candidate rows yet).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import DynamicCache

from agentrl.policy.decoding import last_hidden_state, token_logprobs
from agentrl.prompting.candidates import CandidateInputs

HEAD_ROWS = 1024
"""Scored token positions whose (rows, vocab) float32 logits are made at once. Without gradients (acting) only
one chunk exists at a time; in training each chunk's logits stay for the backward (every scored token's)."""


def candidate_logprobs(model: Any, batcher: Any, head: Any, value_head: Any, inputs: CandidateInputs,
                       device: torch.device) -> tuple[Tensor, Tensor]:
    """(R,) log pi(candidate | its prompt) of every candidate row, and (B,) the prompts' values."""
    kw = batcher.model_kwargs(inputs.model_inputs, inputs.prefix, device)
    cache = kw.pop("cache", None)
    if cache is None:
        cache = DynamicCache(config=model.config)
    with last_hidden_state(model) as hidden:
        model(**kw, cache=cache, use_cache=True, logits_to_keep=1)
    last = hidden[-1][:, -1]  # every row is left-padded: its last prompt token
    values = value_head(last)

    row_of = inputs.row_of.to(device)
    cache.batch_select_indices(row_of)  # each prompt's cache once per candidate (an index: gradients add up)
    ids, mask = inputs.ids.to(device), inputs.mask.to(device)
    prompt_mask = kw["attention_mask"][row_of]
    pos = kw["position_ids"].amax(-1)  # (B,), or (3, B) for Qwen's 3-D positions: text goes on from the largest
    pos = pos.amax(0) if pos.ndim == 2 else pos
    positions = pos[row_of, None] + 1 + torch.arange(ids.shape[1], device=device)
    with last_hidden_state(model) as hidden:
        model(input_ids=ids, attention_mask=torch.cat([prompt_mask, mask.to(prompt_mask.dtype)], dim=1),
              position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
    # token t of a candidate is predicted by the state before it: the prompt's last for t = 0
    states = torch.cat([last[row_of, None], hidden[-1][:, :-1]], dim=1)
    scored = inputs.scored.to(device) > 0
    where = scored.nonzero(as_tuple=True)
    picked, targets = states[where], ids[where]
    logps = [token_logprobs(head(picked[lo : lo + HEAD_ROWS]), targets[lo : lo + HEAD_ROWS], 1.0)
             for lo in range(0, len(targets), HEAD_ROWS)]
    token_logp = torch.zeros(ids.shape, dtype=torch.float32, device=device)
    token_logp = token_logp.index_put(where, torch.cat(logps))
    scores = token_logp.sum(-1) / inputs.norms.to(device)
    logp = torch.cat([torch.log_softmax(group, dim=0) for group in scores.split(inputs.counts)])
    return logp, values


def choice_terms(logp: Tensor, inputs: CandidateInputs) -> tuple[Tensor, Tensor]:
    """(B,) the chosen candidates' log-probs and (B,) each prompt's entropy over its candidates."""
    chosen = logp[inputs.chosen.to(logp.device)]
    entropy = torch.stack([-(g.exp() * g).sum() for g in logp.split(inputs.counts)])
    return chosen, entropy
