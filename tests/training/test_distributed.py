"""Two CPU processes (gloo): synced gradients, global batch, no hang, slow ranks named."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parents[1] / "distributed"
pytestmark = pytest.mark.integration

SMALL = ["env.num_envs=2", "rollout.steps_per_update=16", "ppo.minibatch_size=8", "ppo.micro_batch_size=4",
         "rollout.max_new_tokens=12", "trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu"]


def env(**extra):
    e = dict(os.environ, PYTHONPATH=f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    e.update(extra)
    return e


def run_harness(out, precision, *extra):
    proc = subprocess.run([sys.executable, str(HERE / "ddp_harness.py"), str(out), precision, *extra],
                          capture_output=True, text=True, timeout=600, env=env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_ddp_gradients_equal_one_process_and_ranks_stay_identical(tmp_path, tiny_path):
    results = run_harness(tmp_path, "32-true")
    for r in results:
        assert r["global_batch"] == 8  # 4 + 4: the sum of the ranks' batches
        assert r["whiten_error"] < 1e-5  # global advantage statistics
        assert r["grad_rel_error"] < 1e-5  # DDP-averaged half batches == one full batch
        assert r["grad_rel_error_per_tensor"] < 1e-4
        assert r["loss_ddp"] == pytest.approx(r["loss_single"], rel=1e-4, abs=1e-6)
        assert r["params_equal_across_ranks"] and r["params_moved"]


def test_ddp_with_uneven_shares_equals_one_pass_over_the_minibatch(tmp_path, tiny_path):
    """3 samples on one rank, 5 on the other (grouped rollouts): each sample still weighs 1/8."""
    for r in run_harness(tmp_path, "32-true", "uneven"):
        assert r["global_batch"] == 8
        assert r["grad_rel_error"] < 1e-5, r["grad_rel_error"]
        assert r["loss_ddp"] == pytest.approx(r["loss_single"], rel=1e-4, abs=1e-6)
        assert r["params_equal_across_ranks"]


def test_ddp_at_bf16_mixed_syncs_float32_gradients_of_trunk_and_head(tmp_path, tiny_path):
    """A bfloat16 base with float32 LoRA adapters and value head, every forward under autocast, 2 ranks."""
    for r in run_harness(tmp_path, "bf16-mixed"):
        assert r["trainable_dtypes"] == ["torch.float32"] and r["frozen_dtypes"] == ["torch.bfloat16"]
        assert r["grads_synced"]  # both ranks hold the averaged gradient
        # equal to one process running the same micro-batches (a row's bf16 result depends on its batch)
        assert r["grad_rel_error_trunk"] < 1e-5 and r["grad_rel_error_head"] < 1e-5
        assert r["loss_ddp"] == pytest.approx(r["loss_single"], rel=1e-5, abs=1e-6)
        assert r["params_equal_across_ranks"] and r["params_moved"]


def test_cli_two_processes_uneven_episodes_do_not_hang(tmp_path, tiny_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "agentrl.cli", "fit", "-c", str(ROOT / "conf/numberline.yaml"), *SMALL,
           "trainer.max_updates=2", f"trainer.out_dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("charts/env_steps")] == [16, 32]  # both ranks' steps, each update
    assert (out / "checkpoints" / "update_000002" / "trainer_state.pt").is_file()


def test_two_processes_with_groups_of_different_sizes_step_together(tmp_path, tiny_path):
    """Grouped rollouts differ in size per rank (whole groups); both ranks still take the planned steps."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "agentrl.cli", "fit", "-c", str(ROOT / "conf/numberline.yaml"), *SMALL,
           "advantage.estimator=gigpo", "rollout.group_size=2", "trainer.max_updates=2", f"trainer.out_dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("losses/optimizer_steps")] == [8.0, 8.0]  # 16 / 8 per epoch x 4 epochs
    steps = [e.value for e in events.Scalars("charts/env_steps")]
    assert steps[0] >= 16 and steps[1] >= steps[0] + 16  # at least the budget, whole groups
    assert "losses/value" not in events.Tags()["scalars"]


def test_slow_rank_is_named_not_hung(tmp_path, tiny_path):
    cmd = [sys.executable, "-m", "agentrl.cli", "fit", "-c", str(ROOT / "conf/numberline.yaml"), *SMALL,
           "env.name=slow_env:SlowOnRank1", "trainer.collective_timeout_s=5", "trainer.max_updates=1",
           f"trainer.out_dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env(AGENTRL_TEST_DELAY="3"))
    assert proc.returncode != 0
    assert "rank(s) 1 did not finish collecting rollouts" in proc.stderr, proc.stderr[-3000:]


def test_sft_on_two_processes(tmp_path, tiny_path):
    """agentrl sft through Fabric with DDP: each rank its share of every batch, rank 0 writes the checkpoint."""
    out = tmp_path / "sft"
    cmd = [sys.executable, "-m", "agentrl.cli", "sft", "-c", str(ROOT / "conf/sft/numberline.yaml"),
           "sft.examples=16", "sft.epochs=1", "sft.batch_size=8", "trainer.devices=2", "trainer.strategy=ddp",
           "trainer.accelerator=cpu", f"trainer.out_dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "checkpoints" / "sft" / "sft_metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["examples"] == 16 and metrics["loss"] > 0
    assert proc.stderr.count("sft: loss") == 1  # one rank reports


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_score_head_trains_on_two_processes(tmp_path, tiny_path, strategy):
    """policy.action_head=score under DDP (with GiGPO's groups) and FSDP2 (LoRA at bf16-mixed): ranks step
    together, the first ratio is 1, the weights move identically on both ranks (one checkpoint)."""
    out = tmp_path / "run"
    extra = (["advantage.estimator=gigpo", "rollout.group_size=2"] if strategy == "ddp" else
             ["trainer.strategy=fsdp", "model.finetune=lora", "model.dtype=bfloat16", "trainer.precision=bf16-mixed"])
    cmd = [sys.executable, "-m", "agentrl.cli", "fit", "-c", str(ROOT / "conf/numberline.yaml"),
           *[a for a in SMALL if strategy == "ddp" or not a.startswith("trainer.strategy")], *extra,
           "policy.action_head=score", "prompt.cot=false", "trainer.max_updates=1", f"trainer.out_dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert events.Scalars("losses/start_ratio_error")[0].value < 1e-6
    assert events.Scalars("parse/failure_rate")[0].value == 0.0
    assert (out / "checkpoints" / "update_000001").is_dir()
