"""sft.expert: who labels expert SFT data (planner | search); it reaches the ALFWorld env, bad values are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentrl.config import ConfigError, load_config
from agentrl.data.sft import expert_examples

ROOT = Path(__file__).resolve().parents[2]
TEXT_ONLY = ["env.num_envs=1", "env.vector=sync", "env.image=none", "sft.explore=0", "prompt.history=3"]


def test_an_unknown_expert_is_refused_naming_the_value_and_the_choices():
    with pytest.raises(ConfigError, match=r"sft.expert must be one of planner, search; got 'oracle'"):
        load_config(ROOT / "conf/alfworld.yaml", ["sft.expert=oracle"])


def test_search_labels_expert_data_only():
    with pytest.raises(ConfigError, match=r"sft.expert=search labels expert data .*sft.data=x.jsonl"):
        load_config(ROOT / "conf/alfworld.yaml", ["sft.expert=search", "sft.data=x.jsonl"])


def test_search_is_refused_for_an_env_without_it():
    cfg = load_config(ROOT / "conf/sft/numberline.yaml", ["sft.expert=search"])
    with pytest.raises(ConfigError, match=r"sft.expert=search .*env.name=numberline"):
        expert_examples(cfg, 2)


@pytest.fixture(scope="module")
def games(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("alfworld")
    from agentrl.envs.alfworld import generate

    out = tmp_path_factory.mktemp("sft-expert")
    generate(out, per_type=1, seed=0, split="train", max_receptacles=4, max_distractors=1)
    return out


def test_sft_expert_search_reaches_the_env(games: Path):
    """With sft.expert=search the env's expert_fields() label with the searching expert: its walkthrough, step by
    step (the planner opens with "look"), and its thoughts in the CoT answer."""
    from agentrl.envs.alfworld.engine import expert_walkthrough

    cfg = load_config(ROOT / "conf/alfworld.yaml",
                      [*TEXT_ONLY, f"env.data_path={games}", "env.options.task_types=[pick]", "sft.expert=search"])
    examples = expert_examples(cfg, 4)
    gamefile = examples[0].obs.extra["gamefile"]
    walkthrough = expert_walkthrough(gamefile, 0, expert="search")
    assert walkthrough is not None and walkthrough[0].startswith("go to ")
    assert [ex.expert_action for ex in examples][: len(walkthrough)] == walkthrough[:4]
    assert "I have not found" in json.loads(examples[0].answer)["thoughts"]
    planner = expert_examples(load_config(ROOT / "conf/alfworld.yaml",
                                          [*TEXT_ONLY, f"env.data_path={games}", "env.options.task_types=[pick]"]), 1)
    assert planner[0].expert_action == "look"


def test_sft_expert_and_env_options_expert_must_agree(games: Path):
    cfg = load_config(ROOT / "conf/alfworld.yaml", [*TEXT_ONLY, f"env.data_path={games}", "sft.expert=search",
                                                    "env.options.expert=planner"])
    with pytest.raises(ConfigError, match=r"env.options.expert=planner .* sft.expert=search"):
        expert_examples(cfg, 1)
