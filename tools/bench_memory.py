"""Peak memory per rank: trainer.strategy=fsdp (FSDP2) vs ddp, same model, config and rollout, in one run.

    agentrl make-tiny-model /tmp/m2b --size 2b        # ~1.6B random-weight LLaVA, bf16 (3.2 GB)
    python tools/bench_memory.py --model-path /tmp/m2b --dtype bfloat16 --gradient-checkpointing
    python tools/bench_memory.py --model-path /models/llava-7b --device cuda --dtype bfloat16 --devices 4

Each strategy runs ``agentrl fit`` for one update on ``--devices`` processes
(``model.finetune`` LoRA by default; same seed, so the same rollout) and
reads the ``perf/peak_mem_rollout_gb`` and ``perf/peak_mem_update_gb``
scalars it logs: the rank that held the most, on a GPU what torch allocated,
on a CPU the process's peak resident set (agentrl.training.peakmem). The last column
is each strategy's update peak over the first strategy's (ddp). A run that
fails (a rank killed for memory: rc -9) is reported as such with the tail
of its log, not dropped.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib


def run_fit(args: argparse.Namespace, strategy: str, out: Path) -> dict[str, Any]:
    sixteen = args.dtype != "float32"
    overrides = [
        f"model.path={args.model_path}", f"model.dtype={args.dtype}", f"model.finetune={args.finetune}",
        f"trainer.precision={'bf16-mixed' if args.dtype == 'bfloat16' else '16-mixed' if sixteen else '32-true'}",
        f"model.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
        f"env.num_envs={args.envs}", f"rollout.steps_per_update={args.envs * 2}",
        f"ppo.minibatch_size={args.envs * 2}", "ppo.micro_batch_size=1", "ppo.epochs=1",
        f"rollout.max_new_tokens={args.max_new_tokens}", "trainer.max_updates=1", "trainer.eval_every=0",
        "trainer.image_log_every=0", f"trainer.devices={args.devices}", f"trainer.accelerator={args.device}",
        f"trainer.strategy={strategy}", f"seed={args.seed}", f"trainer.out_dir={out}", *args.override]
    cmd = [sys.executable, "-m", "agentrl.cli", "fit", "-c", args.config, *overrides]
    env = {"OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    row: dict[str, Any] = {"strategy": strategy, "rc": proc.returncode, "wall_s": time.perf_counter() - t0}
    if proc.returncode != 0:
        row["log_tail"] = proc.stderr[-1500:]
        return row
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    for phase in ("rollout", "update"):
        row[f"{phase}_gb"] = events.Scalars(f"perf/peak_mem_{phase}_gb")[-1].value
    return row


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_memory.") as tmp:
        for strategy in args.strategies:
            rows.append(run_fit(args, strategy, Path(tmp) / strategy))
            print(f"{strategy}: rc {rows[-1]['rc']} in {rows[-1]['wall_s']:.0f} s", file=sys.stderr)
    base = rows[0].get("update_gb")
    for r in rows:
        r["update_vs_first"] = r["update_gb"] / base if base and "update_gb" in r else float("nan")
    return rows


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    from rich.table import Table

    what = "allocated (torch)" if args.device == "cuda" else "resident set"
    table = Table(title=f"peak memory per rank, GiB, {what}: {args.model_path} ({args.dtype}, {args.finetune}, "
                        f"{args.devices} x {args.device}, gradient checkpointing {args.gradient_checkpointing})")
    for c in ("strategy", "rollout", "update", f"update / {rows[0]['strategy']}", "wall s"):
        table.add_column(c, justify="left" if c == "strategy" else "right")
    for r in rows:
        if r["rc"] != 0:
            table.add_row(r["strategy"], f"failed (rc {r['rc']}{': killed, out of memory?' if r['rc'] == -9 else ''})",
                          "-", "-", f"{r['wall_s']:.0f}")
            continue
        table.add_row(r["strategy"], f"{r['rollout_gb']:.2f}", f"{r['update_gb']:.2f}",
                      f"{r['update_vs_first']:.2f}x", f"{r['wall_s']:.0f}")
    benchlib.print_rich(table)
    for r in rows:
        if r["rc"] != 0:
            print(f"--- {r['strategy']} log tail ---\n{r['log_tail']}", file=sys.stderr)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = benchlib.parser(__doc__)
    p.set_defaults(max_new_tokens=8)
    p.add_argument("--strategies", nargs="+", default=["ddp", "fsdp"])
    p.add_argument("--devices", type=int, default=2, help="processes (ranks)")
    p.add_argument("--envs", type=int, default=1, help="env.num_envs per rank")
    p.add_argument("--finetune", choices=("lora", "full"), default="lora")
    p.add_argument("--gradient-checkpointing", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    return benchlib.main(parse_args(argv), run, print_table)


if __name__ == "__main__":
    main()
