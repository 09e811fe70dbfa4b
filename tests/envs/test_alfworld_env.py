"""AlfworldModule on the real engine: reset/step, auto-reset, per-type stats, images, sync == async."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("alfworld")
pytest.importorskip("textworld")

from agentrl.config import ConfigError, EnvConfig  # noqa: E402
from agentrl.data.memory import EpisodeMemory  # noqa: E402
from agentrl.envs.alfworld import AlfworldModule, generate  # noqa: E402
from agentrl.envs.alfworld.scene import draw_scene  # noqa: E402
from agentrl.envs.alfworld.state import SceneState  # noqa: E402
from agentrl.prompting.templates import AlfworldTemplate  # noqa: E402

TYPES = {"pick", "look", "clean", "heat", "cool", "pick2"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("alfworld-env")
    generate(out, per_type=1, seed=1, split="train")
    return str(out)


def _module(data: str, **kw) -> AlfworldModule:
    cfg = EnvConfig(name="alfworld", data_path=data, **{"num_envs": 2, "max_episode_steps": 60, **kw})
    return AlfworldModule(cfg, split="train")


def _play_expert(module: AlfworldModule, steps: int) -> list:
    log = []
    for _ in range(steps):
        actions = [f["action"] for f in module.expert_fields()]
        out = module.step(actions)
        log.append(out)
    return log


def test_reset_obs_follow_the_contract(data: str) -> None:
    module = _module(data, image="scene")
    try:
        obs = module.reset(seed=0)
        assert len(obs) == 2
        for o in obs:
            assert o.env_id == "alfworld" and o.task and "Your task" not in o.text
            assert o.text.startswith("You are in the middle of a room")
            assert o.legal_actions and all(isinstance(a, str) for a in o.legal_actions)
            assert o.extra["task_type"] in TYPES and o.extra["gamefile"].endswith("game.tw-pddl")
            assert o.extra["holding"] == "" and o.image.shape == (224, 224, 3) and o.image.dtype == np.uint8
        fields = module.expert_fields()
        assert [list(f) for f in fields] == [["thoughts", "action"]] * 2
        assert all(f["action"] in o.legal_actions for f, o in zip(fields, obs))
    finally:
        module.close()


def test_expert_wins_auto_resets_and_reports_task_type(data: str) -> None:
    module = _module(data, image="none", options={"won_reward": 10.0})
    try:
        module.reset(seed=3)
        ended = []
        for out in _play_expert(module, 60):
            for i, ep in enumerate(out.episodes):
                if ep is None:
                    assert out.final_obs[i] is None
                    continue
                ended.append(ep)
                assert out.final_obs[i] is not None and out.obs[i].extra["step"] == 0  # auto-reset
                if ep.success:
                    assert out.terminated[i] and not out.truncated[i]
                    assert out.reward[i] == pytest.approx(10.0 + 1.0)  # won + all goal conditions
                    assert out.final_obs[i].extra["won"]
                assert ep.task_type in TYPES and ep.length >= 1
            assert all(o.image is None for o in out.obs)  # text-only mode
        assert any(ep.success for ep in ended)
    finally:
        module.close()


def test_history_shows_what_each_step_added_not_the_room_again(data: str) -> None:
    """prompt.history on ALFWorld: the room's description once (the current observation), each earlier
    step by the feedback it saw and the command taken; the room repeated per step made prompts of history 4
    pass the tiny model's 2048 positions."""
    module = _module(data, image="none")
    template = AlfworldTemplate(cot=True)
    memory = EpisodeMemory(2, keep=4)
    try:
        obs = module.reset(seed=0)
        seen = [[], []]
        for _ in range(3):
            actions = [f["action"] for f in module.expert_fields()]
            for i, (o, a) in enumerate(zip(obs, actions)):
                memory.record(i, o, a)
                seen[i].append(o)
            obs = module.step(actions).obs
        for i, o in enumerate(obs):
            prompt = template.prompt(o, memory.history(i))
            room = o.text.split("\n\n")[0]
            assert prompt.count(room) == 1, prompt
            lines = prompt.split("oldest first):\n")[1].split("\n")[:3]
            assert lines[0] == f'- {json.dumps(memory.history(i)[0][1])}'  # the first step saw only the room
            for line, (state, action), earlier in zip(lines[1:], memory.history(i)[1:], seen[i][1:]):
                assert state and earlier.text.endswith(state) and line == f"- {state} -> {json.dumps(action)}"
    finally:
        module.close()


def test_step_limit_truncates(data: str) -> None:
    module = _module(data, max_episode_steps=3)
    try:
        module.reset(seed=0)
        outs = [module.step(["look", "look"]) for _ in range(3)]
        assert not outs[1].truncated.any()
        assert outs[2].truncated.all() and not outs[2].terminated.any()
        assert [ep.length for ep in outs[2].episodes] == [3, 3]
        assert not any(ep.success for ep in outs[2].episodes)
    finally:
        module.close()


def test_same_seed_same_images_and_state_changes_the_image(data: str) -> None:
    a, b = _module(data, image="scene"), _module(data, image="auto")
    try:
        oa, ob = a.reset(seed=7), b.reset(seed=7)
        assert [o.text for o in oa] == [o.text for o in ob]
        assert all(np.array_equal(x.image, y.image) for x, y in zip(oa, ob))
        go = [next(c for c in o.legal_actions if c.startswith("go to")) for o in oa]
        after = a.step(go).obs
        assert all(not np.array_equal(x.image, y.image) for x, y in zip(oa, after))
    finally:
        a.close()
        b.close()


def test_scene_drawing_is_a_pure_function() -> None:
    state = SceneState((("cabinet 1", True, False), ("countertop 1", False, False)), "countertop 1", "", ("mug 1",), "put a mug in cabinet")
    img = draw_scene(state, 128)
    assert img.shape == (128, 128, 3) and np.array_equal(img, draw_scene(state, 128))
    opened = SceneState((("cabinet 1", True, True), ("countertop 1", False, False)), "countertop 1", "", ("mug 1",), "put a mug in cabinet")
    assert not np.array_equal(img, draw_scene(opened, 128))


def test_async_workers_match_sync(data: str) -> None:
    sync, async_ = _module(data, image="none"), _module(data, image="none", vector="async")
    try:
        assert [o.text for o in sync.reset(seed=5)] == [o.text for o in async_.reset(seed=5)]
        for s, a in zip(_play_expert(sync, 15), _play_expert(async_, 15)):
            assert [o.text for o in s.obs] == [o.text for o in a.obs]
            np.testing.assert_array_equal(s.reward, a.reward)
    finally:
        sync.close()
        async_.close()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"options": {"won_rewrd": 1.0}}, "won_rewrd"),
        ({"max_episode_steps": 200}, "max_episode_steps"),
        ({"image": "thor"}, "thor"),
        ({"options": {"task_types": ["pick", "slice"]}}, "task_types"),
    ],
)
def test_bad_settings_name_the_key(data: str, kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _module(data, **kw)


def test_task_type_filter_and_missing_data(data: str, tmp_path: Path) -> None:
    module = _module(data, options={"task_types": ["look"]})
    try:
        assert all(o.extra["task_type"] == "look" for o in module.reset(seed=0))
    finally:
        module.close()
    with pytest.raises(ConfigError, match="not a folder"):
        _module(str(tmp_path / "missing"))


def test_default_games_are_made_once_under_agentrl_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentrl.envs.alfworld import gen

    monkeypatch.setenv("AGENTRL_CACHE", str(tmp_path))
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    monkeypatch.setattr(gen, "DEFAULT_PER_TYPE", 1)  # keep the test quick
    module = AlfworldModule(EnvConfig(name="alfworld", num_envs=1, image="none"), split="eval")
    try:
        assert module.data_dir == tmp_path / "alfworld-games-v1" / "eval"
        assert len(module.settings.gamefiles) == 6
        assert module.reset(seed=0)[0].extra["gamefile"].startswith(str(module.data_dir))
    finally:
        module.close()
    stamp = (module.data_dir / "summary.json").stat().st_mtime_ns
    assert gen.ensure_default_games() == tmp_path / "alfworld-games-v1"
    assert (module.data_dir / "summary.json").stat().st_mtime_ns == stamp  # not regenerated
