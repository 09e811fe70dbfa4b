"""RolloutDataModule: regenerates on-policy data for every PPO update.

Per env step: ONE batched ``generate`` for all envs, parse, step the envs.
After the last step: ONE batched teacher-forced pass (in chunks) for old
log-probs and values together, plus values of the observations that bootstrap
(the last one, and final observations of truncated episodes). Episodes run on
across updates; the data module keeps the envs' current observations.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from agentrl import ppo
from agentrl.envs.base import EnvModule, EnvObs, EpisodeStats
from agentrl.parsing import JsonActionParser
from agentrl.policy import PolicyModule, Prompt
from agentrl.prompts import PromptTemplate


@dataclass
class Rollout:
    """One update's data: T steps x N envs, flattened step-major to B = T * N samples (b = t * N + i)."""

    prompts: list[Prompt]
    """B processed prompts."""
    gen_ids: list[Tensor]
    """B generated answers (L_b,), EOS included."""
    weights: list[Tensor]
    """B per-token weights (L_b,): thought_coef on CoT tokens, 1 on action tokens."""
    texts: list[str]
    """B decoded answers."""
    logp: Tensor
    """(B,) weighted log-prob of each answer under the sampling policy."""
    values: Tensor
    """(B,) V(o) under the sampling policy."""
    rewards: Tensor
    """(T, N) env reward plus any parse-failure penalty."""
    terminated: Tensor
    """(T, N) bool."""
    truncated: Tensor
    """(T, N) bool."""
    next_values: Tensor
    """(T, N) value of the observation that follows each step in its episode (see ppo.gae)."""
    episodes: list[EpisodeStats]
    """Episodes that ended during this rollout."""
    parse_failures: int
    """Answers that named no legal action (a random legal action was taken)."""
    gen_tokens: int
    """Tokens generated in total."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent in generate, env.step and scoring."""
    samples_for_log: list[tuple[EnvObs, str]] = field(default_factory=list)
    """A few (observation, answer) pairs to show in TensorBoard."""
    advantages: Tensor | None = None
    """(B,) filled by the trainer."""
    returns: Tensor | None = None
    """(B,) filled by the trainer."""

    @property
    def size(self) -> int:
        return len(self.prompts)

    def advantages_and_returns(self, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
        """GAE over the (T, N) grid, flattened back to (B,)."""
        T, N = self.rewards.shape
        adv, ret = ppo.gae(
            self.rewards, self.values.view(T, N), self.next_values, self.terminated,
            self.terminated | self.truncated, gamma, lam,
        )
        return adv.reshape(-1), ret.reshape(-1)


class RolloutDataModule:
    """Owns the envs, the prompt template and the parser; produces a :class:`Rollout` per update."""

    def __init__(
        self,
        steps_per_env: int,
        *,
        seed: int,
        cot: bool,
        failure_penalty: float = 0.0,
        score_batch_size: int = 8,
        kl_coef: float = 0.0,
        log_samples: int = 4,
    ) -> None:
        self.steps_per_env = steps_per_env
        self.seed = seed
        self.cot = cot
        self.failure_penalty = failure_penalty
        self.score_batch_size = score_batch_size
        self.kl_coef = kl_coef
        self.log_samples = log_samples
        self.rng = np.random.default_rng(seed)  # random legal action on a parse failure
        self._obs: list[EnvObs] | None = None

    def connect(self, policy: PolicyModule, envs: EnvModule, template: PromptTemplate,
                parser: JsonActionParser) -> None:
        """Late binding: the trainer builds these, the data module drives them."""
        self.policy, self.envs, self.template, self.parser = policy, envs, template, parser

    def encode(self, obs: EnvObs) -> Prompt:
        return self.policy.encode(self.template.messages(obs), obs.image)

    def current_prompts(self) -> list[Prompt]:
        """Prompts of the envs' current observations (resetting them on first use)."""
        if self._obs is None:
            self._obs = self.envs.reset(self.seed)
        return [self.encode(o) for o in self._obs]

    # ------------------------------------------------------------ 1. collect

    @torch.no_grad()
    def collect(self) -> Rollout:
        """Step every env ``steps_per_env`` times with the current policy, then score."""
        if self._obs is None:
            self._obs = self.envs.reset(self.seed)
        T, N = self.steps_per_env, self.envs.num_envs
        prompts, gen_ids, weights, texts = [], [], [], []
        rewards, terminated, truncated = (np.zeros((T, N), np.float32), np.zeros((T, N), bool),
                                          np.zeros((T, N), bool))
        final: dict[tuple[int, int], Prompt] = {}
        episodes: list[EpisodeStats] = []
        failures = tokens = 0
        t_gen = t_env = 0.0
        to_log: list[tuple[EnvObs, str]] = []
        for t in range(T):
            step_prompts = [self.encode(o) for o in self._obs]
            t0 = time.perf_counter()
            gen = self.policy.generate(step_prompts)
            t_gen += time.perf_counter() - t0
            actions, penalties = [], np.zeros(N, np.float32)
            for i, (obs, text) in enumerate(zip(self._obs, gen.texts)):
                result = self.parser.parse(text, obs.legal_actions)
                if result.ok:
                    actions.append(result.action)
                else:  # as the reference: a uniformly random legal action, optionally penalised
                    actions.append(obs.legal_actions[self.rng.integers(len(obs.legal_actions))])
                    penalties[i] = self.failure_penalty
                    failures += 1
                weights.append(self.policy.token_weights(gen.ids[i], text, self.cot))
            if t == 0:
                to_log = list(zip(self._obs[: self.log_samples], gen.texts))
            t0 = time.perf_counter()
            step = self.envs.step(actions)
            t_env += time.perf_counter() - t0
            rewards[t] = step.reward + penalties
            terminated[t], truncated[t] = step.terminated, step.truncated
            for i in np.flatnonzero(step.truncated & ~step.terminated):
                final[(t, i)] = self.encode(step.final_obs[i])
            episodes += [e for e in step.episodes if e is not None]
            prompts += step_prompts
            gen_ids += gen.ids
            texts += gen.texts
            tokens += sum(len(g) for g in gen.ids)
            self._obs = step.obs

        # ------------------------------------------------------------ 2. score
        t0 = time.perf_counter()
        logp, values = self.score(prompts, gen_ids, weights)
        last_values = self.policy.values([self.encode(o) for o in self._obs])
        final_values = torch.zeros(T, N)
        if final:
            keys = list(final)
            for (t, i), v in zip(keys, self.policy.values([final[k] for k in keys])):
                final_values[t, i] = v
        t_score = time.perf_counter() - t0
        rewards_t = torch.from_numpy(rewards)
        if self.kl_coef:
            ref_logp = self.score(prompts, gen_ids, weights, reference=True)[0]
            rewards_t = rewards_t - self.kl_coef * (logp - ref_logp).view(T, N)
        term_t, trunc_t = torch.from_numpy(terminated), torch.from_numpy(truncated)
        next_values = ppo.next_values_for(values.view(T, N), last_values, final_values, trunc_t & ~term_t)
        return Rollout(
            prompts=prompts, gen_ids=gen_ids, weights=weights, texts=texts, logp=logp, values=values,
            rewards=rewards_t, terminated=term_t, truncated=trunc_t, next_values=next_values,
            episodes=episodes, parse_failures=failures, gen_tokens=tokens,
            timings={"generate": t_gen, "env": t_env, "score": t_score}, samples_for_log=to_log,
        )

    @torch.no_grad()
    def score(self, prompts: list[Prompt], gen_ids: list[Tensor], weights: list[Tensor],
              reference: bool = False) -> tuple[Tensor, Tensor]:
        """Weighted log-probs (B,) and values (B,), in batched teacher-forced chunks.

        ``reference=True`` scores with the LoRA adapters disabled: the frozen
        base model, with no second copy in memory.
        """
        logps, values = [], []
        for lo in range(0, len(prompts), self.score_batch_size):
            hi = lo + self.score_batch_size
            inputs = self.policy.collate_train(prompts[lo:hi], gen_ids[lo:hi], weights[lo:hi])
            if reference:
                with self.policy.model.disable_adapter():
                    token_logp, v, _ = self.policy(inputs)
            else:
                token_logp, v, _ = self.policy(inputs)
            logps.append(ppo.weighted_logprob(token_logp.float().cpu(), inputs.weights))
            values.append(v.float().cpu())
        return torch.cat(logps), torch.cat(values)

    # ------------------------------------------------------------ 4. PPO minibatches

    def minibatches(self, size: int, minibatch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
        """Shuffled sample indices, ``minibatch_size`` at a time (the last may be smaller)."""
        order = torch.randperm(size, generator=generator)
        yield from order.split(minibatch_size)

    # ------------------------------------------------------------ resume

    def state_dict(self) -> dict[str, Any]:
        env_state = self.envs.state_dict()
        return {"obs": self._obs if env_state is not None else None, "env": env_state,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any], update: int) -> None:
        """Continue where the checkpoint stopped; envs that cannot save state restart on fresh seeds."""
        self.rng.bit_generator.state = state["rng"]
        if state["env"] is not None:
            self.envs.load_state_dict(state["env"])
            self._obs = state["obs"]
        else:
            self.seed += 1_000_003 * update
