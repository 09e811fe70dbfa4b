"""A checkpoint's processor (image processor + tokenizer + chat template), loaded offline, and the facts of it
the policy needs: its image placeholder tokens and how many tokens one image becomes.

Qwen2-VL / 2.5-VL's stock processor needs torchvision for its video part; without it the same processor
class is built from the checkpoint's image processor, tokenizer and chat template
(:func:`image_only_processor`): agentrl feeds images, never videos.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

from agentrl.config import ConfigError


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
