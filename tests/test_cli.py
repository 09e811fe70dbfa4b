"""The front door: what the commands write and print for a researcher (curves, help, log files, prompts, make)."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["env.num_envs=3", "rollout.steps_per_update=9", "ppo.minibatch_size=9", "ppo.micro_batch_size=3",
         "rollout.max_new_tokens=8", "trainer.num_threads=1"]


def _cli(*args, cwd=ROOT):
    """``agentrl ARGS`` with stdout and stderr to pipes, as in a log file."""
    return subprocess.run([sys.executable, "-m", "agentrl.cli", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


def _line_with(text: str, needle: str) -> str:
    lines = [line for line in text.splitlines() if needle in line]
    assert len(lines) == 1, f"{needle!r} on {len(lines)} lines of:\n{text[-3000:]}"
    return lines[0]


# ---------------------------------------------------------------- sft: curves, and lines a log keeps whole


def test_sft_writes_loss_accuracy_and_lr_per_step_and_its_log_lines_whole(tmp_path, tiny_path):
    out = tmp_path / ("a-run-dir-with-a-name-long-enough-to-pass-80-columns-" + "x" * 40)
    proc = _cli("sft", "-c", str(ROOT / "conf/sft/numberline.yaml"), *SMALL, "sft.examples=12", "sft.epochs=2",
                "sft.perception_epochs=1", "sft.batch_size=6", f"trainer.out_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = out / "checkpoints" / "sft"
    line = _line_with(proc.stderr, "start PPO with policy.init_from=")  # one line, not folded at 80 columns
    assert f"checkpoint {ckpt} (start PPO with policy.init_from={ckpt})" in line
    assert f"tensorboard --logdir {out / 'tensorboard'}" in line

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"sft/loss", "sft/token_accuracy", "sft/lr", "sft/vision_lr"} <= tags
    steps = 3 * 2  # (1 perception + 2 epochs) x 2 batches of 6
    series = {t: {e.step: e.value for e in events.Scalars(t)} for t in tags}
    for tag in ("sft/loss", "sft/token_accuracy", "sft/lr", "sft/vision_lr"):
        assert sorted(series[tag]) == list(range(1, steps + 1)), tag
    assert all(0 <= a <= 1 for a in series["sft/token_accuracy"].values())
    assert all(math.isfinite(v) and v > 0 for v in series["sft/loss"].values())
    # the lr of each step taken: the configured one first, then the cosine towards a tenth
    lr, vision_lr = series["sft/lr"], series["sft/vision_lr"]
    assert lr[1] == pytest.approx(1e-3) and vision_lr[1] == pytest.approx(1e-4)
    for i in range(1, steps + 1):
        cos = 0.1 + 0.45 * (1 + math.cos(math.pi * (i - 1) / steps))
        assert lr[i] == pytest.approx(1e-3 * cos, rel=1e-5) and vision_lr[i] == pytest.approx(1e-4 * cos, rel=1e-5)
    # the logged values are those trained on: the last epoch's two steps average to the run's metrics
    import json

    metrics = json.loads((ckpt / "sft_metrics.json").read_text())
    for key in ("loss", "token_accuracy"):
        last = [series[f"sft/{key}"][i] for i in (steps - 1, steps)]
        assert sum(last) / 2 == pytest.approx(metrics[key], rel=1e-5), key


def test_fit_progress_and_summary_reach_a_log_file_whole(tmp_path, tiny_path):
    out = tmp_path / ("a-run-dir-with-a-name-long-enough-to-pass-80-columns-" + "x" * 40)
    proc = _cli("fit", "-c", str(ROOT / "conf/numberline.yaml"), *SMALL, "trainer.max_updates=1",
                "trainer.checkpoint_every=1", f"trainer.out_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = _line_with(proc.stderr, "update 1: success")
    assert all(part in line for part in ("parse-fail", "policy", "value", "kl", "steps/s"))
    assert f"tensorboard --logdir {out / 'tensorboard'}" in _line_with(proc.stderr, "TensorBoard")
    assert str(out / "checkpoints" / "update_000001") in _line_with(proc.stderr, "checkpoint")
    assert not any(line.endswith(" ") for line in proc.stderr.splitlines())  # no padding to the wide width


# ---------------------------------------------------------------- make test keeps its caches in the checkout


def _fake_venv(tmp_path: Path) -> Path:
    """A VENV whose python prints AGENTRL_CACHE instead of running pytest, already 'installed'."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text('#!/bin/sh\necho "AGENTRL_CACHE=$AGENTRL_CACHE"\n')
    python.chmod(0o755)
    (venv / ".installed-dev").touch()  # newer than pyproject.toml: make installs nothing
    return venv


@pytest.mark.parametrize("target", ["test", "test-fast"])
def test_make_test_keeps_its_caches_in_the_checkout_as_ci_does(tmp_path, target):
    venv = _fake_venv(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("AGENTRL_CACHE", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")}

    def make(**extra):
        proc = subprocess.run(["make", "-s", "-C", str(ROOT), target, f"VENV={venv}", "EXTRAS=dev"],
                              env={**env, **extra}, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert make() == f"AGENTRL_CACHE={ROOT}/.cache/agentrl"  # what .ci/run sets
    assert "AGENTRL_CACHE=\"$PWD/.cache/agentrl\"" in (ROOT / ".ci/run").read_text()
    assert make(AGENTRL_CACHE=str(tmp_path / "mine")) == f"AGENTRL_CACHE={tmp_path / 'mine'}"  # a set one wins
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", ".cache/agentrl/x"])
    assert ignored.returncode == 0  # .gitignore covers it


# ---------------------------------------------------------------- --help shows a config's values


def _help(capsys, *argv):
    from agentrl.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(argv))
    assert e.value.code == 0
    return capsys.readouterr().out


def _key_line(text: str, key: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith(f"  {key} ")]
    assert len(lines) == 1, key
    return lines[0]


@pytest.mark.parametrize("command", ["fit", "sft", "eval", "sweep"])
def test_help_with_a_config_shows_its_values_next_to_the_defaults(tmp_path, capsys, command):
    from agentrl.config import describe_keys

    default = {key: d for key, d, _ in describe_keys()}
    conf = tmp_path / "x.yaml"
    conf.write_text(f"base: {ROOT / 'conf/numberline.yaml'}\nppo:\n  clip: 0.25\nrollout:\n  temperature: 0.7\n")

    text = _help(capsys, command, "-c", str(conf), "--help")
    assert _key_line(text, "ppo.clip").endswith(f"[default: {default['ppo.clip']}; {conf}: 0.25]")
    assert _key_line(text, "rollout.temperature").endswith(f"[default: {default['rollout.temperature']}; {conf}: 0.7]")
    assert _key_line(text, "env.num_envs").endswith(f"[default: {default['env.num_envs']}; {conf}: 8]")  # its base's
    assert _key_line(text, "ppo.gae_lambda").endswith(f"[default: {default['ppo.gae_lambda']}]")  # unchanged
    assert _key_line(text, "trainer.out_dir").endswith("[default: runs/${env.name}]")  # resolves alike

    text = _help(capsys, command, "ppo.clip=0.3", "-c", str(conf), "-h", "seed=5")  # overrides count too
    assert _key_line(text, "ppo.clip").endswith(f"[default: {default['ppo.clip']}; {conf} + overrides: 0.3]")
    assert _key_line(text, "seed").endswith(f"[default: {default['seed']}; {conf} + overrides: 5]")

    text = _help(capsys, command, "--help")  # without -c: the code's defaults only
    assert _key_line(text, "ppo.clip").endswith(f"[default: {default['ppo.clip']}]")


def test_help_with_a_broken_config_names_the_key(tmp_path, capsys):
    from agentrl.cli import main

    conf = tmp_path / "x.yaml"
    conf.write_text("ppo:\n  clpi: 0.25\n")
    assert main(["fit", "-c", str(conf), "--help"]) == 2
    assert f"{conf}: unknown key 'ppo.clpi' (did you mean 'ppo.clip'?)" in capsys.readouterr().err


# ---------------------------------------------------------------- --show-prompt


def _first_prompts(cfg, split):
    """(chat-templated text, the policy's own encoding) of each env's first observation, as a run builds them."""
    from agentrl.config.registry import Components

    parts = Components.resolve(cfg)
    policy, template, envs = parts.make_policy(cfg), parts.make_template(cfg), parts.make_env(cfg, split)
    try:
        observations = envs.reset(cfg.seed)
    finally:
        envs.close()
    out = []
    for obs in observations:
        messages = template.messages(obs, ())
        text = policy.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        out.append((text, policy.encode(messages, obs.image), policy.model.config.image_token_id))
    return out


@pytest.mark.parametrize("command,split", [("fit", "train"), ("eval", "eval")])
def test_show_prompt_prints_each_envs_first_prompt_and_trains_nothing(tmp_path, tiny_path, command, split):
    from agentrl.config import load_config

    overrides = ["env.num_envs=2", "model.image_size=64", f"trainer.out_dir={tmp_path / 'run'}"]
    proc = _cli(command, "-c", str(ROOT / "conf/numberline.yaml"), *overrides, "--show-prompt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    blocks = proc.stdout.split("===== env ")[1:]
    assert len(blocks) == 2
    for i, (block, (text, encoded, image_id)) in enumerate(zip(blocks, _first_prompts(load_config(
            ROOT / "conf/numberline.yaml", overrides), split))):
        head, body = block.split(" =====\n", 1)
        assert head == f"{i} of 2 (numberline, {split} split, reset with seed 0): {encoded['input_ids'].shape[-1]} tokens"
        assert body.startswith(text)  # the exact text, image marker included
        assert "<image>" in text and "You are playing Number Line" in text and text.endswith("assistant\n")
        n_image = int((encoded["input_ids"] == image_id).sum())
        pixels = "x".join(map(str, encoded["pixel_values"].shape))
        assert (f"----- image: <image> on line 2 becomes {n_image} image tokens; the env's 224x224 RGB picture goes "
                f"to the processor resized to 64x64 (model.image_size): pixel_values {pixels}") in body
        assert n_image > 0


def test_show_prompt_of_a_text_only_alfworld_env(tmp_path, tiny_path):
    proc = _cli("fit", "-c", str(ROOT / "conf/alfworld.yaml"), "env.num_envs=1", "env.vector=sync", "env.image=none",
                "--show-prompt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("===== env 0 of 1 (alfworld, train split, reset with seed 0): ")
    assert "Task: " in proc.stdout and "Admissible actions: " in proc.stdout and "<image>" not in proc.stdout
    assert proc.stdout.rstrip().endswith("----- no image: text only")
