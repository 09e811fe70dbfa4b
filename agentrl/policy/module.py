"""PolicyModule: the VLM (actor) plus a value head (critic), as a LightningModule.

It holds the two networks and what PPO needs of them: the teacher-forced
forward that gives per-token log-probs and values for training, values for
bootstrapping, and the per-token weights of the lambda-weighted log-prob.
The Lightning hooks are what the Fabric loop calls: :meth:`PolicyModule.configure_optimizers`
(Adam over the trainable base/LoRA weights, the vision path and the value head, each with its learning
rate) and :meth:`PolicyModule.training_step` (the PPO or group loss of one micro-batch).
Prompt batching lives in :mod:`agentrl.prompting.batching`, sampling and decoding in
:mod:`agentrl.policy.decoding`; the policy wires them to its model and value head.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from agentrl.algorithms import ppo
from agentrl.algorithms.batches import MicroBatch
from agentrl.config import ConfigError, PPOConfig
from agentrl.policy.decoding import Decoder, Generation, Sampler, last_hidden_state, token_logprobs
from agentrl.policy.loading import eos_token_ids, text_hidden_size
from agentrl.policy.processors import suppressed_token_ids
from agentrl.policy.scoring import candidate_logprobs, choice_terms
from agentrl.policy.value_head import NoValueHead, ValueHead
from agentrl.prompting.batching import VERIFIED_FAMILIES, Prompt, PromptBatcher, TrainInputs
from agentrl.prompting.candidates import CandidateInputs, Candidates, collate_candidates

LOGIT_CHUNK = 64
"""Answer positions whose (B, chunk, vocab) float32 logits exist at once in the teacher-forced forward."""

VISION_KEYS = ("vision_tower", "multi_modal_projector", "visual")
"""Parameter-name parts of the vision path (its own learning rate: ``ppo.vision_lr``, ``sft.vision_lr``)."""


class PolicyModule(L.LightningModule):
    """The VLM with a value head: samples actions, scores them, and is trained by PPO."""

    def __init__(
        self,
        model: nn.Module,
        processor,
        *,
        thought_coef: float,
        value_hidden: list[int],
        temperature: float,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        image_size: int | None = None,
        share_prefix: bool = True,
        critic: bool = True,
        ppo: PPOConfig | None = None,
        entropy_coef: float = 0.0,
        action_head: str = "generate",
        normalization: str = "word",
    ) -> None:
        super().__init__()
        self.action_head = action_head
        """"generate" (answers are written, then parsed) or "score" (a softmax over the legal actions)."""
        self.normalization = normalization
        """How a candidate's log-likelihood is normalised (``policy.normalization``, score head)."""
        self.ppo_config = ppo or PPOConfig()
        """The loss and optimizer settings of :meth:`training_step` and :meth:`configure_optimizers`."""
        self.entropy_coef = entropy_coef
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.thought_coef = thought_coef
        self.value_head = ValueHead(text_hidden_size(model), value_hidden) if critic else NoValueHead()
        self.batcher = PromptBatcher(model, processor, image_size=image_size, share_prefix=share_prefix)
        self.sampler = Sampler(temperature=temperature, top_p=top_p, bad_ids=suppressed_token_ids(processor),
                               eos_ids=eos_token_ids(model, self.tokenizer))
        self.decoder = Decoder(model, self.batcher, self.sampler, self.value_head, max_new_tokens=max_new_tokens)
        if action_head == "score" and not self.batcher.verified:
            raise ConfigError(f"policy.action_head=score continues each prompt's cache with explicit positions, "
                              f"verified for {', '.join(VERIFIED_FAMILIES)}; this model is "
                              f"{getattr(model.config, 'model_type', '?')!r}: use policy.action_head=generate")

    @classmethod
    def from_config(cls, cfg: Any, critic: bool = True) -> PolicyModule:
        """Load ``cfg.model``, apply its fine-tuning (LoRA or full), and wrap it with a fresh value head
        (``critic=False``: none, for the critic-free estimators)."""
        from agentrl.policy.finetuning import apply_finetuning
        from agentrl.policy.loading import load_vlm

        model, processor = load_vlm(cfg.model)
        model = apply_finetuning(model, cfg.model)
        return cls(
            model, processor, thought_coef=cfg.policy.thought_coef, value_hidden=list(cfg.policy.value_hidden),
            temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, max_new_tokens=cfg.rollout.max_new_tokens,
            image_size=cfg.model.image_size, share_prefix=cfg.policy.share_prefix, critic=critic, ppo=cfg.ppo,
            entropy_coef=cfg.policy.entropy_coef, action_head=cfg.policy.action_head,
            normalization=cfg.policy.normalization,
        )

    @property
    def has_critic(self) -> bool:
        return not isinstance(self.value_head, NoValueHead)

    def train(self, mode: bool = True) -> PolicyModule:
        """Train mode (``fit`` sets it for the PPO update, eval mode for rollouts), every dropout kept off.

        Activation checkpointing only runs in train mode; dropout would make the
        update's log-probs differ from the sampling pass's, so PPO's ratio would
        not start at 1 (TRL's PPO disables dropout for the same reason).
        """
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.eval()
        return self

    # ------------------------------------------------------------ acting

    def encode(self, messages: list[dict[str, Any]], image: np.ndarray | list[np.ndarray] | None) -> Prompt:
        """One prompt's processor outputs (see :class:`PromptBatcher`); ``image``: its image, or its images in order."""
        return self.batcher.encode(messages, image)

    def encode_many(self, items: list[tuple[list[dict[str, Any]], np.ndarray | None]]) -> list[Prompt]:
        """Many prompts' processor outputs, in one processor call where the family allows."""
        return self.batcher.encode_many(items)

    def generate(self, prompts: list[Prompt], greedy: bool = False, score: bool = False) -> Generation:
        """One answer per prompt in ONE batch; ``score=True`` adds old log-probs and values (see :mod:`decoding`)."""
        return self.decoder.generate(prompts, self.device, greedy=greedy, score=score)

    def token_weights(self, ids: Tensor, action_start: int | None, cot: bool) -> Tensor:
        """Per-token log-prob weights (L,) of one answer whose action starts at character ``action_start``.

        ``action_start`` is ``ParseResult.action_span[0]`` (None: the text named
        no action); the policy only maps that character to its token.
        """
        start = None
        if cot and action_start is not None:
            start = char_to_token(self.tokenizer, ids, action_start)
        return torch.tensor(ppo.token_weights(len(ids), start, self.thought_coef, cot), dtype=torch.float32)

    # ------------------------------------------------------------ the Lightning hooks

    def param_groups(self, lr: float, vision_lr: float | None = None,
                     value_lr: float | None = None) -> list[dict[str, Any]]:
        """The trainable parameters as Adam's groups: the base/LoRA weights at ``lr``; the vision path (tower and
        projector) at ``vision_lr``, a group of its own only when that is set (else with the base, in place);
        the value head at ``value_lr`` (None: ``lr``) when it trains."""
        base, vision = [], []
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                (vision if vision_lr is not None and any(k in name for k in VISION_KEYS) else base).append(param)
        groups = [{"params": base, "lr": lr}]
        if vision:
            groups.append({"params": vision, "lr": vision_lr})
        head = [q for q in self.value_head.parameters() if q.requires_grad]
        if head:
            groups.append({"params": head, "lr": value_lr or lr})
        return groups

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over :meth:`param_groups` at ``ppo.lr``, ``ppo.vision_lr`` and ``ppo.value_lr``.

        The learning-rate schedule is the learner's (:class:`agentrl.training.learner.Learner`): only it
        knows the horizon (updates x optimizer steps) and continues it on a resume with a changed config.
        """
        p = self.ppo_config
        return torch.optim.Adam(self.param_groups(p.lr, p.vision_lr, p.value_lr))

    def training_step(self, batch: MicroBatch, batch_idx: int = 0) -> ppo.LossTerms:
        """The PPO loss of one micro-batch (:func:`agentrl.algorithms.ppo.ppo_losses`): its ``total`` to
        backward, each term already a sum over the micro-batch times ``batch.sample_scale``.

        The ratio, the clipped surrogate (per answer, or per token with ``ppo.loss_type=token``), the value
        loss (0 without a critic, as for the group estimators, whose advantages come in the batch) and the
        entropy bonus (``policy.entropy_coef``).
        """
        p = self.ppo_config
        out, values, entropy = self(batch.inputs, with_entropy=self.entropy_coef > 0)
        dev = values.device
        if isinstance(batch.inputs, CandidateInputs):  # the score head: the chosen actions' log-probs
            logp = out.float()
        else:
            logp = ppo.weighted_logprob(out.float(), batch.inputs.weights.to(dev))
        tokens = None
        if p.loss_type == "token":
            tokens = (out.float(), batch.old_token_logp.to(dev), batch.inputs.weights.to(dev), batch.token_scale)
        return ppo.ppo_losses(
            logp, batch.old_logp.to(dev), batch.advantages.to(dev), values.float(), batch.old_values.to(dev),
            batch.returns.to(dev), entropy.float(), clip=p.clip, value_clip=p.value_clip,
            vf_coef=p.vf_coef if self.has_critic else 0.0, entropy_coef=self.entropy_coef,
            scale=batch.sample_scale, tokens=tokens,
        )

    # ------------------------------------------------------------ scoring and training

    def collate_train(self, prompts: list[Prompt], gen_ids: list[Tensor], weights: list[Tensor],
                      share: bool | None = None,
                      candidates: list[Candidates] | None = None) -> TrainInputs | CandidateInputs:
        """[left-padded prompt | right-padded answer] for :meth:`forward` (see :class:`PromptBatcher`); with
        ``candidates`` (the score head), the prompts and every candidate of each (``gen_ids`` unused)."""
        if candidates is not None:
            return collate_candidates(self.batcher, prompts, candidates, share)
        return self.batcher.collate_train(prompts, gen_ids, weights, share)

    @torch.no_grad()
    def score_candidates(self, prompts: list[Prompt], candidates: list[Candidates],
                         share: bool | None = None) -> tuple[list[Tensor], Tensor]:
        """The score head's policy: per prompt, the log-probs (K_i,) of its candidates, and the values (B,).
        The same pass as :meth:`forward`'s on :class:`CandidateInputs` (see :mod:`agentrl.policy.scoring`)."""
        inputs = collate_candidates(self.batcher, prompts, candidates, share)
        logp, values = candidate_logprobs(self.model, self.batcher, self.decoder.head, self.value_head, inputs,
                                          self.device)
        return list(logp.float().cpu().split(inputs.counts)), values.float().cpu()

    def forward(self, inputs: TrainInputs | CandidateInputs,
                with_entropy: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Teacher-forced pass: per-token log-probs (B, L), values (B,), mean token entropy (B,).

        :class:`CandidateInputs` (the score head): the chosen candidates' log-probs (B,), values (B,) and
        the entropy of each prompt's candidate distribution (B,).

        Log-probs come from temperature-scaled float32 logits of the last hidden
        state, as the tokens were sampled (:mod:`agentrl.policy.decoding`), a chunk of
        answer positions at a time. One forward gives both the actor's and the
        critic's outputs.
        """
        if isinstance(inputs, CandidateInputs):
            logp, values = candidate_logprobs(self.model, self.batcher, self.decoder.head, self.value_head, inputs,
                                              self.device)
            chosen, entropy = choice_terms(logp, inputs)
            return chosen, values, entropy
        model_inputs = self.batcher.model_kwargs(inputs.model_inputs, inputs.prefix, self.device)
        gen = inputs.gen_ids.to(self.device)
        length, start = gen.shape[1], inputs.prompt_len - 1  # position P-1+t predicts answer token t
        with last_hidden_state(self.model) as hidden:
            self.model(**model_inputs, use_cache=inputs.prefix is not None, logits_to_keep=1)
        answer = hidden[-1][:, start : start + length]
        values = self.value_head(hidden[-1][:, start])
        head, temperature = self.decoder.head, self.sampler.temperature
        logps, ents = [], []
        for lo in range(0, length, LOGIT_CHUNK):  # each chunk's logits once, for log-probs and entropy
            logits = head(answer[:, lo : lo + LOGIT_CHUNK])
            logps.append(token_logprobs(logits, gen[:, lo : lo + LOGIT_CHUNK], temperature))
            if with_entropy:
                logp_all = torch.log_softmax(logits / temperature, dim=-1)
                ents.append(-(logp_all.exp() * logp_all).sum(-1))
        token_logp = torch.cat(logps, dim=1)
        if with_entropy:
            valid = (inputs.weights.to(self.device) > 0).float()
            entropy = (torch.cat(ents, dim=1) * valid).sum(-1) / valid.sum(-1).clamp(min=1)
        else:
            entropy = torch.zeros_like(values)
        return token_logp, values, entropy

    @torch.no_grad()
    def values(self, prompts: list[Prompt]) -> Tensor:
        """V(o) (B,) for prompts alone (bootstrapping a truncated or unfinished episode)."""
        prefix, prompts = self.batcher.split_prefix(prompts)
        batch = self.batcher.model_kwargs(self.batcher.collate(prompts), prefix, self.device)
        with last_hidden_state(self.model) as hidden:
            self.model(**batch, use_cache=prefix is not None, logits_to_keep=1)
        return self.value_head(hidden[-1][:, -1]).float().cpu()

    def freeze_unreachable(self, prompt: Prompt) -> list[str]:
        """Freeze trainable parameters the loss cannot reach; returns their names.

        One probe forward/backward on ``prompt``. Such parameters (LLaVA's unused
        CLIP post-layernorm, the vision layers after ``vision_feature_layer``, the
        whole vision tower of a text-only run) would never change, and DDP
        refuses parameters without gradients.
        """
        answer = self.tokenizer('{"action": "x"}', add_special_tokens=False, return_tensors="pt").input_ids[0]
        inputs = self.collate_train([prompt], [answer], [torch.ones(len(answer))])
        token_logp, values, _ = self(inputs)
        (token_logp.sum() + values.sum()).backward()
        frozen = [n for n, p in self.named_parameters() if p.requires_grad and p.grad is None]
        for name, param in self.named_parameters():
            if name in frozen:
                param.requires_grad_(False)
        self.zero_grad(set_to_none=True)
        return frozen


def char_to_token(tokenizer: Any, ids: Tensor | list[int], char: int) -> int:
    """Index of the token of ``ids`` whose decoded text covers character ``char`` of the decoded answer.

    The first token whose decoded prefix reaches past ``char``, by binary
    search over decoded prefixes: it works for any tokenizer however it splits
    the text (the reference matched hard-coded token ids of ``"action":`` and
    broke when the tokenizer changed).
    """
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(ids[: mid + 1], skip_special_tokens=True)) > char:
            hi = mid
        else:
            lo = mid + 1
    return lo
