"""tools/gpu_check.py, the prepared accelerator check, runs its phases on this CPU and writes its JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_gpu_check_runs_every_phase_on_the_cpu(tmp_path, tiny_path):
    out = tmp_path / "check.json"
    cmd = [sys.executable, str(ROOT / "tools/gpu_check.py"), "--device", "cpu", "--model", "tiny", "--out", str(out),
           "--num-envs", "2", "--max-new-tokens", "8", "--bench-steps", "4", "--lora-r", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    phases = report["phases"]
    assert list(phases) == ["fit", "sft", "eval", "rollout", "update"] and report["ok"]
    for name, r in phases.items():
        assert r["ok"] and r["seconds"] > 0 and r["peak_memory_mb"] > 0, name
    fit = phases["fit"]
    assert fit["env_steps"] == 8 and fit["env_steps_per_s"] > 0 and fit["tokens_per_s"] > 0
    assert 0 <= fit["start_ratio_error"] < 1e-2  # bf16-mixed: old log-probs from a scoring forward
    assert phases["eval"]["episodes"] == 4
    assert phases["update"]["grad_rel_err"] < 5e-2  # micro-batches 1 and 4 give one gradient
    rows = phases["rollout"]["rows"]
    assert [(r["variant"], r["num_envs"]) for r in rows] == [("reference", 1), ("agentrl", 1), ("agentrl", 2)]
    assert rows[0]["speedup"] == 1.0
