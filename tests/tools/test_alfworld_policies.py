"""tools/alfworld_policies.py: both experts and a random legal policy on generated games, per task type."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("alfworld")
pytest.importorskip("textworld")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import alfworld_policies  # noqa: E402

from agentrl.envs.alfworld import generate  # noqa: E402


def test_every_game_is_counted_for_each_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate(tmp_path, per_type=1, seed=0, split="train", max_receptacles=3, max_distractors=0)
    out = tmp_path / "result.json"
    result = alfworld_policies.main([str(tmp_path / "train"), "--random-episodes", "2", "--max-steps", "3",
                                     "--json", str(out)])
    everything = result["all"]
    assert everything["games"] == 6 and everything["receptacles"] <= 3
    assert everything["planner"]["won"] == everything["search"]["won"] == 6  # the generator kept only such games
    assert everything["random"]["of"] == 12 and everything["random"]["won"] <= 12
    assert sum(result[kind]["games"] for kind in ("pick", "look", "clean", "heat", "cool", "pick2")) == 6
    assert json.loads(out.read_text()) == result
    assert "pick2" in capsys.readouterr().out
