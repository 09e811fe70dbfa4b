"""The offline ALFWorld generator: all six task types, expert-solvable on the real engine, reproducible."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

pytest.importorskip("alfworld")
pytest.importorskip("textworld")

from agentrl.envs.alfworld import apply_expert_fix, generate  # noqa: E402
from agentrl.envs.alfworld.author import TASK_TYPES, draw_game  # noqa: E402
from agentrl.envs.alfworld.gen import _check_all, _pool  # noqa: E402
from agentrl.envs.alfworld.rooms import floorplans, load_room, room_type  # noqa: E402


@pytest.fixture(scope="module")
def games(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("alfworld")
    summary = generate(out, per_type=1, seed=0, split="train")
    assert summary["games"] == {"pick": 1, "look": 1, "clean": 1, "heat": 1, "cool": 1, "pick2": 1}
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_official_layout_for_all_six_types(games: Path) -> None:
    trials = sorted((games / "train").glob("*/trial_*"))
    assert sorted(json.loads((t / "traj_data.json").read_text())["task_type"] for t in trials) == sorted(TASK_TYPES)
    for trial in trials:
        game = json.loads((trial / "game.tw-pddl").read_text())
        assert game["solvable"] is True and game["walkthrough"]
        assert "UNKNOWN GOAL" not in game["grammar"] and "(:domain alfred)" in game["pddl_problem"]
        assert "movable" not in str(trial) and "Sliced" not in str(trial)


def test_fixed_expert_wins_every_game_through_alfred_tw_env(games: Path) -> None:
    """The acceptance check: alfworld's own AlfredTWEnv loads our files and its expert (fixed) wins each."""
    from alfworld.agents.environment.alfred_tw_env import AlfredTWEnv

    apply_expert_fix()  # the env's worker is fork-started and inherits it
    random.seed(0)
    config = {
        "env": {"goal_desc_human_anns_prob": 0, "task_types": [1, 2, 3, 4, 5, 6], "domain_randomization": False,
                "expert_type": "handcoded"},
        "dataset": {"data_path": str(games / "train"), "num_train_games": -1},
        "general": {"training_method": "dagger"},
        "dagger": {"training": {"max_nb_steps_per_episode": 150}},
    }
    won_types = []
    for trial in sorted((games / "train").glob("*/trial_*")):  # one env per game: every type, no random draws
        config["dataset"]["data_path"] = str(trial.parent)
        tw = AlfredTWEnv(config, train_eval="train")
        assert tw.num_games == 1
        env = tw.init_env(batch_size=1)
        try:
            _, infos = env.reset()
            won = False
            for _ in range(150):
                _, _, dones, infos = env.step([infos["extra.expert_plan"][0][0]])
                won = infos["won"][0]
                if dones[0]:
                    break
        finally:
            env.close()
        assert won, f"fixed expert did not win {trial}"
        won_types.append(json.loads((trial / "traj_data.json").read_text())["task_type"])
    assert sorted(won_types) == sorted(TASK_TYPES)


def test_expert_fix_reads_move_as_put() -> None:
    """Unfixed, the expert keeps a moved object in its inventory and loops (pick_two games fail)."""
    from alfworld.agents.expert.handcoded_expert_tw import PickTwoObjAndPlaceTWPolicy

    apply_expert_fix()
    params = {"object_target": "mug", "parent_target": "countertop", "task_type": "pick_two_obj_and_place"}
    policy = PickTwoObjAndPlaceTWPolicy(params, max_steps=200)
    policy.inventory = ["mug 1"]
    policy.update_state_tracking({"feedback": "You move the mug 1 to the countertop 1."}, "move mug 1 to countertop 1")
    assert policy.inventory == []
    assert policy.object_blacklist == ["mug 1"]


def test_same_seed_same_files(games: Path, tmp_path: Path) -> None:
    generate(tmp_path, per_type=1, seed=0, split="train")
    assert _files(tmp_path / "train") == _files(games / "train")


def test_draws_depend_on_seed() -> None:
    room = load_room(floorplans("train")[0])
    a = [draw_game(room, "pick_and_place_simple", random.Random(s)) for s in (1, 1, 2)]
    assert a[0] is not None and a[1] is not None and a[2] is not None
    assert a[0].problem == a[1].problem != a[2].problem


def test_train_and_eval_rooms_are_disjoint(games: Path) -> None:
    train, eval_ = set(floorplans("train")), set(floorplans("eval"))
    assert train and eval_ and not train & eval_
    assert {room_type(n) for n in eval_} == {"Kitchen", "LivingRoom", "Bedroom", "Bathroom"}
    for traj in (games / "train").rglob("traj_data.json"):
        assert json.loads(traj.read_text())["scene"]["scene_num"] in train


def test_bad_problem_is_rejected_in_a_child_process(games: Path, tmp_path: Path) -> None:
    """fast-downward exits the whole process on a type declared twice: only the child may die."""
    good = next((games / "train").rglob("game.tw-pddl"))
    bad_dir = tmp_path / "bad" / "trial_0"
    bad_dir.mkdir(parents=True)
    data = json.loads(good.read_text())
    data["pddl_problem"] = data["pddl_problem"].replace("agent1 - agent", "agent1 - agent\n        MugType - otype\n        MugType - rtype")
    (bad_dir / "game.tw-pddl").write_text(json.dumps(data))
    (bad_dir / "traj_data.json").write_text((good.parent / "traj_data.json").read_text())
    pool = _pool(1)
    results, pool = _check_all(pool, 1, [(str(bad_dir / "game.tw-pddl"), 0), (str(good), 0)])
    pool.shutdown()
    assert results[0] is None
    assert results[1]  # the good game still checks after the crash


@pytest.mark.integration
def test_many_games_per_type_in_the_eval_rooms(tmp_path: Path) -> None:
    """The module's games are one per type in train rooms; here several per type in the eval rooms."""
    summary = generate(tmp_path, per_type=3, seed=3, split="eval")
    assert set(summary["games"].values()) == {3}
    assert len(list((tmp_path / "eval").glob("*/trial_*"))) == 3 * len(TASK_TYPES)


def test_default_set_is_byte_identical_to_the_one_before_room_limits(games: Path) -> None:
    """Without --max-receptacles / --max-distractors the generator writes the very files it wrote before the
    options existed (the digest of this fixture's set, seed 0, taken before they were added)."""
    digest = hashlib.sha256()
    root = games / "train"
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    assert digest.hexdigest() == "f57b02442249d6cd5e3be4575f59487db6df6b7d1ebbfb6885db5c352cfeeb35"
