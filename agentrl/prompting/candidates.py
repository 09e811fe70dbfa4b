"""The score action head's inputs (``policy.action_head=score``): a step's legal actions as candidate answers.

Each legal action ``a`` becomes the answer the template would write for it (``template.answer({"action": a})``:
``{"action": "go to cabinet 1"}``) plus EOS, tokenized as SFT tokenizes answers. The tokens all candidates of
answer begins with (the format's ``{"action": "``) say nothing about which action is meant and are not scored;
the rest is, the action's words and the closing ``"}`` and EOS.
A candidate's score is its scored tokens' log-likelihood divided by its normaliser (``policy.normalization``):

- ``word`` (default): the action's words, as TWOSOME's released scripts (``--normalization-mode word``);
- ``token``: its scored tokens;
- ``sum``: 1 (a plain sum, which favours actions of few tokens: each token's log-prob is negative).

The policy is the softmax of the scores over the step's candidates (:mod:`agentrl.policy.scoring`).
:func:`collate_candidates` lays out one batch: the prompts left-padded as for generation, then every
candidate of every prompt as a row that continues its prompt's key/value cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from agentrl.config import ConfigError
from agentrl.prompting.batching import Prompt, PromptBatcher

NORMALIZATIONS = ("word", "token", "sum")


@dataclass
class Candidates:
    """One step's legal actions as answers to score."""

    actions: list[str]
    """The legal actions, in the env's order."""
    ids: list[Tensor]
    """Per action, its answer's token ids (L_k,), EOS included."""
    start: int
    """Tokens of the answer format every answer begins with (``{"action": "``): not scored. Words the legal
    actions happen to share ("go to ...") are scored: an action's probability does not depend on the others'
    wording beyond the softmax."""
    norms: Tensor
    """(K,) float32: what each candidate's log-likelihood is divided by."""
    chosen: int = -1
    """The index of the action taken (set when acting)."""


def build_candidates(tokenizer: Any, template: Any, actions: list[str], *, eos_id: int, normalization: str,
                     max_tokens: int) -> Candidates:
    """The :class:`Candidates` of ``actions`` (see the module docstring); ``max_tokens``: ``rollout.max_new_tokens``,
    the longest answer the policy may write, which no candidate may exceed."""
    if not actions:
        raise ConfigError("policy.action_head=score needs the legal actions of every step, and the env gave no legal "
                          "actions here; use policy.action_head=generate for an env without a legal list")
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"policy.normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    answers = [template.answer({"action": a}) for a in actions]
    ids = [tokenizer(text, add_special_tokens=False).input_ids + [eos_id] for text in answers]
    longest = max(range(len(ids)), key=lambda k: len(ids[k]))
    if len(ids[longest]) > max_tokens:
        raise ConfigError(f"the legal action {actions[longest]!r} is {len(ids[longest])} tokens as an answer, more "
                          f"than rollout.max_new_tokens={max_tokens}; raise rollout.max_new_tokens to at least "
                          f"{len(ids[longest])}")
    # the answer format's own tokens ('{"action": "'): common to two answers that differ from their first letter
    probe = [tokenizer(template.answer({"action": a}), add_special_tokens=False).input_ids for a in ("a", "z", "0")]
    start = 0
    while all(len(x) > start + 1 and x[start] == ids[0][start] for x in ids + probe):
        start += 1
    if normalization == "word":
        norms = [max(len(a.split()), 1) for a in actions]
    elif normalization == "token":
        norms = [len(x) - start for x in ids]
    else:
        norms = [1] * len(ids)
    return Candidates(list(actions), [torch.tensor(x, dtype=torch.long) for x in ids], start,
                      torch.tensor(norms, dtype=torch.float32))


@dataclass
class CandidateInputs:
    """A batch of prompts and all their candidates, for one scoring forward (:mod:`agentrl.policy.scoring`)."""

    model_inputs: dict[str, Tensor]
    """The prompts' processor tensors, left-padded (B, P) (after the shared prefix, if any)."""
    prefix: Prompt | None
    """Token tensors (1, S) of the prompt prefix all rows share, run once; None: none shared."""
    ids: Tensor
    """(R, L) every candidate of every prompt, right-padded; R = sum of the candidate counts."""
    mask: Tensor
    """(R, L) 1 on a candidate's tokens, 0 on padding."""
    scored: Tensor
    """(R, L) float32: 1 on the tokens whose log-probs make the candidate's likelihood."""
    norms: Tensor
    """(R,) each candidate's normaliser."""
    row_of: Tensor
    """(R,) int64: the prompt (0..B-1) of each candidate row."""
    counts: list[int]
    """Candidates per prompt."""
    chosen: Tensor
    """(B,) int64: the row (0..R-1) of each prompt's chosen candidate (its first when none was chosen)."""


def collate_candidates(batcher: PromptBatcher, prompts: list[Prompt], candidates: list[Candidates],
                       share: bool | None = None) -> CandidateInputs:
    """Prompts (with their shared prefix split off, :meth:`PromptBatcher.split_prefix`) and their candidates."""
    if len(prompts) != len(candidates):
        raise ValueError(f"{len(prompts)} prompts but {len(candidates)} candidate sets")
    prefix, rest = batcher.split_prefix(prompts, share)
    counts = [len(c.ids) for c in candidates]
    rows = [ids for c in candidates for ids in c.ids]
    width = max(len(x) for x in rows)
    ids = torch.full((len(rows), width), batcher.pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    scored = torch.zeros(len(rows), width)
    r = 0
    for c in candidates:
        for x in c.ids:
            ids[r, : len(x)], mask[r, : len(x)], scored[r, c.start : len(x)] = x, 1, 1.0
            r += 1
    first = torch.tensor([0, *counts[:-1]]).cumsum(0)
    chosen = first + torch.tensor([max(c.chosen, 0) for c in candidates])
    return CandidateInputs(
        model_inputs=batcher.collate(rest), prefix=prefix, ids=ids, mask=mask, scored=scored,
        norms=torch.cat([c.norms for c in candidates]), row_of=torch.repeat_interleave(torch.tensor(counts)),
        counts=counts, chosen=chosen,
    )
