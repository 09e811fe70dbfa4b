"""tools/expert_agreement.py: per-step agreement with the expert on held-out states, for both action heads."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import expert_agreement  # noqa: E402


@pytest.mark.parametrize("head", ["generate", "score"])
def test_counts_every_state_once(tiny_path, tmp_path, head):
    out = tmp_path / "agreement.json"
    result = expert_agreement.main(["-c", str(ROOT / "conf/numberline.yaml"), "--states", "8", "--batch", "4",
                                    "--json", str(out), f"policy.action_head={head}", "prompt.cot=false",
                                    "rollout.max_new_tokens=12", "env.num_envs=4"])
    assert result["states"] == 8 and result["expert"] + result["other legal"] + result["not legal"] == 8
    if head == "score":
        assert result["not legal"] == 0  # every candidate is legal
    assert out.read_text().count('"expert"') == 1
