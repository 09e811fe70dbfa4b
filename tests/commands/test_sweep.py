"""`agentrl sweep`: grid expansion and naming, up-front validation, aggregation math, and one real sweep."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from agentrl.cli import main
from agentrl.commands.sweep import (
    curves,
    expand,
    parse_grid,
    parse_seeds,
    read_events,
    split_values,
    summarise,
)
from agentrl.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TINY = ["env.num_envs=2", "rollout.steps_per_update=4", "ppo.minibatch_size=4", "ppo.micro_batch_size=2",
        "rollout.max_new_tokens=8", "trainer.max_updates=2", "ppo.epochs=1", "trainer.image_log_every=0"]


def test_grid_expands_to_the_product_times_seeds_with_readable_names():
    grid = parse_grid(["prompt.cot=true,false", "policy.thought_coef=0.1,0.5,0.9"])
    runs = expand(grid, parse_seeds("1,2,3"))
    assert len(runs) == 2 * 3 * 3
    assert runs[0].name == "cot=true,thought_coef=0.1/seed=1"
    assert runs[-1].name == "cot=false,thought_coef=0.9/seed=3"
    assert len({r.name for r in runs}) == len(runs)
    assert runs[4].overrides == ["prompt.cot=true", "policy.thought_coef=0.5", "seed=2"]
    assert [r.name for r in expand({}, [0])] == ["default/seed=0"]


def test_names_use_the_full_key_when_last_parts_clash_and_stay_path_safe():
    grid = parse_grid(["ppo.lr=1e-4", "policy.value_hidden=[256],[128,64]", "trainer.lr=x/y"])
    assert [r.name for r in expand(grid, [0])] == ["ppo.lr=1e-4,value_hidden=256,trainer.lr=x_y/seed=0",
                                                   "ppo.lr=1e-4,value_hidden=128-64,trainer.lr=x_y/seed=0"]


def test_commas_inside_lists_and_quotes_do_not_split():
    assert split_values("k", "[256],[128,64]") == ["[256]", "[128,64]"]
    assert split_values("k", "'q_proj,v_proj',all-linear") == ["'q_proj,v_proj'", "all-linear"]
    for bad, says in [("[1,2", "unbalanced"), ("1,,2", "empty value"), ("1,1", "repeated")]:
        with pytest.raises(ConfigError, match=says):
            split_values("k", bad)


@pytest.mark.parametrize("grid, overrides, says", [
    (["prompt.cot"], [], "not key=v1,v2"),
    (["seed=1,2"], [], "use --seeds"),
    (["ppo.lr=1", "ppo.lr=2"], [], "given twice"),
    (["ppo.lr=1,2"], ["ppo.lr=3"], "both a fixed override and a --grid key"),
    ([], ["trainer.out_dir=x"], "use --out"),
])
def test_grid_mistakes_are_named(grid, overrides, says):
    with pytest.raises(ConfigError, match=says):
        parse_grid(grid, overrides)


def test_seeds_must_be_distinct_integers():
    with pytest.raises(ConfigError, match="comma list of integers"):
        parse_seeds("1,two")
    with pytest.raises(ConfigError, match="repeated"):
        parse_seeds("1,1")


def test_an_invalid_grid_value_exits_2_naming_the_key_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", "-c", str(ROOT / "conf/numberline.yaml"), "--grid", "policy.thought_coef=0.5,1.5",
                 "--seeds", "1,2", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "policy.thought_coef" in err and "1.5" in err and "thought_coef=1.5/seed=1" in err
    assert not out.exists()  # the valid 0.5 runs did not start either
    assert main(["sweep", "--grid", "ppo.clpi=0.1,0.2", "--out", str(out)]) == 2
    assert "ppo.clip" in capsys.readouterr().err  # unknown key, with the suggestion


def _write_run(tb_dir: Path, points: list[tuple[int, float, float]]) -> None:
    """Synthetic fit events: (update, env_steps, success_rate or NaN when not logged)."""
    w = SummaryWriter(str(tb_dir))
    for step, env_steps, success in points:
        w.add_scalar("charts/env_steps", env_steps, step)
        w.add_scalar("parse/failure_rate", 0.5, step)
        if not math.isnan(success):
            w.add_scalar("charts/success_rate", success, step)
    w.close()


def test_aggregation_over_seeds_is_hand_checked(tmp_path):
    nan = math.nan
    runs = {("a", 1): [(1, 8, nan), (2, 16, 0.2)], ("a", 2): [(1, 8, 0.5), (2, 16, 0.6)],
            ("a", 3): [(1, 8, 0.1), (2, 16, 0.4)], ("b", 1): [(1, 8, 0.9), (2, 16, nan)]}
    rows = []
    for (combo, seed), points in runs.items():
        _write_run(tmp_path / f"{combo}{seed}", points)
        events = read_events(tmp_path / f"{combo}{seed}")
        rows += [{"combination": combo, "k": combo, "seed": seed, **r} for r in events]
    assert len(rows) == 8 and math.isnan(rows[0]["success_rate"]) and math.isnan(rows[0]["episode_return"])
    a, b = summarise(rows, ["k"])
    # a: finals 0.2, 0.6, 0.4 -> mean 0.4, sample std sqrt(((-.2)^2 + .2^2 + 0) / 2) = 0.2
    assert (a["k"], a["seeds"]) == ("a", 3)
    assert a["success_mean"] == pytest.approx(0.4) and a["success_std"] == pytest.approx(0.2)
    assert (a["success_min"], a["success_max"]) == pytest.approx((0.2, 0.6))
    assert a["env_steps"] == 16 and a["parse_failure_rate_mean"] == 0.5 and math.isnan(a["episode_return_mean"])
    # b: one seed, its last logged success (update 1) is final; no spread from one seed
    assert b["success_mean"] == pytest.approx(0.9) and math.isnan(b["success_std"])
    c = curves(rows)
    # a, update 1: seeds 2 and 3 only (seed 1 logged no success yet)
    assert c["a"][0] == pytest.approx((8, 0.3, 0.1, 0.5))
    assert c["a"][1] == pytest.approx((16, 0.4, 0.2, 0.6))
    assert len(c["b"]) == 1 and c["b"][0] == pytest.approx((8, 0.9, 0.9, 0.9))


def test_real_sweep_end_to_end_then_skips_finished_runs(tmp_path, tiny_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "-c", str(ROOT / "conf/numberline.yaml"), "--grid", "prompt.cot=true,false", "--seeds", "1,2",
            "--parallel", "2", "--out", str(out), *TINY]
    proc = subprocess.run([sys.executable, "-m", "agentrl.cli", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for combo in ("cot=true", "cot=false"):
        for seed in (1, 2):
            run = out / combo / f"seed={seed}"
            assert (run / "checkpoints" / "update_000002" / "trainer_state.pt").is_file(), run
            assert "trainer.num_threads=1" in (run / "command.txt").read_text()
            assert "update 2:" in (run / "fit.log").read_text()
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 2  # combinations x seeds x updates
    assert list(rows[0])[:4] == ["combination", "prompt.cot", "seed", "update"]
    assert {(r["prompt.cot"], r["seed"], r["update"], r["env_steps"]) for r in rows} == {
        (c, s, u, str(4.0 * int(u))) for c in ("true", "false") for s in ("1", "2") for u in ("1", "2")}
    with (out / "summary.csv").open() as f:
        summary = list(csv.DictReader(f))
    assert [(s["combination"], s["seeds"]) for s in summary] == [("cot=true", "2"), ("cot=false", "2")]
    assert (out / "success.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "final success rate" in proc.stderr

    (out / "results.csv").unlink()
    assert main(args) == 0  # in-process: nothing left to run, the results are rebuilt from the events
    assert "skipping 4 finished run(s)" in capsys.readouterr().err
    assert (out / "results.csv").read_text().count("\n") == 1 + len(rows)


def test_sweep_overrides_that_need_the_grid_values_are_checked_with_them(monkeypatch, tmp_path):
    """rollout.group_size=4 is only valid with a group estimator: the sweep checks each combination, not
    the overrides alone (before, the CLI refused the whole sweep)."""
    import agentrl.commands.sweep as sweep_mod

    seen = []
    monkeypatch.setattr(sweep_mod, "execute", lambda jobs, parallel, force, console: seen.extend(jobs) or [])
    monkeypatch.setattr(sweep_mod, "summarise", lambda rows, keys: [])
    code = main(["sweep", "-c", str(Path(__file__).resolve().parents[2] / "conf/numberline.yaml"),
                 "--grid", "advantage.estimator=grpo,gigpo", "--seeds", "1", "--out", str(tmp_path),
                 "rollout.group_size=4"])
    assert len(seen) == 2 and code in (0, 1)
    seen.clear()  # a combination that is wrong still stops the sweep before anything runs, exit 2
    assert main(["sweep", "-c", str(Path(__file__).resolve().parents[2] / "conf/numberline.yaml"),
                 "--grid", "advantage.estimator=gae,grpo", "--seeds", "1", "--out", str(tmp_path / "b"),
                 "rollout.group_size=4"]) == 2
    assert not seen
