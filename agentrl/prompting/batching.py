"""Prompt batching: processor calls, padding, and the prompt prefix a batch shares.

Prompts are processed once per sample (:meth:`PromptBatcher.encode`) and kept;
batches are collated from those pieces for generation and for training, so no
image is preprocessed twice and any processor family (LLaVA, Qwen2-VL,
Idefics3) works: per-token tensors are left-padded, the rest concatenated.

Shared prompt prefix: the prompts of one batch usually start with the same
tokens (chat template, task rules, output format) when the image comes after
the text (``prompt.image_position`` after_task or last). For model families
where it is verified (:data:`VERIFIED_FAMILIES`), that prefix runs ONCE per
batch, at batch size 1, and every row continues from a copy of its key/value
cache: in generation, in the teacher-forced forward of scoring and training
(gradients of all rows flow back into the one prefix pass) and in values.
Rows are laid out ``[prefix | left-padded rest | answer]``, with positions
counted over real tokens only, so every row sees exactly the positions it has
alone. Qwen2-VL / 2.5-VL's rotary positions are 3-D (time, height, width: an
image's tokens share positions on its grid, the text after it goes on from the
largest), so there :meth:`PromptBatcher.positions` takes them from the model's
own ``get_rope_index`` over each row's whole prompt; the prefix is text, where
all three are the 1-D count. Results match the unshared path and transformers'
``generate`` up to float round-off (tests/policy/test_decode.py, tests/policy/test_families.py).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from transformers.cache_utils import DynamicCache

TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
"""Processor outputs with one entry per token: padded, not concatenated."""

VERIFIED_FAMILIES = ("llava", "llava_next", "idefics3", "qwen2_vl", "qwen2_5_vl")
"""Model types verified on agentrl's own decode loop and the shared prefix, with each row's own positions
(tests/policy/test_decode.py, tests/policy/test_families.py); others run unshared through transformers' ``generate``
(a one-line warning says so)."""
GRID_KEYS = {"pixel_values": "image_grid_thw", "pixel_values_videos": "video_grid_thw"}
"""Qwen-style patch tensors, (patches of all images, D), and the (T, H, W) grid that sizes each image's share."""
MIN_SHARED_PREFIX = 16
"""Shorter common prefixes are not worth a separate pass."""

Prompt = dict[str, Tensor]
"""One prompt's processor outputs, each with batch dimension 1."""


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


def images_first(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` for a chat template that renders every image before the text (:attr:`PromptBatcher.interleaves`
    False): a turn's images come first, in their order, and where the k-th image of the conversation stood the
    text says "(image k)", so earlier steps' frames (``prompt.history_images``) keep their place in the history."""
    out, k = [], 0
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list) or not any(c.get("type") == "image" for c in content):
            out.append(message)
            continue
        images, texts, after_image = 0, [""], False
        for item in content:
            if item.get("type") == "image":
                k, images = k + 1, images + 1
                gap = " " if texts[-1] and not texts[-1][-1].isspace() else ""
                texts[-1] += f"{gap}(image {k})"
            elif item.get("type") == "text":  # "(image 1)\nYou are ...", "- (image 2) -> ...", "...}} (image 3)"
                if item["text"]:
                    texts[-1] += ("\n" if after_image and not item["text"][0].isspace() else "") + item["text"]
            else:  # a video or another kind keeps its place
                texts += [item, ""]
            after_image = item.get("type") == "image"
        rest = [t if isinstance(t, dict) else {"type": "text", "text": t} for t in texts if t]
        out.append({**message, "content": [{"type": "image"}] * images + rest})
    return out


class PromptBatcher:
    """Turns chat messages and images into model inputs, one prompt or a padded batch at a time."""

    def __init__(self, model: nn.Module, processor: Any, *, image_size: int | None = None,
                 share_prefix: bool = True) -> None:
        self.model = model
        self.processor = processor
        self.pad_id = processor.tokenizer.pad_token_id
        self.image_size = image_size
        config = model.config
        self.verified = getattr(config, "model_type", None) in VERIFIED_FAMILIES
        """Each row's own positions (padding skipped) given explicitly, and batched processor calls."""
        modules = model.modules() if isinstance(model, nn.Module) else ()  # a config-only stand-in encodes only
        self.rope = next((m for m in modules if hasattr(type(m), "get_rope_index")), None)
        """Qwen2-VL / 2.5-VL: the module whose ``get_rope_index`` gives the 3-D (M-RoPE) positions; else None."""
        self.share = share_prefix and self.verified
        if not self.verified:
            warnings.warn(f"{getattr(config, 'model_type', type(model).__name__)}: agentrl's own decode loop and the "
                          f"shared prompt prefix are verified for {', '.join(VERIFIED_FAMILIES)} only; this model "
                          f"uses transformers' generate and unshared forwards (correct, slower)", stacklevel=2)
        # the prefix stops before the first image/video placeholder: what follows depends on the row's pixels
        self.media_ids = torch.tensor(sorted({
            int(getattr(config, k)) for k in ("image_token_id", "image_token_index", "video_token_id")
            if getattr(config, k, None) is not None}), dtype=torch.long)

    # ------------------------------------------------------------ processor calls

    def encode(self, messages: list[dict[str, Any]], image: np.ndarray | list[np.ndarray] | None) -> Prompt:
        """Chat-template and process one prompt (image preprocessing happens here, once).

        ``image``: the one image of the messages, or a list of their images in order (earlier steps'
        images, ``prompt.history_images``).
        """
        images = [] if image is None else list(image) if isinstance(image, list) else [image]
        if len(images) > 1 and not self.interleaves:
            messages = images_first(messages)
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if not images:
            return dict(self.processor(text=[text], return_tensors="pt"))
        return dict(self.processor(text=[text], images=[self._pil(im) for im in images], return_tensors="pt"))

    @functools.cached_property
    def interleaves(self) -> bool:
        """Whether the chat template renders an image where the content puts it among the text (Qwen2-VL,
        Idefics3, agentrl's tiny models); LLaVA-1.5's and LLaVA-NeXT's render every image first, then the text.
        A template the probe cannot read (it drops list-form text, or raises) is left alone, with a warning."""
        a, b = {"type": "text", "text": "AGENTRL_A"}, {"type": "text", "text": "AGENTRL_B"}

        def between(content: list[dict[str, Any]]) -> str:
            text = self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                      add_generation_prompt=True, tokenize=False)
            return text[text.index("AGENTRL_A") : text.index("AGENTRL_B")]

        try:
            return between([a, {"type": "image"}, b]) != between([a, b])
        except Exception as e:  # noqa: BLE001 - any template error: keep the messages as they are
            warnings.warn(f"could not tell where the chat template puts images ({type(e).__name__}: {e}); "
                          f"prompts with several images go to it unchanged", stacklevel=2)
            return True

    def image_tokens(self, prompt: Prompt) -> int:
        """How many image (or video) placeholder tokens ``prompt`` holds: what its images cost in the context."""
        return int(torch.isin(prompt["input_ids"], self.media_ids).sum())

    def encode_many(self, items: list[tuple[list[dict[str, Any]], np.ndarray | None]]) -> list[Prompt]:
        """:meth:`encode` for many (messages, image) pairs in ONE processor call, same result per prompt.

        ~3x faster for a batch of 16 NumberLine prompts. Verified families only
        (every processor output then has one row per prompt, or for Qwen one
        grid's share of the patches per image); others, or a mix of prompts
        with and without images, are encoded one by one.
        """
        with_image = [image is not None for _, image in items]
        several = any(isinstance(image, list) for _, image in items)  # a processor call's images are not per row
        if not self.verified or len(items) < 2 or len(set(with_image)) > 1 or several:
            return [self.encode(m, image) for m, image in items]
        texts = [self.processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m, _ in items]
        images = {"images": [self._pil(image) for _, image in items]} if with_image[0] else {}
        out = self.processor(text=texts, **images, padding=True, return_tensors="pt")
        # Qwen's patches of all images come in one (patches, D) tensor: each image's share is its grid's size
        split = {k: v.split(out[GRID_KEYS[k]].prod(-1).tolist()) for k, v in out.items()
                 if GRID_KEYS.get(k) in out and len(out[GRID_KEYS[k]]) == len(items)}
        if any(v.shape[0] != len(items) for k, v in out.items() if k not in split):
            return [self.encode(m, image) for m, image in items]
        prompts = []
        for i, keep in enumerate(out["attention_mask"].bool()):
            prompts.append({k: split[k][i] if k in split else v[i : i + 1, keep] if k in TOKEN_KEYS else v[i : i + 1]
                            for k, v in out.items()})
        return prompts

    def _pil(self, image: np.ndarray) -> Image.Image:
        pil = Image.fromarray(np.asarray(image, dtype=np.uint8))
        return pil.resize((self.image_size, self.image_size), Image.BILINEAR) if self.image_size else pil

    # ------------------------------------------------------------ padding

    def collate(self, prompts: list[Prompt]) -> dict[str, Tensor]:
        """Left-pad per-token tensors, concatenate the rest (pixel values, grids) of the prompts that have them.

        Rows without an image add no pixel values (a text-only row beside image rows, as SFT data may mix):
        the model matches image features to the image tokens of the batch in order.
        """
        width = max(p["input_ids"].shape[-1] for p in prompts)
        batch: dict[str, Tensor] = {}
        for key in dict.fromkeys(k for p in prompts for k in p):
            if key in TOKEN_KEYS:  # one row each: a row without this key gets zeros
                parts = [p[key] if key in p else torch.zeros_like(p["input_ids"]) for p in prompts]
            else:
                parts = [p[key] for p in prompts if key in p]
            if key in TOKEN_KEYS:
                fill = self.pad_id if key == "input_ids" else 0
                parts = [nn.functional.pad(t, (width - t.shape[-1], 0), value=fill) for t in parts]
            batch[key] = torch.cat(parts, dim=0)
        return batch

    def collate_train(self, prompts: list[Prompt], gen_ids: list[Tensor], weights: list[Tensor],
                      share: bool | None = None) -> TrainInputs:
        """[left-padded prompt | right-padded answer] for a teacher-forced forward.

        With a shared prefix (see :meth:`split_prefix`; ``share=False`` never)
        ``model_inputs`` hold only what follows it, and ``prefix`` the prefix.
        """
        prefix, prompts = self.split_prefix(prompts, share)
        batch = self.collate(prompts)
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

    # ------------------------------------------------------------ the shared prefix

    def split_prefix(self, prompts: list[Prompt], share: bool | None = None) -> tuple[Prompt | None, list[Prompt]]:
        """(token tensors of the prefix all prompts share, or None; the prompts after it).

        The prefix is the longest common run of token ids, cut before the first
        image/video placeholder and before each prompt's last token (whose
        output starts the answer and feeds the value head). Only with two or
        more prompts, at least :data:`MIN_SHARED_PREFIX` tokens, a verified
        model family, and no gradient checkpointing (it drops the cache).
        """
        if share is False or not self.share or len(prompts) < 2 or _checkpointing(self.model):
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

    def prefix_cache(self, prefix: Prompt, batch: int, device: torch.device) -> DynamicCache:
        """Run ``prefix`` once (batch 1) and return its key/value cache repeated ``batch`` times.

        Under autograd the repeat's backward sums every row's gradient into the one prefix pass.
        The prefix is text without padding: positions 0..S-1 (all three of Qwen's axes alike).
        """
        cache = DynamicCache(config=self.model.config)
        inputs = {k: v.to(device) for k, v in prefix.items()}
        positions = torch.arange(inputs["input_ids"].shape[1], device=device)[None]
        self.model(**inputs, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(batch)
        return cache

    def model_kwargs(self, batch: dict[str, Tensor], prefix: Prompt | None, device: torch.device,
                     for_generate: bool = False) -> dict[str, Any]:
        """Model inputs for ``batch`` on ``device``, continuing from ``prefix``'s cache when there is one.

        ``generate`` takes the whole sequence (it skips what the cache holds) and
        derives positions from the mask; a plain forward gets the rest only, the
        full mask and explicit positions that skip the padding.
        """
        kw: dict[str, Any] = {k: v.to(device) for k, v in batch.items()}
        if prefix is not None:
            rows = kw["input_ids"].shape[0]
            kw["cache"] = self.prefix_cache(prefix, rows, device)
            if for_generate:
                for key, part in prefix.items():
                    kw[key] = torch.cat([part.to(device).expand(rows, -1), kw[key]], dim=1)
                return kw
        if self.verified or prefix is not None:
            kw["position_ids"] = self.positions(kw, prefix)
        if prefix is not None:
            mask = kw["attention_mask"]
            kw["attention_mask"] = torch.cat([mask.new_ones(rows, prefix["input_ids"].shape[1]), mask], dim=1)
        return kw

    def positions(self, kw: dict[str, Tensor], prefix: Prompt | None) -> Tensor:
        """The positions of ``kw``'s tokens that each row has alone, after ``prefix`` (left padding skipped).

        (B, L): counted over real tokens. Qwen2-VL / 2.5-VL with images: (3, B, L) from the model's own
        ``get_rope_index`` over the rows' whole prompts (an image token's time, height and width on its
        grid; text goes on from the largest position before it), the prefix's columns dropped.
        """
        mask = kw["attention_mask"]
        size = 0 if prefix is None else prefix["input_ids"].shape[1]
        grids = {k: kw[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in kw}
        if self.rope is None or "mm_token_type_ids" not in kw or not grids:
            return size + (mask.long().cumsum(-1) - 1).clamp(min=0)
        whole = {k: kw[k] for k in ("input_ids", "mm_token_type_ids", "attention_mask")}
        if prefix is not None:  # the same text in front of every row: media types 0, mask 1
            whole = {k: torch.cat([prefix[k].to(v.device).expand(v.shape[0], -1) if k in prefix else
                                   v.new_zeros(v.shape[0], size), v], dim=1) for k, v in whole.items()}
        positions, _ = self.rope.get_rope_index(**whole, **grids)
        return positions[..., size:]


def _checkpointing(model: nn.Module) -> bool:
    """Whether activation checkpointing runs now (train mode, with gradients): it drops the cache a shared prefix needs."""
    return torch.is_grad_enabled() and any(getattr(m, "gradient_checkpointing", False) and m.training
                                           for m in model.modules())
