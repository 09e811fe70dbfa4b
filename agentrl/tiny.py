"""A tiny offline vision-language model, built from scratch in about a second.

No weights can be downloaded, so tests, CI and quick experiments use a stock
``LlavaForConditionalGeneration`` (small CLIP vision tower + small Llama text
model, random seeded weights) with a byte-level BPE tokenizer trained in code on
the tasks' own prompts. It is saved exactly like a llava-hf checkpoint, so
``AutoProcessor`` / ``AutoModelForImageTextToText`` load it like any real VLM.

The defaults follow what was measured to learn from pixels on CPU in minutes
(/work/shared/TINY_VLM.md): 112 px images, 28 px patches (16 image tokens),
text hidden size 128 x 4 layers, and pixels normalised so that white is 0: on
the games' white pages CLIP's usual normalisation left ink only ~7% of the
input (the model then never learned to read digits); with white at 0 the ink is
the signal (experiments/tiny_vision/README.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
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


def tiny_vlm(corpus: Iterable[str], *, seed: int = 0, spec: TinySpec | None = None,
             dtype: Any = None) -> tuple[Any, Any]:
    """A seeded random ``LlavaForConditionalGeneration`` (eval mode) and its ``LlavaProcessor``.

    ``dtype`` (e.g. ``torch.bfloat16``): initialise the weights in it directly (a 2B model
    then needs half the memory to build).
    """
    import torch
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
    default_dtype = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            torch.set_default_dtype(dtype or default_dtype)
            model = LlavaForConditionalGeneration(config).eval()
        finally:
            torch.set_default_dtype(default_dtype)
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


def build_tiny_vlm(
    out_dir: str | Path, corpus: Iterable[str], *, seed: int = 0, spec: TinySpec | None = None, dtype: Any = None,
    family: str = "llava",
) -> Path:
    """Build the tiny VLM (see :func:`tiny_vlm`; another ``family``: :func:`agentrl.families.family_vlm`)
    and ``save_pretrained`` model and processor into ``out_dir``."""
    from transformers.utils import logging as hf_logging

    if family == "llava":
        model, processor = tiny_vlm(corpus, seed=seed, spec=spec, dtype=dtype)
    else:
        from agentrl.families import family_vlm

        model, processor = family_vlm(family, corpus, seed=seed, spec=spec, dtype=dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a one-shard progress bar is noise
    try:
        model.save_pretrained(out)
        processor.save_pretrained(out)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return out


def default_corpus() -> list[str]:
    """The tasks' prompts and answers the tokenizer is trained on."""
    from agentrl.prompts import tokenizer_corpus

    return list(tokenizer_corpus())


def cache_root() -> Path:
    """``$AGENTRL_CACHE``, else ``~/.cache/agentrl``."""
    return Path(os.environ.get("AGENTRL_CACHE") or Path.home() / ".cache" / "agentrl")


FAMILY_BUILD_VERSION = 1
"""Bump when :mod:`agentrl.families` changes in a way the spec does not show (LLaVA's names keep ``build_version``)."""


def tiny_version(corpus: list[str], spec: TinySpec | None = None, seed: int = 0, family: str = "llava") -> str:
    """A name that changes whenever the build settings, the seed, the corpus or the family change."""
    spec = spec or TinySpec()
    settings: dict[str, Any] = {"spec": asdict(spec), "seed": seed, "corpus": corpus}
    if family != "llava":  # LLaVA's names predate the other families: cached builds stay valid
        settings |= {"family": family, "family_build": FAMILY_BUILD_VERSION}
    blob = json.dumps(settings, sort_keys=True)
    return f"v{spec.build_version}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def tiny_model_path(corpus_fn: Callable[[], Iterable[str]] | None = None, family: str = "llava") -> Path:
    """The cached tiny model directory of ``family``, built on first use.

    The build goes to a temporary sibling directory that is renamed into place
    when complete, so an interrupted or concurrent build never leaves a half model.
    """
    corpus = list((corpus_fn or default_corpus)())
    name = "tiny-vlm" if family == "llava" else f"tiny-{family}"
    final = cache_root() / f"{name}-{tiny_version(corpus, family=family)}"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build_tiny_vlm(tmp, corpus, family=family)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not a lost race with another builder
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def make_tiny_model(out: str, size: str = "tiny", family: str = "llava") -> int:
    """CLI ``agentrl make-tiny-model OUT [--size tiny|0.5b|2b] [--family F]``: build a random-weight VLM into OUT.

    "tiny" is the model tests and the CPU configs use; "2b" (bfloat16 weights, ~3 GB) is
    for GPU throughput and memory checks, e.g.
    ``python tools/bench_rollout.py --model-path OUT --device cuda --dtype bfloat16``;
    "0.5b" (float32, ~1.8 GB) for full fine-tuning memory checks on a CPU
    (``tools/bench_memory.py --finetune full``).
    ``family`` (:data:`agentrl.families.FAMILIES`): LLaVA, or the same widths as LLaVA-NeXT,
    Qwen2-VL, Qwen2.5-VL or Idefics3, each loading through its own stock classes.
    """
    import time

    import torch
    from transformers import AutoConfig

    spec = SIZES[size]
    start = time.perf_counter()
    path = build_tiny_vlm(out, default_corpus(), spec=spec, dtype=torch.bfloat16 if size == "2b" else None,
                          family=family)
    seconds = time.perf_counter() - start
    size_mb = sum(f.stat().st_size for f in path.glob("*.safetensors")) / 1e6
    config = AutoConfig.from_pretrained(path)
    tokens = spec.num_image_tokens
    if family != "llava":
        from agentrl.models import image_token_count, load_processor

        tokens = image_token_count(load_processor(path), spec.image_size, spec.image_size)
    print(
        f"{size} VLM ({config.model_type}, {size_mb:.1f} MB of weights, "
        f"{tokens} image tokens of {spec.image_size} px) written to {path} in {seconds:.1f} s"
    )
    return 0
