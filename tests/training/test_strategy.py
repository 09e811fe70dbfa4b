"""The Fabric strategy built from trainer settings (no processes started)."""

from datetime import timedelta
from pathlib import Path

import pytest

from agentrl.config import ConfigError, load_config
from agentrl.training.distributed import make_strategy

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.mark.parametrize("strategy", ["deepspeed", "deepspeed_stage_3"])
def test_deepspeed_is_refused_when_the_config_loads_with_what_to_use(strategy):
    """Its engine owns clipping, accumulation and checkpoints: refused before anything starts, not half-working."""
    with pytest.raises(ConfigError, match=rf"trainer.strategy={strategy}: DeepSpeed is not supported.*"
                                          r"trainer.strategy=fsdp"):
        load_config(ROOT / "conf/numberline.yaml", [f"trainer.strategy={strategy}", "trainer.devices=2"])


def test_fsdp_on_one_process_is_refused_with_what_to_set():
    with pytest.raises(ConfigError, match=r"trainer.strategy=fsdp shards over processes.* is 1: set trainer.devices=2"):
        load_config(ROOT / "conf/numberline.yaml", ["trainer.strategy=fsdp"])


def test_an_unknown_strategy_names_the_choices():
    with pytest.raises(ConfigError, match=r"trainer.strategy must be one of .*fsdp; got 'fdsp'"):
        load_config(ROOT / "conf/numberline.yaml", ["trainer.strategy=fdsp", "trainer.devices=2"])


def test_fsdp_builds_fsdp2_data_parallel_over_every_process_with_the_start_up_timeout():
    from lightning.fabric.strategies import ModelParallelStrategy

    cfg = load_config(ROOT / "conf/numberline.yaml", ["trainer.strategy=fsdp", "trainer.devices=2",
                                                      "trainer.num_nodes=2", "trainer.startup_timeout_s=900",
                                                      "trainer.collective_timeout_s=60"])
    strategy = make_strategy(cfg.trainer)
    assert isinstance(strategy, ModelParallelStrategy)
    assert strategy._data_parallel_size == 4 and strategy._tensor_parallel_size == 1
    assert strategy._timeout == timedelta(seconds=900)
    assert not strategy._save_distributed_checkpoint  # agentrl writes full state from rank 0 (atomic, exact resume)


def test_fsdp_on_a_torch_without_fsdp2_is_refused_with_the_version(monkeypatch):
    from agentrl.config import checks

    monkeypatch.setattr(checks, "_torch_version", lambda: (2, 4))
    with pytest.raises(ConfigError, match=r"trainer.strategy=fsdp needs torch 2.6 or newer.*torch 2.4"):
        load_config(ROOT / "conf/numberline.yaml", ["trainer.strategy=fsdp", "trainer.devices=2"])


def test_sft_under_fsdp_refuses_examples_with_and_without_images():
    """A sharded vision tower runs only for batches with images: ranks would make different gathers."""
    from types import SimpleNamespace

    from agentrl.commands.sft import Encoded, train

    cfg = load_config(ROOT / "conf/sft/numberline.yaml", ["trainer.strategy=fsdp", "trainer.devices=2"])
    fabric = SimpleNamespace(global_rank=0, world_size=2)
    policy = SimpleNamespace(to=lambda device: None, model=SimpleNamespace(train=lambda: None))
    fabric.device = "cpu"
    data = [Encoded({"input_ids": None, "pixel_values": None}, None), Encoded({"input_ids": None}, None)]
    with pytest.raises(ConfigError, match=r"fsdp: 1 of 2 SFT examples have an image"):
        train(policy, data, cfg, fabric=fabric)


def test_a_rollout_mixing_image_and_text_only_observations_is_refused_under_fsdp():
    from types import SimpleNamespace

    from agentrl.policy.sharding import refuse_mixed_images

    one = SimpleNamespace(world_size=1)
    refuse_mixed_images(one, [{"input_ids": 0, "pixel_values": 0}] * 2)  # all with an image: fine
    refuse_mixed_images(one, [{"input_ids": 0}] * 2)  # none: fine
    with pytest.raises(ConfigError, match=r"fsdp: 1 of this rollout's 2 observations have an image"):
        refuse_mixed_images(one, [{"input_ids": 0, "pixel_values": 0}, {"input_ids": 0}])


def test_sharded_checkpoints_without_fsdp_are_refused_with_what_to_set():
    """Only an FSDP model has per-rank shards; ddp's ranks hold whole copies."""
    with pytest.raises(ConfigError, match=r"checkpoint_format=sharded .* trainer.strategy is ddp: use "
                                          r"trainer.strategy=fsdp, or trainer.checkpoint_format=full"):
        load_config(ROOT / "conf/numberline.yaml", ["trainer.checkpoint_format=sharded", "trainer.strategy=ddp",
                                                    "trainer.devices=2"])
    with pytest.raises(ConfigError, match=r"trainer.checkpoint_format must be one of"):
        load_config(ROOT / "conf/numberline.yaml", ["trainer.checkpoint_format=shards"])
