"""SFT examples (``sft.data``): the env's expert, or a JSONL file; what `agentrl sft` trains on.

Data (``sft.data``):
  expert   the env's expert (``EnvModule.expert_fields()``; for ALFWorld the one ``sft.expert``
           names, passed to the env as ``env.options.expert``) labels the states met
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
                                                       # (a 3rd item, an image path, for prompt.history_images)
              "answer": "{\"action\": \"+\"}" | {"thoughts": ..., "action": "+"}}

           ``answer`` is the target text, or fields that the template turns into JSON.
           ``history`` (oldest first) is rendered as in rollouts with ``prompt.history``; the
           last ``prompt.history`` steps are kept, and the last ``prompt.history_images`` of them
           show their image (a step's third item).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agentrl.config import Config, ConfigError
from agentrl.config.registry import Components
from agentrl.data.memory import EpisodeMemory
from agentrl.envs.base import EnvObs
from agentrl.prompting.templates import PromptTemplate


@dataclass
class Example:
    """One supervised example before processing."""

    messages: list[dict[str, Any]]
    """Chat messages of the prompt (one user turn)."""
    image: np.ndarray | list[np.ndarray] | None
    """RGB image (H, W, 3) uint8, or None; a list of the messages' images in order where earlier steps'
    images come too (``prompt.history_images``)."""
    answer: str
    """Target text of the assistant turn."""
    obs: EnvObs | None = None
    """The observation it was made from (expert data), for tests and readout checks."""
    expert_action: str | None = None
    """The expert's own action (expert data); differs from the answer's with probability sft.noise."""
    history: list[Any] = field(default_factory=list)
    """The earlier steps the prompt shows (expert data), so a budget of image tokens can leave images out."""


def make_template(cfg: Config) -> PromptTemplate:
    """The prompt template the config names ("auto": the env family's own)."""
    return Components.resolve(cfg).make_template(cfg)


def with_sft_expert(cfg: Config) -> Config:
    """``cfg`` whose env labels with ``sft.expert`` (ALFWorld: ``env.options.expert``); a :class:`ConfigError`
    where the env has no such expert or ``env.options.expert`` says otherwise."""
    expert = cfg.sft.expert
    if getattr(Components.resolve(cfg).env, "family", "") != "alfworld":
        if expert != "planner":
            raise ConfigError(f"sft.expert={expert} is the searching ALFWorld expert; env.name={cfg.env.name} "
                              f"has its own expert only: use sft.expert=planner (the default)")
        return cfg
    given = cfg.env.options.get("expert", expert)
    if given != expert:
        raise ConfigError(f"env.options.expert={given} and sft.expert={expert} disagree; sft labels with "
                          f"sft.expert: set both alike or drop env.options.expert")
    return replace(cfg, env=replace(cfg.env, options={**cfg.env.options, "expert": expert}))


def expert_examples(cfg: Config, n: int, *, split: str = "train", seed: int | None = None) -> list[Example]:
    """``n`` expert-labelled states of ``split`` (see the module docstring for explore and noise).

    Prompts carry the episode's last ``prompt.history`` steps, as in rollouts.
    """
    cfg = with_sft_expert(cfg)
    parts = Components.resolve(cfg)
    template = parts.make_template(cfg)
    seed = cfg.seed if seed is None else seed
    rng = np.random.default_rng([seed, 0x5F7])
    envs = parts.make_env(cfg, split)
    memory = EpisodeMemory(envs.num_envs, cfg.prompt.history, cfg.prompt.history_images)
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
                messages, images = template.render(o, memory.history(i))
                out.append(Example(messages, images, template.answer(fields), o, expert, memory.history(i)))
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


def jsonl_examples(path: str | Path, template: PromptTemplate, history: int = 0,
                   history_images: int = 0) -> list[Example]:
    """Examples from a JSONL file (format in the module docstring); every bad row exits naming file:line and why.

    ``history`` is ``prompt.history``: how many of a row's earlier steps the prompt shows; the last
    ``history_images`` (``prompt.history_images``) of them show their image where the row gives one.
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
            out.append(_jsonl_row(line, where, path.parent, template, history, history_images))
    if not out:
        raise ConfigError(f"sft.data {path} holds no examples")
    return out


def _jsonl_row(line: str, where: str, folder: Path, template: PromptTemplate, history: int,
               history_images: int) -> Example:
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
    image = _read_image(folder / row["image"], where) if row.get("image") else None
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
                isinstance(h, list) and len(h) in (2, 3) and all(isinstance(x, str) for x in h) for h in steps)):
            raise ConfigError(f"{where}: 'history' must be a list of [state text, action] string pairs "
                              f"(or [state text, action, image path] where prompt.history_images shows images)")
        memory = EpisodeMemory(1, history, history_images)  # the last steps, images on the last frames: as rollouts
        memory.load_state_dict([[tuple(h) for h in steps]])
        shown = [(*h[:2], _read_image(folder / h[2], where)) if len(h) > 2 else h for h in memory.history(0)]
        messages, images = template.render(obs, shown)
        return _answered(row, where, template, messages, images, obs, shown)
    else:
        content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": row["prompt"]}]
        messages = [{"role": "user", "content": content}]
    return _answered(row, where, template, messages, image, obs, [])


def _answered(row: dict[str, Any], where: str, template: PromptTemplate, messages: list[dict[str, Any]],
              image: Any, obs: EnvObs | None, history: list[Any]) -> Example:
    answer = row["answer"]
    if isinstance(answer, dict) and "action" in answer:
        answer = template.answer(dict(answer))
    if not isinstance(answer, str):
        raise ConfigError(f"{where}: 'answer' must be the target text or an object with an 'action' key, "
                          f"got {json.dumps(answer)[:80]}")
    return Example(messages, image, answer, obs, history=history)


def _read_image(image_path: Path, where: str) -> np.ndarray:
    if not image_path.is_file():
        raise ConfigError(f"{where}: image {str(image_path)!r} does not exist")
    try:
        return np.asarray(Image.open(image_path).convert("RGB"))
    except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise ConfigError(f"{where}: image {str(image_path)!r} is not an image PIL can read ({e})") from None


def load_examples(cfg: Config) -> list[Example]:
    """The examples ``sft.data`` names, cut to ``sft.max_examples``."""
    s = cfg.sft
    if s.data == "expert":
        examples = expert_examples(cfg, s.examples if s.max_examples is None else min(s.examples, s.max_examples))
    else:
        examples = jsonl_examples(s.data, make_template(cfg), cfg.prompt.history, cfg.prompt.history_images)
    return examples if s.max_examples is None else examples[: s.max_examples]


def perception(example: Example) -> Example:
    """The warm-up form of ``example``: the image alone as prompt, and as answer only the fields read
    from it (the JSON keys before "thoughts", e.g. NumberLine's numbers); the whole answer when it has none.
    """
    messages = [{**m, "content": [c for c in m["content"] if c.get("type") == "image"][:1]} for m in example.messages]
    image = example.image  # the observation's own, never earlier steps' (prompt.history_images)
    if isinstance(image, list):
        image = example.obs.image if example.obs is not None else image[-1]
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
    return replace(example, messages=messages, image=image, answer=answer, history=[])
