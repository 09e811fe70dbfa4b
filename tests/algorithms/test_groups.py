"""Critic-free group estimators (GRPO, RLOO, GiGPO) against hand-computed advantages, and grouped rollouts."""

import math
from pathlib import Path

import pytest
import torch

from agentrl.algorithms.advantage import GRPO, RLOO, GiGPO
from agentrl.algorithms.batches import Rollout
from agentrl.commands.fit import fit
from agentrl.config import ConfigError, load_config
from agentrl.data.groups import anchor_id
from agentrl.training.build import build

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["env.num_envs=4", "rollout.steps_per_update=8", "ppo.minibatch_size=4", "ppo.micro_batch_size=2",
         "rollout.max_new_tokens=8", "trainer.num_threads=1", "ppo.epochs=1", "trainer.image_log_every=0"]


def column(rewards, episode_of, group_of, anchors=None) -> Rollout:
    """A grouped rollout of B samples with only what the estimators read."""
    B = len(rewards)
    return Rollout(prompts=[{}] * B, gen_ids=[], weights=[], texts=[], logp=torch.zeros(B), values=torch.zeros(B),
                   rewards=torch.tensor(rewards, dtype=torch.float32).view(B, 1),
                   terminated=torch.zeros(B, 1, dtype=torch.bool), truncated=torch.zeros(B, 1, dtype=torch.bool),
                   next_values=torch.zeros(B, 1), episodes=[], parse_failures=0, gen_tokens=0,
                   episode_of=torch.tensor(episode_of), group_of=torch.tensor(group_of),
                   anchors=None if anchors is None else torch.tensor(anchors))


# group 0: episodes 0 (2 steps, R=1), 1 (3 steps, R=0), 2 (1 step, R=2); group 1: episodes 3 (R=1), 4 (R=3)
EPISODES = column(rewards=[0, 1, 0, 0, 0, 2, 1, 3], episode_of=[0, 0, 1, 1, 1, 2, 3, 4],
                  group_of=[0, 0, 0, 0, 0, 0, 1, 1])


def test_grpo_by_hand():
    adv, ret = GRPO()(EPISODES)
    # group 0: mean 1, unbiased std 1 -> 0, -1, 1; group 1: mean 2, std sqrt(2) -> -1/sqrt2, 1/sqrt2
    s = 1 / math.sqrt(2)
    assert adv.tolist() == pytest.approx([0, 0, -1, -1, -1, 1, -s, s], abs=1e-5)
    assert ret.tolist() == [1, 1, 0, 0, 0, 2, 1, 3]  # each sample carries its episode's return


def test_dr_grpo_only_centres():
    adv, _ = GRPO(scale_by_std=False)(EPISODES)
    assert adv.tolist() == pytest.approx([0, 0, -1, -1, -1, 1, -1, 1], abs=1e-6)


def test_rloo_by_hand():
    adv, _ = RLOO()(EPISODES)
    # R_i minus the mean of the others: 1 - (0+2)/2 = 0, 0 - 1.5, 2 - 0.5; 1 - 3, 3 - 1
    assert adv.tolist() == pytest.approx([0, 0, -1.5, -1.5, -1.5, 1.5, -2, 2], abs=1e-6)


def test_a_group_of_one_and_a_group_of_equal_returns_get_zero():
    adv, _ = GRPO()(column([1, 1, 5], [0, 1, 2], [0, 0, 1]))
    assert adv.tolist() == [0, 0, 0]
    assert RLOO()(column([4], [0], [0]))[0].tolist() == [0]


def test_gigpo_by_hand():
    """Episodes 0 (states A B A, rewards 0 0 1) and 1 (states A C, rewards 0 0) in group 0; A is an anchor
    state seen twice in episode 0 and once in episode 1. Group 1 also sees A: it must not join group 0's."""
    A, B, C = 11, 22, 33
    r = column(rewards=[0, 0, 1, 0, 0, 5, 1], episode_of=[0, 0, 0, 1, 1, 2, 3], group_of=[0, 0, 0, 0, 0, 1, 1],
               anchors=[A, B, A, A, C, A, A])
    adv, togo = GiGPO(step_weight=1.0, gamma=0.5)(r)
    # returns to go (gamma 0.5): episode 0: .25 .5 1; episode 1: 0 0; episodes 2, 3: 5, 1
    assert togo.tolist() == pytest.approx([0.25, 0.5, 1, 0, 0, 5, 1])
    # episode level: group 0 returns (1, 0): +-1/sqrt2; group 1 returns (5, 1): +-1/sqrt2
    e = 1 / math.sqrt(2)
    # step level, group 0 anchor A: returns .25, 1, 0 -> mean 5/12, unbiased std sqrt(0.2708333) = 0.5204165
    sd = math.sqrt(((0.25 - 5 / 12) ** 2 + (1 - 5 / 12) ** 2 + (5 / 12) ** 2) / 2)
    a0, a2, a3 = (0.25 - 5 / 12) / sd, (1 - 5 / 12) / sd, (0 - 5 / 12) / sd
    # group 1 anchor A: returns 5, 1 -> +-1/sqrt2; B and C are seen once: 0
    expected = [e + a0, e, e + a2, -e + a3, -e, e + e, -e - e]
    assert adv.tolist() == pytest.approx(expected, abs=1e-5)
    half = GiGPO(step_weight=0.5, gamma=0.5)(r)[0]
    assert half[0].item() == pytest.approx(e + 0.5 * a0, abs=1e-5)


def test_anchor_ids_are_equal_exactly_for_equal_observations():
    import numpy as np

    from agentrl.envs.base import EnvObs

    img = np.zeros((4, 4, 3), np.uint8)
    other = img.copy()
    other[0, 0, 0] = 1
    a = EnvObs(image=img, text="x", legal_actions=[], env_id="e")
    assert anchor_id(a) == anchor_id(EnvObs(image=img.copy(), text="x", legal_actions=["q"], env_id="e"))
    assert anchor_id(a) != anchor_id(EnvObs(image=other, text="x", legal_actions=[], env_id="e"))
    assert anchor_id(a) != anchor_id(EnvObs(image=img, text="y", legal_actions=[], env_id="e"))


def test_token_policy_loss_by_hand():
    from agentrl.algorithms import ppo
    logp = torch.tensor([[math.log(0.5), math.log(0.9)], [math.log(0.3), 0.0]])
    old = torch.tensor([[math.log(0.25), math.log(0.9)], [math.log(0.6), 0.0]])
    w = torch.tensor([[0.5, 1.0], [1.0, 0.0]])  # a thought token (0.5), an action token, then padding
    adv = torch.tensor([1.0, -2.0])
    out = ppo.token_policy_loss(logp, old, adv, w, clip=0.2)
    # sample 0: ratios 2 (clipped to 1.2) and 1: -(0.5 * 1.2 * 1 + 1 * 1 * 1) = -1.6
    # sample 1: ratio 0.5, A=-2: -min(0.5 * -2, 0.8 * -2) = 1.6 on the one weighted token
    assert out.tolist() == pytest.approx([-1.6, 1.6])


def test_config_refuses_groups_that_cannot_work():
    with pytest.raises(ConfigError, match="rollout.group_size >= 2"):
        load_config(ROOT / "conf/numberline.yaml", ["advantage.estimator=grpo"])
    with pytest.raises(ConfigError, match=r"group_size \(3\) must divide env.num_envs \(8\)"):
        load_config(ROOT / "conf/numberline.yaml", ["advantage.estimator=grpo", "rollout.group_size=3"])
    with pytest.raises(ConfigError, match="only serves the group estimators"):
        load_config(ROOT / "conf/numberline.yaml", ["rollout.group_size=2"])
    with pytest.raises(ConfigError, match="ppo.loss_type"):
        load_config(ROOT / "conf/numberline.yaml", ["ppo.loss_type=word"])


# ---------------------------------------------------------------- grouped rollouts on the real env and model


def grouped(tiny_path, *extra):
    cfg = load_config(ROOT / "conf/numberline.yaml", [*SMALL, "advantage.estimator=grpo", "rollout.group_size=2",
                                                      *extra])
    return build(cfg)


def test_grouped_rollout_holds_whole_groups_from_shared_starts(tiny_path):
    policy, data = grouped(tiny_path, "rollout.steps_per_update=4")  # 1 step per env: groups must run past it
    assert not list(policy.value_head.parameters())  # critic-free: no value head built
    try:
        rollout = data.collect()
    finally:
        data.envs.close()
    budget = 4
    assert rollout.size >= budget
    ends = (rollout.terminated | rollout.truncated).view(-1)
    episode = rollout.episode_of
    assert ends[-1] and ends.sum() == int(episode.max()) + 1  # every episode in it is complete
    for e in range(int(episode.max()) + 1):  # one end per episode, at its last sample
        idx = (episode == e).nonzero().view(-1)
        assert ends[idx].tolist() == [False] * (len(idx) - 1) + [True]
    firsts = {}
    for e in range(int(episode.max()) + 1):
        b = int((episode == e).nonzero()[0])
        firsts.setdefault(int(rollout.group_of[b]), []).append(int(rollout.anchors[b]))
    for group, starts in firsts.items():
        assert len(starts) == 2 and starts[0] == starts[1], f"group {group} started from different states"
    assert len(set(s[0] for s in firsts.values())) >= 1
    assert len(rollout.episodes) == int(episode.max()) + 1
    adv, _ = GRPO()(rollout)
    for e in range(int(episode.max()) + 1):  # every step of an episode carries the episode's advantage
        assert len(set(adv[episode == e].tolist())) == 1


def test_grouped_rollout_episodes_end_at_different_steps_and_resume_replays(tiny_path):
    policy, data = grouped(tiny_path, "rollout.steps_per_update=16")
    try:
        state = data.state_dict()
        torch.manual_seed(3)
        first = data.collect()
        data.load_state_dict(state, update=0)
        torch.manual_seed(3)
        again = data.collect()
    finally:
        data.envs.close()
    assert first.texts == again.texts and first.anchors.tolist() == again.anchors.tolist()
    lengths = torch.bincount(first.episode_of)
    assert len(set(lengths.tolist())) > 1  # random actions (the tiny model's parse failures) end episodes apart


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "gigpo"])
def test_fit_with_a_group_estimator_trains_without_a_value_head(tmp_path, tiny_path, estimator):
    cfg = load_config(ROOT / "conf/numberline.yaml", [
        *SMALL, f"advantage.estimator={estimator}", "rollout.group_size=2", "trainer.max_updates=2",
        f"trainer.out_dir={tmp_path}", "rollout.steps_per_update=8"])
    result = fit(cfg, argv=["test"])
    m = result.metrics
    assert "losses/value" not in m and "losses/explained_variance" not in m
    assert m["losses/optimizer_steps"] == 2.0  # planned: 8 samples / minibatch 4, whatever the rollout's size
    assert math.isfinite(m["losses/policy"])
    saved = torch.load(result.checkpoint / "value_head.pt")
    assert saved == {}


def test_token_loss_fit_moves_the_weights(tmp_path, tiny_path):
    cfg = load_config(ROOT / "conf/numberline.yaml", [
        *SMALL, "advantage.estimator=grpo", "rollout.group_size=2", "ppo.loss_type=token",
        "trainer.max_updates=1", f"trainer.out_dir={tmp_path}", "trainer.checkpoint_every=0"])
    policy, _ = build(cfg)
    before = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    result = fit(cfg, argv=["test"])
    after = dict(result.policy.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert math.isfinite(result.metrics["losses/policy"])


@pytest.mark.parametrize("vector", ["sync", "async"])
def test_gym_cards_reset_slots_share_a_start_and_leave_the_others(vector):
    from agentrl.config import EnvConfig
    from agentrl.envs.gym_cards import Points24Module

    m = Points24Module(EnvConfig(name="points24", num_envs=4, vector=vector))
    try:
        before = m.reset(0)
        assert before[0].text != before[1].text
        obs = m.reset_slots([0, 1], key=12345)
        assert obs[0].text == obs[1].text and (obs[0].image == obs[1].image).all()
        assert m.reset_slots([2, 3], key=12345)[0].text == obs[0].text  # the key names the state
        assert m.reset_slots([2], key=54321)[0].text != obs[0].text
        step = m.step(["1", "1", "1", "1"])
        assert step.obs[0].text == step.obs[1].text
    finally:
        m.close()


@pytest.mark.integration
def test_alfworld_reset_slots_share_the_game_file():
    from agentrl.config import EnvConfig
    from agentrl.envs.alfworld import AlfworldModule

    m = AlfworldModule(EnvConfig(name="alfworld", num_envs=3, vector="async", image="none"))
    try:
        m.reset(0)
        a, b = m.reset_slots([0, 2], key=7)
        assert a.text == b.text and a.legal_actions == b.legal_actions
        c = m.reset_slots([1], key=7)[0]
        assert c.text == a.text
    finally:
        m.close()


def test_kl_penalty_is_subtracted_after_the_group_comparison():
    """Equal returns (all failed) with tiny KL penalties: advantages stay tiny, not +-1 from dividing by their std."""
    r = column(rewards=[0, 0, 0, 0], episode_of=[0, 1, 2, 3], group_of=[0, 0, 0, 0])
    r.kl_penalty = torch.tensor([1e-4, 2e-4, 3e-4, 4e-4])
    for estimator in (GRPO(), GiGPO(gamma=0.5)):
        r.anchors = torch.tensor([1, 2, 3, 4])
        adv, _ = estimator(r)
        assert adv.tolist() == pytest.approx([-1e-4, -2e-4, -3e-4, -4e-4], abs=1e-9)


def _steps_with_a_drop(data, slot: int, at_call: int):
    """Wrap the env module's step: on call ``at_call`` slot ``slot``'s episode is dropped (a worker died)."""
    real, calls = data.envs.step, [0]

    def step(actions):
        out = real(actions)
        calls[0] += 1
        if calls[0] == at_call:
            out.truncated[slot], out.episodes[slot] = True, None
        return out

    data.envs.step = step


def test_a_dropped_member_drops_its_whole_group(tiny_path):
    policy, data = grouped(tiny_path, "rollout.steps_per_update=8")
    _steps_with_a_drop(data, slot=0, at_call=1)  # group uid 0 (slots 0, 1) loses slot 0 on the first step
    try:
        rollout = data.collect()
    finally:
        data.envs.close()
    groups = rollout.group_of.unique().tolist()
    assert 0 not in groups  # slot 1's episode of that group is not compared with nothing
    for g in groups:  # every kept group is whole: 2 episodes
        assert len(rollout.episode_of[rollout.group_of == g].unique()) == 2
    assert rollout.size >= 8  # the budget counts kept samples


def test_a_worker_restart_while_starting_a_group_drops_the_groups_in_flight(tiny_path):
    policy, data = grouped(tiny_path, "rollout.steps_per_update=8")
    real, calls = data.envs.reset_slots, [0]

    def reset_slots(slots, key):  # the second group's start restarts every worker (as gym_cards async does)
        calls[0] += 1
        if calls[0] == 2:
            data.envs.restarts += 1
        return real(slots, key)

    data.envs.reset_slots = reset_slots
    try:
        rollout = data.collect()
    finally:
        data.envs.close()
    assert 0 not in rollout.group_of.tolist()  # group uid 0 was running when the envs moved to new states
    for g in rollout.group_of.unique().tolist():
        assert len(rollout.episode_of[rollout.group_of == g].unique()) == 2


def test_a_group_run_starts_from_a_gae_checkpoint(tmp_path, tiny_path):
    """policy.init_from a PPO+GAE checkpoint (with a value head) into a critic-free run: the head is ignored."""
    gae = tmp_path / "gae"
    fit(load_config(ROOT / "conf/numberline.yaml", [*SMALL, "trainer.max_updates=1", f"trainer.out_dir={gae}"]))
    result = fit(load_config(ROOT / "conf/numberline.yaml", [
        *SMALL, "advantage.estimator=grpo", "rollout.group_size=2", "trainer.max_updates=1",
        f"policy.init_from={gae}", f"trainer.out_dir={tmp_path / 'grpo'}"]))
    assert not list(result.policy.value_head.parameters())
