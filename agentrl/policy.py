"""PolicyModule: the VLM (actor) plus a value head (critic), as a LightningModule.

Prompts are processed once per sample (:meth:`PolicyModule.encode`) and kept;
batches are collated from those pieces for generation and for training, so no
image is preprocessed twice and any processor family (LLaVA, Qwen2-VL,
Idefics3) works: per-token tensors are left-padded, the rest concatenated.

Shared prompt prefix: the prompts of one batch usually start with the same
tokens (chat template, task rules, output format) when the image comes after
the text (``prompt.image_position`` after_task or last). For model families where it is
verified (:data:`SHARED_PREFIX_FAMILIES`), that prefix runs ONCE per batch, at
batch size 1, and every row continues from a copy of its key/value cache:
in ``generate``, in the teacher-forced ``forward`` of scoring and training
(gradients of all rows flow back into the one prefix pass) and in ``values``.
Rows are laid out ``[prefix | left-padded rest | answer]``, with positions
counted over real tokens only, so every row sees exactly the positions it has
alone. Results match the unshared path up to float round-off (tests/test_decode.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from agentrl.models import suppressed_token_ids, text_hidden_size
from agentrl.parsing import action_span_start
from agentrl.ppo import token_weights

# Processor outputs with one entry per token: padded, not concatenated.
TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")

SHARED_PREFIX_FAMILIES = ("llava", "llava_next")
"""Model types whose forward is verified to continue from a cached prefix with 1-D positions
(Qwen2-VL's 3-D rope positions and Idefics3's image merging are not: they run unshared)."""
MIN_SHARED_PREFIX = 16
"""Shorter common prefixes are not worth a separate pass."""

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
    """P: padded prompt length (after any shared prefix); position P - 1 is every row's last prompt token."""
    prefix: Prompt | None = None
    """Token tensors (1, S) of the prompt prefix all rows share, run once; None: each row has its whole prompt."""


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
        share_prefix: bool = True,
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
        self._biases: dict[tuple, Tensor] = {}
        self.min_new_tokens = 0  # EOS is masked before this many tokens (benchmarks force equal lengths with it)
        config = model.config
        # verified families: 1-D positions from the mask and agentrl's decode loop (else transformers' generate)
        self.own_decode = getattr(config, "model_type", None) in SHARED_PREFIX_FAMILIES
        self.share_prefix = share_prefix and self.own_decode
        # the prefix stops before the first image/video placeholder: what follows depends on the row's pixels
        self.media_ids = torch.tensor(sorted({
            int(getattr(config, k)) for k in ("image_token_id", "image_token_index", "video_token_id")
            if getattr(config, k, None) is not None}), dtype=torch.long)

    @classmethod
    def from_config(cls, cfg: Any) -> PolicyModule:
        """Load ``cfg.model``, apply its fine-tuning (LoRA or full), and wrap it with a fresh value head."""
        from agentrl.models import apply_finetuning, load_vlm

        model, processor = load_vlm(cfg.model)
        model = apply_finetuning(model, cfg.model)
        return cls(
            model, processor, thought_coef=cfg.policy.thought_coef, value_hidden=list(cfg.policy.value_hidden),
            temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, max_new_tokens=cfg.rollout.max_new_tokens,
            image_size=cfg.model.image_size, share_prefix=cfg.policy.share_prefix,
        )

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

    # ------------------------------------------------------------ prompts

    def encode(self, messages: list[dict[str, Any]], image: np.ndarray | None) -> Prompt:
        """Chat-template and process one prompt (image preprocessing happens here, once)."""
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if image is None:
            return dict(self.processor(text=[text], return_tensors="pt"))
        return dict(self.processor(text=[text], images=[self._pil(image)], return_tensors="pt"))

    def encode_many(self, items: list[tuple[list[dict[str, Any]], np.ndarray | None]]) -> list[Prompt]:
        """:meth:`encode` for many (messages, image) pairs in ONE processor call, same result per prompt.

        ~3x faster for a batch of 16 NumberLine prompts. Verified families only
        (every processor output then has one row per prompt); others, or a mix
        of prompts with and without images, are encoded one by one.
        """
        with_image = [image is not None for _, image in items]
        if not self.own_decode or len(items) < 2 or len(set(with_image)) > 1:
            return [self.encode(m, image) for m, image in items]
        texts = [self.processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m, _ in items]
        images = {"images": [self._pil(image) for _, image in items]} if with_image[0] else {}
        out = self.processor(text=texts, **images, padding=True, return_tensors="pt")
        if any(v.shape[0] != len(items) for v in out.values()):
            return [self.encode(m, image) for m, image in items]
        prompts = []
        for i, keep in enumerate(out["attention_mask"].bool()):
            prompts.append({k: v[i : i + 1, keep] if k in TOKEN_KEYS else v[i : i + 1] for k, v in out.items()})
        return prompts

    def _pil(self, image: np.ndarray) -> Image.Image:
        pil = Image.fromarray(np.asarray(image, dtype=np.uint8))
        return pil.resize((self.image_size, self.image_size), Image.BILINEAR) if self.image_size else pil

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

    def split_prefix(self, prompts: list[Prompt], share: bool | None = None) -> tuple[Prompt | None, list[Prompt]]:
        """(token tensors of the prefix all prompts share, or None; the prompts after it).

        The prefix is the longest common run of token ids, cut before the first
        image/video placeholder and before each prompt's last token (whose
        output starts the answer and feeds the value head). Only with two or
        more prompts, at least :data:`MIN_SHARED_PREFIX` tokens, a verified
        model family, and no gradient checkpointing (it drops the cache).
        """
        if share is False or not self.share_prefix or len(prompts) < 2 or _checkpointing(self.model):
            return None, prompts
        ids = [p["input_ids"][0] for p in prompts]
        n = min(len(i) for i in ids) - 1
        first = ids[0][:n]
        same = ~torch.isin(first, self.media_ids)
        for other in ids[1:]:
            same &= other[:n] == first
        size = n if bool(same.all()) else int((~same).int().argmax())
        if size < MIN_SHARED_PREFIX or any(not bool(p["attention_mask"][0, :size].all()) for p in prompts):
            return None, prompts
        prefix = {k: v[:, :size] for k, v in prompts[0].items() if k in TOKEN_KEYS}
        rest = [{k: v[:, size:] if k in TOKEN_KEYS else v for k, v in p.items()} for p in prompts]
        return prefix, rest

    def _prefix_cache(self, prefix: Prompt, batch: int):
        """Run ``prefix`` once (batch 1) and return its key/value cache repeated ``batch`` times.

        Under autograd the repeat's backward sums every row's gradient into the one prefix pass.
        """
        cache = DynamicCache(config=self.model.config)
        self.model(**{k: v.to(self.device) for k, v in prefix.items()}, cache=cache, use_cache=True,
                   logits_to_keep=1)
        cache.batch_repeat_interleave(batch)
        return cache

    def _model_kwargs(self, batch: dict[str, Tensor], prefix: Prompt | None, for_generate: bool = False
                      ) -> dict[str, Any]:
        """Model inputs for ``batch`` on the device, continuing from ``prefix``'s cache when there is one.

        ``generate`` takes the whole sequence (it skips what the cache holds) and
        derives positions from the mask; a plain forward gets the rest only, the
        full mask and explicit positions that skip the padding.
        """
        kw: dict[str, Any] = {k: v.to(self.device) for k, v in batch.items()}
        mask, size = kw["attention_mask"], 0
        if prefix is not None:
            rows = mask.shape[0]
            size = prefix["input_ids"].shape[1]
            kw["cache"] = self._prefix_cache(prefix, rows)
            if for_generate:
                for key, part in prefix.items():
                    kw[key] = torch.cat([part.to(self.device).expand(rows, -1), kw[key]], dim=1)
                return kw
            kw["attention_mask"] = torch.cat([mask.new_ones(rows, size), mask], dim=1)
        if self.own_decode or prefix is not None:  # each row's own positions, left padding skipped
            kw["position_ids"] = size + (mask.long().cumsum(-1) - 1).clamp(min=0)
        return kw

    # ------------------------------------------------------------ acting

    @torch.no_grad()
    def generate(self, prompts: list[Prompt], greedy: bool = False, score: bool = False) -> Generation:
        """Sample (or with ``greedy``, arg-max decode) one answer per prompt, all prompts in ONE batch.

        ``score=True`` also returns each token's log-prob and the prompt's value,
        taken from the sampling pass itself (no second forward): the log-prob of
        each chosen token under the tempered softmax of that step's raw logits,
        and the value of the prefill's last hidden state. They match a
        teacher-forced re-forward up to float round-off.

        Verified families (:data:`SHARED_PREFIX_FAMILIES`) run agentrl's own
        decode loop (:meth:`_decode`); others go through transformers' ``generate``.
        """
        prefix, prompts = self.split_prefix(prompts)
        batch = self.collate_prompts(prompts)
        if self.own_decode:
            gen_dev, token_logp, values = self._decode(batch, prefix, greedy, score)
        else:
            gen_dev, token_logp, values = self._hf_generate(batch, prefix, greedy, score)
        gen = gen_dev.cpu()
        is_eos = gen == self.eos_id
        lengths = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, gen.shape[1]).tolist()  # keep the EOS
        ids = [row[:n] for row, n in zip(gen, lengths)]
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        if not score:
            return Generation(ids=ids, texts=texts)
        token_logp = token_logp.cpu()
        return Generation(ids=ids, texts=texts, token_logp=[row[:n] for row, n in zip(token_logp, lengths)],
                          values=values.float().cpu())

    def _decode(self, batch: dict[str, Tensor], prefix: Prompt | None, greedy: bool, score: bool
                ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """agentrl's decode loop: generated ids (B, L), per-token log-probs (B, L) and values (B,).

        What transformers' ``generate`` does for sampling, minus its per-step
        machinery: one prefill (continuing from the shared prefix), then one
        forward per token with the cache. Sampling is Gumbel-max on the
        tempered (and nucleus-filtered) logits: exactly a draw from that
        softmax, without ``torch.multinomial``'s slow CPU path (~3x the cost at
        batch 16). Finished rows emit padding, as ``generate`` does.
        """
        kw = self._model_kwargs(batch, prefix)
        # room after what the cache gets first: the rows' rest of the prompt too when a shared prefix comes first
        room = self.max_new_tokens + (batch["input_ids"].shape[1] if prefix is not None else 0)
        cache = _growing_cache(self.model.config, kw.pop("cache", None), room)
        mask, pos = kw["attention_mask"], kw["position_ids"]
        out = self.model(**kw, cache=cache, use_cache=True, logits_to_keep=1, output_hidden_states=score)
        values = self.value_head(out.hidden_states[-1][:, -1]) if score else None
        # decode steps are text only: the language model and the LM head, without the VLM wrapper's checks
        decoder, head = self.model.get_decoder(), self.model.get_output_embeddings()
        logits = out.logits[:, -1]
        rows = mask.shape[0]
        done = torch.zeros(rows, dtype=torch.bool, device=mask.device)
        pos = pos[:, -1:]
        tokens, logps = [], []
        for t in range(self.max_new_tokens):
            logits = logits.float()
            tok = self.pick(logits, greedy, allow_eos=t >= self.min_new_tokens).masked_fill_(done, self.pad_id)
            tokens.append(tok)
            if score:
                logps.append(torch.log_softmax(logits / self.temperature, -1).gather(-1, tok[:, None])[:, 0])
            done |= tok == self.eos_id
            if t == self.max_new_tokens - 1 or bool(done.all()):
                break
            mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
            pos = pos + 1
            hidden = decoder(input_ids=tok[:, None], attention_mask=mask, position_ids=pos, cache=cache,
                             use_cache=True).last_hidden_state
            logits = head(hidden[:, -1])
        return torch.stack(tokens, 1), torch.stack(logps, 1) if score else None, values

    def pick(self, logits: Tensor, greedy: bool = False, allow_eos: bool = True) -> Tensor:
        """Next token per row (B,) from raw logits (B, V): arg-max, or a sample from the tempered softmax.

        Suppressed ids (the image placeholder) are never picked; ``top_p`` < 1
        keeps the smallest set of most likely tokens whose probability reaches it.
        """
        scores = torch.add(self._logit_bias(logits, allow_eos), logits, alpha=1.0 / self.temperature)
        if greedy:
            return scores.argmax(-1)
        if self.top_p < 1.0:
            probs, order = torch.softmax(scores, -1).sort(-1, descending=True)
            drop = probs.cumsum(-1) - probs >= self.top_p  # the mass before a token already reaches top_p
            scores.scatter_(-1, order, torch.where(drop, float("-inf"), scores.gather(-1, order)))
        # Gumbel-max: argmax(scores + G), G = -log(-log U), U ~ Uniform(0, 1), in place
        return scores.sub_(torch.rand_like(scores).log_().neg_().log_()).argmax(-1)

    def _logit_bias(self, logits: Tensor, allow_eos: bool) -> Tensor:
        """(V,) 0, or -inf on the suppressed ids (and EOS when not allowed); built once per setting."""
        key = (logits.shape[-1], logits.dtype, logits.device, tuple(self.bad_ids), None if allow_eos else self.eos_id)
        bias = self._biases.get(key)
        if bias is None:
            bias = torch.zeros(logits.shape[-1], dtype=logits.dtype, device=logits.device)
            bias[list(self.bad_ids) + ([] if allow_eos else [self.eos_id])] = float("-inf")
            if len(self._biases) > 8:
                self._biases.clear()
            self._biases[key] = bias
        return bias

    def _hf_generate(self, batch: dict[str, Tensor], prefix: Prompt | None, greedy: bool, score: bool
                     ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """transformers' ``generate``, for families without a verified own decode loop (same outputs as :meth:`_decode`).

        The log-probs come from the raw logits of every step (``output_logits``),
        the value from the decoder's last-position output of the prefill, through a hook.
        """
        inputs = self._model_kwargs(batch, prefix, for_generate=True)
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
                min_new_tokens=self.min_new_tokens or None,
                suppress_tokens=self.bad_ids or None,
                pad_token_id=self.pad_id,
                eos_token_id=self.eos_id,
                return_dict_in_generate=True,
                output_logits=score,
            )
        finally:
            if hook is not None:
                hook.remove()
        gen = out.sequences[:, inputs["input_ids"].shape[1] :]
        if not score:
            return gen, None, None
        # step t's logits predict token t; one (B, vocab) step at a time keeps the peak small
        token_logp = torch.stack([
            torch.log_softmax(step.float() / self.temperature, -1).gather(-1, gen[:, t, None])[:, 0]
            for t, step in enumerate(out.logits)], dim=1)
        return gen, token_logp, self.value_head(prefill[0])

    def token_weights(self, ids: Tensor, text: str, cot: bool) -> Tensor:
        """Per-token log-prob weights (L,) of one answer (see :func:`action_token_start`)."""
        start = action_token_start(self.tokenizer, ids, text) if cot else None
        return torch.tensor(token_weights(len(ids), start, self.thought_coef, cot), dtype=torch.float32)

    # ------------------------------------------------------------ scoring and training

    def collate_train(self, prompts: list[Prompt], gen_ids: list[Tensor], weights: list[Tensor],
                      share: bool | None = None) -> TrainInputs:
        """[left-padded prompt | right-padded answer] for a teacher-forced forward.

        With a shared prefix (see :meth:`split_prefix`; ``share=False`` never)
        ``model_inputs`` hold only what follows it, and ``prefix`` the prefix.
        """
        prefix, prompts = self.split_prefix(prompts, share)
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
        return TrainInputs(batch, gen, w, prompt_len, prefix)

    def forward(self, inputs: TrainInputs, with_entropy: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Teacher-forced pass: per-token log-probs (B, L), values (B,), mean token entropy (B,).

        Log-probs come from temperature-scaled logits, as the tokens were sampled.
        One forward gives both the actor's and the critic's outputs.
        """
        model_inputs = self._model_kwargs(inputs.model_inputs, inputs.prefix)
        gen = inputs.gen_ids.to(self.device)
        length = gen.shape[1]
        out = self.model(**model_inputs, output_hidden_states=True, use_cache=inputs.prefix is not None,
                         logits_to_keep=length + 1)
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
        prefix, prompts = self.split_prefix(prompts)
        batch = self._model_kwargs(self.collate_prompts(prompts), prefix)
        out = self.model(**batch, output_hidden_states=True, use_cache=prefix is not None, logits_to_keep=1)
        return self.value_head(out.hidden_states[-1][:, -1]).float().cpu()


def _growing_cache(config: Any, prefix: Any, room: int) -> Any:
    """A key/value cache for :meth:`PolicyModule._decode` that writes into preallocated buffers.

    transformers' ``DynamicCache`` concatenates every layer's keys and values
    at every step, copying the whole cache each time (quadratic in the answer
    length); this one keeps ``room`` free slots after what it receives first
    and returns views. Starts from ``prefix`` (a shared prefix's cache) when
    given. Models with sliding-window or other special layers keep ``DynamicCache``.
    """
    plain = prefix if prefix is not None else DynamicCache(config=config)
    if not plain.layers or any(type(layer) is not DynamicLayer for layer in plain.layers):
        return plain
    cache = Cache(layers=[_GrowingLayer(room) for _ in plain.layers])
    if prefix is not None:
        for layer, source in zip(cache.layers, prefix.layers):
            layer.update(source.keys, source.values)
    return cache


class _GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views of buffers with room to grow in place."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room, self.length = room, 0

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        n = key_states.shape[-2]
        if not self.is_initialized or self.length + n > self._keys.shape[-2]:
            self._grow(key_states, value_states, self.length + n + self.room)
        self._keys[:, :, self.length : self.length + n] = key_states
        self._values[:, :, self.length : self.length + n] = value_states
        self.length += n
        self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]
        return self.keys, self.values

    def _grow(self, key_states: Tensor, value_states: Tensor, capacity: int) -> None:
        keys = key_states.new_empty(*key_states.shape[:2], capacity, key_states.shape[-1])
        values = value_states.new_empty(*value_states.shape[:2], capacity, value_states.shape[-1])
        if self.is_initialized:
            keys[:, :, : self.length], values[:, :, : self.length] = self.keys, self.values
        self._keys, self._values = keys, values
        self.device, self.is_initialized = key_states.device, True

    def get_seq_length(self) -> int:
        return self.length


def _checkpointing(model: nn.Module) -> bool:
    """Whether activation checkpointing runs now (train mode, with gradients): it drops the cache a shared prefix needs."""
    return torch.is_grad_enabled() and any(getattr(m, "gradient_checkpointing", False) and m.training for m in model.modules())


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
