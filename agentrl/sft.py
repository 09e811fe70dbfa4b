"""`agentrl sft`: supervised warm start on expert answers, before PPO (the paper's SFT stage).

Data (``sft.data``):
  expert   the env's own expert (``EnvModule.expert_fields()``) labels the states met
           along trajectories that step with the expert's action, or with a random legal
           one with probability ``sft.explore`` (diverse states). The answer is the prompt
           template's ``answer(fields)``: with ``prompt.cot=false`` the action only. With
           probability ``sft.noise`` the labelled action is replaced by a random *other*
           legal action, so ``noise`` is exactly the expected share of non-expert labels.
  x.jsonl  one JSON object per line::

             {"image": "img/0001.png" | null,          # relative to the JSONL's folder
              "prompt": "user text ..."                # the user turn, verbatim, or
              "obs": {"text": ..., "legal_actions": [...], "env_id": "numberline",
                      "task": "", "extra": {}},        # an EnvObs the prompt template renders
              "history": [["state text", "action"], ...],   # optional, with "obs": earlier steps
              "answer": "{\"action\": \"+\"}" | {"thoughts": ..., "action": "+"}}

           ``answer`` is the target text, or fields that the template turns into JSON.
           ``history`` (oldest first) is rendered as in rollouts with ``prompt.history``; the
           last ``prompt.history`` steps are kept.

Loss: cross-entropy on the answer tokens (and the closing EOS) only; prompt and
padding labels are -100. The checkpoint has fit's layout (see
:mod:`agentrl.checkpoint`) without a value head: ``policy.init_from=DIR`` starts
PPO from it with a fresh value head, and a full fine-tune's ``DIR/model`` is a
plain Hugging Face checkpoint for ``model.path``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor

from agentrl.batching import Prompt
from agentrl.checkpoint import run_meta, save_checkpoint
from agentrl.config import Config, ConfigError, to_yaml
from agentrl.distributed import make_fabric
from agentrl.envs.base import EnvObs
from agentrl.policy import PolicyModule
from agentrl.prompts import PromptTemplate
from agentrl.registry import Components
from agentrl.rollout import EpisodeMemory

IGNORE = -100
"""Label of a token the loss skips (prompt and padding)."""

VISION_KEYS = ("vision_tower", "multi_modal_projector", "visual")
"""Parameter-name parts of the vision path (``sft.vision_lr``)."""


@dataclass
class Example:
    """One supervised example before processing."""

    messages: list[dict[str, Any]]
    """Chat messages of the prompt (one user turn)."""
    image: np.ndarray | None
    """RGB image (H, W, 3) uint8, or None."""
    answer: str
    """Target text of the assistant turn."""
    obs: EnvObs | None = None
    """The observation it was made from (expert data), for tests and readout checks."""
    expert_action: str | None = None
    """The expert's own action (expert data); differs from the answer's with probability sft.noise."""


def make_template(cfg: Config) -> PromptTemplate:
    """The prompt template the config names ("auto": the env family's own)."""
    return Components.resolve(cfg).make_template(cfg)


def expert_examples(cfg: Config, n: int, *, split: str = "train", seed: int | None = None) -> list[Example]:
    """``n`` expert-labelled states of ``split`` (see the module docstring for explore and noise).

    Prompts carry the episode's last ``prompt.history`` steps, as in rollouts.
    """
    parts = Components.resolve(cfg)
    template = parts.make_template(cfg)
    seed = cfg.seed if seed is None else seed
    rng = np.random.default_rng([seed, 0x5F7])
    envs = parts.make_env(cfg, split)
    memory = EpisodeMemory(envs.num_envs, cfg.prompt.history)
    out: list[Example] = []
    try:
        obs = envs.reset(seed)
        while len(out) < n:
            actions = []
            for i, (o, fields) in enumerate(zip(obs, envs.expert_fields())):
                fields = dict(fields)
                expert = str(fields["action"])
                others = [a for a in o.legal_actions if a != expert]
                if others and rng.random() < cfg.sft.noise:
                    fields["action"] = others[rng.integers(len(others))]
                out.append(Example(template.messages(o, memory.history(i)), o.image, template.answer(fields), o,
                                   expert))
                explore = rng.random() < cfg.sft.explore
                actions.append(o.legal_actions[rng.integers(len(o.legal_actions))] if explore else expert)
            step = envs.step(actions)
            for i, (o, action) in enumerate(zip(obs, actions)):
                memory.record(i, o, action)
            for i in np.flatnonzero(step.terminated | step.truncated):
                memory.clear(i)
            obs = step.obs
    finally:
        envs.close()
    return out[:n]


MAX_FIELD_CHARS = 100_000
"""Longest text a JSONL field may hold (a 10 MB field once ran a run to 9 GB of memory)."""


def jsonl_examples(path: str | Path, template: PromptTemplate, history: int = 0) -> list[Example]:
    """Examples from a JSONL file (format in the module docstring); every bad row exits naming file:line and why.

    ``history`` is ``prompt.history``: how many of a row's earlier steps the prompt shows.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sft.data={str(path)!r} does not exist; give a JSONL file or 'expert'")
    out = []
    for i, raw in enumerate(path.read_bytes().splitlines(), 1):
        where = f"sft.data {path}:{i}"
        if len(raw) > 4 * MAX_FIELD_CHARS:
            raise ConfigError(f"{where}: the line has {len(raw)} characters; at most {4 * MAX_FIELD_CHARS}")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{where}: not UTF-8 ({e.reason} at byte {e.start})") from None
        if line.strip():
            out.append(_jsonl_row(line, where, path.parent, template, history))
    if not out:
        raise ConfigError(f"sft.data {path} holds no examples")
    return out


def _jsonl_row(line: str, where: str, folder: Path, template: PromptTemplate, history: int) -> Example:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(row, dict) or "answer" not in row or ("prompt" in row) == ("obs" in row):
        raise ConfigError(f"{where}: needs 'answer' and exactly one of 'prompt' or 'obs'")
    for key in ("prompt", "image"):
        if key in row and not (isinstance(row[key], str) or (key == "image" and row[key] is None)):
            raise ConfigError(f"{where}: '{key}' must be a string{' or null' if key == 'image' else ''}, "
                              f"got {type(row[key]).__name__}")
    for key, value in row.items():
        if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
            raise ConfigError(f"{where}: '{key}' has {len(value)} characters; at most {MAX_FIELD_CHARS}")
    image = None
    if row.get("image"):
        image_path = folder / row["image"]
        if not image_path.is_file():
            raise ConfigError(f"{where}: image {str(image_path)!r} does not exist")
        try:
            image = np.asarray(Image.open(image_path).convert("RGB"))
        except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
            raise ConfigError(f"{where}: image {str(image_path)!r} is not an image PIL can read ({e})") from None
    obs = None
    if "obs" in row:
        fields = row["obs"]
        try:
            obs = EnvObs(image=image, **fields)
        except TypeError as e:
            raise ConfigError(f"{where}: bad 'obs' ({e}); keys are text, legal_actions, env_id, task, extra") \
                from None
        if not (isinstance(obs.legal_actions, list) and obs.legal_actions
                and all(isinstance(a, str) for a in obs.legal_actions)) or not isinstance(obs.text, str):
            raise ConfigError(f"{where}: 'obs' needs text (a string) and legal_actions (a non-empty list of strings)")
        steps = row.get("history", [])
        if not (isinstance(steps, list) and all(
                isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h) for h in steps)):
            raise ConfigError(f"{where}: 'history' must be a list of [state text, action] string pairs")
        messages = template.messages(obs, [tuple(h) for h in steps][-history:] if history else [])
    else:
        content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": row["prompt"]}]
        messages = [{"role": "user", "content": content}]
    answer = row["answer"]
    if isinstance(answer, dict) and "action" in answer:
        answer = template.answer(dict(answer))
    if not isinstance(answer, str):
        raise ConfigError(f"{where}: 'answer' must be the target text or an object with an 'action' key, "
                          f"got {json.dumps(answer)[:80]}")
    return Example(messages, image, answer, obs)


def load_examples(cfg: Config) -> list[Example]:
    """The examples ``sft.data`` names, cut to ``sft.max_examples``."""
    s = cfg.sft
    if s.data == "expert":
        examples = expert_examples(cfg, s.examples if s.max_examples is None else min(s.examples, s.max_examples))
    else:
        examples = jsonl_examples(s.data, make_template(cfg), cfg.prompt.history)
    return examples if s.max_examples is None else examples[: s.max_examples]


# ---------------------------------------------------------------- batches and loss


@dataclass
class Encoded:
    """An example processed once: prompt tensors and answer token ids (EOS included)."""

    prompt: Prompt
    answer_ids: Tensor


def encode(policy: PolicyModule, examples: list[Example]) -> list[Encoded]:
    tok = policy.tokenizer
    out = []
    for ex in examples:
        ids = tok(ex.answer, add_special_tokens=False).input_ids + [policy.sampler.eos_id]
        out.append(Encoded(policy.encode(ex.messages, ex.image), torch.tensor(ids, dtype=torch.long)))
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


def param_groups(model: torch.nn.Module, lr: float, vision_lr: float | None) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: the vision path (``vision_lr``) and the rest (``lr``)."""
    vision, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (vision if any(k in name for k in VISION_KEYS) else rest).append(p)
    groups = [{"params": rest, "lr": lr}]
    if vision:
        groups.append({"params": vision, "lr": vision_lr if vision_lr is not None else lr})
    return groups


# ---------------------------------------------------------------- the run


def build_policy(cfg: Config) -> PolicyModule:
    """Model with the configured fine-tuning, wrapped as a PolicyModule (value head frozen: not trained here)."""
    policy = Components.resolve(cfg).make_policy(cfg)
    policy.value_head.requires_grad_(False)
    return policy


def perception(example: Example) -> Example:
    """The warm-up form of ``example``: the image alone as prompt, and as answer only the fields read
    from it (the JSON keys before "thoughts", e.g. NumberLine's numbers); the whole answer when it has none.
    """
    messages = [{**m, "content": [c for c in m["content"] if c.get("type") == "image"]} for m in example.messages]
    answer = example.answer
    try:
        fields = json.loads(answer)
    except ValueError:
        fields = None
    if isinstance(fields, dict) and "thoughts" in fields:
        keys = list(fields)
        seen = {k: fields[k] for k in keys[: keys.index("thoughts")]}
        if seen:
            answer = json.dumps(seen, ensure_ascii=False)
    return replace(example, messages=messages, answer=answer)


def train(policy: PolicyModule, data: list[Encoded], cfg: Config, console: Console | None = None,
          warmup: list[Encoded] | None = None, fabric: Any = None) -> dict[str, float]:
    """``sft.perception_epochs`` passes over ``warmup``, then ``sft.epochs`` over ``data`` (Adam, one cosine).

    Runs on ``fabric`` (default: one process on ``trainer.accelerator`` at ``trainer.precision``).
    With several processes each takes its share of every batch (every rank holds the same examples)
    and DDP averages the gradients. Returns the last epoch's mean loss and token accuracy (over all
    ranks), seconds and steps.
    """
    s = cfg.sft
    if fabric is None:
        fabric = make_fabric(cfg.trainer, devices=1)
    rank, world = fabric.global_rank, fabric.world_size
    policy.to(fabric.device)
    model = policy.model
    model.train()
    model_f, optimizer = fabric.setup(model, torch.optim.Adam(param_groups(model, s.lr, s.vision_lr)))
    stages = [("perception", warmup or [])] * s.perception_epochs + [("", data)] * s.epochs
    stages = [(name, d) for name, d in stages if d]
    total = sum(math.ceil(len(d) / s.batch_size) for _, d in stages)
    scheduler = torch.optim.lr_scheduler.LambdaLR(  # cosine to a tenth of each group's lr
        optimizer, lambda i: 0.1 + 0.45 * (1 + math.cos(math.pi * min(i, total) / total)))
    gen = torch.Generator().manual_seed(cfg.seed)
    progress = Progress(TextColumn("[bold]SFT"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                        console=console or Console(stderr=True), disable=rank != 0)
    task = progress.add_task("sft", total=total, status="")
    sums = {"loss": 0.0, "token_accuracy": 0.0}
    t0 = time.perf_counter()
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
                scheduler.step()
                both = torch.stack([loss.detach().float(), acc.detach().float()])
                if world > 1:
                    both = fabric.all_reduce(both, reduce_op="mean")
                loss_f, acc_f = both.tolist()  # device sync, once per step
                sums["loss"] += loss_f * len(idx)
                sums["token_accuracy"] += acc_f * len(idx)
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

    from agentrl.fit import set_threads

    hf_logging.disable_progress_bar()
    fabric = make_fabric(cfg.trainer)
    fabric.launch()
    set_threads(cfg.trainer.num_threads, fabric.world_size)
    torch.manual_seed(cfg.seed)
    console = Console(stderr=True, quiet=not fabric.is_global_zero)
    policy = build_policy(cfg)
    examples = load_examples(cfg)
    console.log(f"sft: {len(examples)} examples from {cfg.sft.data}; e.g. {examples[0].answer}")
    warmup = encode(policy, [perception(e) for e in examples]) if cfg.sft.perception_epochs else None
    if fabric.world_size > 1:  # DDP needs every trainable parameter to get a gradient
        policy.to(fabric.device).freeze_unreachable(encode(policy, examples[:1])[0].prompt)
    metrics = train(policy, encode(policy, examples), cfg, console, warmup, fabric=fabric)
    out_dir = Path(cfg.trainer.out_dir)
    meta = run_meta(list(argv or sys.argv))
    state = {"format_version": 1, "kind": "sft", "update": 0, "metrics": metrics}
    ckpt = out_dir / "checkpoints" / "sft"
    if fabric.is_global_zero:
        save_checkpoint(ckpt, policy=policy, trainer_state=state, config_yaml=to_yaml(cfg), meta=meta)
        (ckpt / "sft_metrics.json").write_text(json.dumps(metrics, indent=2))
    fabric.barrier()
    console.log(f"sft: loss {metrics['loss']:.4f}, token accuracy {metrics['token_accuracy']:.1%} in "
                f"{metrics['seconds']:.0f} s; checkpoint {ckpt} (start PPO with policy.init_from={ckpt})")
    return ckpt
