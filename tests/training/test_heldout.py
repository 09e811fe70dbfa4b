"""Held-out evaluation during fit (trainer.eval_every): logged, the best checkpoint kept, training unchanged."""

import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agentrl.commands.fit import fit
from agentrl.config import load_config
from agentrl.training import checkpoint

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["env.num_envs=2", "rollout.steps_per_update=4", "ppo.minibatch_size=4", "ppo.micro_batch_size=2",
         "rollout.max_new_tokens=8", "ppo.epochs=1", "trainer.image_log_every=0", "trainer.num_threads=1"]


def scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_eval_every_logs_held_out_success_and_keeps_the_best(tmp_path, tiny_path):
    out = tmp_path / "run"
    cfg = load_config(ROOT / "conf/numberline.yaml", [*SMALL, "trainer.max_updates=2", "trainer.eval_every=1",
                                                       "trainer.eval_episodes=6", "trainer.checkpoint_every=0",
                                                       f"trainer.out_dir={out}"])
    result = fit(cfg, argv=["test"])
    s = scalars(out)
    update_at = dict(s["charts/update"])  # the axis is env steps; 0 before the first update
    assert [update_at[step] for step, _ in s["eval/success_rate"]] == [0, 1, 2]  # before the first update, then each
    for tag in ("eval/return", "eval/parse_failure_rate", "eval/episode_length"):
        assert len(s[tag]) == 3
    assert all(0 <= v <= 1 for _, v in s["eval/success_rate"])
    best = checkpoint.best_checkpoint(out / "checkpoints")
    assert best is not None and best.name == "update_000001"  # the first eval after training sets the best
    assert "eval/success_rate" in result.metrics
    state = checkpoint.load_trainer_state(out / "checkpoints" / "update_000002")
    assert state["best_eval"] == pytest.approx(max(v for step, v in s["eval/success_rate"] if update_at[step] > 0))


def test_held_out_evaluation_does_not_change_training(tmp_path, tiny_path):
    runs = {}
    for every in (0, 1):
        out = tmp_path / f"every{every}"
        cfg = load_config(ROOT / "conf/numberline.yaml", [
            *SMALL, "trainer.max_updates=2", f"trainer.eval_every={every}", "trainer.eval_episodes=4",
            "trainer.eval_greedy=false", "trainer.checkpoint_every=0", f"trainer.out_dir={out}"])
        runs[every] = fit(cfg, argv=["test"])
    a, b = (dict(r.policy.named_parameters()) for r in (runs[0], runs[1]))
    assert all(torch.equal(a[n], b[n]) for n in a)  # sampled evals too: the torch RNG is restored
    assert runs[0].metrics["losses/policy"] == runs[1].metrics["losses/policy"]


def test_prune_never_deletes_the_best_checkpoint(tmp_path):
    ckpts = tmp_path / "checkpoints"
    for u in (1, 2, 3, 4):
        d = ckpts / f"update_{u:06d}"
        d.mkdir(parents=True)
        (d / "trainer_state.pt").write_bytes(b"x")
    (ckpts / "latest").write_text("update_000004")
    checkpoint.mark_best(ckpts / "update_000001")
    checkpoint.prune(ckpts, keep=1)
    assert sorted(p.name for p in ckpts.glob("update_*")) == ["update_000001", "update_000004"]
    checkpoint.mark_best(ckpts / "update_000004")  # replaced atomically
    assert checkpoint.best_checkpoint(ckpts) == (ckpts / "update_000004").resolve()


def test_held_out_reports_success_per_task_type(monkeypatch):
    from agentrl.training import heldout
    records = [{"return": 1, "length": 2, "success": True, "task_type": "pick", "parse_failures": 0},
               {"return": 0, "length": 4, "success": False, "task_type": "pick", "parse_failures": 1},
               {"return": 1, "length": 3, "success": True, "task_type": "cool", "parse_failures": 0}]
    monkeypatch.setattr(heldout, "run_episodes", lambda *a, **k: records)

    class Fabric:
        world_size, global_rank, device = 1, 0, torch.device("cpu")

        def autocast(self):
            import contextlib
            return contextlib.nullcontext()

    class Parts:
        def make_env(self, cfg, split):
            assert split == "eval"
            return None

    cfg = load_config(ROOT / "conf/numberline.yaml", ["trainer.eval_every=1", "trainer.eval_episodes=3"])
    h = heldout.HeldOut(cfg, Parts(), Fabric(), None, None)

    class Policy:
        def eval(self):
            return self

    m = h(Policy())
    assert m["eval/success_rate"] == pytest.approx(2 / 3) and m["eval/success_rate/pick"] == 0.5
    assert m["eval/success_rate/cool"] == 1.0 and m["eval/parse_failure_rate"] == pytest.approx(1 / 9)
    assert math.isclose(m["eval/episode_length"], 3.0)


def test_logged_samples_show_the_prompt_as_the_model_got_it(tmp_path, tiny_path):
    out = tmp_path / "run"
    cfg = load_config(ROOT / "conf/numberline.yaml", [*SMALL, "trainer.max_updates=1", "trainer.image_log_every=1",
                                                       f"trainer.out_dir={out}"])
    fit(cfg, argv=["test"])
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    text = acc.Tensors("samples/0/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "answer:" in text and "You are playing Number Line" in text and '"action": "<one legal action>"' in text
    assert "<|im_start|>assistant" in text  # the chat template as applied
    assert "<image> x16" in text  # the tiny model's 16 image tokens, written once with their count


def test_resume_repoints_best_when_a_kill_came_before_the_link(tmp_path, tiny_path):
    out = tmp_path / "run"
    common = [*SMALL, "trainer.eval_every=1", "trainer.eval_episodes=4", "trainer.checkpoint_every=1",
              f"trainer.out_dir={out}"]
    fit(load_config(ROOT / "conf/numberline.yaml", [*common, "trainer.max_updates=1"]))
    ckpts = out / "checkpoints"
    assert checkpoint.best_checkpoint(ckpts).name == "update_000001"
    (ckpts / "best").unlink()  # as if killed after the checkpoint, before its link
    fit(load_config(ROOT / "conf/numberline.yaml", [*common, "trainer.max_updates=2", "trainer.resume=auto"]))
    best = checkpoint.best_checkpoint(ckpts)
    assert best is not None and best.name == checkpoint.load_trainer_state(ckpts / "update_000002")["best_name"]
