"""Small rooms from the generator (--max-receptacles, --max-distractors): both experts win them, the limits
hold, eval rooms stay apart from training rooms at every size, and the search expert's win is required."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

pytest.importorskip("alfworld")
pytest.importorskip("textworld")

from agentrl.envs.alfworld import engine as engine_module  # noqa: E402
from agentrl.envs.alfworld import generate  # noqa: E402
from agentrl.envs.alfworld.author import TASK_TYPES, draw_game  # noqa: E402
from agentrl.envs.alfworld.engine import WALKTHROUGH_MAX_STEPS, checked_walkthrough, expert_walkthrough  # noqa: E402
from agentrl.envs.alfworld.rooms import SPLITS, floorplans, load_room, split_of  # noqa: E402
from agentrl.envs.alfworld.search import SearchExpert  # noqa: E402

N, M = 5, 2


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("alfworld-small")
    summary = generate(out, per_type=2, seed=0, split="train", max_receptacles=N, max_distractors=M)
    return out / "train", summary


def _declared(problem: str, kind: str) -> list[str]:
    """The names the problem's :objects block declares of ``kind`` (receptacle, object, ...)."""
    objects = problem.split("(:objects", 1)[1].split("(:init", 1)[0]
    return re.findall(rf"^\s*(\S+) - {kind}$", objects, flags=re.M)


def test_small_rooms_hold_at_most_n_receptacles_and_m_distractors(small: tuple[Path, dict]) -> None:
    root, summary = small
    trials = sorted(root.glob("*/trial_*"))
    assert len(trials) == 2 * len(TASK_TYPES) and set(summary["games"].values()) == {2}
    for trial in trials:
        problem = json.loads((trial / "game.tw-pddl").read_text())["pddl_problem"]
        params = json.loads((trial / "traj_data.json").read_text())["pddl_params"]
        receptacles = _declared(problem, "receptacle")
        assert 2 <= len(receptacles) <= N
        objects = [o.split("_bar_", 1)[0] for o in _declared(problem, "object")]
        distractors = [o for o in objects if o not in (params["object_target"], params["toggle_target"])]
        assert len(distractors) <= M, (trial, objects)
        assert params["object_target"] in objects


def test_small_room_games_are_won_by_both_experts(small: tuple[Path, dict]) -> None:
    for game in sorted(small[0].rglob("game.tw-pddl")):
        assert json.loads(game.read_text())["walkthrough"]  # the planner's winning commands
        commands = expert_walkthrough(str(game), 0, expert="search")
        assert commands is not None and len(commands) <= WALKTHROUGH_MAX_STEPS, game


def test_the_limits_are_recorded_in_summary_and_traj_data(small: tuple[Path, dict]) -> None:
    root, summary = small
    assert (summary["max_receptacles"], summary["max_distractors"]) == (N, M)
    written = json.loads((root / "summary.json").read_text())
    assert (written["max_receptacles"], written["max_distractors"]) == (N, M)
    for traj in root.rglob("traj_data.json"):
        generator = json.loads(traj.read_text())["generator"]
        assert (generator["max_receptacles"], generator["max_distractors"]) == (N, M)


@pytest.mark.parametrize("size", [3, 4, 6, 8, None])
def test_eval_rooms_stay_apart_from_training_rooms_at_every_size(size: int | None) -> None:
    """A small room is a cut of its split's floor plan: never a room of the other split."""
    train, eval_ = set(floorplans("train")), set(floorplans("eval"))
    assert train and eval_ and not train & eval_
    for split in SPLITS:
        rng = random.Random(f"rooms/{split}/{size}")
        drawn = 0
        for k in range(60):
            room = load_room(rng.choice(floorplans(split)))
            game = draw_game(room, TASK_TYPES[k % len(TASK_TYPES)], rng, max_receptacles=size, max_distractors=1)
            if game is None:
                continue
            drawn += 1
            assert split_of(game.floorplan) == split and game.floorplan == room.floorplan
            used = set(_declared(game.problem, "receptacle"))
            assert used <= {r.id for r in room.receptacles}
            assert len(used) <= (size or len(room.receptacles))
        assert drawn >= 20


def test_default_limits_draw_todays_games() -> None:
    """No limit draws exactly what the generator drew before the options existed (same random draws)."""
    for k, floorplan in enumerate(floorplans("train")[:12]):
        task = TASK_TYPES[k % len(TASK_TYPES)]
        before = draw_game(load_room(floorplan), task, random.Random(k))
        after = draw_game(load_room(floorplan), task, random.Random(k), max_receptacles=None, max_distractors=None)
        assert (before is None) == (after is None)
        if before is not None and after is not None:
            assert before.problem == after.problem and before.goal_text == after.goal_text


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_receptacles": 2}, "max_receptacles must be >= 3"),
    ({"max_distractors": -1}, "max_distractors must be >= 0"),
])
def test_bad_limits_are_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(tmp_path, per_type=1, seed=0, **kwargs)


class _Lost(SearchExpert):
    """A searching expert that never moves on."""

    def update(self, state: dict, last_command: str) -> None:
        super().update(state, last_command)
        self.action = "look"


def test_the_generator_keeps_only_games_the_search_expert_wins_too(small: tuple[Path, dict],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    game = str(next(small[0].rglob("game.tw-pddl")))
    assert checked_walkthrough(game, 0) == json.loads(Path(game).read_text())["walkthrough"]
    monkeypatch.setitem(engine_module.EXPERTS, "search", _Lost)
    assert expert_walkthrough(game, 0) is not None  # the planner still wins
    assert checked_walkthrough(game, 0) is None


def test_cli_passes_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    import agentrl.envs.alfworld.gen as gen
    from agentrl.cli import main

    calls = []
    monkeypatch.setattr(gen, "main", lambda *a, **kw: calls.append((a, kw)) or 0)
    assert main(["alfworld-gen", "--out", "x", "--per-type", "3", "--max-receptacles", "6",
                 "--max-distractors", "2"]) == 0
    assert calls == [(("x", 3, 0), {"max_receptacles": 6, "max_distractors": 2})]
    assert main(["alfworld-gen", "--out", "x"]) == 0
    assert calls[-1] == (("x", 10, 0), {"max_receptacles": None, "max_distractors": None})
    with pytest.raises(SystemExit) as exit_:
        main(["alfworld-gen", "--out", "x", "--max-receptacles", "2"])
    assert exit_.value.code == 2
