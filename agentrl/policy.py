"""PolicyModule: the VLM (actor) plus a value head (critic), as a LightningModule.

It holds the two networks and what PPO needs of them: the teacher-forced
forward that gives per-token log-probs and values for training, values for
bootstrapping, and the per-token weights of the lambda-weighted log-prob.
Prompt batching lives in :mod:`agentrl.batching`, sampling and decoding in
:mod:`agentrl.decoding`; the policy wires them to its model and value head.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from agentrl.batching import Prompt, PromptBatcher, TrainInputs
from agentrl.decoding import Decoder, Generation, Sampler, last_hidden_state, token_logprobs
from agentrl.models import eos_token_ids, suppressed_token_ids, text_hidden_size
from agentrl.ppo import token_weights

LOGIT_CHUNK = 64
"""Answer positions whose (B, chunk, vocab) float32 logits exist at once in the teacher-forced forward."""


class ValueHead(nn.Module):
    """MLP on the last prompt token's final hidden state -> scalar value, in float32."""

    def __init__(self, hidden: int, widths: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for w in widths:
            layers += [nn.Linear(hidden, w), nn.ReLU()]
            hidden = w
        last = nn.Linear(hidden, 1)
        nn.init.normal_(last.weight, std=1e-3)  # start near V = 0: early advantages are the rewards
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last).float()

    def forward(self, h: Tensor) -> Tensor:
        with torch.autocast(h.device.type, enabled=False):  # float32 under bf16 autocast too
            # a new tensor, not a view: FSDP2 hooks the sharded policy's backward on its outputs
            return self.net(h.float()).squeeze(-1).clone()


class NoValueHead(nn.Module):
    """A critic-free policy's stand-in: no parameters, V = 0 (nothing is built, trained or saved)."""

    def forward(self, h: Tensor) -> Tensor:
        return torch.zeros(h.shape[0], device=h.device)


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
    ) -> None:
        super().__init__()
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.thought_coef = thought_coef
        self.value_head = ValueHead(text_hidden_size(model), value_hidden) if critic else NoValueHead()
        self.batcher = PromptBatcher(model, processor, image_size=image_size, share_prefix=share_prefix)
        self.sampler = Sampler(temperature=temperature, top_p=top_p, bad_ids=suppressed_token_ids(processor),
                               eos_ids=eos_token_ids(model, self.tokenizer))
        self.decoder = Decoder(model, self.batcher, self.sampler, self.value_head, max_new_tokens=max_new_tokens)

    @classmethod
    def from_config(cls, cfg: Any, critic: bool = True) -> PolicyModule:
        """Load ``cfg.model``, apply its fine-tuning (LoRA or full), and wrap it with a fresh value head
        (``critic=False``: none, for the critic-free estimators)."""
        from agentrl.models import apply_finetuning, load_vlm

        model, processor = load_vlm(cfg.model)
        model = apply_finetuning(model, cfg.model)
        return cls(
            model, processor, thought_coef=cfg.policy.thought_coef, value_hidden=list(cfg.policy.value_hidden),
            temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, max_new_tokens=cfg.rollout.max_new_tokens,
            image_size=cfg.model.image_size, share_prefix=cfg.policy.share_prefix, critic=critic,
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
        return torch.tensor(token_weights(len(ids), start, self.thought_coef, cot), dtype=torch.float32)

    # ------------------------------------------------------------ scoring and training

    def collate_train(self, prompts: list[Prompt], gen_ids: list[Tensor], weights: list[Tensor],
                      share: bool | None = None) -> TrainInputs:
        """[left-padded prompt | right-padded answer] for :meth:`forward` (see :class:`PromptBatcher`)."""
        return self.batcher.collate_train(prompts, gen_ids, weights, share)

    def forward(self, inputs: TrainInputs, with_entropy: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Teacher-forced pass: per-token log-probs (B, L), values (B,), mean token entropy (B,).

        Log-probs come from temperature-scaled float32 logits of the last hidden
        state, as the tokens were sampled (:mod:`agentrl.decoding`), a chunk of
        answer positions at a time. One forward gives both the actor's and the
        critic's outputs.
        """
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
