"""Benchmark ALFWorld envs: batched step time and resident memory per worker process.

    python tools/bench_alfworld.py --num-envs 8 --vector async --steps 100

Actions are random admissible commands (seeded), as an untrained policy would
send. Uses the default offline games unless --data is given.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

from agentrl.config import EnvConfig
from agentrl.envs.alfworld import AlfworldModule


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--vector", choices=("sync", "async"), default="async")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--image", choices=("none", "scene"), default="scene")
    parser.add_argument("--data", default=None, help="game folder (default: the generated offline set)")
    args = parser.parse_args()

    cfg = EnvConfig(name="alfworld", num_envs=args.num_envs, vector=args.vector, image=args.image, data_path=args.data)
    t0 = time.perf_counter()
    module = AlfworldModule(cfg)
    t1 = time.perf_counter()
    obs = module.reset(seed=0)
    t2 = time.perf_counter()
    rng = random.Random(0)
    pids = [p.pid for p in module._workers.procs] if module._workers is not None else [os.getpid()]
    cpu0 = sum(cpu_s(p) for p in pids)
    times, episodes = [], 0
    for _ in range(args.steps):
        actions = [rng.choice(o.legal_actions) for o in obs]
        start = time.perf_counter()
        out = module.step(actions)
        times.append(time.perf_counter() - start)
        obs = out.obs
        episodes += sum(e is not None for e in out.episodes)
    cpu = sum(cpu_s(p) for p in pids) - cpu0
    start = time.perf_counter()
    module.expert_fields()
    t_expert = time.perf_counter() - start
    print(f"{args.num_envs} envs, vector={args.vector}, image={args.image}, {len(module.settings.gamefiles)} games")
    print(f"start {t1 - t0:.2f} s, reset {t2 - t1:.2f} s, expert_fields {t_expert * 1e3:.0f} ms")
    ms = sorted(t * 1e3 for t in times)
    print(
        f"step (batch of {args.num_envs}): mean {statistics.mean(ms):.0f} ms, median {statistics.median(ms):.0f} ms, "
        f"p95 {ms[int(0.95 * (len(ms) - 1))]:.0f} ms, max {ms[-1]:.0f} ms; {episodes} episodes ended"
    )
    print(f"CPU per env step (load-independent): {cpu / (args.steps * args.num_envs) * 1e3:.0f} ms, load avg {os.getloadavg()[0]:.1f}")
    if module._workers is not None:
        mem = [rss_mb(p.pid) for p in module._workers.procs]
        print(f"worker RSS: mean {statistics.mean(mem):.0f} MB, max {max(mem):.0f} MB (each of {len(mem)})")
    print(f"main process RSS: {rss_mb(os.getpid()):.0f} MB")
    module.close()


if __name__ == "__main__":
    main()
