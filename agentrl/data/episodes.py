"""Playing whole episodes for evaluation: exactly the first N episodes that start on a set of envs, one
batched generate per step, with the prompts training uses (episode memory, image budget); and their
metrics. ``agentrl eval`` and the held-out evaluation during ``fit`` both play here.

Metrics (:func:`summarize`): success_rate (share of episodes with success), mean_return, mean_length
(steps per episode), parse_failure_rate (share of steps whose answer named no legal action), and the
episodes and steps counted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agentrl.data.acting import decide
from agentrl.data.memory import EpisodeMemory, encode_prompt


def run_episodes(policy: Any, envs: Any, template: Any, parser: Any, episodes: int, *, seed: int,
                 greedy: bool, history: int = 0, history_images: int = 0,
                 max_image_tokens: int | None = None) -> list[dict[str, Any]]:
    """Play exactly ``episodes`` episodes (the first that start) on ``envs``; one record per episode.

    Prompts carry the episode's last ``history`` steps, the last ``history_images`` of them with their
    image, within ``max_image_tokens``, as in training (``prompt.history``, ``prompt.history_images``,
    ``prompt.max_image_tokens``).
    """
    rng = np.random.default_rng([seed, 0xE7A1])
    obs = envs.reset(seed)
    n = envs.num_envs
    memory = EpisodeMemory(n, history, history_images)
    episode_id = list(range(n))
    next_id, fails = n, [0] * n
    records: dict[int, dict[str, Any]] = {}
    while len(records) < episodes:
        active = [i for i in range(n) if episode_id[i] < episodes]
        prompts = [encode_prompt(policy, template, obs[i], memory.history(i), max_image_tokens) for i in active]
        chosen = decide(policy, template, parser, prompts, [obs[i] for i in active], greedy=greedy, rng=rng,
                        with_logp=False, act=lambda o, text, ids: parsed(parser, o, text, rng))
        actions = [o.legal_actions[0] if o.legal_actions else "" for o in obs]  # idle envs: never counted
        for i, action, failed in zip(active, chosen.actions, chosen.failed):
            actions[i] = action
            fails[i] += failed
        step = envs.step(actions)
        for i in range(n):
            memory.record(i, obs[i], actions[i])
        for i in np.flatnonzero(step.terminated | step.truncated):
            memory.clear(i)
        for i, ep in enumerate(step.episodes):
            if ep is None:
                continue
            if episode_id[i] < episodes:
                records[episode_id[i]] = {"return": ep.ret, "length": ep.length, "success": bool(ep.success),
                                          "task_type": ep.task_type, "parse_failures": fails[i]}
            episode_id[i], next_id, fails[i] = next_id, next_id + 1, 0
        obs = step.obs
    return [records[k] for k in range(episodes)]


def parsed(parser: Any, obs: Any, text: str, rng: np.random.Generator) -> tuple[str, bool, None]:
    """The legal action ``text`` names, or a uniformly random legal one when it names none (counted as failed)."""
    result = parser.parse(text, obs.legal_actions)
    if result.ok:
        return result.action, False, None
    return obs.legal_actions[rng.integers(len(obs.legal_actions))], True, None


def summarize(records: list[dict[str, Any]]) -> dict[str, float]:
    """The metrics over ``records`` (see the module docstring)."""
    steps = sum(r["length"] for r in records)
    n = max(len(records), 1)
    return {
        "episodes": len(records),
        "success_rate": sum(r["success"] for r in records) / n,
        "mean_return": sum(r["return"] for r in records) / n,
        "mean_length": steps / n,
        "parse_failure_rate": sum(r["parse_failures"] for r in records) / max(steps, 1),
        "steps": steps,
    }
