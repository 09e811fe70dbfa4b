"""RolloutDataModule: a LightningDataModule that regenerates on-policy data for every PPO update.

:meth:`RolloutDataModule.train_dataloader` collects a fresh rollout with the current policy and
returns a loader over its minibatches (:mod:`agentrl.data.loader`); iterating it once is one PPO epoch.

Per env step: ONE batched ``generate`` for all envs, which by default also
gives the old log-probs and values (``rollout.logprobs_from=generate``), parse
(the parser's action span decides which tokens are weighted as the action),
step the envs. After the last step: values of the observations that bootstrap
(the last one, and final observations of truncated episodes), and with
``logprobs_from=forward`` ONE batched teacher-forced pass (in chunks) for the
old log-probs and values instead. Episodes run on
across updates; the data module keeps the envs' current observations and,
per env slot, an :class:`~agentrl.data.memory.EpisodeMemory` of what the prompt may see of the
episode's earlier steps (``prompt.history``).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from agentrl.algorithms import ppo
from agentrl.algorithms.batches import Rollout
from agentrl.data.acting import Decisions, decide
from agentrl.data.loader import RolloutLoader
from agentrl.data.memory import EpisodeMemory, encode_prompt, has_frames, within_budget
from agentrl.envs.base import EnvModule, EnvObs, EpisodeStats
from agentrl.policy.module import PolicyModule
from agentrl.prompting.batching import Prompt
from agentrl.prompting.candidates import Candidates
from agentrl.prompting.parsing import ActionParser, action_span_start
from agentrl.prompting.templates import PromptTemplate, Step


class CollectAbandoned(Exception):
    """Raised inside a rollout when a stop was asked for between two env steps."""


def _collapse(text: str) -> str:
    """``<image><image>...`` (4 or more of one special token in a row) as ``<image> x49``."""
    return re.sub(r"(<[^<>\s]{1,40}>)\1{3,}", lambda m: f"{m.group(1)} x{len(m.group(0)) // len(m.group(1))}", text)


class RolloutDataModule(L.LightningDataModule):
    """Owns the envs, the prompt template and the parser; produces a :class:`Rollout` per update and the
    loader over its minibatches (:meth:`train_dataloader`)."""

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
        logprobs_from: str = "generate",
        history: int = 0,
        history_images: int = 0,
        max_image_tokens: int | None = None,
        minibatch_size: int | None = None,
        micro_batch_size: int | None = None,
        minibatches: int | None = None,
        shuffle_seed: int | None = None,
        token_level: bool = False,
        share_train_prefix: bool | None = None,
    ) -> None:
        super().__init__()
        self.steps_per_env = steps_per_env
        self.seed = seed
        self.cot = cot
        self.failure_penalty = failure_penalty
        self.score_batch_size = score_batch_size
        self.kl_coef = kl_coef
        self.log_samples = log_samples
        self.logprobs_from = logprobs_from  # "generate": old log-probs and values from the sampling pass
        self.history = history
        self.history_images = history_images
        self.max_image_tokens = max_image_tokens
        self.minibatch_size = minibatch_size
        """This rank's samples per optimizer step; None: the whole rollout."""
        self.micro_batch_size = micro_batch_size or score_batch_size
        self.minibatches = minibatches
        """Optimizer steps per epoch, as planned (a grouped rollout, larger than planned, keeps the count)."""
        self.token_level = token_level  # ppo.loss_type=token: micro-batches carry the old per-token log-probs
        self.share_train_prefix = share_train_prefix  # False under FSDP: one forward per micro-batch on every rank
        self.shuffle = torch.Generator().manual_seed(seed if shuffle_seed is None else shuffle_seed)
        """The minibatch order of every PPO epoch (saved in checkpoints)."""
        self.rng = np.random.default_rng(seed)  # random legal action on a parse failure
        self._obs: list[EnvObs] | None = None
        self._prompts: list[Prompt] | None = None  # encoded self._obs, kept from the last bootstrap

    @classmethod
    def from_config(cls, cfg: Any, *, rank: int = 0, world_size: int = 1) -> RolloutDataModule:
        """This rank's data module: its share of ``rollout.steps_per_update`` and of each minibatch, its own env
        seeds and shuffle order."""
        return cls(**cls.config_kwargs(cfg, rank=rank, world_size=world_size))

    @staticmethod
    def config_kwargs(cfg: Any, *, rank: int = 0, world_size: int = 1) -> dict[str, Any]:
        """The constructor's arguments from a run config (a subclass adds its own)."""
        minibatch = cfg.ppo.minibatch_size // world_size
        return dict(
            steps_per_env=cfg.steps_per_env(world_size), seed=cfg.seed + 100_003 * rank, cot=cfg.prompt.cot,
            failure_penalty=cfg.parser.failure_penalty, score_batch_size=cfg.ppo.micro_batch_size,
            kl_coef=cfg.policy.kl_coef, logprobs_from=cfg.logprobs_from, history=cfg.prompt.history,
            history_images=cfg.prompt.history_images, max_image_tokens=cfg.prompt.max_image_tokens,
            minibatch_size=minibatch, micro_batch_size=cfg.ppo.micro_batch_size,
            minibatches=math.ceil(cfg.steps_per_env(world_size) * cfg.env.num_envs / minibatch),
            shuffle_seed=cfg.seed + rank, token_level=cfg.ppo.loss_type == "token",
            share_train_prefix=False if cfg.trainer.strategy == "fsdp" else None,
        )

    def connect(self, policy: PolicyModule, envs: EnvModule, template: PromptTemplate,
                parser: ActionParser) -> None:
        """Late binding: the trainer builds these, the data module drives them."""
        self.policy, self.envs, self.template, self.parser = policy, envs, template, parser
        self.memory = EpisodeMemory(envs.num_envs, self.history, self.history_images)

    def encode(self, obs: EnvObs, history: list[Step] | None = None) -> Prompt:
        return encode_prompt(self.policy, self.template, obs, history or (), self.max_image_tokens)

    def encode_all(self, obs: list[EnvObs], slots: list[int] | None = None) -> list[Prompt]:
        """Prompts of ``obs``, observation k in env slot ``slots[k]`` (default k) with that slot's history."""
        slots = list(range(len(obs))) if slots is None else slots
        histories = [self.memory.history(i) for i in slots]
        if any(has_frames(h) for h in histories):  # several images per prompt: one processor call each
            return [encode_prompt(self.policy, self.template, o, h, self.max_image_tokens)
                    for o, h in zip(obs, histories)]
        prompts = self.policy.encode_many([self.template.render(o, h) for o, h in zip(obs, histories)])
        return [within_budget(self.policy, p, self.max_image_tokens) for p in prompts]

    def current_prompts(self) -> list[Prompt]:
        """Prompts of the envs' current observations (resetting them on first use)."""
        if self._obs is None:
            self._reset()
        return self.encode_all(self._obs)

    def _reset(self) -> None:
        self._obs = self.envs.reset(self.seed)
        self.memory = EpisodeMemory(self.envs.num_envs, self.history, self.history_images)

    def for_log(self, obs: list[EnvObs], texts: list[str], prompts: list[Prompt]) -> list[tuple[EnvObs, str, str]]:
        """The first ``log_samples`` (observation, answer, prompt text): the prompt decoded from its token ids
        (chat template and all), a run of one special token (the image's) written once with its count."""
        tok = self.policy.tokenizer
        shown = [_collapse(tok.decode(p["input_ids"].reshape(-1).tolist(), skip_special_tokens=False))
                 for p in prompts[: self.log_samples]]
        return list(zip(obs[: self.log_samples], texts, shown))

    # ------------------------------------------------------------ 1. collect

    @torch.no_grad()
    def collect(self, should_stop: Callable[[], bool] | None = None) -> Rollout:
        """Step every env ``steps_per_env`` times with the current policy, then score.

        ``should_stop`` is asked before every env step; when it says so the rollout is abandoned
        (:class:`CollectAbandoned`), the caller restores the state it saved.
        """
        if self._obs is None:
            self._reset()
        T, N = self.steps_per_env, self.envs.num_envs
        prompts, gen_ids, weights, texts = [], [], [], []
        rewards, terminated, truncated = (np.zeros((T, N), np.float32), np.zeros((T, N), bool),
                                          np.zeros((T, N), bool))
        final: dict[tuple[int, int], Prompt] = {}
        episodes: list[EpisodeStats] = []
        failures = tokens = 0
        t_gen = t_env = 0.0
        to_log: list[tuple[EnvObs, str, str]] = []
        from_generate = self.logprobs_from == "generate"
        gen_logp: list[Tensor] = []
        gen_values: list[Tensor] = []
        token_logp: list[Tensor] = []
        candidates: list[Candidates] = []  # the score head's, per sample
        for t in range(T):
            if should_stop is not None and should_stop():
                raise CollectAbandoned(f"stopped before env step {t} of {T}")
            step_prompts = self._prompts or self.encode_all(self._obs)
            self._prompts = None
            t0 = time.perf_counter()
            d = self.decide(step_prompts, self._obs, with_logp=from_generate)
            t_gen += time.perf_counter() - t0
            actions, penalties = d.actions, np.zeros(N, np.float32)
            weights += d.weights
            for i, failed in enumerate(d.failed):
                if failed:
                    penalties[i] = self.failure_penalty
                    failures += 1
            if from_generate:
                gen_logp += d.logp
                token_logp += d.token_logp or []
                gen_values.append(d.values)
            candidates += d.candidates or []
            if t == 0:
                to_log = self.for_log(self._obs, d.texts, step_prompts)
            t0 = time.perf_counter()
            step = self.envs.step(actions)
            t_env += time.perf_counter() - t0
            rewards[t] = step.reward + penalties
            terminated[t], truncated[t] = step.terminated, step.truncated
            for i, (obs, action) in enumerate(zip(self._obs, actions)):
                dropped = step.episodes[i] is None and (step.terminated[i] or step.truncated[i])
                if not dropped:  # a restarted worker never ran the action (its episode was dropped)
                    self.memory.record(i, obs, action)
            cut = np.flatnonzero(step.truncated & ~step.terminated).tolist()
            final.update(zip(((t, i) for i in cut), self.encode_all([step.final_obs[i] for i in cut], cut)))
            for i in np.flatnonzero(step.terminated | step.truncated):
                self.memory.clear(i)
            episodes += [e for e in step.episodes if e is not None]
            prompts += step_prompts
            gen_ids += d.ids
            texts += d.texts
            tokens += sum(len(g) for g in d.ids)
            self._obs = step.obs

        # ------------------------------------------------------------ 2. score
        t0 = time.perf_counter()
        cands = candidates or None
        if from_generate:
            logp, values = torch.stack(gen_logp), torch.cat(gen_values)
        else:
            logp, values, token_logp = self.score_tokens(prompts, gen_ids, weights, candidates=cands)
        self._prompts = self.encode_all(self._obs)  # the next collect starts from these
        last_values = self.policy.values(self._prompts)
        final_values = torch.zeros(T, N)
        if final:
            keys = list(final)
            for (t, i), v in zip(keys, self.policy.values([final[k] for k in keys])):
                final_values[t, i] = v
        t_score = time.perf_counter() - t0
        rewards_t = torch.from_numpy(rewards)
        if self.kl_coef:
            ref_logp = self.score(prompts, gen_ids, weights, reference=True, candidates=cands)[0]
            rewards_t = rewards_t - self.kl_coef * (logp - ref_logp).view(T, N)
        term_t, trunc_t = torch.from_numpy(terminated), torch.from_numpy(truncated)
        next_values = ppo.next_values_for(values.view(T, N), last_values, final_values, trunc_t & ~term_t)
        return Rollout(
            prompts=prompts, gen_ids=gen_ids, weights=weights, texts=texts, logp=logp, values=values,
            rewards=rewards_t, terminated=term_t, truncated=trunc_t, next_values=next_values,
            episodes=episodes, parse_failures=failures, gen_tokens=tokens,
            timings={"generate": t_gen, "env": t_env, "score": t_score}, samples_for_log=to_log,
            token_logp=token_logp if cands is None else None, candidates=cands,
        )

    def decide(self, prompts: list[Prompt], obs: list[EnvObs], *, greedy: bool = False,
               with_logp: bool = False) -> Decisions:
        """The actions for ``obs`` with either action head (:func:`agentrl.data.acting.decide`)."""
        return decide(self.policy, self.template, self.parser, prompts, obs, greedy=greedy, rng=self.rng,
                      with_logp=with_logp, act=self.act)

    @torch.no_grad()
    def act(self, obs: EnvObs, text: str, ids: Tensor) -> tuple[str, bool, Tensor]:
        """The action ``text`` names among ``obs``'s legal ones, whether parsing failed, and the per-token weights
        (T,) of the lambda-weighted log-prob for the generated ``ids`` (T,).

        A failed parse takes a uniformly random legal action, as the reference does (the caller adds
        ``rollout.failure_penalty``). The tokens of the action the parser read are the action, those before
        it the thoughts; a parser that names an action without its span (a user's) falls back to the first
        action key.
        """
        result = self.parser.parse(text, obs.legal_actions)
        action = result.action if result.ok else obs.legal_actions[self.rng.integers(len(obs.legal_actions))]
        start = result.action_span[0] if result.action_span else action_span_start(text) if result.ok else None
        return action, not result.ok, self.policy.token_weights(ids, start, self.cot)

    def score(self, prompts: list[Prompt], gen_ids: list[Tensor], weights: list[Tensor],
              reference: bool = False, candidates: list[Candidates] | None = None) -> tuple[Tensor, Tensor]:
        """Weighted log-probs (B,) and values (B,), in batched teacher-forced chunks; with ``candidates`` (the
        score head) the chosen candidates' log-probs.

        ``reference=True`` scores with the LoRA adapters disabled: the frozen
        base model, with no second copy in memory.
        """
        return self.score_tokens(prompts, gen_ids, weights, reference, candidates)[:2]

    @torch.no_grad()
    def score_tokens(self, prompts: list[Prompt], gen_ids: list[Tensor], weights: list[Tensor],
                     reference: bool = False, candidates: list[Candidates] | None = None,
                     ) -> tuple[Tensor, Tensor, list[Tensor] | None]:
        """:meth:`score` plus each answer's per-token log-probs (L_b,) (None with ``candidates``)."""
        logps, values, tokens = [], [], [None] * len(prompts)
        # chunks of similar length pad less; results go back to the input order below
        order = sorted(range(len(prompts)), key=lambda i: prompts[i]["input_ids"].shape[-1] + len(gen_ids[i]))
        for lo in range(0, len(order), self.score_batch_size):
            ix = order[lo : lo + self.score_batch_size]
            inputs = self.policy.collate_train([prompts[i] for i in ix], [gen_ids[i] for i in ix],
                                               [weights[i] for i in ix],
                                               candidates=None if candidates is None else [candidates[i] for i in ix])
            if reference:
                with self.policy.model.disable_adapter():
                    token_logp, v, _ = self.policy(inputs)
            else:
                token_logp, v, _ = self.policy(inputs)
            if candidates is not None:  # the chosen candidates' log-probs (b,)
                logps.append(token_logp.float().cpu())
                values.append(v.float().cpu())
                continue
            token_logp = token_logp.float().cpu()
            logps.append(ppo.weighted_logprob(token_logp, inputs.weights))
            values.append(v.float().cpu())
            for row, i in enumerate(ix):
                tokens[i] = token_logp[row, : len(gen_ids[i])].clone()
        inverse = torch.argsort(torch.tensor(order))
        return torch.cat(logps)[inverse], torch.cat(values)[inverse], None if candidates is not None else tokens

    # ------------------------------------------------------------ the Lightning hooks

    def train_dataloader(self, should_stop: Callable[[], bool] | None = None) -> RolloutLoader:
        """A fresh on-policy rollout, collected now with the current policy (:meth:`collect`), and the loader
        over its minibatches (:meth:`loader`); fill ``loader.rollout.advantages`` and ``returns`` before
        iterating it."""
        return self.loader(self.collect(should_stop=should_stop))

    def loader(self, rollout: Rollout, micro_batch_size: int | None = None, generator: torch.Generator | None = None,
               sort: bool = True) -> RolloutLoader:
        """The PPO epochs' loader over ``rollout``: this rank's minibatches, in this module's shuffle order
        (``generator``: another order; ``micro_batch_size``: another micro size; ``sort=False``: minibatches
        not sorted by length, for benchmarks)."""
        return RolloutLoader(rollout, minibatch_size=self.minibatch_size or rollout.size,
                             micro_batch_size=micro_batch_size or self.micro_batch_size,
                             generator=self.shuffle if generator is None else generator,
                             collate=self.policy.collate_train, count=self.minibatches,
                             token_level=self.token_level, share=self.share_train_prefix, sort=sort)

    def teardown(self, stage: str | None = None) -> None:
        """Close the envs (worker processes of ``env.vector=async``, ALFWorld's engines)."""
        self.envs.close()

    # ------------------------------------------------------------ resume

    def state_dict(self) -> dict[str, Any]:
        env_state = self.envs.state_dict()
        return {"obs": self._obs if env_state is not None else None, "env": env_state,
                "rng": self.rng.bit_generator.state,
                "memory": self.memory.state_dict() if env_state is not None else None}

    def load_state_dict(self, state: dict[str, Any], update: int) -> None:
        """Continue where the checkpoint stopped; envs that cannot save state restart on fresh seeds."""
        self.rng.bit_generator.state = state["rng"]
        if state["env"] is not None:
            self.envs.load_state_dict(state["env"])
            self._obs = state["obs"]
            self.memory.load_state_dict(state.get("memory"))
        else:  # fresh seeds; the next collect resets the envs (build() had reset them on the old seed)
            self.seed += 1_000_003 * update
            self._obs = None
        self._prompts = None
