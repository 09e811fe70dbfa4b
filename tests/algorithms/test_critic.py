"""Returns the critic can fit: reward scaling by the running std of the discounted return
(``advantage.reward_scaling=return_std``), hand-computed, global over ranks, kept in checkpoints;
and a value head that reaches ALFWorld-sized targets with conf/alfworld.yaml's settings."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from agentrl.algorithms import ppo
from agentrl.algorithms.advantage import GAE, ReturnScaler
from agentrl.config import ConfigError, load_config
from agentrl.training.resume import RunState, resume, save_update

ROOT = Path(__file__).resolve().parents[2]


def _col(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_return_std_by_hand():
    # gamma 0.5, two envs; env 0's episode ends at t0.
    # t0: G = [1, 2]            -> all G so far {1, 2}: var 0.25, std 0.5       -> rewards / 0.5
    # t1: G = [3, 0.5*2 + 0]    -> {1, 2, 3, 1}: mean 1.75, var 2.75/4 = 0.6875 -> rewards / 0.829156
    # t2: G = [0.5*3 + 1, 0.5*1 + 1] = [2.5, 1.5] (env 0's episode started at t1: no reset after t1)
    #     -> {1, 2, 3, 1, 2.5, 1.5}: mean 11/6, var (1+4+9+1+6.25+2.25)/6 - (11/6)^2 = 23.5/6 - 121/36 = 20/36
    # (the statistics start from mean 0, var 1 with weight 1e-4: under 1e-3 relative here, the most at t0)
    scaler = ReturnScaler(gamma=0.5)
    rewards = _col([[1, 2], [3, 0], [1, 1]])
    ends = torch.tensor([[True, False], [False, False], [False, False]])
    out = scaler(rewards, ends)
    std = [0.5, math.sqrt(0.6875), math.sqrt(20 / 36)]
    expected = [[1 / std[0], 2 / std[0]], [3 / std[1], 0.0], [1 / std[2], 1 / std[2]]]
    assert out.tolist() == [pytest.approx(row, rel=1e-3) for row in expected]
    assert scaler.discounted.tolist() == [2.5, 1.5]  # carried over to the next rollout
    assert scaler.mean == pytest.approx(11 / 6, rel=1e-4) and scaler.var == pytest.approx(20 / 36, rel=1e-3)
    assert scaler.count == pytest.approx(6 + 1e-4)


def test_return_std_prior_and_no_mean_subtraction():
    # one reward of 4 into the prior (mean 0, var 1, count 1e-4): Chan's update by hand
    scaler = ReturnScaler(gamma=0.9)
    out = scaler(_col([[4.0]]), torch.tensor([[True]]))
    total = 1 + 1e-4
    mean = 4 / total
    var = (1e-4 * 1 + 0 + 16 * 1e-4 * 1 / total) / total
    assert scaler.mean == pytest.approx(mean, rel=1e-12) and scaler.var == pytest.approx(var, rel=1e-12)
    assert out.item() == pytest.approx(4 / math.sqrt(var + 1e-8), rel=1e-6)  # 4 / std: the sign and zero stay
    assert scaler.discounted.tolist() == [0.0]  # the episode ended
    assert scaler(_col([[0.0], [-2.0]]), torch.zeros(2, 1, dtype=torch.bool))[0].item() == 0.0


def test_state_dict_continues_exactly():
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(6, 3, generator=gen) * 20, torch.rand(6, 3, generator=gen) < 0.2) for _ in range(3)]
    straight = ReturnScaler(0.9)
    a = [straight(r, e) for r, e in batches]
    first = ReturnScaler(0.9)
    first(*batches[0])
    second = ReturnScaler(0.9)
    second.load_state_dict(first.state_dict())
    b = [second(r, e) for r, e in batches[1:]]
    assert all(torch.equal(x, y) for x, y in zip(a[1:], b))


def test_gae_with_return_std_scales_the_rewards_it_bootstraps_on():
    T, N = 3, 2
    rollout = SimpleNamespace(rewards=_col([[1, 2], [3, 0], [1, 1]]), values=torch.zeros(T * N),
                              next_values=torch.zeros(T, N), terminated=torch.zeros(T, N, dtype=torch.bool),
                              truncated=torch.tensor([[True, False], [False, False], [False, False]]))
    _, plain = GAE(0.5, 1.0)(rollout)
    _, scaled = GAE(0.5, 1.0, "return_std")(rollout)
    # with V = 0 and lambda 1 the returns are discounted sums of the rewards: scaled ones of scaled rewards
    r = ReturnScaler(0.5)(rollout.rewards, rollout.truncated)
    r = r[:, 1].tolist()
    assert scaled.view(T, N)[:, 1].tolist() == pytest.approx([r[0] + 0.5 * r[1] + 0.25 * r[2], r[1] + 0.5 * r[2], r[2]])
    assert plain.view(T, N)[:, 1].tolist() == pytest.approx([2.25, 0.5, 1.0])
    assert GAE(0.5, 1.0).state_dict() == {}


def test_config_key():
    cfg = load_config(ROOT / "conf/alfworld.yaml", [])
    assert cfg.advantage.reward_scaling == "return_std" and cfg.ppo.value_clip is None
    assert GAE.from_config(cfg).scaler is not None
    assert load_config(ROOT / "conf/numberline.yaml", []).advantage.reward_scaling == "none"  # gym_cards unchanged
    with pytest.raises(ConfigError, match="advantage.reward_scaling"):
        load_config(ROOT / "conf/numberline.yaml", ["advantage.reward_scaling=return_mean"])
    with pytest.raises(ConfigError, match=r"advantage.reward_scaling \(advantage.estimator=grpo\)"):
        load_config(ROOT / "conf/numberline.yaml", ["advantage.estimator=grpo", "rollout.group_size=2",
                                                     "advantage.reward_scaling=return_std"])


# ---------------------------------------------------------------- the critic fits ALFWorld-sized returns

STEPS, ENVS, WON = 5, 8, 50.0


def _features() -> torch.Tensor:
    """(T, N, 10) one-hot of (step in the episode, won or not): a critic that can represent V exactly."""
    x = torch.zeros(STEPS, ENVS, 2 * STEPS)
    for t in range(STEPS):
        for i in range(ENVS):
            x[t, i, t + STEPS * (i < ENVS // 2)] = 1.0
    return x


def _critic_explained_variance(reward_scaling: str, value_clip: float | None, updates: int = 8) -> list[float]:
    """PPO's value updates on an ALFWorld-like game: one 5-step episode per env and rollout, half the envs win
    (50 on the last step), the others get 1 (a goal-condition share). The critic sees (step, won); GAE as in fit
    (gamma 0.9, lambda 0.95), 4 epochs of 5 minibatches, Adam 0.05. Returns the explained variance of the
    values of each rollout against its returns (``losses/explained_variance``), before that update."""
    torch.manual_seed(0)
    critic = torch.nn.Linear(2 * STEPS, 1, bias=False)
    opt = torch.optim.Adam(critic.parameters(), lr=0.05)
    estimator = GAE(0.9, 0.95, reward_scaling)
    x = _features()
    rewards = torch.zeros(STEPS, ENVS)
    rewards[-1] = torch.tensor([WON] * (ENVS // 2) + [1.0] * (ENVS // 2))
    terminated = torch.zeros(STEPS, ENVS, dtype=torch.bool)
    terminated[-1] = True
    shuffle = torch.Generator().manual_seed(0)
    ev = []
    for _ in range(updates):
        with torch.no_grad():
            values = critic(x).squeeze(-1)  # (T, N)
        nxt = ppo.next_values_for(values, torch.zeros(ENVS), torch.zeros(STEPS, ENVS), torch.zeros(STEPS, ENVS))
        rollout = SimpleNamespace(rewards=rewards, values=values.reshape(-1), next_values=nxt,
                                  terminated=terminated, truncated=torch.zeros_like(terminated))
        _, returns = estimator(rollout)
        ev.append(ppo.explained_variance(rollout.values, returns))
        flat = x.reshape(-1, 2 * STEPS)
        for _ in range(4):
            for mb in torch.randperm(len(flat), generator=shuffle).split(8):
                v = critic(flat[mb]).squeeze(-1)
                loss = ppo.value_loss(v, rollout.values[mb], returns[mb], value_clip).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
    return ev


def test_the_critic_fits_with_alfworld_settings_and_not_with_the_old_ones():
    old = _critic_explained_variance("none", 0.1)  # conf/base.yaml's value_clip 0.1, rewards as given
    new = _critic_explained_variance("return_std", None)  # conf/alfworld.yaml
    # the old: V moves at most 0.1 per update towards targets of 30-50; GAE falls back to Monte Carlo returns
    assert max(old) < 0.1
    # the new: V reaches its targets within a few updates and stays there
    assert new[4] > 0.9 and min(new[5:]) > 0.95
    # each half alone fits slower: an absolute clip of 0.1 still holds V back on scaled returns (~3), and
    # without scaling Adam's ~lr-sized steps take tens of updates to reach returns of 30-50
    assert _critic_explained_variance("return_std", 0.1)[4] < 0.8
    assert max(_critic_explained_variance("none", None)) < 0.3


# ---------------------------------------------------------------- checkpoints and ranks

class _Policy(torch.nn.Module):
    """What save_checkpoint and load_trainable read of a policy."""

    def __init__(self) -> None:
        super().__init__()
        self.value_head = torch.nn.Linear(2, 1)
        self.model = SimpleNamespace(save_pretrained=lambda path: None)
        self.processor = SimpleNamespace(save_pretrained=lambda path: None)


def _parts():
    policy = _Policy()
    opt = torch.optim.Adam(policy.parameters())
    learner = SimpleNamespace(optimizer=opt, scheduler=torch.optim.lr_scheduler.StepLR(opt, 1))
    data = SimpleNamespace(state_dict=lambda: {}, load_state_dict=lambda state, update: None,
                           shuffle=torch.Generator().manual_seed(0))
    fabric = SimpleNamespace(world_size=1, global_rank=0, is_global_zero=True, barrier=lambda: None)
    return dict(policy=policy, learner=learner, data=data, run=RunState(window=deque(maxlen=4))), fabric


def _rollout(seed: int) -> SimpleNamespace:
    gen = torch.Generator().manual_seed(seed)
    return SimpleNamespace(rewards=torch.randn(4, 2, generator=gen) * 30, values=torch.zeros(8),
                           next_values=torch.zeros(4, 2), terminated=torch.rand(4, 2, generator=gen) < 0.3,
                           truncated=torch.zeros(4, 2, dtype=torch.bool))


def test_resume_restores_the_running_statistics_exactly(tmp_path):
    straight = GAE(0.9, 0.95, "return_std")
    expected = [straight(_rollout(s))[1] for s in range(3)]
    first = GAE(0.9, 0.95, "return_std")
    first(_rollout(0))
    parts, fabric = _parts()
    ckpt = save_update(fabric, tmp_path / "checkpoints" / "update_000001", config_yaml="", meta={},
                       estimator=first, **parts)
    again = GAE(0.9, 0.95, "return_std")
    parts, fabric = _parts()
    resume(fabric, [ckpt], estimator=again, **parts)
    assert all(torch.equal(again(_rollout(s))[1], expected[s]) for s in (1, 2))

    # a checkpoint written without the statistics cannot continue a run that scales rewards
    parts, fabric = _parts()
    bare = save_update(fabric, tmp_path / "checkpoints" / "update_000002", config_yaml="", meta={}, **parts)
    parts, fabric = _parts()
    with pytest.raises(ConfigError, match="no advantage estimator state"):
        resume(fabric, [bare], estimator=GAE(0.9, 0.95, "return_std"), **parts)
    parts, fabric = _parts()
    resume(fabric, [bare], estimator=GAE(0.9, 0.95), **parts)  # nothing to restore: fine


RANK_SCRIPT = """
import json, sys, torch, torch.distributed as dist
from agentrl.algorithms.advantage import ReturnScaler
torch.set_num_threads(1)
dist.init_process_group("gloo")
rank = dist.get_rank()
gen = torch.Generator().manual_seed(0)
rewards, ends = torch.randn(5, 4, generator=gen) * 10, torch.rand(5, 4, generator=gen) < 0.3
mine = slice(2 * rank, 2 * rank + 2)  # this rank's two envs of four
scaler = ReturnScaler(0.9)
out = [scaler(rewards[:, mine], ends[:, mine]).tolist() for _ in range(2)]
json.dump({"out": out, "var": scaler.var}, open(sys.argv[1], "w"))
dist.destroy_process_group()
"""


def test_statistics_are_global_over_ranks(tmp_path):
    """Two gloo processes with two envs each scale exactly as one process with all four."""
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / f"rank{r}.json")],
                              env={**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                                   "RANK": str(r), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"},
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    gen = torch.Generator().manual_seed(0)
    rewards, ends = torch.randn(5, 4, generator=gen) * 10, torch.rand(5, 4, generator=gen) < 0.3
    single = ReturnScaler(0.9)
    for k in range(2):
        whole = single(rewards, ends)
        got = torch.cat([torch.tensor(ranks[r]["out"][k]) for r in range(2)], dim=1)
        assert torch.equal(got, whole)
    assert ranks[0]["var"] == ranks[1]["var"] == single.var
