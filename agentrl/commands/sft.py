"""`agentrl sft`: supervised warm start on expert answers, before PPO (the paper's SFT stage).

Data (``sft.data``): the env's expert or a JSONL file, see :mod:`agentrl.data.sft`.

Loss: cross-entropy on the answer tokens (and the closing EOS) only; prompt and
padding labels are -100. The checkpoint has fit's layout (see
:mod:`agentrl.training.checkpoint`) without a value head: ``policy.init_from=DIR`` starts
PPO from it with a fresh value head, and a full fine-tune's ``DIR/model`` is a
plain Hugging Face checkpoint for ``model.path``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.loggers import TensorBoardLogger
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor

from agentrl.config import Config, ConfigError, to_yaml
from agentrl.config.registry import Components
from agentrl.console import make_console
from agentrl.data.memory import encode_prompt, has_frames, within_budget
from agentrl.data.sft import Example, load_examples, make_template, perception, with_sft_expert
from agentrl.policy.module import PolicyModule
from agentrl.policy.sharding import full_weights, is_sharded
from agentrl.prompting.batching import Prompt
from agentrl.prompting.templates import PromptTemplate
from agentrl.training.checkpoint import load_trainable, resolve_resume, run_meta, save_checkpoint
from agentrl.training.distributed import make_fabric

IGNORE = -100
"""Label of a token the loss skips (prompt and padding)."""


# ---------------------------------------------------------------- batches and loss


@dataclass
class Encoded:
    """An example processed once: prompt tensors and answer token ids (EOS included)."""

    prompt: Prompt
    answer_ids: Tensor


def encode(policy: PolicyModule, examples: list[Example], template: PromptTemplate | None = None,
           max_image_tokens: int | None = None) -> list[Encoded]:
    """Process ``examples``; expert ones whose earlier steps carry images stay within ``max_image_tokens``
    (``prompt.max_image_tokens``, rendered again by ``template``) as rollouts do."""
    tok = policy.tokenizer
    out = []
    for ex in examples:
        ids = tok(ex.answer, add_special_tokens=False).input_ids + [policy.sampler.eos_id]
        if template is not None and max_image_tokens is not None and ex.obs is not None and has_frames(ex.history):
            prompt = encode_prompt(policy, template, ex.obs, ex.history, max_image_tokens)
        else:
            prompt = within_budget(policy, policy.encode(ex.messages, ex.image), max_image_tokens)
        out.append(Encoded(prompt, torch.tensor(ids, dtype=torch.long)))
    return out


def answers(policy: PolicyModule, examples: list[Example], *, greedy: bool = True, batch: int = 24
            ) -> list[tuple[dict[str, Any], dict[str, Any], str]]:
    """(expert fields, the policy's fields, its raw text) per example; fields are ``{}`` unless a JSON object.

    For checking what a checkpoint writes on held-out states (digits, thoughts, action).
    """
    enc = encode(policy, examples)
    out = []
    for lo in range(0, len(enc), batch):
        gen = policy.generate([e.prompt for e in enc[lo : lo + batch]], greedy=greedy)
        for ex, text in zip(examples[lo : lo + batch], gen.texts):
            try:
                got = json.loads(text)
            except ValueError:
                got = None
            out.append((json.loads(ex.answer), got if isinstance(got, dict) else {}, text))
    return out


def collate(policy: PolicyModule, batch: list[Encoded]) -> tuple[dict[str, Tensor], Tensor]:
    """Model inputs [left-padded prompt | right-padded answer] and labels (B, P + L), -100 off the answer."""
    inputs = policy.collate_train([e.prompt for e in batch], [e.answer_ids for e in batch],
                                  [torch.ones(len(e.answer_ids)) for e in batch], share=False)
    labels = torch.full_like(inputs.model_inputs["input_ids"], IGNORE)
    labels[:, inputs.prompt_len:] = torch.where(inputs.weights > 0, inputs.gen_ids, IGNORE)
    return inputs.model_inputs, labels


def sft_loss(model: torch.nn.Module, inputs: dict[str, Tensor], labels: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy over answer tokens, and their greedy token accuracy."""
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    labels = labels.to(device)
    first = int((labels != IGNORE).any(0).int().argmax())  # no logits needed before the answer
    logits = model(**inputs, use_cache=False, logits_to_keep=labels.shape[1] - first + 1).logits
    logits, target = logits[:, :-1].float(), labels[:, first:]  # position i predicts token i + 1
    mask = target != IGNORE
    loss = torch.nn.functional.cross_entropy(logits[mask], target[mask])
    acc = (logits[mask].argmax(-1) == target[mask]).float().mean()
    return loss, acc


# ---------------------------------------------------------------- the run


def build_policy(cfg: Config) -> PolicyModule:
    """Model with the configured fine-tuning, wrapped as a PolicyModule (value head frozen: not trained here)."""
    policy = Components.resolve(cfg).make_policy(cfg)
    policy.value_head.requires_grad_(False)
    return policy


def train(policy: PolicyModule, data: list[Encoded], cfg: Config, console: Console | None = None,
          warmup: list[Encoded] | None = None, fabric: Any = None) -> dict[str, float]:
    """``sft.perception_epochs`` passes over ``warmup``, then ``sft.epochs`` over ``data`` (Adam, one cosine).

    Runs on ``fabric`` (default: one process on ``trainer.accelerator`` at ``trainer.precision``).
    With several processes each takes its share of every batch (every rank holds the same examples)
    and DDP averages the gradients. Every optimizer step logs ``sft/loss``, ``sft/token_accuracy`` (of the
    answer tokens), ``sft/lr`` (and ``sft/vision_lr``) to the fabric's loggers, at steps 1, 2, ...
    Returns the last epoch's mean loss and token accuracy (over all ranks), seconds and steps.
    """
    s = cfg.sft
    if fabric is None:
        fabric = make_fabric(cfg.trainer, devices=1)
    rank, world = fabric.global_rank, fabric.world_size
    policy.to(fabric.device)
    model = policy.model
    model.train()
    if fabric.world_size > 1 and cfg.trainer.strategy == "fsdp":  # FSDP2: the optimizer is made over the shards
        with_image = {"pixel_values" in e.prompt for e in data}
        if len(with_image) > 1:  # the vision blocks' gathers would run on some ranks only: a hang
            raise ConfigError(f"trainer.strategy=fsdp: {sum('pixel_values' in e.prompt for e in data)} of "
                              f"{len(data)} SFT examples have an image and the rest none; a sharded vision tower "
                              f"runs only for batches with images, so ranks would wait on each other. Give every "
                              f"example an image (or none), or use trainer.strategy=ddp")
        model_f = fabric.setup_module(model)
        optimizer = fabric.setup_optimizers(torch.optim.Adam(policy.param_groups(s.lr, s.vision_lr)))
    else:
        model_f, optimizer = fabric.setup(model, torch.optim.Adam(policy.param_groups(s.lr, s.vision_lr)))
    stages = [("perception", warmup or [])] * s.perception_epochs + [("", data)] * s.epochs
    stages = [(name, d) for name, d in stages if d]
    total = sum(math.ceil(len(d) / s.batch_size) for _, d in stages)
    scheduler = torch.optim.lr_scheduler.LambdaLR(  # cosine to a tenth of each group's lr
        optimizer, lambda i: 0.1 + 0.45 * (1 + math.cos(math.pi * min(i, total) / total)))
    gen = torch.Generator().manual_seed(cfg.seed)
    progress = Progress(TextColumn("[bold]SFT"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                        console=console or make_console(), disable=rank != 0)
    task = progress.add_task("sft", total=total, status="")
    sums = {"loss": 0.0, "token_accuracy": 0.0}
    t0, step = time.perf_counter(), 0
    with progress:
        for epoch, (stage, epoch_data) in enumerate(stages):
            sums = {"loss": 0.0, "token_accuracy": 0.0}
            for idx in torch.randperm(len(epoch_data), generator=gen).split(s.batch_size):
                mine = idx[rank::world] if len(idx) >= world else idx[:1]  # a batch smaller than the world repeats
                inputs, labels = collate(policy, [epoch_data[i] for i in mine.tolist()])
                loss, acc = sft_loss(model_f, inputs, labels)
                fabric.backward(loss)
                fabric.clip_gradients(model_f, optimizer, max_norm=s.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                lrs = [g["lr"] for g in optimizer.param_groups]  # those of the step just taken
                scheduler.step()
                both = torch.stack([loss.detach().float(), acc.detach().float()])
                if world > 1:
                    both = fabric.all_reduce(both, reduce_op="mean")
                loss_f, acc_f = both.tolist()  # device sync, once per step
                sums["loss"] += loss_f * len(idx)
                sums["token_accuracy"] += acc_f * len(idx)
                step += 1
                scalars = {"sft/loss": loss_f, "sft/token_accuracy": acc_f, "sft/lr": lrs[0]}
                if len(lrs) > 1:
                    scalars["sft/vision_lr"] = lrs[1]
                fabric.log_dict(scalars, step=step)
                progress.update(task, advance=1, status=f"epoch {epoch + 1}/{len(stages)} {stage}  "
                                                        f"loss {loss_f:.4f}  token acc {acc_f:.1%}")
    model.eval()
    metrics = {k: v / len(stages[-1][1]) for k, v in sums.items()}
    metrics.update(seconds=time.perf_counter() - t0, steps=float(total), examples=float(len(data)))
    return metrics


def sft(cfg: Config, argv: list[str] | None = None) -> Path:
    """Run SFT as configured; returns the checkpoint directory (``<trainer.out_dir>/checkpoints/sft``).

    Through Fabric like ``fit``: ``trainer.accelerator``, ``devices`` (DDP over several), ``precision``.
    """
    from transformers.utils import logging as hf_logging

    from agentrl.training.build import set_threads

    hf_logging.disable_progress_bar()
    out_dir = Path(cfg.trainer.out_dir)
    logger = TensorBoardLogger(root_dir=str(out_dir), name="tensorboard", version="")  # fit's layout
    fabric = make_fabric(cfg.trainer, loggers=logger)
    fabric.launch()
    set_threads(cfg.trainer.num_threads, fabric.world_size)
    torch.manual_seed(cfg.seed)
    console = make_console(quiet=not fabric.is_global_zero)
    if cfg.trainer.checkpoint_format == "sharded":  # said before the run, not discovered after it
        console.log("sft: trainer.checkpoint_format=sharded applies to fit's checkpoints; sft writes its one "
                    "checkpoint as full weights (what policy.init_from and agentrl export read)")
    if cfg.sft.data == "expert":
        with_sft_expert(cfg)  # a wrong sft.expert stops the run before the model is built
    policy = build_policy(cfg)
    examples = load_examples(cfg)
    console.log(f"sft: {len(examples)} examples from {cfg.sft.data}; e.g. {examples[0].answer}")
    warmup = encode(policy, [perception(e) for e in examples]) if cfg.sft.perception_epochs else None
    template, budget = make_template(cfg), cfg.prompt.max_image_tokens
    if fabric.world_size > 1:  # DDP needs every trainable parameter to get a gradient
        policy.to(fabric.device).freeze_unreachable(encode(policy, examples[:1], template, budget)[0].prompt)
    if cfg.policy.init_from:  # continue from an earlier sft or fit checkpoint's weights (after the freeze, as fit)
        # a fit checkpoint lacks what fit froze as unreachable: those keep the base weights fit never changed
        load_trainable(policy, resolve_resume(cfg.policy.init_from, "policy.init_from"), value_head=False,
                       all_trainable=False)
        console.log(f"sft: starting from the weights of {cfg.policy.init_from}")
    metrics = train(policy, encode(policy, examples, template, budget), cfg, console, warmup, fabric=fabric)
    logger.finalize("success")
    meta = run_meta(list(argv or sys.argv))
    state = {"format_version": 1, "kind": "sft", "update": 0, "metrics": metrics}
    ckpt = out_dir / "checkpoints" / "sft"
    weights = None
    if is_sharded(policy):  # every rank takes part in gathering the full weights
        weights = full_weights(policy, trainable_only=hasattr(policy.model, "peft_config"))
    if fabric.is_global_zero:
        save_checkpoint(ckpt, policy=policy, trainer_state=state, config_yaml=to_yaml(cfg), meta=meta,
                        weights=weights)
        (ckpt / "sft_metrics.json").write_text(json.dumps(metrics, indent=2))
    fabric.barrier()
    console.log(f"sft: loss {metrics['loss']:.4f}, token accuracy {metrics['token_accuracy']:.1%} in "
                f"{metrics['seconds']:.0f} s; checkpoint {ckpt} (start PPO with policy.init_from={ckpt}); "
                f"curves: tensorboard --logdir {out_dir / 'tensorboard'}")
    return ckpt
