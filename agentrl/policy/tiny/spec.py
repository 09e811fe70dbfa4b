"""The tiny VLM's shapes and vocabulary: :class:`TinySpec`, its named sizes, special tokens, chat template
and the tokenizer trained in code.

The defaults follow what was measured to learn from pixels on CPU in minutes
(/work/shared/TINY_VLM.md): 112 px images, 28 px patches (16 image tokens),
text hidden size 128 x 4 layers, and pixels normalised so that white is 0: on
the games' white pages CLIP's usual normalisation left ink only ~7% of the
input (the model then never learned to read digits); with white at 0 the ink is
the signal (experiments/tiny_vision/README.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN]


# ChatML. A message's content is a string or a list of {"type": "image"} /
# {"type": "text", "text": ...} items (the Hugging Face multimodal chat format).
_CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ 'IMAGE' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def chatml_template(image: str = IMAGE_TOKEN) -> str:
    """The ChatML chat template, rendering an image item as ``image`` (Qwen wraps its pad token in vision tags)."""
    return _CHATML.replace("'IMAGE'", repr(image))


CHAT_TEMPLATE = chatml_template()


@dataclass(frozen=True)
class TinySpec:
    """Architecture of the tiny VLM; every field feeds the cache version."""

    image_size: int = 112
    patch_size: int = 28
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    mlp_ratio: int = 4
    text_intermediate: int | None = None
    """MLP width of the text model; None: text_hidden * mlp_ratio."""
    vision_intermediate: int | None = None
    """MLP width of the vision tower; None: vision_hidden * mlp_ratio."""
    vocab_size: int = 3000
    max_positions: int = 2048
    pixel_mean: float = 1.0
    """Pixel value (0..1) the image processor maps to 0: white, so the blank page is 0 and only ink is signal."""
    pixel_std: float = 0.5
    """Pixel scale of the image processor: black ink becomes -2."""
    build_version: int = 1  # bump when the build code changes in a way the fields don't show

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per image in the prompt (CLS dropped)."""
        return (self.image_size // self.patch_size) ** 2


SIZES = {
    "tiny": TinySpec(),
    # A ~1.6B-parameter LLaVA for GPU throughput and memory checks (random weights, never trained):
    # CLIP ViT-L/14 at 336 px (576 image tokens) and Qwen2-VL-2B's language-model shapes
    # (hidden 1536, 28 layers, 12 heads, 2 KV heads, MLP 8960). The vocabulary is the tiny
    # tokenizer's (~3k, not 151k): the LM head is then ~0.3% of the compute instead of ~15%.
    "2b": TinySpec(image_size=336, patch_size=14, vision_hidden=1024, vision_layers=24, vision_heads=16,
                   vision_intermediate=4096, text_hidden=1536, text_layers=28, text_heads=12, text_kv_heads=2,
                   text_intermediate=8960),
    # A ~0.45B one, small enough that full fine-tuning (float32 weights, gradients and Adam state, ~7 GB a
    # process) fits two processes on a 24 GB CPU machine: ViT-B/16 at 224 px (196 image tokens) and
    # Qwen2-0.5B's language-model shapes (hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864).
    "0.5b": TinySpec(image_size=224, patch_size=16, vision_hidden=768, vision_layers=12, vision_heads=12,
                     text_hidden=896, text_layers=24, text_heads=14, text_kv_heads=2, text_intermediate=4864),
}
"""Named specs for ``agentrl make-tiny-model --size``."""


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 3000, max_length: int = 2048, *,
                    special: list[str] | None = None, eos: str = EOS_TOKEN, named: dict[str, str] | None = None):
    """A byte-level BPE fast tokenizer trained on ``corpus``: any text encodes, left padding.

    ``special``: the special tokens, in id order (default :data:`SPECIAL_TOKENS`); ``eos``: the one that
    ends a turn; ``named``: tokens the processor finds by attribute (default ``{"image_token": "<image>"}``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special or SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=eos,
        extra_special_tokens=named or {"image_token": IMAGE_TOKEN},
        padding_side="left",
        model_max_length=max_length,
    )


def seeded_model(model_cls: Any, config: Any, seed: int, dtype: Any = None) -> Any:
    """``model_cls(config)`` in eval mode, its random weights drawn from ``seed`` (the caller's RNG untouched) and
    created in ``dtype`` directly (default: torch's default dtype)."""
    import torch

    default_dtype = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            torch.set_default_dtype(dtype or default_dtype)
            return model_cls(config).eval()
        finally:
            torch.set_default_dtype(default_dtype)
