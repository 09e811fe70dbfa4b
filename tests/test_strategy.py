"""The Fabric strategy built from trainer settings (no processes started)."""

from datetime import timedelta

from agentrl.config import load_config
from agentrl.distributed import make_strategy


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
