"""The throughput benches run and compare (no timing assertions); rollout scoring from generate is exact."""

import sys
from pathlib import Path

import pytest
import torch

from agentrl.config import load_config
from agentrl.training.build import build

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import bench_memory  # noqa: E402
import bench_rollout  # noqa: E402
import bench_update  # noqa: E402


def test_bench_rollout_smoke(tiny_path, capsys):
    rows = bench_rollout.main(["--steps", "4", "--sizes", "1", "4", "--max-new-tokens", "6"])
    assert [(r["variant"], r["num_envs"]) for r in rows] == [("reference", 1), ("agentrl", 1), ("agentrl", 4)]
    assert all(r["tokens"] == 4 * 6 for r in rows)  # fixed lengths: every variant generates the same tokens
    out = capsys.readouterr().out
    for r in rows:  # same env steps everywhere, so a speedup is the reference's wall time over the row's
        assert r["steps"] == rows[0]["steps"]
        assert r["speedup"] == pytest.approx(rows[0]["wall_s"] / r["wall_s"], rel=1e-9)
        assert r["generate_s"] > 0 and r["generate_s"] + r["score_s"] <= r["wall_s"] and r["peak_mb"] > 0
        assert f"{r['speedup']:.2f}x" in out  # the table prints what was measured
    assert rows[0]["speedup"] == 1.0


def test_bench_rollout_compares_the_own_loop_with_generate_on_qwen(capsys):
    from agentrl.policy.tiny.build import tiny_model_path

    path = tiny_model_path(family="qwen2_5_vl")
    rows = bench_rollout.main(["--model-path", str(path), "--steps", "4", "--sizes", "4", "--max-new-tokens", "6",
                               "--vs-generate"])
    assert [(r["variant"], r["num_envs"]) for r in rows] == [
        ("reference", 1), ("agentrl", 4), ("agentrl, generate", 4)]
    assert all(r["tokens"] == 4 * 6 for r in rows)  # the same work on both decoders
    own, hf = rows[1], rows[2]
    assert own["vs_generate"] == pytest.approx(hf["wall_s"] / own["wall_s"], rel=1e-9) and "vs_generate" not in hf
    out = capsys.readouterr().out
    assert "vs generate" in out and f"{own['vs_generate']:.2f}x" in out and "qwen2_5_vl" in out


@pytest.mark.integration
def test_bench_memory_runs_fit_per_strategy_and_reads_its_peaks(tiny_path, capsys):
    rows = bench_memory.main(["--max-new-tokens", "4"])
    assert [(r["strategy"], r["rc"]) for r in rows] == [("ddp", 0), ("fsdp", 0)]
    for r in rows:  # the tiny model: the interpreter and torch, well under a few GB
        assert 0.2 < r["rollout_gb"] < 4 and 0.2 < r["update_gb"] < 4
    assert rows[1]["update_vs_first"] == pytest.approx(rows[1]["update_gb"] / rows[0]["update_gb"])
    assert f"{rows[1]['update_vs_first']:.2f}x" in capsys.readouterr().out


def test_bench_update_smoke(tiny_path, capsys):
    # the bench itself asserts that losses and gradients match micro-batch 1
    rows = bench_update.main(["--samples", "8", "--num-envs", "4", "--minibatch", "4", "--micro", "1", "4",
                              "--max-new-tokens", "8"])
    assert [r["micro_batch"] for r in rows] == [1, 4] and rows[1]["grad_rel_err"] < 1e-4
    assert "speedup" in capsys.readouterr().out


def test_logprobs_from_generate_match_a_scoring_forward(tiny_path):
    """rollout.logprobs_from=generate gives the old log-probs and values a second forward would."""
    cfg = load_config(ROOT / "conf/numberline.yaml", ["env.num_envs=4", "rollout.steps_per_update=8",
                                                      "rollout.max_new_tokens=32", "rollout.temperature=0.2",
                                                      "ppo.minibatch_size=8", "trainer.num_threads=1"])
    torch.manual_seed(0)
    policy, data = build(cfg)
    assert data.logprobs_from == "generate"
    # a random model rarely says EOS: stop at a token it says at varied places, so answer lengths differ
    first = data.collect()

    def lengths(tok):
        return {int((g == tok).nonzero()[0]) if (g == tok).any() else len(g) for g in first.gen_ids}

    policy.sampler.eos_id = max(torch.cat(first.gen_ids).unique().tolist(), key=lambda t: len(lengths(t)))
    data._obs = None  # replay the same states
    rollout = data.collect()
    assert len({len(g) for g in rollout.gen_ids}) > 1  # answers of different lengths: padding exercised
    logp, values = data.score(rollout.prompts, rollout.gen_ids, rollout.weights)
    assert torch.allclose(rollout.logp, logp, atol=1e-4, rtol=1e-5)
    assert torch.allclose(rollout.values, values, atol=1e-5)
    # the forward path gives the same numbers on the same samples
    data.logprobs_from = "forward"
    torch.manual_seed(1)
    again = data.collect()
    assert torch.allclose(again.logp, data.score(again.prompts, again.gen_ids, again.weights)[0])
    data.envs.close()
