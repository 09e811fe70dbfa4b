"""16-bit training done right: a frozen bfloat16 base, float32 trainable weights, sampling equal to scoring."""

from pathlib import Path

import pytest
import torch
from lightning.fabric import seed_everything

from agentrl.commands.fit import fit
from agentrl.config import ConfigError, load_config
from agentrl.training.build import build

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["env.num_envs=4", "rollout.steps_per_update=8", "ppo.minibatch_size=8", "ppo.micro_batch_size=4",
         "rollout.max_new_tokens=16", "trainer.num_threads=1", "trainer.image_log_every=0"]
BF16 = ["model.dtype=bfloat16", "trainer.precision=bf16-mixed"]


@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_true_16_bit_precision_is_refused_with_the_fix(precision):
    """bf16-true casts the adapters and the value head to bfloat16, where Adam's small steps round away."""
    with pytest.raises(ConfigError, match="trainer.precision.*bf16-mixed"):
        load_config(ROOT / "conf/numberline.yaml", [f"trainer.precision={precision}"])


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_trainable_weights_are_float32_over_a_bfloat16_base(tiny_path, finetune):
    policy, data = build(load_config(ROOT / "conf/numberline.yaml", [*SMALL, *BF16, f"model.finetune={finetune}"]))
    data.envs.close()
    trainable = {p.dtype for p in policy.parameters() if p.requires_grad}
    frozen = {p.dtype for p in policy.model.parameters() if not p.requires_grad}
    assert trainable == {torch.float32}
    if finetune == "lora":
        assert frozen == {torch.bfloat16}  # the base stays in the configured dtype


def test_float32_adapters_move_under_small_adam_steps(tiny_path):
    """lr 1e-5, 20 steps: every adapter entry that gets a gradient changes (in bfloat16 ~75% would not)."""
    seed_everything(0)
    policy, data = build(load_config(ROOT / "conf/numberline.yaml", [*SMALL, *BF16, "model.finetune=lora", "model.lora.r=8"]))
    prompts = data.current_prompts()
    data.envs.close()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gen = policy.generate(prompts)
    inputs = policy.collate_train(prompts, gen.ids, [torch.ones(len(g)) for g in gen.ids])
    lora = {n: p for n, p in policy.named_parameters() if p.requires_grad and "lora_" in n}
    with torch.no_grad():  # B starts at zero: give every adapter a gradient from the first step
        for n, p in lora.items():
            if "lora_B" in n:
                p.normal_(std=1e-2)
    before = {n: p.detach().clone() for n, p in lora.items()}
    optimizer = torch.optim.Adam(list(lora.values()), lr=1e-5)
    for _ in range(20):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            token_logp, values, _ = policy(inputs)
        (token_logp.sum() + values.sum()).backward()
        optimizer.step()
    changed = torch.cat([(lora[n] != before[n]).flatten() for n in lora]).float().mean()
    assert changed > 0.99, f"only {changed:.1%} of adapter entries changed"


def test_paper_config_runs_end_to_end_on_the_tiny_model(tmp_path, tiny_path):
    cfg = load_config(ROOT / "conf/paper/numberline_llava.yaml", [
        "model.path=tiny", "trainer.accelerator=cpu", "model.lora.r=4", "model.lora.alpha=8", *SMALL,
        "trainer.max_updates=1", f"trainer.out_dir={tmp_path}"])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.model.dtype == "bfloat16"
    result = fit(cfg)
    assert {p.dtype for p in result.policy.parameters() if p.requires_grad} == {torch.float32}
    assert torch.isfinite(torch.tensor(result.metrics["losses/policy"]))
    assert (tmp_path / "checkpoints" / "update_000001" / "trainable.pt").is_file()


def test_start_ratio_is_one_at_bf16_mixed(tmp_path, tiny_path):
    """Old log-probs (the sampling pass) and new ones (the update's forward) agree before any optimizer step."""
    result = fit(load_config(ROOT / "conf/numberline.yaml", [
        *SMALL, *BF16, "trainer.max_updates=2", f"trainer.out_dir={tmp_path}"]))
    assert result.metrics["losses/start_ratio_error"] < 1e-2


def record_autocast(policy, seen):
    """A hook on the language model that notes whether bf16 autocast was on for each forward."""
    policy.model.get_decoder().register_forward_hook(
        lambda m, a, out: seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")
                                      == torch.bfloat16))
    return policy


def test_sft_and_eval_run_at_the_trainer_precision(tmp_path, tiny_path, monkeypatch):
    import agentrl.training.build as B
    from agentrl.commands import sft as S
    from agentrl.commands.evaluate import evaluate

    cfg = load_config(ROOT / "conf/sft/numberline.yaml", [
        *BF16, "model.finetune=lora", "model.lora.r=4", "sft.examples=16", "sft.epochs=1", "sft.batch_size=8",
        "trainer.num_threads=1", f"trainer.out_dir={tmp_path / 'sft'}"])
    seen: list[bool] = []
    build_policy = S.build_policy
    monkeypatch.setattr(S, "build_policy", lambda c: record_autocast(build_policy(c), seen))
    ckpt = S.sft(cfg)
    assert seen and all(seen)  # every training forward under bf16 autocast
    saved = torch.load(ckpt / "trainable.pt", weights_only=True)
    assert {t.dtype for t in saved.values()} == {torch.float32}

    seen.clear()
    build = B.build
    monkeypatch.setattr(B, "build", lambda *a, **k: _recorded(build(*a, **k), seen))  # where eval looks it up
    result = evaluate(load_config(ROOT / "conf/numberline.yaml", [*BF16, "model.finetune=lora", "model.lora.r=4",
                                                                  "env.num_envs=2", "rollout.max_new_tokens=8"]),
                      str(ckpt), 2, out=str(tmp_path / "eval.json"))
    assert result["episodes"] == 2 and seen and all(seen)


def _recorded(built, seen):
    policy, data = built
    return record_autocast(policy, seen), data


def test_eval_refuses_several_devices():
    from agentrl.commands.evaluate import evaluate

    with pytest.raises(ConfigError, match="trainer.devices=1"):
        evaluate(load_config(ROOT / "conf/numberline.yaml", ["trainer.devices=2"]), None, 2)
