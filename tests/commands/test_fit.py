"""The PPO loop: accumulation equivalence, exact resume, and the real CLI end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.fabric import Fabric, seed_everything
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agentrl.algorithms.advantage import GAE
from agentrl.commands.fit import fit
from agentrl.config import load_config
from agentrl.training.build import build
from agentrl.training.learner import accumulate_gradients, whiten_global

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["env.num_envs=4", "rollout.steps_per_update=8", "ppo.minibatch_size=8", "ppo.micro_batch_size=4",
         "rollout.max_new_tokens=16", "trainer.num_threads=1"]


def test_micro_batch_1x8_equals_8x1(tiny_path):
    cfg = load_config(ROOT / "conf/numberline.yaml", SMALL)
    seed_everything(0)
    policy, data = build(cfg)
    rollout = data.collect()
    adv, ret = GAE(0.9, 0.95)(rollout)
    fabric = Fabric(accelerator="cpu", devices=1)
    rollout.advantages, rollout.returns = whiten_global(fabric, adv), ret
    policy_f = fabric.setup_module(policy)
    grads, terms = {}, {}
    for micro in (8, 1):
        policy.zero_grad(set_to_none=True)
        minibatch = data.loader(rollout, micro_batch_size=micro).minibatch(torch.arange(8))
        assert minibatch.num_micro == 8 // micro
        terms[micro] = accumulate_gradients(fabric, policy_f, minibatch)
        grads[micro] = {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}
    assert terms[8] == pytest.approx(terms[1], rel=1e-4, abs=1e-5)  # the policy term is ~0 at ratio 1
    assert grads[8].keys() == grads[1].keys() and len(grads[8]) > 10
    for name in grads[8]:
        a, b = grads[8][name], grads[1][name]
        # float32 round-off from different padding only: ~1e-6 of the gradient's norm
        assert (a - b).norm() <= 1e-5 * a.norm() + 1e-8, name
    assert sum(g.norm() for g in grads[8].values()) > 0
    data.envs.close()


def trainable(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt / "trainable.pt", weights_only=True)


@pytest.mark.parametrize("extra", [[], ["advantage.reward_scaling=return_std"]], ids=["plain", "reward-scaling"])
def test_resume_continues_the_same_run(tmp_path, tiny_path, extra):
    common = [*SMALL, *extra, "ppo.minibatch_size=4", "trainer.max_updates=3", "trainer.checkpoint_every=1",
              "trainer.image_log_every=0"]  # 2 minibatches per epoch: the shuffle order matters
    straight = tmp_path / "straight"
    fit(load_config(ROOT / "conf/numberline.yaml", [*common, f"trainer.out_dir={straight}"]))
    resumed = tmp_path / "resumed"
    fit(load_config(ROOT / "conf/numberline.yaml",
                    [*common, f"trainer.out_dir={resumed}", f"trainer.resume={straight}/checkpoints/update_000001"]))
    a, b = trainable(straight / "checkpoints/update_000003"), trainable(resumed / "checkpoints/update_000003")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-7, msg=name)
    # and the run really moved between updates 1 and 3 (the check above is not vacuous)
    first = trainable(straight / "checkpoints/update_000001")
    assert any(not torch.equal(first[n], a[n]) for n in a)


@pytest.mark.parametrize("extra", [[], ["model.finetune=lora", "model.lora.r=8", "model.lora.alpha=16",
                                        "ppo.lr=1e-3"], ["prompt.image_position=last"]],
                         ids=["full", "lora", "shared-prefix"])
def test_cli_fit_end_to_end(tmp_path, tiny_path, extra):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "agentrl.cli", "fit", "-c", str(ROOT / "conf/numberline.yaml"), *SMALL, *extra,
           "trainer.max_updates=2", "trainer.image_log_every=1", "seed=3", f"trainer.out_dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "summary" in proc.stderr
    ckpt = out / "checkpoints" / "update_000002"
    for f in ("trainable.pt", "trainer_state.pt", "value_head.pt", "config.yaml", "meta.json"):
        assert (ckpt / f).is_file(), f
    assert (ckpt / ("adapter" if "model.finetune=lora" in extra else "model")).is_dir()
    assert (out / "checkpoints" / "latest").read_text() == "update_000002"
    assert "thought_coef: 0.5" in (out / "config.yaml").read_text()
    assert json.loads((ckpt / "meta.json").read_text())["git_sha"]

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("charts/success_rate", "charts/episode_return", "losses/policy", "losses/value", "losses/approx_kl",
                "losses/clipfrac", "losses/explained_variance", "perf/env_steps_per_s", "perf/tokens_per_s",
                "parse/failure_rate"):
        assert tag in tags, tag
    # the axis is env steps (runs with any batch size compare), the update is its own scalar
    env_steps = [e.value for e in events.Scalars("charts/env_steps")]
    assert [e.step for e in events.Scalars("losses/policy")] == env_steps and env_steps[0] > 0
    assert [e.value for e in events.Scalars("charts/update")] == [1, 2]
    assert [e.step for e in events.Scalars("charts/update")] == env_steps
    assert events.Tags()["images"] and events.Tags()["tensors"]  # sample images and their generated text
    for tag in ("perf/peak_mem_rollout_gb", "perf/peak_mem_update_gb"):  # the tiny model: the interpreter and torch
        assert all(0.2 < e.value < 8 for e in events.Scalars(tag)), tag

    # every trainable parameter moved away from its initial value
    seed_everything(3)
    policy, data = build(load_config(ROOT / "conf/numberline.yaml", [*SMALL, *extra, "seed=3"]))
    data.envs.close()
    initial = {n: p.detach() for n, p in policy.named_parameters() if p.requires_grad}
    final = trainable(ckpt)
    assert initial.keys() == final.keys()
    unchanged = [n for n in initial if torch.equal(initial[n], final[n])]
    assert not unchanged, unchanged[:5]


def test_cli_config_errors_exit_2(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "agentrl.cli", *args], capture_output=True, text=True,
                              timeout=300)

    proc = run("fit", "-c", str(ROOT / "conf/numberline.yaml"), "ppo.clpi=0.1")
    assert proc.returncode == 2 and "ppo.clpi" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run("fit", "-c", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2 and "missing.yaml" in proc.stderr
    proc = run("fit", "-c", str(ROOT / "conf/numberline.yaml"), "env.name=chess", f"trainer.out_dir={tmp_path / 'x'}")
    assert proc.returncode == 2 and "known: alfworld, blackjack" in proc.stderr
    assert not (tmp_path / "x").exists()  # nothing written for a run that cannot start
    proc = run("fit", "-c", str(ROOT / "conf/numberline.yaml"), "--print-config", "ppo.clip=0.3")
    assert proc.returncode == 0 and "clip: 0.3" in proc.stdout
    proc = run("sweep", "-c", str(ROOT / "conf/numberline.yaml"), "--grid", "ppo.clpi=0.1,0.2",
               "--out", str(tmp_path / "sweep"))
    assert proc.returncode == 2 and "ppo.clip" in proc.stderr and not (tmp_path / "sweep").exists()
    proc = run("fit", "--help")
    assert proc.returncode == 0 and "policy.thought_coef" in proc.stdout and "Lambda" in proc.stdout


@pytest.mark.integration
def test_cli_fit_alfworld_end_to_end(tmp_path, tiny_path):
    """conf/alfworld.yaml on the real TextWorld engine, with async worker processes and scene images."""
    out = tmp_path / "alf"
    cmd = [sys.executable, "-m", "agentrl.cli", "fit", "-c", str(ROOT / "conf/alfworld.yaml"), "env.num_envs=2",
           "rollout.steps_per_update=8", "ppo.minibatch_size=8", "ppo.micro_batch_size=4", "rollout.max_new_tokens=16",
           "trainer.max_updates=1", "trainer.num_threads=1", f"trainer.out_dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("charts/env_steps")] == [8]
    assert events.Scalars("parse/failure_rate")[0].value >= 0
    assert (out / "checkpoints" / "update_000001" / "trainable.pt").is_file()


def test_init_from_a_fit_checkpoint_starts_from_its_weights(tmp_path, tiny_path):
    """A full fine-tune fit checkpoint lacks the parameters fit froze as unreachable; init_from must still load it."""
    first = tmp_path / "first"
    fit(load_config(ROOT / "conf/numberline.yaml", [*SMALL, "trainer.max_updates=1", f"trainer.out_dir={first}"]))
    saved = trainable(first / "checkpoints" / "update_000001")
    seed_everything(5)
    policy, data = build(load_config(ROOT / "conf/numberline.yaml", [*SMALL, "seed=5",
                                                                      f"policy.init_from={first}"]))
    data.envs.close()
    params = dict(policy.named_parameters())
    model_keys = [k for k in saved if not k.startswith("value_head.")]
    assert model_keys and all(torch.equal(params[k], saved[k]) for k in model_keys)


def test_bf16_mixed_keeps_the_base_bf16_and_what_trains_float32(tmp_path, tiny_path):
    result = fit(load_config(ROOT / "conf/numberline.yaml", [
        *SMALL, "trainer.max_updates=1", "trainer.precision=bf16-mixed", "model.dtype=bfloat16",
        f"trainer.out_dir={tmp_path / 'run'}"]))
    policy = result.policy
    assert {p.dtype for p in policy.value_head.parameters()} == {torch.float32}
    assert {p.dtype for p in policy.model.parameters()} == {torch.float32}  # a full fine-tune: all of it trains
    assert all(torch.isfinite(p.float()).all() for p in policy.parameters())
    assert result.counters["env_steps"] == 8


def test_update_runs_in_train_mode_checkpointed_without_dropout(tiny_path):
    """model.gradient_checkpointing must act in the update (it only does in train mode), and dropout must not:
    PPO's ratio compares against the sampling pass's log-probs."""
    cfg = load_config(ROOT / "conf/numberline.yaml", SMALL + [
        "model.gradient_checkpointing=true", "model.finetune=lora", "model.lora.dropout=0.5",
        "prompt.image_position=last"])
    policy, data = build(cfg)
    policy.eval()
    prompts = data.current_prompts()
    assert policy.batcher.split_prefix(prompts)[0] is not None  # rollouts (eval mode) still share the prefix
    gen = policy.generate(prompts, score=True)
    layer = next(m for m in policy.modules() if type(m).__name__.endswith("DecoderLayer"))
    calls, mlp_forward = [], layer.mlp.forward

    def counted(*args, **kwargs):  # runs inside the checkpointed forward, also when the backward replays it
        calls.append(1)
        return mlp_forward(*args, **kwargs)

    layer.mlp.forward = counted
    for mode, recomputed in ((False, 0), (True, 1)):
        policy.train(mode)
        inputs = policy.collate_train(prompts, gen.ids, [torch.ones(len(g)) for g in gen.ids])
        assert (inputs.prefix is None) == mode  # checkpointing drops the cache a shared prefix needs
        calls.clear()
        logp, values, _ = policy(inputs)
        again = policy(inputs)[0]
        passes = 2 * (1 if inputs.prefix is None else 2)  # a shared prefix is one more pass of every layer
        assert len(calls) == passes
        assert torch.equal(logp, again)  # LoRA dropout 0.5 stays off
        for i, row in enumerate(gen.token_logp):
            torch.testing.assert_close(logp[i, : len(row)].detach(), row, atol=2e-6, rtol=0)
        (logp.sum() + values.sum()).backward()
        assert len(calls) == passes + recomputed  # checkpointing re-runs the layer in the backward
    data.envs.close()


def test_fit_collects_in_eval_mode_and_updates_in_train_mode(tmp_path, tiny_path, monkeypatch):
    import agentrl.commands.fit as F
    from agentrl.data.rollout import RolloutDataModule

    seen = []
    collect, update = RolloutDataModule.collect, F.Learner.update

    def spy_collect(self, *args, **kwargs):
        seen.append(("collect", self.policy.model.training))
        return collect(self, *args, **kwargs)

    def spy_update(self, *args, **kwargs):
        seen.append(("update", self.policy.model.training))
        return update(self, *args, **kwargs)

    monkeypatch.setattr(RolloutDataModule, "collect", spy_collect)
    monkeypatch.setattr(F.Learner, "update", spy_update)
    fit(load_config(ROOT / "conf/numberline.yaml", [*SMALL, "trainer.max_updates=2", "trainer.image_log_every=0",
                                                    f"trainer.out_dir={tmp_path}"]))
    assert seen == [("collect", False), ("update", True)] * 2


def test_export_of_a_full_fine_tune_and_where_it_may_write(tmp_path, tiny_path):
    """agentrl export of a full fine-tune fit checkpoint, which lacks what fit froze as unreachable (it refused
    it: "trainable parameters missing"); --out never replaces the checkpoint, its run or a folder not an export."""
    from transformers import AutoModelForImageTextToText

    from agentrl.config import ConfigError
    from agentrl.training.checkpoint import export_checkpoint

    run = tmp_path / "run"
    fit(load_config(ROOT / "conf/numberline.yaml", [*SMALL, "trainer.max_updates=1", f"trainer.out_dir={run}"]))
    ckpt = run / "checkpoints" / "update_000001"
    saved = trainable(ckpt)
    dest = export_checkpoint(str(ckpt))
    assert dest == ckpt / "export"
    exported = torch.load(dest / "trainable.pt", weights_only=True)
    assert exported.keys() == saved.keys() and all(torch.equal(exported[k], saved[k]) for k in saved)
    hf = dict(AutoModelForImageTextToText.from_pretrained(dest / "model").named_parameters())
    model_keys = [k for k in saved if k.startswith("model.")]
    assert model_keys and all(torch.equal(hf[k.removeprefix("model.")], saved[k]) for k in model_keys)
    assert export_checkpoint(str(ckpt)) == dest  # an earlier export is replaced
    for out in (run, ckpt, run / "checkpoints"):
        with pytest.raises(ConfigError, match="holds the checkpoint"):
            export_checkpoint(str(ckpt), str(out))
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not an earlier export"):
        export_checkpoint(str(ckpt), str(other))
    assert (other / "keep.txt").read_text() == "mine" and trainable(ckpt).keys() == saved.keys()
