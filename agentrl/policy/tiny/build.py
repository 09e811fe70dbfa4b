"""Building and caching the tiny offline VLMs: ``model.path: tiny`` and ``agentrl make-tiny-model``.

:func:`tiny_model_path` builds the tiny model of a family once, into ``$AGENTRL_CACHE`` (or
``~/.cache/agentrl``), under a name that changes with the build settings, the seed and the
tokenizer corpus (the tasks' own prompts, :func:`agentrl.prompting.templates.tokenizer_corpus`).
The LLaVA build is :mod:`.llava`, the other families :mod:`.families`, their sizes :mod:`.spec`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agentrl.policy.tiny.llava import tiny_vlm
from agentrl.policy.tiny.spec import SIZES, TinySpec


def build_tiny_vlm(
    out_dir: str | Path, corpus: Iterable[str], *, seed: int = 0, spec: TinySpec | None = None, dtype: Any = None,
    family: str = "llava",
) -> Path:
    """Build the tiny VLM (see :func:`tiny_vlm`; another ``family``: :func:`agentrl.policy.tiny.families.family_vlm`)
    and ``save_pretrained`` model and processor into ``out_dir``."""
    from transformers.utils import logging as hf_logging

    if family == "llava":
        model, processor = tiny_vlm(corpus, seed=seed, spec=spec, dtype=dtype)
    else:
        from agentrl.policy.tiny.families import family_vlm

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
    from agentrl.prompting.templates import tokenizer_corpus

    return list(tokenizer_corpus())


def cache_root() -> Path:
    """``$AGENTRL_CACHE``, else ``~/.cache/agentrl``."""
    return Path(os.environ.get("AGENTRL_CACHE") or Path.home() / ".cache" / "agentrl")


FAMILY_BUILD_VERSION = 1
"""Bump when :mod:`agentrl.policy.tiny.families` changes in a way the spec does not show (LLaVA's names keep ``build_version``)."""


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
    ``family`` (:data:`agentrl.policy.tiny.families.FAMILIES`): LLaVA, or the same widths as LLaVA-NeXT,
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
        from agentrl.policy.processors import image_token_count, load_processor

        tokens = image_token_count(load_processor(path), spec.image_size, spec.image_size)
    print(
        f"{size} VLM ({config.model_type}, {size_mb:.1f} MB of weights, "
        f"{tokens} image tokens of {spec.image_size} px) written to {path} in {seconds:.1f} s"
    )
    return 0
