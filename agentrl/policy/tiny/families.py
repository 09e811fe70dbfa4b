"""Tiny random-weight VLMs of every supported family, built offline in seconds.

``agentrl make-tiny-model OUT --family F`` writes one: LLaVA (the default, :mod:`agentrl.policy.tiny.llava`),
LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL and Idefics3. Each is the family's stock model and processor
classes with hand-written tiny configs (the :class:`~agentrl.policy.tiny.spec.TinySpec` widths), the tokenizer
trained in code with the family's own special tokens, and a chat template that renders images the
way the family's processor expects, saved with ``save_pretrained`` so that
:func:`agentrl.policy.loading.load_vlm` loads it exactly as it loads a real checkpoint of that family.

Family conventions copied from the real checkpoints: Qwen ends a turn with ``<|im_end|>`` and its
generation config also lists ``<|endoftext|>``; Idefics3 (SmolVLM) speaks ``User:`` / ``Assistant:``
and ends a turn with ``<end_of_utterance>``. Every family gets 16 image tokens per 112 px image.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from agentrl.policy.tiny.spec import (
    EOS_TOKEN,
    IMAGE_TOKEN,
    SPECIAL_TOKENS,
    TinySpec,
    chatml_template,
    seeded_model,
    train_tokenizer,
)

FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3")
"""``--family`` choices; each is the checkpoint's ``config.model_type``."""

QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
QWEN_TOKENS = ["<|endoftext|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
IDEFICS_TOKENS = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]

# SmolVLM's template, made to accept string contents too
IDEFICS_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{{ message['role'] | capitalize }}:"
    "{%- if message['content'] is string -%}{{ ' ' + message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ ' ' + item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_utterance>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)


@dataclass(frozen=True)
class FamilyTokens:
    """What a family's tokenizer must hold and which of its tokens play which part."""

    extra: tuple[str, ...]
    """Special tokens after agentrl's own four (ids stay stable: the order is fixed)."""
    eos: str
    image: str
    video: str | None = None


TOKENS = {
    "llava": FamilyTokens((), EOS_TOKEN, IMAGE_TOKEN),
    "llava_next": FamilyTokens((), EOS_TOKEN, IMAGE_TOKEN),
    "qwen2_vl": FamilyTokens(tuple(QWEN_TOKENS), EOS_TOKEN, "<|image_pad|>", "<|video_pad|>"),
    "qwen2_5_vl": FamilyTokens(tuple(QWEN_TOKENS), EOS_TOKEN, "<|image_pad|>", "<|video_pad|>"),
    "idefics3": FamilyTokens(tuple(IDEFICS_TOKENS), "<end_of_utterance>", IMAGE_TOKEN),
}


def check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of {', '.join(FAMILIES)}")
    return family


def family_tokenizer(family: str, corpus: Iterable[str], spec: TinySpec) -> Any:
    """The tiny BPE tokenizer with ``family``'s special tokens, EOS and image (and video) token names."""
    t = TOKENS[check_family(family)]
    named = {"image_token": t.image} | ({"video_token": t.video} if t.video else {})
    return train_tokenizer(corpus, spec.vocab_size, spec.max_positions, special=[*SPECIAL_TOKENS, *t.extra],
                           eos=t.eos, named=named)


def family_vlm(family: str, corpus: Iterable[str], *, seed: int = 0, spec: TinySpec | None = None,
               dtype: Any = None) -> tuple[Any, Any]:
    """A seeded random model of ``family`` (eval mode) and its stock processor, ready to ``save_pretrained``.

    ``dtype``: initialise the weights in it directly, as :func:`agentrl.policy.tiny.llava.tiny_vlm` does.
    """
    from transformers import GenerationConfig

    spec = spec or TinySpec()
    if spec.image_size % 28:
        raise ValueError(f"image_size {spec.image_size} must be a multiple of 28 for the tiny {family} model")
    tokenizer = family_tokenizer(family, corpus, spec)
    build = {"llava_next": _llava_next, "qwen2_vl": _qwen, "qwen2_5_vl": _qwen, "idefics3": _idefics3}[family]
    model_cls, config, processor = build(family, spec, tokenizer)
    model = seeded_model(model_cls, config, seed, dtype)
    eos = [tokenizer.eos_token_id]
    if family.startswith("qwen"):  # as Qwen2-VL-Instruct: <|im_end|> and <|endoftext|> end an answer
        eos.append(tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
                                               eos_token_id=eos if len(eos) > 1 else eos[0])
    return model, processor


def _text(spec: TinySpec, tokenizer: Any, **extra: Any) -> dict[str, Any]:
    """The text model's shape as config keywords shared by every family."""
    return dict(
        vocab_size=len(tokenizer), hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate or spec.text_hidden * spec.mlp_ratio,
        num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_kv_heads, max_position_embeddings=spec.max_positions,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False, **extra,
    )


def _pixels(spec: TinySpec) -> dict[str, Any]:
    return {"image_mean": [spec.pixel_mean] * 3, "image_std": [spec.pixel_std] * 3}


def _llava_next(family: str, spec: TinySpec, tokenizer: Any) -> tuple[type, Any, Any]:
    """CLIP + Llama with anyres tiling at one 112 px tile: the base image plus one tile, newlines per row."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    side, grid = spec.image_size, [[spec.image_size, spec.image_size]]
    vision = CLIPVisionConfig(hidden_size=spec.vision_hidden, num_hidden_layers=spec.vision_layers,
                              intermediate_size=spec.vision_intermediate or spec.vision_hidden * spec.mlp_ratio,
                              num_attention_heads=spec.vision_heads, image_size=side, patch_size=spec.patch_size)
    config = LlavaNextConfig(vision_config=vision, text_config=LlamaConfig(**_text(spec, tokenizer)),
                             image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), image_grid_pinpoints=grid,
                             vision_feature_select_strategy="default", vision_feature_layer=-1,
                             tie_word_embeddings=False)
    images = LlavaNextImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                        image_grid_pinpoints=grid, **_pixels(spec))
    processor = LlavaNextProcessor(image_processor=images, tokenizer=tokenizer, patch_size=spec.patch_size,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=chatml_template(IMAGE_TOKEN), image_token=IMAGE_TOKEN)
    return LlavaNextForConditionalGeneration, config, processor


def _qwen(family: str, spec: TinySpec, tokenizer: Any) -> tuple[type, Any, Any]:
    """Qwen2-VL / 2.5-VL: 14 px patches merged 2 x 2, 3-D rotary positions, images resized to 112 x 112."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from agentrl.policy.processors import image_only_processor

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_TOKENS}
    head_dim = spec.text_hidden // spec.text_heads
    quarter = head_dim // 8  # M-RoPE splits head_dim / 2 rotary pairs into (time, height, width)
    rope = {"rope_type": "default", "rope_theta": 10000.0,
            "mrope_section": [head_dim // 2 - 4 * quarter, 2 * quarter, 2 * quarter]}
    vision = dict(depth=spec.vision_layers, num_heads=spec.vision_heads, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2)
    media = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                 vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

        model_cls, config_cls, processor_cls = Qwen2VLForConditionalGeneration, Qwen2VLConfig, Qwen2VLProcessor
        vision |= dict(embed_dim=spec.vision_hidden, hidden_size=spec.text_hidden, mlp_ratio=spec.mlp_ratio)
    else:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

        model_cls, config_cls, processor_cls = (Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig,
                                                Qwen2_5_VLProcessor)
        vision |= dict(hidden_size=spec.vision_hidden, out_hidden_size=spec.text_hidden,
                       intermediate_size=spec.vision_intermediate or spec.vision_hidden * spec.mlp_ratio,
                       window_size=56, fullatt_block_indexes=[spec.vision_layers - 1])
    config = config_cls(text_config=_text(spec, tokenizer, rope_parameters=rope), vision_config=vision,
                        tie_word_embeddings=False, **media)
    # any image becomes ~image_size x image_size (multiples of 28; 20% headroom: smart_resize floors after a sqrt)
    pixels = int(spec.image_size * spec.image_size * 1.2)
    images = Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": pixels}, patch_size=14,
                                      merge_size=2, temporal_patch_size=2, **_pixels(spec))
    # the stock class wants a video processor, which needs torchvision: the image-only one is saved the same way
    # as a real checkpoint's: where torchvision is installed, the stock processor loads with this video part
    video = {"video_processor_type": "Qwen2VLVideoProcessor", "size": dict(images.size), "patch_size": 14,
             "temporal_patch_size": 2, "merge_size": 2, **_pixels(spec)}
    processor = image_only_processor(processor_cls)(image_processor=images, tokenizer=tokenizer,
                                                    chat_template=chatml_template(QWEN_IMAGE),
                                                    video_config=video)
    return model_cls, config, processor


def _idefics3(family: str, spec: TinySpec, tokenizer: Any) -> tuple[type, Any, Any]:
    """Idefics3 (SmolVLM): SigLIP-style tower, pixel shuffle by 2, one global 112 px image (no splitting)."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, LlamaConfig
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    side, patch = spec.image_size, 14
    vision = Idefics3VisionConfig(hidden_size=spec.vision_hidden, num_hidden_layers=spec.vision_layers,
                                  intermediate_size=spec.vision_intermediate or spec.vision_hidden * spec.mlp_ratio,
                                  num_attention_heads=spec.vision_heads, image_size=side, patch_size=patch)
    config = Idefics3Config(vision_config=vision, text_config=LlamaConfig(**_text(spec, tokenizer)).to_dict(),
                            image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), scale_factor=2,
                            pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    # SmolVLM's mean and std (0.5), not white-is-0: Idefics3 drops an all-zero image as padding, so a
    # blank white page would lose its image tokens' features ("Image features and image tokens do not match")
    images = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": side},
                                       max_image_size={"longest_edge": side}, image_mean=[0.5] * 3,
                                       image_std=[0.5] * 3)
    processor = Idefics3Processor(image_processor=images, tokenizer=tokenizer,
                                  image_seq_len=(side // patch) ** 2 // 4, chat_template=IDEFICS_TEMPLATE)
    return Idefics3ForConditionalGeneration, config, processor

