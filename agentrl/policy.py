"""PolicyModule: the VLM (actor) plus a value head (critic), as a LightningModule.

Prompts are processed once per sample (:meth:`PolicyModule.encode`) and kept;
batches are collated from those pieces for generation and for training, so no
image is preprocessed twice and any processor family (LLaVA, Qwen2-VL,
Idefics3) works: per-token tensors are left-padded, the rest concatenated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from agentrl.models import suppressed_token_ids, text_hidden_size
from agentrl.parsing import action_span_start
from agentrl.ppo import token_weights

# Processor outputs with one entry per token: padded, not concatenated.
TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")

Prompt = dict[str, Tensor]
"""One prompt's processor outputs, each with batch dimension 1."""


@dataclass
class Generation:
    """A batch of sampled answers, B = number of prompts."""

    ids: list[Tensor]
    """Per sample, the generated token ids (L_i,), up to and including EOS, no padding."""
    texts: list[str]
    """Per sample, the decoded answer."""
    token_logp: list[Tensor] | None = None
    """With ``score=True``: per sample, each token's log-prob (L_i,) under the tempered softmax."""
    values: Tensor | None = None
    """With ``score=True``: (B,) V(prompt) from the prefill's last-token hidden state."""


@dataclass
class TrainInputs:
    """Collated prompts + generated answers for one teacher-forced forward."""

    model_inputs: dict[str, Tensor]
    """Processor tensors with input_ids (B, P + L): left-padded prompt, right-padded answer."""
    gen_ids: Tensor
    """(B, L) generated ids, right-padded."""
    weights: Tensor
    """(B, L) log-prob weight per token: thought_coef on CoT, 1 on action, 0 on padding."""
    prompt_len: int
    """P: padded prompt length; position P - 1 is every row's last prompt token."""


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
        return self.net(h.float()).squeeze(-1)


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
    ) -> None:
        super().__init__()
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.thought_coef = thought_coef
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.image_size = image_size
        self.value_head = ValueHead(text_hidden_size(model), value_hidden)
        self.bad_ids = suppressed_token_ids(processor)
        self.pad_id = self.tokenizer.pad_token_id
        self.eos_id = self.tokenizer.eos_token_id

    @classmethod
    def from_config(cls, cfg: Any) -> PolicyModule:
        """Load ``cfg.model``, apply its fine-tuning (LoRA or full), and wrap it with a fresh value head."""
        from agentrl.models import apply_finetuning, load_vlm

        model, processor = load_vlm(cfg.model)
        model = apply_finetuning(model, cfg.model)
        return cls(
            model, processor, thought_coef=cfg.policy.thought_coef, value_hidden=list(cfg.policy.value_hidden),
            temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, max_new_tokens=cfg.rollout.max_new_tokens,
            image_size=cfg.model.image_size,
        )

    # ------------------------------------------------------------ prompts

    def encode(self, messages: list[dict[str, Any]], image: np.ndarray | None) -> Prompt:
        """Chat-template and process one prompt (image preprocessing happens here, once)."""
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if image is None:
            return dict(self.processor(text=[text], return_tensors="pt"))
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
        if self.image_size:
            image = image.resize((self.image_size, self.image_size), Image.BILINEAR)
        return dict(self.processor(text=[text], images=[image], return_tensors="pt"))

    def collate_prompts(self, prompts: list[Prompt]) -> dict[str, Tensor]:
        """Left-pad per-token tensors, concatenate the rest (pixel values, grids)."""
        width = max(p["input_ids"].shape[-1] for p in prompts)
        batch: dict[str, Tensor] = {}
        for key in prompts[0]:
            parts = [p[key] for p in prompts]
            if key in TOKEN_KEYS:
                fill = self.pad_id if key == "input_ids" else 0
                parts = [nn.functional.pad(t, (width - t.shape[-1], 0), value=fill) for t in parts]
            batch[key] = torch.cat(parts, dim=0)
        return batch

    # ------------------------------------------------------------ acting

    @torch.no_grad()
    def generate(self, prompts: list[Prompt], greedy: bool = False, score: bool = False) -> Generation:
        """Sample (or with ``greedy``, arg-max decode) one answer per prompt in ONE batched generate call.

        ``score=True`` also returns each token's log-prob and the prompt's value,
        taken from the generate pass itself (no second forward): the raw logits of
        every step (``output_logits``, B x L x vocab floats held until the end) and
        the decoder's last-position output of the prefill, through a hook. They
        match a teacher-forced re-forward up to float round-off.
        """
        inputs = {k: v.to(self.device) for k, v in self.collate_prompts(prompts).items()}
        # top_k=0: sample from the full tempered softmax, the distribution the log-probs score
        sampling = {"do_sample": False} if greedy else {
            "do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": 0}
        prefill: list[Tensor] = []
        hook = self.model.get_decoder().register_forward_hook(_first_last_hidden(prefill)) if score else None
        try:
            out = self.model.generate(
                **inputs,
                **sampling,
                max_new_tokens=self.max_new_tokens,
                suppress_tokens=self.bad_ids or None,
                pad_token_id=self.pad_id,
                eos_token_id=self.eos_id,
                return_dict_in_generate=True,
                output_logits=score,
            )
        finally:
            if hook is not None:
                hook.remove()
        gen_dev = out.sequences[:, inputs["input_ids"].shape[1] :]
        gen = gen_dev.cpu()
        is_eos = gen == self.eos_id
        lengths = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, gen.shape[1])  # keep the EOS
        ids = [row[:n] for row, n in zip(gen, lengths.tolist())]
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        if not score:
            return Generation(ids=ids, texts=texts)
        # step t's logits predict token t; one (B, vocab) step at a time keeps the peak small
        token_logp = torch.stack([
            torch.log_softmax(step.float() / self.temperature, -1).gather(-1, gen_dev[:, t, None])[:, 0]
            for t, step in enumerate(out.logits)], dim=1).cpu()
        values = self.value_head(prefill[0]).float().cpu()
        return Generation(ids=ids, texts=texts, token_logp=[row[:n] for row, n in zip(token_logp, lengths.tolist())],
                          values=values)

    def token_weights(self, ids: Tensor, text: str, cot: bool) -> Tensor:
        """Per-token log-prob weights (L,) of one answer (see :func:`action_token_start`)."""
        start = action_token_start(self.tokenizer, ids, text) if cot else None
        return torch.tensor(token_weights(len(ids), start, self.thought_coef, cot), dtype=torch.float32)

    # ------------------------------------------------------------ scoring and training

    def collate_train(self, prompts: list[Prompt], gen_ids: list[Tensor], weights: list[Tensor]) -> TrainInputs:
        """[left-padded prompt | right-padded answer] for a teacher-forced forward."""
        batch = self.collate_prompts(prompts)
        prompt_len = batch["input_ids"].shape[1]
        width = max(len(g) for g in gen_ids)
        gen = torch.full((len(gen_ids), width), self.pad_id, dtype=torch.long)
        w = torch.zeros(len(gen_ids), width)
        mask = torch.zeros(len(gen_ids), width, dtype=batch["attention_mask"].dtype)
        for i, (g, wi) in enumerate(zip(gen_ids, weights)):
            gen[i, : len(g)], w[i, : len(g)], mask[i, : len(g)] = g, wi, 1
        batch["input_ids"] = torch.cat([batch["input_ids"], gen], dim=1)
        batch["attention_mask"] = torch.cat([batch["attention_mask"], mask], dim=1)
        for key in TOKEN_KEYS[2:]:
            if key in batch:
                batch[key] = torch.cat([batch[key], torch.zeros_like(gen, dtype=batch[key].dtype)], dim=1)
        return TrainInputs(batch, gen, w, prompt_len)

    def forward(self, inputs: TrainInputs, with_entropy: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Teacher-forced pass: per-token log-probs (B, L), values (B,), mean token entropy (B,).

        Log-probs come from temperature-scaled logits, as the tokens were sampled.
        One forward gives both the actor's and the critic's outputs.
        """
        model_inputs = {k: v.to(self.device) for k, v in inputs.model_inputs.items()}
        gen = inputs.gen_ids.to(self.device)
        length = gen.shape[1]
        out = self.model(**model_inputs, output_hidden_states=True, use_cache=False, logits_to_keep=length + 1)
        logits = out.logits[:, :-1].float() / self.temperature  # position P-1+t predicts answer token t
        logp_all = torch.log_softmax(logits, dim=-1)
        token_logp = logp_all.gather(-1, gen.unsqueeze(-1)).squeeze(-1)
        values = self.value_head(out.hidden_states[-1][:, inputs.prompt_len - 1])
        weights = inputs.weights.to(self.device)
        if with_entropy:
            valid = (weights > 0).float()
            ent = -(logp_all.exp() * logp_all).sum(-1)
            entropy = (ent * valid).sum(-1) / valid.sum(-1).clamp(min=1)
        else:
            entropy = torch.zeros_like(values)
        return token_logp, values, entropy

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

    @torch.no_grad()
    def values(self, prompts: list[Prompt]) -> Tensor:
        """V(o) (B,) for prompts alone (bootstrapping a truncated or unfinished episode)."""
        batch = {k: v.to(self.device) for k, v in self.collate_prompts(prompts).items()}
        out = self.model(**batch, output_hidden_states=True, use_cache=False, logits_to_keep=1)
        return self.value_head(out.hidden_states[-1][:, -1]).float().cpu()


def _first_last_hidden(store: list[Tensor]):
    """Forward hook: keep the last position of the decoder's first output (the prefill in generate).

    With left padding that is every row's last prompt token, whose final (normed)
    hidden state the value head reads, as in :meth:`PolicyModule.forward`.
    """

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if not store:
            hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
            store.append(hidden[:, -1])

    return hook


def action_token_start(tokenizer: Any, ids: Tensor | list[int], text: str) -> int | None:
    """Index of the first token of the ``"action":`` key in ``ids`` (decoded to ``text``), or None.

    It is the first token whose decoded prefix reaches past the key's first
    character: found by binary search over decoded prefixes, so it works for any
    tokenizer however it splits ``"action":`` (the reference matched hard-coded
    token ids and broke when the tokenizer changed).
    """
    start_char = action_span_start(text)
    if start_char is None:
        return None
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(ids[: mid + 1], skip_special_tokens=True)) > start_char:
            hi = mid
        else:
            lo = mid + 1
    return lo
