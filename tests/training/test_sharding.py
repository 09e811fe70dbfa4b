"""trainer.strategy=fsdp (FSDP2 over gloo): gradients, collectives in step, checkpoints and exact resume, sft."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_distributed import HERE, ROOT, SMALL, env

from agentrl.policy.sharding import block_classes

pytestmark = pytest.mark.integration
FSDP = [*[a for a in SMALL if not a.startswith("trainer.strategy")], "trainer.strategy=fsdp"]


def run_harness(out, mode, precision="32-true"):
    proc = subprocess.run([sys.executable, str(HERE / "fsdp_harness.py"), str(out), mode, precision],
                          capture_output=True, text=True, timeout=600, env=env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    missing = [r for r in (0, 1) if not (out / f"rank{r}.json").exists()]
    assert not missing, f"rank(s) {missing} never finished (rank 0 exited without them):\n{proc.stderr[-3000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def fit(out, *extra, timeout=600):
    extra = extra if any(a.startswith("model.finetune=") for a in extra) else ("model.finetune=lora", *extra)
    cmd = [sys.executable, "-m", "agentrl.cli", "fit", "-c", str(ROOT / "conf/numberline.yaml"), *FSDP, *extra,
           f"trainer.out_dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_blocks_to_shard_are_the_models_own_unsplittable_layers(tiny_path):
    from agentrl.config import load_config
    from agentrl.training.build import build

    policy, data = build(load_config(ROOT / "conf/numberline.yaml", ["model.finetune=lora", "env.num_envs=1"]))
    assert {"LlamaDecoderLayer", "CLIPEncoderLayer"} <= block_classes(policy)
    data.envs.close()


@pytest.mark.parametrize("mode,precision", [("even", "32-true"), ("uneven", "32-true"), ("even", "bf16-mixed")],
                         ids=["even", "uneven-micro-batches", "bf16-mixed"])
def test_fsdp_gradients_equal_one_process_with_half_the_weights_per_rank(tmp_path, tiny_path, mode, precision):
    """Each rank's share of 8 samples, FSDP2-sharded LoRA policy: the reduced gradient is one pass over all 8.

    DDP is checked against the same single-process pass (test_distributed.py), so FSDP equals DDP. Uneven: 3 and 5
    samples in micro-batches of 2, so one rank runs a micro-batch more; without stand-ins it would hang.
    """
    for r in run_harness(tmp_path, mode, precision):
        assert r["units"] >= 7  # 4 decoder layers, 2 vision layers, the vision embeddings, the root
        assert abs(r["local_fraction"] - 0.5) < 0.01  # each rank stores half of every weight
        assert r["trainable_dtypes"] == ["torch.float32"]
        assert r["grad_norm"] > 1.0
        assert r["grad_rel_error"] < 1e-5, r["grad_rel_error"]


def test_target_kl_crossed_on_one_rank_stops_both_after_the_same_epoch(tmp_path, tiny_path):
    """Rank 0's local KL is 4 per sample, rank 1's 0: the mean (2) is above target_kl=1, so both stop after epoch
    1 of 3. Deciding on the local KL (seen, all-reduce disabled), rank 0 stops alone and rank 1 never finishes
    its next sharded forward."""
    for r in run_harness(tmp_path, "kl"):
        assert r["optimizer_steps"] == r["planned_per_epoch"]


def straight_and_resumed(tmp_path, *extra):
    """Two updates straight, and resumed after update 1: update 2's trainable weights are bit-identical.

    Returns the straight run's directory and its update-2 weights (full tensors, not a rank's shard)."""
    common = [*extra, "trainer.max_updates=2", "trainer.checkpoint_every=1", "trainer.image_log_every=0"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    fit(straight, *common)
    fit(resumed, *common, f"trainer.resume={straight}/checkpoints/update_000001")
    a = torch.load(straight / "checkpoints/update_000002/trainable.pt", weights_only=True)
    b = torch.load(resumed / "checkpoints/update_000002/trainable.pt", weights_only=True)
    first = torch.load(straight / "checkpoints/update_000001/trainable.pt", weights_only=True)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert any(not torch.equal(first[n], a[n]) for n in a)  # update 2 moved the weights: the check is not vacuous
    return straight, resumed, a


def test_fsdp_lora_fit_checkpoints_and_resumes_exactly(tmp_path, tiny_path):
    straight, resumed, a = straight_and_resumed(tmp_path)
    assert any("lora_A" in n for n in a)
    sa = torch.load(straight / "checkpoints/update_000002/trainer_state.pt", weights_only=False)
    sb = torch.load(resumed / "checkpoints/update_000002/trainer_state.pt", weights_only=False)
    for name, moments in sa["optimizer"]["state"].items():  # the full optimizer state, by parameter name
        assert torch.equal(moments["exp_avg_sq"], sb["optimizer"]["state"][name]["exp_avg_sq"]), name
    # the Hugging Face export holds the full adapter too
    adapter = load_file(straight / "checkpoints/update_000002/adapter/adapter_model.safetensors")
    name = next(n for n in a if "lora_A" in n and "language_model" in n)
    exported = next(t for k, t in adapter.items() if name.split("model.base_model.model.")[1].replace(".default", "")
                    == k.split("base_model.model.")[1])
    assert torch.equal(exported, a[name])
    events = EventAccumulator(str(straight / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("charts/env_steps")] == [16, 32]
    # agentrl eval reads the FSDP checkpoint on one device, as a DDP one
    from agentrl.commands.evaluate import evaluate
    from agentrl.config import load_config

    result = evaluate(load_config(ROOT / "conf/numberline.yaml", ["model.finetune=lora", "env.num_envs=2"]),
                      str(straight / "checkpoints/update_000002"), 3, greedy=True)
    assert result["episodes"] == 3


def test_fsdp_full_fine_tuning_resumes_exactly_and_exports_the_whole_model(tmp_path, tiny_path):
    """Every weight trains and is sharded; the checkpoint's model/ folder is the full model, loadable as is."""
    from transformers import AutoModelForImageTextToText

    straight, _, a = straight_and_resumed(tmp_path, "model.finetune=full")
    assert len(a) > 50
    exported = AutoModelForImageTextToText.from_pretrained(straight / "checkpoints/update_000002/model")
    mine = {n.removeprefix("model."): t for n, t in a.items() if n.startswith("model.")}
    theirs = dict(exported.named_parameters())
    assert mine.keys() <= theirs.keys()  # every trained weight (unreachable ones, e.g. a last vision norm, frozen)
    for name in mine:
        assert torch.equal(theirs[name].detach(), mine[name].to(theirs[name].dtype)), name


def test_grouped_rollouts_of_different_sizes_per_rank_step_together_under_fsdp(tmp_path, tiny_path):
    """GiGPO keeps whole groups, so ranks hold different sample counts: every sharded forward still pairs up."""
    out = tmp_path / "run"
    fit(out, "advantage.estimator=gigpo", "rollout.group_size=2", "trainer.max_updates=2")
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("losses/optimizer_steps")] == [8.0, 8.0]  # 16 / 8 per epoch x 4 epochs
    steps = [e.value for e in events.Scalars("charts/env_steps")]
    assert steps[0] >= 16 and steps[1] >= steps[0] + 16


def test_sft_under_fsdp_writes_full_weights_that_fit_loads(tmp_path, tiny_path):
    """sft always writes one full copy (what init_from and export read): asked for shards, it says so up front."""
    out = tmp_path / "sft"
    cmd = [sys.executable, "-m", "agentrl.cli", "sft", "-c", str(ROOT / "conf/sft/numberline.yaml"),
           "sft.examples=16", "sft.epochs=1", "sft.batch_size=8", "trainer.devices=2", "trainer.strategy=fsdp",
           "trainer.accelerator=cpu", "model.finetune=lora", "trainer.checkpoint_format=sharded",
           f"trainer.out_dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = " ".join((proc.stdout + proc.stderr).split())
    assert "trainer.checkpoint_format=sharded applies to fit" in said, said[-2000:]
    assert not (out / "checkpoints/sft/sharded").exists()
    assert json.loads((out / "checkpoints/sft/sft_metrics.json").read_text())["steps"] == 2
    fit(tmp_path / "ppo", "trainer.max_updates=1", f"policy.init_from={out}/checkpoints/sft")


def test_sharded_checkpoints_hold_each_ranks_shard_and_resume_exactly(tmp_path, tiny_path):
    """trainer.checkpoint_format=sharded: no full copy is written; the shards resume bit-exactly, assemble into the
    same weights a full-format run saves, and `agentrl export` turns them into the full files eval and HF read."""
    from agentrl.policy.sharding import read_sharded_weights

    full, _, a = straight_and_resumed(tmp_path / "full")  # the same run in the full format, for reference
    common = ["trainer.max_updates=2", "trainer.checkpoint_every=1", "trainer.image_log_every=0",
              "trainer.checkpoint_format=sharded"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    fit(straight, *common)
    fit(resumed, *common, f"trainer.resume={straight}/checkpoints/update_000001")
    ckpt = straight / "checkpoints/update_000002"
    assert not (ckpt / "trainable.pt").exists() and not (ckpt / "adapter").exists()
    assert sorted(p.name for p in (ckpt / "sharded").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    sizes = [p.stat().st_size for p in (ckpt / "sharded").glob("*.distcp")]
    assert min(sizes) > 0.3 * sum(sizes)  # each rank wrote its own half, not rank 0 all of it
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    assert state["optimizer"] == "in sharded/" and len(state["ranks"]) == 2
    s, r = read_sharded_weights(ckpt / "sharded"), read_sharded_weights(resumed / "checkpoints/update_000002/sharded")
    assert s.keys() == a.keys()
    for name in a:
        assert torch.equal(s[name], a[name]), name  # sharded and full formats train and save the same weights
        assert torch.equal(r[name], a[name]), name  # and the resume from shards is exact
    # eval reads the shards directly; export writes the full files, which match the full-format checkpoint
    from agentrl.commands.evaluate import evaluate
    from agentrl.config import load_config

    result = evaluate(load_config(ROOT / "conf/numberline.yaml", ["model.finetune=lora", "env.num_envs=2"]),
                      str(ckpt), 3, greedy=True)
    assert result["episodes"] == 3
    out = tmp_path / "exported"
    proc = subprocess.run([sys.executable, "-m", "agentrl.cli", "export", "--checkpoint", str(ckpt), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    exported = torch.load(out / "trainable.pt", weights_only=True)
    assert all(torch.equal(exported[n], a[n]) for n in a)
    adapter = load_file(out / "adapter/adapter_model.safetensors")
    reference = load_file(full / "checkpoints/update_000002/adapter/adapter_model.safetensors")
    assert adapter.keys() == reference.keys() and all(torch.equal(adapter[k], reference[k]) for k in adapter)
    # a sharded checkpoint under ddp is refused with what to do
    proc = subprocess.run([sys.executable, "-m", "agentrl.cli", "fit", "-c", str(ROOT / "conf/numberline.yaml"),
                           *SMALL, "model.finetune=lora", "trainer.max_updates=3", f"trainer.resume={ckpt}",
                           f"trainer.out_dir={tmp_path / 'ddp'}"], capture_output=True, text=True, timeout=300, env=env())
    assert proc.returncode == 2 and "trainer.strategy" in proc.stderr, proc.stderr[-2000:]


def test_rank_zero_failing_to_make_the_sharded_folder_stops_every_rank_with_its_reason(tmp_path):
    """Rank 0 makes the folder every rank writes its shard in; its failure must reach the others, not a hang."""
    import time

    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(HERE / "checkpoint_failure.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env())
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) if (tmp_path / f"rank{r}.json").exists() else None
            for r in (0, 1)]
    assert all(s is not None and s["type"] == "CheckpointWriteError" and "No space left" in s["message"]
               for s in seen), (seen, proc.stderr[-3000:])
    assert "rank 0" in seen[1]["message"]
    assert time.monotonic() - start < 55  # well before trainer.collective_timeout_s=60
