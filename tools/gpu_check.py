"""The prepared GPU check: every command once on one accelerator, the numbers in one JSON file.

    python tools/gpu_check.py                           # one CUDA device, the ~1.6B random-weight LLaVA
    python tools/gpu_check.py --device cpu --model tiny  # the same phases on this CPU (a few minutes; CI runs it)

Phases, each timed and run even when an earlier one failed:
  fit      agentrl fit, LoRA, bf16-mixed (a bfloat16 base, float32 adapters), 2 updates:
           env-steps/s, tokens/s, losses/start_ratio_error
  sft      agentrl sft, a few steps of the same model
  eval     agentrl eval of fit's checkpoint, 4 held-out episodes
  rollout  tools/bench_rollout.py: reference-style loop vs agentrl's batched rollout (speedup)
  update   tools/bench_update.py: one PPO epoch at two micro-batch sizes (gradients checked equal)
The JSON (``--out``) is ``{"device", "model", "phases": {name: {"ok", "seconds", "peak_memory_mb", ...}}}``;
a failed phase has ``"ok": false`` and its ``"error"``. Peak memory is the CUDA allocator's peak in the
phase, or on the CPU the process's peak resident set so far (it never goes down).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def phase(name: str, device: str, results: dict[str, Any], fn) -> Any:
    """Run ``fn`` as phase ``name``; record ok, seconds, peak memory and what it returns (a dict)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        out = fn()
        record = {"ok": True, **(out[0] if isinstance(out, tuple) else out)}
    except Exception as e:  # a failed phase is reported, the next one still runs
        traceback.print_exc()
        out, record = None, {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}
    record.update(seconds=time.perf_counter() - t0, peak_memory_mb=peak_memory_mb(device))
    results[name] = record
    print(f"gpu_check: {name} {'ok' if record['ok'] else 'FAILED'} in {record['seconds']:.1f} s", file=sys.stderr)
    return out[1] if isinstance(out, tuple) else out


def model_path(model: str, work: Path) -> str:
    if model in ("tiny", "2b"):
        if model == "tiny":
            return "tiny"
        from agentrl.policy.tiny.build import make_tiny_model

        out = work / "vlm2b"
        make_tiny_model(str(out), "2b")
        return str(out)
    return model


def run(args: argparse.Namespace) -> dict[str, Any]:
    import bench_rollout
    import bench_update
    from transformers.utils import logging as hf_logging

    from agentrl.commands.evaluate import evaluate
    from agentrl.commands.fit import fit
    from agentrl.commands.sft import sft
    from agentrl.config import load_config

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    path = model_path(args.model, work)
    accelerator = "cuda" if args.device.startswith("cuda") else "cpu"
    big = args.model != "tiny"
    common = [f"model.path={path}", "model.dtype=bfloat16", "model.finetune=lora", f"model.lora.r={args.lora_r}",
              f"model.lora.alpha={2 * args.lora_r}", "trainer.precision=bf16-mixed",
              f"trainer.accelerator={accelerator}", "trainer.devices=1", f"trainer.num_threads={args.threads}",
              f"env.num_envs={args.num_envs}", f"rollout.max_new_tokens={args.max_new_tokens}",
              *(["model.image_size=336"] if big else [])]
    results: dict[str, Any] = {}
    report = {"device": args.device, "model": args.model, "model_path": path,
              "torch": torch.__version__, "cuda": torch.cuda.get_device_name() if accelerator == "cuda" else None,
              "phases": results}

    def do_fit():
        steps = 2 * args.num_envs
        cfg = load_config(ROOT / "conf/numberline.yaml", [
            *common, f"rollout.steps_per_update={steps}", f"ppo.minibatch_size={steps}",
            f"ppo.micro_batch_size={min(4, steps)}", "ppo.epochs=1", "trainer.max_updates=2",
            "trainer.image_log_every=0", f"trainer.out_dir={work / 'fit'}"])
        r = fit(cfg, argv=["gpu_check", "fit"])
        m = r.metrics
        keys = ("perf/env_steps_per_s", "perf/tokens_per_s", "losses/start_ratio_error", "losses/approx_kl",
                "perf/generate_s", "perf/update_s")
        return {k.split("/")[1]: m.get(k) for k in keys} | {"env_steps": r.counters["env_steps"]}, r.checkpoint

    def do_sft():
        cfg = load_config(ROOT / "conf/sft/numberline.yaml", [
            *common, "sft.examples=16", "sft.epochs=1", "sft.batch_size=8", f"trainer.out_dir={work / 'sft'}"])
        ckpt = sft(cfg, argv=["gpu_check", "sft"])
        m = json.loads((ckpt / "sft_metrics.json").read_text())
        return {"loss": m["loss"], "steps": m["steps"], "examples_per_s": m["examples"] / m["seconds"]}

    def do_eval(ckpt):
        cfg = load_config(ROOT / "conf/numberline.yaml", common)
        r = evaluate(cfg, str(ckpt) if ckpt else None, 4, out=str(work / "eval.json"))
        return {k: r[k] for k in ("episodes", "success_rate", "parse_failure_rate", "steps")} | {
            "env_steps_per_s": r["steps"] / r["seconds"]}

    def do_rollout():
        rows = bench_rollout.main([
            "--model-path", path, "--device", args.device, "--dtype", "bfloat16", "--steps", str(args.bench_steps),
            "--sizes", "1", str(args.num_envs), "--max-new-tokens", str(args.max_new_tokens),
            "--threads", str(args.threads), "--override", "model.finetune=lora", f"model.lora.r={args.lora_r}",
            *(["model.image_size=336"] if big else [])])
        return {"rows": [{k: r[k] for k in ("variant", "num_envs", "env_steps_per_s", "tokens_per_s", "speedup",
                                             "peak_mb")} for r in rows],
                "speedup": rows[-1]["speedup"], "env_steps_per_s": rows[-1]["env_steps_per_s"]}

    def do_update():
        rows = bench_update.main([
            "--model-path", path, "--device", args.device, "--dtype", "bfloat16", "--precision", "bf16-mixed",
            "--samples", str(2 * args.num_envs), "--num-envs", str(args.num_envs), "--minibatch",
            str(2 * args.num_envs), "--micro", "1", str(min(4, 2 * args.num_envs)), "--max-new-tokens",
            str(args.max_new_tokens), "--threads", str(args.threads), "--override", "model.finetune=lora",
            f"model.lora.r={args.lora_r}", *(["model.image_size=336"] if big else [])])
        return {"rows": [{k: r[k] for k in ("micro_batch", "samples_per_s", "grad_rel_err", "speedup")} for r in rows],
                "samples_per_s": rows[-1]["samples_per_s"], "grad_rel_err": rows[-1]["grad_rel_err"]}

    ckpt = phase("fit", args.device, results, do_fit)
    phase("sft", args.device, results, do_sft)
    phase("eval", args.device, results, lambda: do_eval(ckpt))
    phase("rollout", args.device, results, do_rollout)
    phase("update", args.device, results, do_update)
    report["ok"] = all(r["ok"] for r in results.values())
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (one device) or cpu")
    p.add_argument("--model", default="2b", help="2b (built offline, ~30 s, 3.2 GB), tiny, or a checkpoint dir")
    p.add_argument("--out", default="gpu_check.json", help="the JSON report to write")
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--bench-steps", type=int, default=64, help="env steps per variant of the rollout bench")
    p.add_argument("--lora-r", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --device cpu --model tiny", file=sys.stderr)
        return 2
    report = run(args)
    Path(args.out).write_text(json.dumps(report, indent=1))
    for name, r in report["phases"].items():
        extra = {k: v for k, v in r.items() if k not in ("ok", "seconds", "peak_memory_mb", "rows", "error")}
        print(f"{name:8s} {'ok' if r['ok'] else 'FAILED':6s} {r['seconds']:7.1f} s {r['peak_memory_mb']:9.0f} MB  "
              f"{r.get('error') or json.dumps(extra, default=str)}")
    print(f"wrote {args.out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
