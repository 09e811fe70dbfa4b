"""Tiny random-weight VLMs of every supported family, built offline in seconds and loaded through the same
``from_pretrained`` path as a real checkpoint: :mod:`.spec` (shapes, tokens, tokenizer), :mod:`.llava` (the
default), :mod:`.families` (LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, Idefics3), :mod:`.build` (the cache and
``agentrl make-tiny-model``)."""
