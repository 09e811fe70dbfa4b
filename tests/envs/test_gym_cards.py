"""The four gym_cards games as gymnasium envs: API, seeding, rules, images."""

import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import agentrl.envs
from agentrl.envs.gym_cards.blackjack import BlackjackEnv, hand_total
from agentrl.envs.gym_cards.cards import Card
from agentrl.envs.gym_cards.ezpoints import EZPointsEnv
from agentrl.envs.gym_cards.points24 import Points24Env
from agentrl.envs.gym_cards.render import draw_text, numberline_image

GAMES = list(agentrl.envs.GYM_IDS.values())


def _env(gym_id, **kwargs):
    return gymnasium.make(gym_id, **kwargs).unwrapped


@pytest.mark.parametrize("gym_id", GAMES)
@pytest.mark.parametrize("render_mode", [None, "ansi", "rgb_array"])
def test_check_env_passes_without_warnings(gym_id, render_mode):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(_env(gym_id, render_mode=render_mode))


@pytest.mark.parametrize("gym_id", GAMES)
def test_spaces_info_and_text_render(gym_id):
    env = _env(gym_id, render_mode="ansi", image_size=112)
    obs, info = env.reset(seed=0)
    assert obs.shape == (112, 112, 3) and obs.dtype == np.uint8
    assert env.observation_space.contains(obs)
    assert env.action_space.n == len(env.action_names)
    assert info["legal_actions"] == env.action_names
    assert info["text"] == env.render()


def test_action_names():
    assert _env("agentrl/NumberLine-v0").action_names == ["-", "+"]
    numbers = [str(i) for i in range(1, 11)]
    assert _env("agentrl/EZPoints-v0").action_names == [*numbers, "+", "*", "="]
    assert _env("agentrl/Points24-v0").action_names == [*numbers, "+", "-", "*", "/", "(", ")", "="]
    assert _env("agentrl/Blackjack-v0").action_names == ["stand", "hit"]
    faces = _env("agentrl/Points24-v0", face_cards_as_10=False).action_names
    assert faces[:13] == [str(i) for i in range(1, 14)]


def _rollout(env, seed, steps=12):
    """Images and infos of a fixed action sequence from ``reset(seed)``."""
    obs, info = env.reset(seed=seed)
    frames, infos = [obs.tobytes()], [info]
    for t in range(steps):
        obs, _, terminated, truncated, info = env.step(t % env.action_space.n)
        frames.append(obs.tobytes())
        infos.append(info)
        if terminated or truncated:
            obs, info = env.reset()
            frames.append(obs.tobytes())
            infos.append(info)
    return frames, infos


@pytest.mark.parametrize("gym_id", GAMES)
def test_same_seed_same_episode_and_bytes(gym_id):
    a, b = _env(gym_id), _env(gym_id)
    assert _rollout(a, 7) == _rollout(b, 7)
    # Starts of episodes differ across seeds (NumberLine has only 30 starts).
    firsts = {_rollout(a, seed, 0)[0][0] for seed in range(10)}
    assert len(firsts) >= 5


def test_seeding_does_not_touch_global_random():
    import random

    random.seed(0)
    np.random.seed(0)
    before = (random.random(), np.random.rand())
    random.seed(0)
    np.random.seed(0)
    for gym_id in GAMES:
        _rollout(_env(gym_id), 3)
    assert (random.random(), np.random.rand()) == before


def _state_key(env):
    if hasattr(env, "current"):
        return env.target, env.current
    if hasattr(env, "formula"):
        return tuple(env.cards), tuple(env.formula)
    return tuple(env.player), tuple(env.dealer) if env.done else env.dealer[0], env.done


@pytest.mark.parametrize("gym_id", GAMES)
def test_images_differ_exactly_when_states_differ(gym_id):
    env = _env(gym_id)
    rng = np.random.default_rng(0)
    images: dict = {}
    obs, _ = env.reset(seed=0)
    for _ in range(300):
        images.setdefault(_state_key(env), set()).add(obs.tobytes())
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        if terminated or truncated:
            images.setdefault(_state_key(env), set()).add(obs.tobytes())
            obs, _ = env.reset()
    assert all(len(v) == 1 for v in images.values()), "one state drew two different images"
    distinct = {next(iter(v)) for v in images.values()}
    assert len(distinct) == len(images) > 20, "two states drew the same image"


# ---------------------------------------------------------------- images are big


def _ink_rows(img, x0, x1, y0=0, y1=None):
    dark = (np.asarray(img)[y0:y1, x0:x1] < 128).all(axis=-1).any(axis=1)
    rows = np.flatnonzero(dark)
    return rows.max() - rows.min() + 1 if rows.size else 0


def test_numberline_numbers_are_at_least_40px_tall():
    img = numberline_image(target=3, current=7)
    assert _ink_rows(img, 140, 216, 0, 112) >= 40
    assert _ink_rows(img, 140, 216, 112, 224) >= 40


def test_draw_text_fills_the_box_height():
    from PIL import Image

    img = Image.new("RGB", (100, 100), (255, 255, 255))
    draw_text(img, (10, 20, 90, 70), "10", (0, 0, 0))
    assert 48 <= _ink_rows(img, 0, 100) <= 50  # anti-aliased edges may fall under the threshold


# ---------------------------------------------------------------- NumberLine rules


def test_numberline_rewards_and_truncation():
    env = _env("agentrl/NumberLine-v0", max_position=5)
    env.reset(seed=0)
    env.target, env.current = 3, 1
    assert env.step(0)[1:4] == (-1.0, False, False)  # away from the target
    assert env.step(1)[1:4] == (0.0, False, False)  # closer
    assert env.step(1)[1:4] == (0.0, False, False)
    assert env.step(1)[1:4] == (1.0, True, False)  # reached
    env.reset(seed=0)
    env.target, env.current = 0, 5
    for t in range(10):
        _, reward, terminated, truncated, info = env.step(1)  # pushes against the end: never closer
        assert reward == -1.0 and info["current"] == 5 and not terminated
        assert truncated == (t == 9)


def test_numberline_start_never_on_target():
    env = _env("agentrl/NumberLine-v0", max_position=3)
    starts = set()
    for seed in range(200):
        _, info = env.reset(seed=seed)
        assert 0 <= info["target"] <= 3 and 0 <= info["current"] <= 3
        assert info["target"] != info["current"]
        starts.add((info["target"], info["current"]))
    assert len(starts) == 12


# ---------------------------------------------------------------- points rules


def _points(env_cls, ranks, **kwargs):
    env = env_cls(**kwargs)
    env.reset(seed=0)
    env.cards = [Card(r, "S") for r in ranks]
    env.values = [c.value(env.face_cards_as_10) for c in env.cards]
    env.remaining = list(env.values)
    return env


def _play(env, tokens):
    out = []
    for token in tokens:
        out.append(env.step(env.action_names.index(token))[1:4])
    return out


def test_points24_exact_fraction_solution_wins():
    env = _points(Points24Env, ["8", "3", "8", "3"])
    steps = _play(env, list("8/(3-8/3)="))
    assert steps[-1] == (10.0, True, False)
    assert all(s == (0.0, False, False) for s in steps[:-1])


@pytest.mark.parametrize(
    ("tokens", "why"),
    [
        (list("8*3="), "leftover cards"),
        (list("8/(3-3)*8="), "division by zero"),
        (list("8+8+3+3="), "wrong value"),
        (list("8+(3*8=") + [], "malformed"),
        (["="], "empty"),
    ],
)
def test_points24_wrong_formula_at_equals_is_minus_one(tokens, why):
    env = _points(Points24Env, ["8", "3", "8", "3"])
    assert _play(env, tokens)[-1] == (-1.0, True, False), why


def test_points_number_not_among_remaining_cards_is_minus_one_and_appended():
    env = _points(EZPointsEnv, ["K", "2"])
    assert _play(env, ["5"]) == [(-1.0, False, False)]
    assert _play(env, ["10"]) == [(0.0, False, False)]
    assert _play(env, ["10"]) == [(-1.0, False, False)]  # the only 10 is used
    assert env.formula == ["5", "10", "10"]
    assert env.step(env.action_names.index("="))[1] == -1.0


def test_ezpoints_truncates_after_five_tokens():
    env = _points(EZPointsEnv, ["K", "2"])
    steps = _play(env, ["+"] * 6)
    assert [s[2] for s in steps] == [False] * 5 + [True]
    assert not any(s[1] for s in steps)


def test_points24_truncates_after_twenty_tokens():
    env = _points(Points24Env, ["8", "3", "8", "3"])
    steps = _play(env, ["("] * 21)
    assert [s[2] for s in steps] == [False] * 20 + [True]


def test_face_cards_as_11_to_13():
    env = _points(Points24Env, ["K", "Q", "J", "A"], face_cards_as_10=False)
    assert env.values == [13, 12, 11, 1]
    assert _play(env, ["12", "*", "(", "13", "-", "11", ")", "*", "1", "="])[-1] == (10.0, True, False)


def test_deals_are_solvable_when_asked():
    from agentrl.envs.gym_cards.experts import solvable

    ez = EZPointsEnv()
    p24 = Points24Env(solvable_only=True)
    for seed in range(50):
        _, info = ez.reset(seed=seed)
        assert solvable(info["card_values"], 12, "+*", parentheses=False)
        _, info = p24.reset(seed=seed)
        assert solvable(info["card_values"], 24)


# ---------------------------------------------------------------- Blackjack rules


def _blackjack(player, dealer, **kwargs):
    env = BlackjackEnv(**kwargs)
    env.reset(seed=0)
    env.player = [Card(r, "H") for r in player]
    env.dealer = [Card(r, "C") for r in dealer]
    return env


@pytest.mark.parametrize(
    ("player", "dealer", "kwargs", "reward"),
    [
        (["K", "9"], ["10", "8"], {}, 1.0),
        (["K", "8"], ["10", "8"], {}, 0.0),
        (["K", "7"], ["10", "8"], {}, -1.0),
        (["K", "5"], ["10", "6", "9"], {}, 1.0),  # dealer busts
        (["A", "K"], ["10", "8"], {}, 1.0),
        (["A", "K"], ["10", "8"], {"natural": True}, 1.5),
        (["A", "K"], ["7", "4", "K"], {}, 0.0),  # 21 against a three-card 21
        (["A", "K"], ["7", "4", "K"], {"sab": True}, 1.0),
        (["A", "K"], ["A", "Q"], {"sab": True}, 0.0),
        (["A", "6"], ["10", "7"], {}, 0.0),  # soft 17 vs 17
    ],
)
def test_blackjack_stand_settles(player, dealer, kwargs, reward):
    env = _blackjack(player, dealer, **kwargs)
    _, r, terminated, truncated, info = env.step(0)
    assert (r, terminated, truncated) == (reward, True, False)
    assert "?" not in info["dealer_cards"]


def test_blackjack_hit_busts_or_continues_and_dealer_stands_on_17():
    for seed in range(30):
        env = _blackjack(["K", "Q"], ["9", "7"])
        env.np_random = np.random.default_rng(seed)
        _, reward, terminated, _, info = env.step(1)
        bust = hand_total(env.player)[0] > 21
        assert (reward, terminated) == ((-1.0, True) if bust else (0.0, False))
        assert info["dealer_cards"] == (["9", "7"] if bust else ["9", "?"])
        env = _blackjack(["K", "Q"], ["9", "7"])
        env.np_random = np.random.default_rng(seed)
        env.step(0)
        assert hand_total(env.dealer)[0] >= 17 and len(env.dealer) >= 3


def test_blackjack_info():
    env = _blackjack(["A", "5"], ["Q", "7"])
    info = env._info()
    assert info["player_sum"] == 16 and info["usable_ace"] is True
    assert info["dealer_card"] == "Q" and info["dealer_value"] == 10
    assert info["dealer_cards"] == ["Q", "?"]
    assert "16" in info["text"] and "Q" in info["text"] and "7" not in info["text"]
