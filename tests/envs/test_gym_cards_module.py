"""The gym_cards EnvModule: batched stepping by action strings, auto-reset, stats, seeding."""

import numpy as np
import pytest

from agentrl.config import ConfigError, EnvConfig
from agentrl.config.registry import ENVS, resolve
from agentrl.envs.base import EnvObs
from agentrl.envs.gym_cards import BlackjackModule, EZPointsModule, NumberLineModule, Points24Module
from agentrl.envs.gym_cards.module import env_seed


def _module(cls=NumberLineModule, split="train", **kwargs):
    return cls(EnvConfig(**{"num_envs": 2, **kwargs}), split=split)


def _play_until_episodes(module, n_episodes, max_steps=100):
    """Step with the expert until ``n_episodes`` episodes ended; every EnvStep and the expert's actions."""
    steps, ended = [], 0
    for _ in range(max_steps):
        actions = [f["action"] for f in module.expert_fields()]
        step = module.step(actions)
        steps.append((actions, step))
        ended += sum(e is not None for e in step.episodes)
        if ended >= n_episodes:
            return steps
    raise AssertionError(f"only {ended} episodes ended in {max_steps} steps")


@pytest.mark.parametrize("vector", ["sync", "async"])
def test_steps_auto_resets_and_reports_episodes(vector):
    module = _module(vector=vector, options={"max_position": 3})
    try:
        obs = module.reset(seed=0)
        assert len(obs) == 2 and all(isinstance(o, EnvObs) for o in obs)
        assert obs[0].image.shape == (224, 224, 3) and obs[0].env_id == "numberline"
        assert obs[0].legal_actions == ["-", "+"]
        assert set(obs[0].extra) == {"target", "current"}
        returns, lengths = np.zeros(2), np.zeros(2, int)
        for _, step in _play_until_episodes(module, 4):
            assert step.reward.dtype == np.float32 and step.reward.shape == (2,)
            returns += step.reward
            lengths += 1
            for i in range(2):
                done = step.terminated[i] or step.truncated[i]
                assert (step.episodes[i] is not None) == done == (step.final_obs[i] is not None)
                if done:
                    final, stats = step.final_obs[i], step.episodes[i]
                    assert final.extra["current"] == final.extra["target"]  # the expert reached it
                    assert final.image is not None
                    assert (stats.ret, stats.length, stats.success) == (returns[i], lengths[i], True)
                    # The obs is the new episode's first one.
                    assert step.obs[i].extra["current"] != step.obs[i].extra["target"]
                    returns[i], lengths[i] = 0, 0
    finally:
        module.close()


def test_truncation_by_max_episode_steps_and_failed_episode_stats():
    module = _module(max_episode_steps=2, options={"max_position": 5})
    module.reset(seed=1)
    first = module.step(["-", "-"])
    second = module.step(["+", "+"])  # one of the two moves goes away from the target
    assert not (first.truncated.any() or first.terminated.any())
    for i in range(2):
        if not second.terminated[i]:
            assert second.truncated[i]
            assert second.episodes[i].length == 2
            assert second.episodes[i].ret == first.reward[i] + second.reward[i]
            assert second.episodes[i].success == (second.episodes[i].ret > 0)
    module.close()


def test_seeds_reproduce_and_splits_and_seeds_do_not_collide():
    def starts(seed, split="train"):
        module = _module(NumberLineModule, split=split, num_envs=4, options={"max_position": 50})
        out = [(o.extra["target"], o.extra["current"]) for o in module.reset(seed)]
        module.close()
        return out

    assert starts(0) == starts(0)
    assert starts(0) != starts(1)
    assert starts(0) != starts(0, "eval")
    seeds = {
        env_seed(s, split, i) for s in range(20) for split in ("train", "eval", "test") for i in range(8)
    }
    assert len(seeds) == 20 * 3 * 8


def test_image_none_gives_text_only_obs():
    module = _module(EZPointsModule, image="none")
    obs = module.reset(seed=0)
    assert obs[0].image is None and obs[0].text.startswith("Cards:")
    assert set(obs[0].extra) >= {"cards", "formula", "target"}
    module.close()


@pytest.mark.parametrize(
    ("cls", "env_id"),
    [(EZPointsModule, "ezpoints"), (Points24Module, "points24"), (BlackjackModule, "blackjack")],
)
def test_other_games_step_by_name(cls, env_id):
    module = _module(cls)
    obs = module.reset(seed=3)
    assert obs[0].env_id == env_id and cls.family == "gym_cards"
    steps = _play_until_episodes(module, 2, max_steps=40)
    assert any(e is not None for _, s in steps for e in s.episodes)
    module.close()


def test_registry_names_resolve_to_the_modules():
    assert resolve("env", "env.name", "numberline", ENVS) is NumberLineModule
    assert resolve("env", "env.name", "blackjack", ENVS) is BlackjackModule


def test_bad_inputs_name_the_value():
    module = _module()
    module.reset(seed=0)
    with pytest.raises(ValueError, match="'jump'"):
        module.step(["+", "jump"])
    with pytest.raises(ValueError, match="2 envs"):
        module.step(["+"])
    module.close()
    with pytest.raises(ConfigError, match="env.options.max_pos"):
        _module(options={"max_pos": 3})
    with pytest.raises(ValueError, match="split"):
        _module(split="validation")
