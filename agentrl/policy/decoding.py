"""Sampling and decoding: agentrl's own decode loop, its key/value cache and sampler, and
transformers' ``generate`` as the fallback for model families the own loop is not verified on.

One batched decode serves every prompt of an env step. With ``score=True`` it
also returns each token's log-prob and the prompt's value, taken from the
sampling pass itself (no second forward): the log-prob of each chosen token
under the tempered softmax of that step's raw logits, and the value of the
prefill's last hidden state. They match a teacher-forced re-forward up to
float round-off (tests/policy/test_decode.py).

Sampling equals scoring: both read the language model's last hidden state
(by a hook, not ``output_hidden_states``, which keeps every layer's) and apply
the LM head in float32 outside autocast (:class:`OutputHead`), then take
log-probs as gather minus logsumexp (:func:`token_logprobs`): under bf16
autocast the head's 16-bit logits alone would be off by ~0.06 at magnitude 16,
0.3 in log-prob at temperature 0.2.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import GenerationConfig
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from agentrl.prompting.batching import Prompt, PromptBatcher


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


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float) -> Tensor:
    """log softmax(logits / T)[token] (...,) for float ``logits`` (..., V) and ``tokens`` (...,), without the
    full (..., V) log-softmax: gather, then subtract the logsumexp."""
    scaled = logits.float() / temperature
    return scaled.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(scaled, dim=-1)


class OutputHead:
    """The model's LM head applied in float32 with autocast off, to the positions asked for only.

    A frozen 16-bit head is copied to float32 once and cached (LLaVA-7B's
    32k x 4096 head: 0.5 GB); a trainable one is float32 already.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._cache: tuple[tuple, Tensor] | None = None

    def weight(self) -> Tensor:
        w = self.model.get_output_embeddings().weight
        if w.dtype == torch.float32 or w.requires_grad:
            return w.float()
        key = (w.data_ptr(), w.device, w._version)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, w.detach().float())
        return self._cache[1]

    def __call__(self, hidden: Tensor) -> Tensor:
        """(..., V) float32 logits of final hidden states (..., H)."""
        head = self.model.get_output_embeddings()
        bias = None if head.bias is None else head.bias.float()
        with torch.autocast(hidden.device.type, enabled=False):
            return nn.functional.linear(hidden.float(), self.weight(), bias)


@contextmanager
def last_hidden_state(model: nn.Module) -> Iterator[list[Tensor]]:
    """While open, the language model's final (normed) hidden states of each forward are appended to the list."""
    store: list[Tensor] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        store.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    handle = model.get_decoder().register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


class Sampler:
    """The next token from raw logits: arg-max, or a draw from the tempered (nucleus-filtered) softmax."""

    def __init__(self, *, temperature: float, top_p: float = 1.0, bad_ids: list[int] | None = None,
                 eos_ids: list[int] | None = None) -> None:
        self.temperature = temperature
        self.top_p = top_p
        self.bad_ids = list(bad_ids or [])
        """Ids never picked (the image placeholder)."""
        self.eos_ids = list(eos_ids or [])
        """Every id that ends an answer (a chat model's end-of-turn too); the first is the tokenizer's EOS."""
        self.min_new_tokens = 0
        """EOS is masked before this many tokens (benchmarks force equal lengths with it)."""
        self._biases: dict[tuple, Tensor] = {}
        self._eos_key: tuple | None = None
        self._eos: Tensor | None = None

    @property
    def eos_id(self) -> int:
        """The EOS an SFT answer ends with (the tokenizer's)."""
        return self.eos_ids[0]

    @eos_id.setter
    def eos_id(self, value: int) -> None:
        self.eos_ids = [value]

    def is_eos(self, tokens: Tensor) -> Tensor:
        """Bool mask of ``tokens`` that end an answer (called every decode step: the id tensor is made once)."""
        key = (tuple(self.eos_ids), tokens.device)
        if self._eos_key != key:
            self._eos_key, self._eos = key, torch.tensor(self.eos_ids, device=tokens.device)
        return torch.isin(tokens, self._eos)

    def pick(self, logits: Tensor, greedy: bool = False, allow_eos: bool = True) -> Tensor:
        """Next token per row (B,) from raw logits (B, V): arg-max, or a sample from the tempered softmax.

        Suppressed ids (the image placeholder) are never picked; ``top_p`` < 1
        keeps the smallest set of most likely tokens whose probability reaches it.
        Sampling is Gumbel-max: exactly a draw from that softmax, without
        ``torch.multinomial``'s slow CPU path (~3x the cost at batch 16).
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

    def logprob(self, logits: Tensor, tokens: Tensor) -> Tensor:
        """(B,) log-prob of ``tokens`` (B,) under the tempered softmax of raw ``logits`` (B, V), in float32."""
        return token_logprobs(logits, tokens, self.temperature)

    def _logit_bias(self, logits: Tensor, allow_eos: bool) -> Tensor:
        """(V,) 0, or -inf on the suppressed ids (and EOS when not allowed); built once per setting."""
        key = (logits.shape[-1], logits.dtype, logits.device, tuple(self.bad_ids),
               None if allow_eos else tuple(self.eos_ids))
        bias = self._biases.get(key)
        if bias is None:
            bias = torch.zeros(logits.shape[-1], dtype=logits.dtype, device=logits.device)
            bias[list(self.bad_ids) + ([] if allow_eos else self.eos_ids)] = float("-inf")
            if len(self._biases) > 8:
                self._biases.clear()
            self._biases[key] = bias
        return bias


class Decoder:
    """Batched answer generation for a VLM: agentrl's own loop where verified, else transformers' generate."""

    def __init__(self, model: nn.Module, batcher: PromptBatcher, sampler: Sampler, value_head: nn.Module, *,
                 max_new_tokens: int) -> None:
        self.model = model
        self.batcher = batcher
        self.sampler = sampler
        self.value_head = value_head
        self.max_new_tokens = max_new_tokens
        self.head = OutputHead(model)
        self.own_loop = batcher.verified
        """agentrl's decode loop (verified families); False: transformers' ``generate``."""

    @torch.no_grad()
    def generate(self, prompts: list[Prompt], device: torch.device, greedy: bool = False,
                 score: bool = False) -> Generation:
        """Sample (or with ``greedy``, arg-max decode) one answer per prompt, all prompts in ONE batch."""
        prefix, prompts = self.batcher.split_prefix(prompts)
        batch = self.batcher.collate(prompts)
        run = self._own_loop if self.own_loop else self._hf_generate
        gen_dev, token_logp, values = run(batch, prefix, device, greedy, score)
        gen = gen_dev.cpu()
        is_eos = self.sampler.is_eos(gen)
        lengths = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, gen.shape[1]).tolist()  # keep the EOS
        ids = [row[:n] for row, n in zip(gen, lengths)]
        texts = self.batcher.processor.tokenizer.batch_decode(ids, skip_special_tokens=True)
        if not score:
            return Generation(ids=ids, texts=texts)
        token_logp = token_logp.cpu()
        return Generation(ids=ids, texts=texts, token_logp=[row[:n] for row, n in zip(token_logp, lengths)],
                          values=values.float().cpu())

    def _own_loop(self, batch: dict[str, Tensor], prefix: Prompt | None, device: torch.device, greedy: bool,
                  score: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Generated ids (B, L), per-token log-probs (B, L) and values (B,).

        What transformers' ``generate`` does for sampling, minus its per-step
        machinery: one prefill (continuing from the shared prefix), then one
        forward per token with the cache. Finished rows emit padding, as
        ``generate`` does.
        """
        sampler, pad_id = self.sampler, self.batcher.pad_id
        kw = self.batcher.model_kwargs(batch, prefix, device)
        # room after what the cache gets first: the rows' rest of the prompt too when a shared prefix comes first
        room = self.max_new_tokens + (batch["input_ids"].shape[1] if prefix is not None else 0)
        cache = _growing_cache(self.model.config, kw.pop("cache", None), room)
        mask, pos = kw["attention_mask"], kw["position_ids"]
        with last_hidden_state(self.model) as hidden:
            self.model(**kw, cache=cache, use_cache=True, logits_to_keep=1)
        last = hidden[-1][:, -1]
        values = self.value_head(last) if score else None
        # decode steps are text only: the language model and the float32 head, without the VLM wrapper's checks
        decoder, head = self.model.get_decoder(), self.head
        logits = head(last)
        rows = mask.shape[0]
        done = torch.zeros(rows, dtype=torch.bool, device=mask.device)
        # each next token's position is one past the row's largest so far (Qwen: all three of the image's axes)
        pos = pos.amax(-1, keepdim=True)
        pos = pos.amax(0) if pos.ndim == 3 else pos
        tokens, logps = [], []
        for t in range(self.max_new_tokens):
            logits = logits.float()
            tok = sampler.pick(logits, greedy, allow_eos=t >= sampler.min_new_tokens).masked_fill_(done, pad_id)
            tokens.append(tok)
            if score:
                logps.append(sampler.logprob(logits, tok))
            done |= sampler.is_eos(tok)
            if t == self.max_new_tokens - 1 or bool(done.all()):
                break
            mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
            pos = pos + 1
            hidden = decoder(input_ids=tok[:, None], attention_mask=mask, position_ids=pos, cache=cache,
                             use_cache=True).last_hidden_state
            logits = head(hidden[:, -1])
        return torch.stack(tokens, 1), torch.stack(logps, 1) if score else None, values

    def _hf_generate(self, batch: dict[str, Tensor], prefix: Prompt | None, device: torch.device, greedy: bool,
                     score: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """transformers' ``generate`` (same outputs as :meth:`_own_loop`).

        The log-probs come from the raw logits of every step (``output_logits``),
        the value from the decoder's last-position output of the prefill, through a hook.
        """
        sampler = self.sampler
        inputs = self.batcher.model_kwargs(batch, prefix, device, for_generate=True)
        # top_k=0: sample from the full tempered softmax, the distribution the log-probs score
        sampling = {"do_sample": False} if greedy else {
            "do_sample": True, "temperature": sampler.temperature, "top_p": sampler.top_p, "top_k": 0}
        prefill: list[Tensor] = []
        hook = self.model.get_decoder().register_forward_hook(_first_last_hidden(prefill)) if score else None
        # only what is asked here shapes the distribution: a checkpoint's generation config may bring a
        # repetition penalty, top_k, n-gram bans... that the scoring forward would not apply
        hf_model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        saved, hf_model.generation_config = hf_model.generation_config, GenerationConfig(
            bos_token_id=hf_model.generation_config.bos_token_id, pad_token_id=self.batcher.pad_id,
            eos_token_id=sampler.eos_ids)
        try:
            out = self.model.generate(
                **inputs,
                **sampling,
                max_new_tokens=self.max_new_tokens,
                min_new_tokens=sampler.min_new_tokens or None,
                suppress_tokens=sampler.bad_ids or None,
                pad_token_id=self.batcher.pad_id,
                eos_token_id=sampler.eos_ids,
                return_dict_in_generate=True,
                output_logits=score,
            )
        finally:
            hf_model.generation_config = saved
            if hook is not None:
                hook.remove()
        gen = out.sequences[:, inputs["input_ids"].shape[1] :]
        if not score:
            return gen, None, None
        # step t's logits predict token t; one (B, vocab) step at a time keeps the peak small
        token_logp = torch.stack([sampler.logprob(step, gen[:, t]) for t, step in enumerate(out.logits)], dim=1)
        return gen, token_logp, self.value_head(prefill[0])


def _growing_cache(config: Any, prefix: Any, room: int) -> Any:
    """A key/value cache for :meth:`Decoder._own_loop` that writes into preallocated buffers.

    transformers' ``DynamicCache`` concatenates every layer's keys and values
    at every step, copying the whole cache each time (quadratic in the answer
    length); this one keeps ``room`` free slots after what it receives first
    and returns views. Starts from ``prefix`` (a shared prefix's cache) when
    given. Models with sliding-window or other special layers keep ``DynamicCache``.
    """
    plain = prefix if prefix is not None else DynamicCache(config=config)
    if not plain.layers or any(type(layer) is not DynamicLayer for layer in plain.layers):
        return plain
    cache = Cache(layers=[GrowingLayer(room) for _ in plain.layers])
    if prefix is not None:
        for layer, source in zip(cache.layers, prefix.layers):
            layer.update(source.keys, source.values)
    return cache


class GrowingLayer(DynamicLayer):
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


def _first_last_hidden(store: list[Tensor]):
    """Forward hook: keep the last position of the decoder's first output (the prefill in generate).

    With left padding that is every row's last prompt token, whose final (normed)
    hidden state the value head reads, as in the policy's teacher-forced forward.
    """

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if not store:
            hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
            store.append(hidden[:, -1])

    return hook
