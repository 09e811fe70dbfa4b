"""The tiny LLaVA, built from scratch in about a second: the model tests and the CPU configs use.

No weights can be downloaded, so tests, CI and quick experiments use a stock
``LlavaForConditionalGeneration`` (small CLIP vision tower + small Llama text
model, random seeded weights) with a byte-level BPE tokenizer trained in code on
the tasks' own prompts. It is saved exactly like a llava-hf checkpoint, so
``AutoProcessor`` / ``AutoModelForImageTextToText`` load it like any real VLM.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agentrl.policy.tiny.spec import (
    BOS_TOKEN,
    CHAT_TEMPLATE,
    EOS_TOKEN,
    IMAGE_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    TinySpec,
    seeded_model,
    train_tokenizer,
)


def tiny_vlm(corpus: Iterable[str], *, seed: int = 0, spec: TinySpec | None = None,
             dtype: Any = None) -> tuple[Any, Any]:
    """A seeded random ``LlavaForConditionalGeneration`` (eval mode) and its ``LlavaProcessor``.

    ``dtype`` (e.g. ``torch.bfloat16``): initialise the weights in it directly (a 2B model
    then needs half the memory to build).
    """
    from transformers import GenerationConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    spec = spec or TinySpec()
    tokenizer = train_tokenizer(corpus, spec.vocab_size, spec.max_positions)
    config = tiny_config(spec, tokenizer)
    side = {"height": spec.image_size, "width": spec.image_size}
    # The PIL backend directly: the default class wants torchvision and warns without it.
    image_processor = CLIPImageProcessorPil(size=side, crop_size=side, do_center_crop=False,
                                           image_mean=[spec.pixel_mean] * 3, image_std=[spec.pixel_std] * 3)
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",  # drops CLS ...
        num_additional_image_tokens=1,  # ... which CLIP adds: (112 / 28) ** 2 = 16 tokens
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )
    model = seeded_model(LlavaForConditionalGeneration, config, seed, dtype)
    text = config.text_config
    model.generation_config = GenerationConfig(
        bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id
    )
    return model, processor


def tiny_config(spec: TinySpec, tokenizer: Any) -> Any:
    """The ``LlavaConfig`` of ``spec`` (CLIP vision tower + Llama text model) for ``tokenizer``."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    if spec.image_size % spec.patch_size:
        raise ValueError(f"image_size {spec.image_size} must be a multiple of patch_size {spec.patch_size}")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate or spec.vision_hidden * spec.mlp_ratio,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate or spec.text_hidden * spec.mlp_ratio,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_kv_heads,
        max_position_embeddings=spec.max_positions,
        pad_token_id=ids[PAD_TOKEN],
        bos_token_id=ids[BOS_TOKEN],
        eos_token_id=ids[EOS_TOKEN],
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=ids[IMAGE_TOKEN],
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,  # the last CLIP layer: a tiny tower has no layers to spare
        projector_hidden_act="gelu",
    )
