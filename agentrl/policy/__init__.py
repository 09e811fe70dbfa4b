"""The actor-critic and everything of the model: :mod:`.module` (PolicyModule, a LightningModule:
configure_optimizers, training_step, generate, the teacher-forced forward), :mod:`.value_head`,
:mod:`.decoding` (the own decode loop, KV cache, sampler), :mod:`.loading` and :mod:`.processors` (any local
Hugging Face VLM, offline), :mod:`.finetuning` (LoRA or full, float32 trainables), :mod:`.sharding` (FSDP2)
and :mod:`.tiny` (the tiny offline VLMs of every family)."""
