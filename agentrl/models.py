"""Loading a vision-language model and choosing what of it trains.

Any local Hugging Face image-text-to-text checkpoint loads through
``AutoProcessor`` + ``AutoModelForImageTextToText`` (LLaVA, LLaVA-NeXT,
Qwen2-VL / 2.5-VL, Idefics3 / SmolVLM); ``model.path: tiny`` is the built-in
offline model of :mod:`agentrl.tiny`. Nothing is ever downloaded.
"""

from __future__ import annotations

import inspect
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agentrl.config import ConfigError, LoraConfig, ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_REGEX_CHARS = set("\\^$.*+?()[]{}|")


def resolve_model_path(path: str) -> Path:
    """The checkpoint directory for ``model.path``: "tiny" builds (once) the offline tiny model."""
    if path == "tiny":
        from agentrl.tiny import tiny_model_path

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


def load_processor(path: Path, name: str | None = None) -> Any:
    """The checkpoint's processor, with an image processor and a tokenizer, or a ConfigError saying why not.

    ``AutoProcessor`` first. Where that fails only because the processor's video part needs a package
    this machine lacks (Qwen2-VL / 2.5-VL's video processor wants torchvision), or where it quietly
    returns a bare tokenizer for a checkpoint that has an image processor, the processor class the
    checkpoint names is built from its image processor, tokenizer and chat template alone
    (:func:`image_only_processor`): agentrl feeds images, never videos.
    """
    from transformers import AutoProcessor

    name = name or str(path)
    class_name = _processor_class(path)
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        cause = None
    except (ImportError, OSError, ValueError) as e:  # ImportError: e.g. torchvision for Qwen2-VL's video part
        if class_name is None or not isinstance(e, ImportError) and not _has_video_part(class_name):
            raise ConfigError(f"model.path {name!r} has no loadable processor: {e}") from e
        processor, cause = None, e
    if _is_vlm_processor(processor):
        return processor
    if class_name is None:
        raise ConfigError(
            f"model.path {name} is not a vision-language checkpoint (AutoProcessor gave "
            f"{type(processor).__name__}, with no image processor and tokenizer, and no processor class is named in "
            f"processor_config.json, preprocessor_config.json or tokenizer_config.json); give a Hugging Face "
            f"image-text-to-text checkpoint such as llava-hf/llava-1.5-7b-hf"
        ) from cause
    try:
        processor = _image_only_from_pretrained(path, class_name)
    except (ImportError, OSError, ValueError, TypeError, AttributeError) as e:
        why = f"AutoProcessor failed with {type(cause).__name__}: {_first_line(cause)}" if cause else (
            f"AutoProcessor gave a bare {type(processor).__name__}")
        missing = _missing_package(cause) or _missing_package(e)
        todo = f"pip install {missing}" if missing else "install the packages it names or upgrade transformers"
        raise ConfigError(
            f"model.path {name!r} names processor class {class_name!r}, which does not load here ({why}), "
            f"nor without its video part ({type(e).__name__}: {_first_line(e)}); {todo}"
        ) from e
    return processor


def _first_line(e: BaseException) -> str:
    return next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)


def _missing_package(e: BaseException | None) -> str | None:
    """The package an ImportError says is missing ("No module named x", or transformers' "requires the X library")."""
    if not isinstance(e, ImportError):
        return None
    found = re.search(r"requires the (\S+) library", str(e))
    return e.name or (found.group(1).lower() if found else None)


def _is_vlm_processor(processor: Any) -> bool:
    return getattr(processor, "image_processor", None) is not None and getattr(processor, "tokenizer", None) is not None


def _has_video_part(class_name: str) -> bool:
    import transformers

    cls = getattr(transformers, class_name, None)
    return isinstance(cls, type) and "video_processor" in inspect.signature(cls.__init__).parameters


def _processor_class(path: Path) -> str | None:
    """The processor class a checkpoint names in its saved configs, or None."""
    import json

    for file in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        try:
            name = json.loads((path / file).read_text()).get("processor_class")
        except (OSError, ValueError, AttributeError):
            continue
        if name:
            return str(name)
    return None


def _image_only_from_pretrained(path: Path, class_name: str) -> Any:
    """``class_name`` (a transformers processor class) from the checkpoint's image processor, tokenizer and
    chat template, without any video processor."""
    import json

    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    cls = getattr(transformers, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, transformers.ProcessorMixin):
        raise ValueError(f"transformers {transformers.__version__} has no processor class {class_name!r}")
    image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    template = None
    if (path / "chat_template.jinja").is_file():
        template = (path / "chat_template.jinja").read_text()
    elif (path / "chat_template.json").is_file():
        template = json.loads((path / "chat_template.json").read_text()).get("chat_template")
    template = template or getattr(tokenizer, "chat_template", None)
    saved: dict[str, Any] = {}
    if (path / "processor_config.json").is_file():
        saved = json.loads((path / "processor_config.json").read_text())
    # the processor's own settings (Idefics3's image_seq_len, ...), not its sub-processors
    accepted = inspect.signature(cls.__init__).parameters
    keep = {k: v for k, v in saved.items() if k in accepted and
            k not in ("image_processor", "tokenizer", "video_processor", "chat_template")}
    image_only = image_only_processor(cls)
    if image_only is not cls:  # kept, so that saving this processor keeps the checkpoint's video settings
        video = saved.get("video_processor")
        if video is None and (path / "video_preprocessor_config.json").is_file():
            video = json.loads((path / "video_preprocessor_config.json").read_text())
        keep["video_config"] = video
    return image_only(image_processor=image_processor, tokenizer=tokenizer, chat_template=template, **keep)


_IMAGE_ONLY: dict[type, type] = {}


def image_only_processor(cls: type) -> type:
    """A subclass of processor class ``cls`` that has no video processor (so needs no torchvision).

    It processes images and text exactly as ``cls`` does and carries ``cls``'s name, so what it
    saves names the stock class; ``video_config`` (the checkpoint's video processor
    settings, if any) is saved with it, so a machine with torchvision loads the same files with
    the stock class, video processor included. Classes without a video processor come back as they are.
    """
    if "video_processor" not in inspect.signature(cls.__init__).parameters:
        return cls
    if cls not in _IMAGE_ONLY:

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, video_config=None,
                     **kwargs):
            # the parent's setup runs as usual; ProcessorMixin keeps only the attributes this signature names
            cls.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)
            self.video_config = video_config

        def to_dict(self) -> dict[str, Any]:
            out = cls.to_dict(self)
            out.pop("video_config", None)
            return out | ({"video_processor": self.video_config} if self.video_config else {})

        _IMAGE_ONLY[cls] = type(cls.__name__, (cls,), {
            "__init__": __init__, "to_dict": to_dict, "__module__": __name__,
            "__qualname__": f"image_only_processor.<{cls.__name__}>",
            "__doc__": f"{cls.__name__} without its video processor (images only; no torchvision needed)."})
    return _IMAGE_ONLY[cls]


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


def suppressed_token_ids(processor: Any) -> list[int]:
    """Token ids a sampled answer must never contain: the image (and video) placeholders.

    Re-forwarding a sequence with an extra placeholder fails ("Image features and
    image tokens do not match"), so pass these to ``generate(suppress_tokens=...)``.
    """
    ids = [_placeholder_id(processor, kind) for kind in ("image", "video")]
    if ids[0] is None:
        raise ConfigError(
            f"{type(processor).__name__} names no image token; is this a vision-language processor?"
        )
    return sorted({i for i in ids if i is not None})


def image_token_count(processor: Any, width: int, height: int) -> int:
    """Placeholder tokens one ``width`` x ``height`` image expands to (found by running the processor)."""
    from PIL import Image

    image_id = _placeholder_id(processor, "image")
    if image_id is None:
        raise ConfigError(
            f"{type(processor).__name__} names no image token; is this a vision-language processor?"
        )
    token = processor.tokenizer.convert_ids_to_tokens(image_id)
    batch = processor(text=[token], images=[Image.new("RGB", (width, height))], return_tensors="pt")
    return int((batch["input_ids"] == image_id).sum())


def _placeholder_id(processor: Any, kind: str) -> int | None:
    """The id of the processor's ``kind`` ("image", "video") placeholder token, or None."""
    tokenizer = processor.tokenizer
    token_id = getattr(processor, f"{kind}_token_id", None)
    token = getattr(processor, f"{kind}_token", None)
    if token_id is None and isinstance(token, str):
        token_id = tokenizer.convert_tokens_to_ids(token)
    if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
        return token_id
    return None
