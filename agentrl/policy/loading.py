"""Loading a vision-language model, and the facts of it the policy needs (hidden size, EOS ids).

Any local Hugging Face image-text-to-text checkpoint loads through
``AutoProcessor`` + ``AutoModelForImageTextToText`` (LLaVA, LLaVA-NeXT,
Qwen2-VL / 2.5-VL, Idefics3 / SmolVLM); ``model.path: tiny`` is the built-in
offline model of :mod:`agentrl.policy.tiny`. Nothing is ever downloaded. The processor is
:mod:`agentrl.policy.processors`'s, what trains :mod:`agentrl.policy.finetuning`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from agentrl.config import ConfigError, ModelConfig
from agentrl.policy.processors import load_processor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(path: str) -> Path:
    """The checkpoint directory for ``model.path``: "tiny" builds (once) the offline tiny model."""
    if path == "tiny":
        from agentrl.policy.tiny.build import tiny_model_path

        return tiny_model_path()
    local = Path(path).expanduser()
    if not local.is_dir():
        raise ConfigError(
            f"model.path {path!r} is not a local directory; agentrl never downloads, so fetch the "
            f"checkpoint first (huggingface-cli download REPO --local-dir DIR) and pass DIR, "
            f"or use model.path=tiny"
        )
    return local


def load_vlm(cfg: ModelConfig) -> tuple[Any, Any]:
    """(model, processor) for ``cfg.path``, in ``cfg.dtype``, tokenizer left-padded with a pad token."""
    from transformers import AutoModelForImageTextToText

    path = resolve_model_path(cfg.path)
    processor = load_processor(path, cfg.path)
    tokenizer = processor.tokenizer
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            path,
            dtype=DTYPES[cfg.dtype],
            attn_implementation=cfg.attn_implementation,
            local_files_only=True,
        )
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.path {cfg.path!r} does not load as an image-text-to-text model: {e}") from e
    tokenizer.padding_side = "left"  # generation appends on the right
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


# ---------------------------------------------------------------- facts the policy needs


def text_hidden_size(model: nn.Module) -> int:
    """Width of the language model's last hidden state (what a value head reads)."""
    config = getattr(model, "config", None)
    if config is None:  # a PEFT wrapper without a config attribute
        config = model.get_base_model().config
    return int(config.get_text_config().hidden_size)


def eos_token_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    """Every id that ends an answer: the tokenizer's EOS first, then the checkpoint's generation config's
    (chat models end a turn with ``<|im_end|>`` or ``<|eot_id|>`` and list it there)."""
    ids = [tokenizer.eos_token_id]
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    ids += extra if isinstance(extra, list) else [] if extra is None else [extra]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


