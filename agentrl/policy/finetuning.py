"""What of a VLM trains: PEFT LoRA adapters (``model.finetune: lora``) or every weight (``full``), always in
float32, with optional activation checkpointing."""

from __future__ import annotations

import re
import warnings

import torch
from torch import nn

from agentrl.config import ConfigError, LoraConfig, ModelConfig

_REGEX_CHARS = set("\\^$.*+?()[]{}|")


def apply_finetuning(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Make the right parameters trainable: PEFT LoRA adapters (``lora``) or every weight (``full``).

    Whatever trains is float32, whatever ``model.dtype`` is: Adam's small steps
    round away in 16 bits (lr 1e-5: ~75% of bfloat16 entries never change).
    The frozen base stays in ``model.dtype``; compute runs under the trainer's
    autocast (``trainer.precision=bf16-mixed``).
    """
    if cfg.gradient_checkpointing:
        _enable_checkpointing(model)
    if cfg.finetune == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return float32_trainables(model)

    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need a grad-carrying input
    peft_config = PeftLoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=lora_target_modules(model, cfg.lora),
        bias="none",
    )
    with warnings.catch_warnings():  # PEFT reads a property transformers 5 deprecated
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        return float32_trainables(get_peft_model(model, peft_config))


def float32_trainables(model: nn.Module) -> nn.Module:
    """Cast every trainable parameter to float32 in place (before any wrapper such as DDP sees them)."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


def _enable_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing (renamed from gradient checkpointing in transformers 5.x)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def lora_target_modules(model: nn.Module, lora: LoraConfig) -> list[str]:
    """Full names of the modules LoRA adapts, resolved from ``lora.target_modules``.

    "all-linear" takes every ``nn.Linear``; a comma list matches module names by
    their last parts (``q_proj`` or ``self_attn.q_proj``); anything with regex
    characters is matched against full names. Only the language model is searched
    unless ``lora.vision_tower`` (then also the vision tower and projector);
    the output head (``lm_head``) is never adapted.
    """
    scope = _lora_scope(model, lora.vision_tower)
    spec = lora.target_modules.strip()
    if spec == "all-linear":
        names = [n for n, m in scope.items() if isinstance(m, nn.Linear)]
    elif _REGEX_CHARS & set(spec):
        try:
            pattern = re.compile(spec)
        except re.error as e:
            raise ConfigError(f"model.lora.target_modules {spec!r} is not a valid regex: {e}") from None
        names = [n for n in scope if pattern.fullmatch(n)]
    else:
        wanted = [w.strip() for w in spec.split(",") if w.strip()]
        names = [n for n in scope if any(n == w or n.endswith("." + w) for w in wanted)]
    if not names:
        where = "language model, vision tower and projector" if lora.vision_tower else "language model"
        example = next((n for n, m in scope.items() if isinstance(m, nn.Linear)), "?")
        raise ConfigError(
            f"model.lora.target_modules {spec!r} matches no module of the {where}; "
            f"use all-linear, names such as q_proj,v_proj, or a regex over full names like {example!r}"
        )
    return names


def _lora_scope(model: nn.Module, vision_tower: bool) -> dict[str, nn.Module]:
    """{full name: module} LoRA may adapt: the language model, plus the rest (vision) if asked."""
    head = model.get_output_embeddings()
    modules = {n: m for n, m in model.named_modules() if n and m is not head}
    if vision_tower:
        return modules
    decoder = model.get_decoder()
    prefix = next((n for n, m in modules.items() if m is decoder), None)
    if prefix is None:
        raise ConfigError(
            f"cannot find the language model inside {type(model).__name__} to adapt it alone; "
            f"set model.lora.vision_tower=true or give model.lora.target_modules as a regex"
        )
    return {n: m for n, m in modules.items() if n.startswith(prefix + ".")}
