"""The Fabric strategy built from trainer settings (no processes started)."""

from datetime import timedelta
from pathlib import Path

import pytest

from agentrl.config import load_config
from agentrl.distributed import make_strategy

ROOT = Path(__file__).resolve().parents[1]


def test_process_group_start_up_has_its_own_timeout():
    """A 5 s collective timeout must not become the 5 s start-up timeout (a second process takes longer)."""
    cfg = load_config(None, ["trainer.strategy=ddp", "trainer.collective_timeout_s=5",
                             "trainer.startup_timeout_s=600"])
    strategy = make_strategy(cfg.trainer)
    assert strategy._timeout == timedelta(seconds=600)


def test_process_group_timeout_never_undercuts_the_meeting():
    cfg = load_config(None, ["trainer.strategy=ddp", "trainer.collective_timeout_s=3000",
                             "trainer.startup_timeout_s=60"])
    assert make_strategy(cfg.trainer)._timeout == timedelta(seconds=3000)


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed", "deepspeed_stage_3"])
def test_fit_refuses_sharded_strategies_before_writing_anything(tmp_path, strategy):
    """Ranks' rollouts generate different token counts; a sharded forward is a collective: it would hang."""
    from agentrl.config import ConfigError
    from agentrl.fit import fit

    out = tmp_path / "run"
    cfg = load_config(ROOT / "conf/numberline.yaml", [f"trainer.strategy={strategy}", f"trainer.out_dir={out}"])
    with pytest.raises(ConfigError, match=rf"trainer.strategy={strategy}: .*would hang.*trainer.strategy=ddp"):
        fit(cfg, argv=["test"])
    assert not out.exists()
