"""Experts: they win where the game can be won, and their fields have the prompt's keys."""

import gymnasium
import numpy as np
import pytest

import agentrl.envs  # noqa: F401  (registers the ids)
from agentrl.envs.formula import evaluate
from agentrl.envs.gym_cards import experts
from agentrl.envs.gym_cards.blackjack import BlackjackEnv, hand_total

KEYS = {
    "agentrl/NumberLine-v0": ["current number", "target number", "thoughts", "action"],
    "agentrl/EZPoints-v0": ["cards", "current formula", "thoughts", "action"],
    "agentrl/Points24-v0": ["cards", "current formula", "thoughts", "action"],
    "agentrl/Blackjack-v0": ["thoughts", "action"],
}


def _expert_returns(env, episodes, seed=0):
    """Play ``episodes`` episodes with the expert; returns and the fields it gave."""
    returns, fields = [], []
    env.reset(seed=seed)
    for _ in range(episodes):
        total, done = 0.0, False
        while not done:
            f = env.expert_fields()
            fields.append(f)
            _, reward, terminated, truncated, _ = env.step(env.action_names.index(f["action"]))
            total += reward
            done = terminated or truncated
        returns.append(total)
        env.reset()
    return np.array(returns), fields


@pytest.mark.parametrize("gym_id", list(KEYS))
def test_expert_fields_keys_types_and_legal_action(gym_id):
    env = gymnasium.make(gym_id).unwrapped
    _, fields = _expert_returns(env, 5)
    for f in fields:
        assert list(f) == KEYS[gym_id]
        assert f["action"] in env.action_names
        assert isinstance(f["thoughts"], str) and f["thoughts"]
    if "current number" in KEYS[gym_id]:
        assert all(type(f["current number"]) is int and type(f["target number"]) is int for f in fields)
    if "cards" in KEYS[gym_id]:
        assert fields[0]["current formula"] == ""
        assert all(isinstance(f["cards"], list) and isinstance(f["current formula"], str) for f in fields)


def test_numberline_expert_always_wins_without_a_penalty():
    env = gymnasium.make("agentrl/NumberLine-v0").unwrapped
    returns, _ = _expert_returns(env, 200)
    assert (returns == 1.0).all()


def test_ezpoints_expert_always_wins():
    env = gymnasium.make("agentrl/EZPoints-v0").unwrapped
    returns, _ = _expert_returns(env, 200)
    assert (returns == 10.0).all()


def test_points24_expert_wins_every_solvable_deal():
    env = gymnasium.make("agentrl/Points24-v0").unwrapped
    returns, fields = _expert_returns(env, 150)
    solvable = np.array([], bool)
    env.reset(seed=0)
    for _ in range(150):
        solvable = np.append(solvable, experts.solvable(env.values, 24))
        env.reset()
    print(f"Points24: {solvable.mean():.1%} of random deals are solvable")
    assert 0.6 < solvable.mean() < 0.9
    assert (returns[solvable] == 10.0).all()
    assert (returns[~solvable] == -1.0).all()  # the expert ends unsolvable deals at once with "="


def test_points24_expert_with_face_cards_11_to_13():
    env = gymnasium.make("agentrl/Points24-v0", face_cards_as_10=False, solvable_only=True).unwrapped
    returns, _ = _expert_returns(env, 50)
    assert (returns == 10.0).all()


def test_solver_finds_fraction_solutions_and_continues_prefixes():
    assert experts.solve([8, 3, 8, 3], 24) == list("8/(3-8/3)=")
    assert experts.solve([3, 3, 8, 8], 24, prefix=["8", "/"]) == list("8/(3-8/3)=")
    assert experts.solve([1, 1, 1, 1], 24) is None
    assert experts.solve([8, 3, 8, 3], 24, prefix=["8", "8"]) is None  # not a formula's start
    assert experts.solve([10, 2], 12, ops="+*", parentheses=False) == ["10", "+", "2", "="]
    assert experts.solve([3, 4], 12, prefix=["4"], ops="+*", parentheses=False) == ["4", "*", "3", "="]


def test_every_solution_is_correct_and_uses_each_card_once():
    rng = np.random.default_rng(1)
    for _ in range(30):
        values = [min(int(v), 10) for v in rng.integers(1, 14, size=4)]
        for tokens in experts.solutions(tuple(values), 24):
            assert tokens[-1] == "="
            assert evaluate(tokens[:-1]) == 24
            assert sorted(int(t) for t in tokens if t.isdigit()) == sorted(values)
        assert bool(experts.solutions(tuple(values), 24)) == experts.solvable(values, 24)


def test_points_fields_off_path_and_unsolvable_say_so():
    off = experts.points_fields(["8", "3", "8", "3"], [8, 3, 8, 3], ["8", "8"], 24, "+-*/", True)
    assert off["action"] == "=" and "cannot be completed" in off["thoughts"]
    none = experts.points_fields(["A", "A", "A", "A"], [1, 1, 1, 1], [], 24, "+-*/", True)
    assert none["action"] == "=" and "No formula" in none["thoughts"]
    on = experts.points_fields(["K", "2"], [10, 2], ["10"], 12, "+*", False)
    assert on == {
        "cards": ["K", "2"],
        "current formula": "10",
        "thoughts": on["thoughts"],
        "action": "+",
    }
    assert "10+2 = 12" in on["thoughts"]


@pytest.mark.parametrize(
    ("total", "soft", "dealer", "action"),
    [
        (11, False, 10, "hit"),
        (12, False, 3, "hit"),
        (12, False, 4, "stand"),
        (16, False, 6, "stand"),
        (16, False, 7, "hit"),
        (16, False, 1, "hit"),
        (17, False, 1, "stand"),
        (17, True, 6, "hit"),
        (18, True, 8, "stand"),
        (18, True, 9, "hit"),
        (18, True, 1, "hit"),
        (19, True, 10, "stand"),
    ],
)
def test_basic_strategy_table(total, soft, dealer, action):
    assert experts.basic_strategy(total, soft, dealer) == action
    assert experts.blackjack_fields(total, soft, dealer)["action"] == action


def _basic_strategy_win_rate(step, reset, observe, episodes):
    wins = 0
    for _ in range(episodes):
        reset()
        done = False
        while not done:
            total, soft, dealer = observe()
            _, reward, done, _, _ = step(1 if experts.basic_strategy(total, soft, dealer) == "hit" else 0)
        wins += reward > 0
    return wins / episodes


def test_blackjack_basic_strategy_wins_41_to_45_percent_like_gymnasiums_blackjack(monkeypatch):
    # Rules only: skip drawing (tested above) so 20k episodes take about a second.
    monkeypatch.setattr(BlackjackEnv, "_obs", lambda self: None)
    ours = BlackjackEnv()
    ours.reset(seed=0)
    rate = _basic_strategy_win_rate(
        ours.step,
        ours.reset,
        lambda: (*hand_total(ours.player), ours.dealer[0].value()),
        20_000,
    )
    theirs = gymnasium.make("Blackjack-v1").unwrapped
    theirs.reset(seed=0)

    def observe_theirs():
        total, dealer, soft = theirs._get_obs()
        return total, bool(soft), dealer

    ref = _basic_strategy_win_rate(theirs.step, theirs.reset, observe_theirs, 20_000)
    print(f"Blackjack basic strategy win rate: ours {rate:.1%}, gymnasium's Blackjack-v1 {ref:.1%}")
    assert 0.41 <= rate <= 0.45
    assert abs(rate - ref) < 0.015
