"""Grouped rollouts for the critic-free estimators (GRPO, RLOO, GiGPO): ``rollout.group_size: G``.

The ``num_envs`` envs of a process form ``num_envs / G`` groups of G. A group's
envs start each episode from the same state (:meth:`EnvModule.reset_slots`: one
gymnasium seed, one ALFWorld game file) and play it together; an env whose
episode ended waits (no generation; its env is stepped with a legal action and
the result ignored) until its whole group is done, then the group starts a new
episode from a new shared state. A rollout gathers groups until this process has
``steps_per_env * num_envs`` samples; groups still playing then finish, none
starts, so every rollout holds whole groups only: no group crosses a rollout
boundary, and advantages need no critic and no bootstrap (the rollout is a bit
larger than planned; the learner keeps its planned number of minibatches).

Samples are laid out episode by episode, each episode's steps in order, as one
column (T = B, N = 1): ``rewards``, ``terminated`` and ``truncated`` keep their
meaning, ``episode_of``, ``group_of`` and ``anchors`` say which episode, group
and observation each sample is. An episode the env module dropped (its worker
died or hung) is left out with its whole group (the members that finished first
would bias the baseline), and so are the groups running when a worker restart
moved every env to a new state; the budget counts kept samples only. With
``policy.kl_coef`` the KL penalty is not in the returns (normalising a group of
equal returns would blow it up to +-1): it is ``kl_penalty``, subtracted from
each sample's advantage after the group comparison. Episodes longer than ``env.max_episode_steps``
(or :data:`EPISODE_CAP` when unset) are cut there and count as truncated.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from agentrl.algorithms.batches import Rollout
from agentrl.data.memory import EpisodeMemory
from agentrl.data.rollout import CollectAbandoned, RolloutDataModule
from agentrl.envs.base import EnvObs, EpisodeStats

EPISODE_CAP = 200
"""Steps after which a grouped episode is cut when ``env.max_episode_steps`` is not set."""


def anchor_id(obs: EnvObs) -> int:
    """A 63-bit id of the observation: its text state and image bytes (identical states share it)."""
    h = hashlib.blake2b(obs.text.encode(), digest_size=8)
    if obs.image is not None:
        h.update(np.ascontiguousarray(obs.image).tobytes())
    return int.from_bytes(h.digest(), "little") >> 1


@dataclass
class _Episode:
    """One env's episode in progress: its samples, in step order."""

    group: int
    samples: list[dict[str, Any]] = field(default_factory=list)


class GroupRolloutDataModule(RolloutDataModule):
    """On-policy data in groups of ``group_size`` envs sharing each episode's start state."""

    def __init__(self, steps_per_env: int, *, group_size: int, episode_cap: int = EPISODE_CAP, **kw: Any) -> None:
        super().__init__(steps_per_env, **kw)
        self.group_size = group_size
        self.episode_cap = episode_cap
        self.round = 0
        """Group episodes started so far: the next one's start state is drawn from (seed, round)."""

    @classmethod
    def from_config(cls, cfg: Any, *, rank: int = 0, world_size: int = 1) -> GroupRolloutDataModule:
        return cls(**cls.config_kwargs(cfg, rank=rank, world_size=world_size), group_size=cfg.rollout.group_size,
                   episode_cap=cfg.env.max_episode_steps or EPISODE_CAP)

    def _key(self) -> int:
        """The start state of the next group episode (same seed and round: the same state)."""
        sequence = np.random.SeedSequence(self.seed, spawn_key=(self.round,))
        self.round += 1
        return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))

    def _start(self, group: int) -> list[int]:
        slots = list(range(group * self.group_size, (group + 1) * self.group_size))
        for i, obs in zip(slots, self.envs.reset_slots(slots, self._key())):
            self._obs[i] = obs
            self.memory.clear(i)
        return slots

    def current_prompts(self) -> list:
        if self._obs is None:
            self._reset()
        return self.encode_all(self._obs)

    @torch.no_grad()
    def collect(self, should_stop: Callable[[], bool] | None = None) -> Rollout:
        if self._obs is None:
            self._reset()
        self._obs = list(self._obs)
        self.memory = EpisodeMemory(self.envs.num_envs, self.history, self.history_images)
        N, G = self.envs.num_envs, self.group_size
        budget = self.steps_per_env * N
        from_generate = self.logprobs_from == "generate"
        running: dict[int, _Episode] = {}  # slot -> its episode in progress
        live_groups: dict[int, int] = {}  # group -> its uid in this rollout
        done: list[tuple[_Episode, EpisodeStats, bool]] = []  # (episode, stats, truncated)
        episodes: list[EpisodeStats] = []
        spoiled: set[int] = set()  # groups a member of which was dropped: none of their episodes is compared
        uid = taken = failures = tokens = 0
        t_gen = t_env = 0.0
        to_log: list[tuple[EnvObs, str, str]] = []

        def spoil(gid: int) -> None:
            spoiled.add(gid)
            for i in [i for i, e in running.items() if e.group == gid]:
                del running[i]

        def start(group: int) -> None:
            nonlocal uid
            restarts = getattr(self.envs, "restarts", 0)
            live_groups[group] = uid
            for i in self._start(group):
                running[i] = _Episode(uid)
            uid += 1
            if getattr(self.envs, "restarts", 0) != restarts:  # workers restarted: other envs may be on new states
                for other, gid in list(live_groups.items()):
                    if other != group:
                        spoil(gid)

        def kept() -> int:
            return sum(len(e.samples) for e, _, _ in done if e.group not in spoiled) + \
                sum(len(e.samples) for e in running.values())

        def refill() -> None:
            """Finished groups start again while the kept samples are under the budget."""
            again = True
            while again:
                again = False
                for group, gid in list(live_groups.items()):
                    if group in live_groups and not any(e.group == gid for e in running.values()):
                        del live_groups[group]
                        if kept() < budget:
                            start(group)
                            again = True

        for group in range(N // G):
            start(group)
        refill()
        while running:
            if should_stop is not None and should_stop():
                raise CollectAbandoned(f"stopped after {taken} grouped env steps")
            slots = sorted(running)
            prompts = self.encode_all([self._obs[i] for i in slots], slots)
            t0 = time.perf_counter()
            d = self.decide(prompts, [self._obs[i] for i in slots], with_logp=from_generate)
            t_gen += time.perf_counter() - t0
            if not to_log:
                to_log = self.for_log([self._obs[i] for i in slots], d.texts, prompts)
            # waiting envs: any legal action, result unused
            actions = [o.legal_actions[0] if o.legal_actions else "" for o in self._obs]
            pending = {}
            for k, i in enumerate(slots):
                actions[i] = d.actions[k]
                failures += d.failed[k]
                pending[i] = {"prompt": prompts[k], "ids": d.ids[k], "weights": d.weights[k], "text": d.texts[k],
                              "penalty": self.failure_penalty if d.failed[k] else 0.0,
                              "anchor": anchor_id(self._obs[i])}
                if d.candidates is not None:
                    pending[i]["candidates"] = d.candidates[k]
                if from_generate:
                    pending[i].update(logp=d.logp[k], token_logp=None if d.token_logp is None else d.token_logp[k])
                tokens += len(d.ids[k])
            t0 = time.perf_counter()
            step = self.envs.step(actions)
            t_env += time.perf_counter() - t0
            taken += len(slots)
            for i in slots:
                if i not in running:  # spoiled by an earlier slot's drop in this step
                    continue
                sample, episode = pending[i], running[i]
                sample["reward"] = float(step.reward[i]) + sample.pop("penalty")
                episode.samples.append(sample)
                ended = bool(step.terminated[i] or step.truncated[i])
                if ended and step.episodes[i] is None:  # the env module dropped it (a worker died or hung):
                    spoil(episode.group)  # its group's baseline would favour the members that finished first
                    continue
                self.memory.record(i, self._obs[i], actions[i])
                if ended or len(episode.samples) >= self.episode_cap:
                    stats = step.episodes[i] if ended else EpisodeStats(
                        ret=sum(s["reward"] for s in episode.samples), length=len(episode.samples), success=False)
                    done.append((episode, stats, not (ended and step.terminated[i])))
                    episodes.append(stats)
                    del running[i]
            self._obs = list(step.obs)
            refill()
        done = [d for d in done if d[0].group not in spoiled]
        return self._assemble(done, [stats for _, stats, _ in done], failures, tokens, to_log, from_generate,
                              {"generate": t_gen, "env": t_env})

    def _assemble(self, done: list[tuple[_Episode, EpisodeStats, bool]], episodes: list[EpisodeStats],
                  failures: int, tokens: int, to_log: list, from_generate: bool,
                  timings: dict[str, float]) -> Rollout:
        """The finished episodes as one column of samples (see the module docstring)."""
        samples, episode_of, group_of, terminated, truncated = [], [], [], [], []
        for e, (episode, _, cut) in enumerate(done):
            n = len(episode.samples)
            samples += episode.samples
            episode_of += [e] * n
            group_of += [episode.group] * n
            terminated += [False] * (n - 1) + [not cut]
            truncated += [False] * (n - 1) + [cut]
        if not samples:
            raise RuntimeError("a grouped rollout ended with no complete episode (every one was dropped)")
        prompts = [s["prompt"] for s in samples]
        gen_ids = [s["ids"] for s in samples]
        weights = [s["weights"] for s in samples]
        cands = [s["candidates"] for s in samples] if "candidates" in samples[0] else None
        t0 = time.perf_counter()
        if from_generate:
            logp = torch.stack([s["logp"] for s in samples]).float().cpu()
            token_logp = None if cands is not None else [s["token_logp"] for s in samples]
        else:
            logp, _, token_logp = self.score_tokens(prompts, gen_ids, weights, candidates=cands)
        B = len(samples)
        rewards = torch.tensor([s["reward"] for s in samples], dtype=torch.float32).view(B, 1)
        kl_penalty = None
        if self.kl_coef:  # kept apart: inside the returns, group normalisation would blow it up to +-1
            ref_logp = self.score(prompts, gen_ids, weights, reference=True, candidates=cands)[0]
            kl_penalty = self.kl_coef * (logp - ref_logp)
        timings["score"] = time.perf_counter() - t0
        return Rollout(
            prompts=prompts, gen_ids=gen_ids, weights=weights, texts=[s["text"] for s in samples], logp=logp,
            values=torch.zeros(B), rewards=rewards, terminated=torch.tensor(terminated).view(B, 1),
            truncated=torch.tensor(truncated).view(B, 1), next_values=torch.zeros(B, 1), episodes=episodes,
            parse_failures=failures, gen_tokens=tokens, timings=timings, samples_for_log=to_log,
            token_logp=token_logp, episode_of=torch.tensor(episode_of), group_of=torch.tensor(group_of),
            anchors=torch.tensor([s["anchor"] for s in samples], dtype=torch.int64), kl_penalty=kl_penalty,
            candidates=cands,
        )

    # ------------------------------------------------------------ resume: between rollouts nothing is in flight

    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any], update: int) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.round = state["round"]
        self._prompts = None
