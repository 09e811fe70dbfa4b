"""agentrl eval: exact episode counts, held-out seeds, the JSON it writes, and clear config errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agentrl.config import load_config
from agentrl.data.episodes import run_episodes, summarize
from agentrl.envs.base import EnvObs, EnvStep, EpisodeStats
from agentrl.envs.gym_cards.module import env_seed
from agentrl.policy.decoding import Generation
from agentrl.prompting.parsing import JsonActionParser
from agentrl.prompting.templates import GymCardsTemplate

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["env.num_envs=3", "rollout.steps_per_update=9", "ppo.minibatch_size=9", "ppo.micro_batch_size=3",
         "rollout.max_new_tokens=16", "trainer.num_threads=1"]
KEYS = {"env", "split", "checkpoint", "greedy", "seed", "episodes", "success_rate", "mean_return", "mean_length",
        "parse_failure_rate", "steps", "seconds", "by_task_type", "per_episode"}


class FakeEnvs:
    """Env i's episodes last i + 1 steps; the k-th episode overall is a success when k is even."""

    num_envs = 3

    def reset(self, seed):
        self.t = [0] * self.num_envs
        self.started = list(range(self.num_envs))
        self.next = self.num_envs
        return [self._obs() for _ in range(self.num_envs)]

    def _obs(self):
        return EnvObs(image=None, text="", legal_actions=["-", "+"], env_id="numberline")

    def step(self, actions):
        episodes = [None] * self.num_envs
        for i in range(self.num_envs):
            self.t[i] += 1
            if self.t[i] == i + 1:
                k = self.started[i]
                episodes[i] = EpisodeStats(ret=1.0 if k % 2 == 0 else -1.0, length=self.t[i], success=k % 2 == 0,
                                           task_type="pick" if i == 0 else "heat")
                self.t[i], self.started[i], self.next = 0, self.next, self.next + 1
        n = self.num_envs
        return EnvStep(obs=[self._obs() for _ in range(n)], reward=np.zeros(n, np.float32),
                       terminated=np.array([e is not None for e in episodes]), truncated=np.zeros(n, bool),
                       final_obs=[None] * n, episodes=episodes)


class FakePolicy:
    """Answers "+" in valid JSON, except every third call's first answer is garbage."""

    calls = 0

    def encode(self, messages, image):
        return {}

    def generate(self, prompts, greedy=False):
        self.calls += 1
        texts = ['{"action": "+"}'] * len(prompts)
        if self.calls % 3 == 0:
            texts[0] = "no idea"
        return Generation(ids=[], texts=texts)


@pytest.mark.parametrize("episodes", [1, 5, 8])
def test_run_episodes_counts_exactly_the_first_started(episodes):
    records = run_episodes(FakePolicy(), FakeEnvs(), GymCardsTemplate(cot=False), JsonActionParser(), episodes,
                           seed=0, greedy=True)
    assert len(records) == episodes
    # episode k (in start order) succeeded iff k is even, whichever env played it and however long it was
    assert [r["success"] for r in records] == [k % 2 == 0 for k in range(episodes)]
    summary = summarize(records)
    assert summary["episodes"] == episodes and summary["steps"] == sum(r["length"] for r in records)
    fails = sum(r["parse_failures"] for r in records)
    assert summary["parse_failure_rate"] == pytest.approx(fails / summary["steps"])
    if episodes == 8:
        assert fails > 0 and {r["task_type"] for r in records} == {"pick", "heat"}


def test_eval_seeds_are_disjoint_from_training_seeds():
    train = {env_seed(s, "train", i) for s in range(50) for i in range(16)}
    held_out = {env_seed(s, "eval", i) for s in range(50) for i in range(16)}
    assert len(train) == len(held_out) == 800 and not train & held_out


@pytest.fixture(scope="module")
def sft_checkpoint(tmp_path_factory, tiny_path):
    from agentrl.commands.sft import sft

    out = tmp_path_factory.mktemp("sft")
    cfg = load_config(ROOT / "conf/sft/numberline.yaml", [*SMALL, "sft.examples=12", "sft.epochs=1",
                                                           "sft.batch_size=6", f"trainer.out_dir={out}"])
    return sft(cfg, argv=["test"])


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "agentrl.cli", *args], capture_output=True, text=True, timeout=600)


def test_cli_eval_writes_the_documented_json(sft_checkpoint, tmp_path):
    out = tmp_path / "e.json"
    proc = _cli("eval", "-c", str(ROOT / "conf/numberline.yaml"), *SMALL, "--checkpoint", str(sft_checkpoint),
                "--episodes", "7", "--greedy", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out" in proc.stderr
    result = json.loads(out.read_text())
    assert set(result) == KEYS
    assert result["episodes"] == len(result["per_episode"]) == 7
    assert result["steps"] == sum(r["length"] for r in result["per_episode"])
    assert result["split"] == "eval" and result["greedy"] is True and result["env"] == "numberline"
    assert 0 <= result["success_rate"] <= 1 and 0 <= result["parse_failure_rate"] <= 1
    assert result["by_task_type"] == {}  # NumberLine has no task types


def test_eval_results_are_named_by_split_and_mode_and_never_replaced(sft_checkpoint, tmp_path, capsys):
    from agentrl.commands.evaluate import evaluate

    ckpt = tmp_path / ("a-checkpoint-dir-whose-path-is-longer-than-80-columns-" + "x" * 30)
    shutil.copytree(sft_checkpoint, ckpt)
    cfg = load_config(ROOT / "conf/numberline.yaml", [*SMALL, "env.num_envs=1"])

    def episodes(name):
        return json.loads((ckpt / name).read_text())["episodes"]

    assert evaluate(cfg, str(ckpt), 2, greedy=False)["path"] == str(ckpt / "eval-eval-sampled.json")
    assert evaluate(cfg, str(ckpt), 1, greedy=True)["path"] == str(ckpt / "eval-eval-greedy.json")
    assert evaluate(cfg, str(ckpt), 3, greedy=True)["path"] == str(ckpt / "eval-eval-greedy-2.json")
    assert (episodes("eval-eval-sampled.json"), episodes("eval-eval-greedy.json"),
            episodes("eval-eval-greedy-2.json")) == (2, 1, 3)  # the earlier results are kept
    assert not (ckpt / "eval.json").exists()
    capsys.readouterr()

    # --out names the file: it is replaced, and the message says so
    out = tmp_path / "mine.json"
    evaluate(cfg, str(ckpt), 1, greedy=True, out=str(out))
    assert capsys.readouterr().err.rstrip().endswith(f"wrote {out}")
    evaluate(cfg, str(ckpt), 2, greedy=True, out=str(out))
    assert f"wrote {out} (replacing the file that was there)" in capsys.readouterr().err
    assert json.loads(out.read_text())["episodes"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ckpt.name, out.name])  # no temp files left

    # the CLI, its output to a pipe (a log file): the path written is printed whole on one line
    proc = _cli("eval", "-c", str(ROOT / "conf/numberline.yaml"), *SMALL, "--checkpoint", str(ckpt),
                "--episodes", "1", "--greedy")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {ckpt / 'eval-eval-greedy-3.json'}\n" in proc.stderr
    assert episodes("eval-eval-greedy-3.json") == 1 and episodes("eval-eval-greedy.json") == 1


def test_cli_eval_other_config_exits_2(sft_checkpoint):
    proc = _cli("eval", "-c", str(ROOT / "conf/numberline.yaml"), *SMALL, "model.finetune=lora",
                "--checkpoint", str(sft_checkpoint), "--episodes", "2")
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "does not fit this config" in err[0] and "model.finetune=full" in err[0]
    proc = _cli("eval", "-c", str(ROOT / "conf/numberline.yaml"), "--checkpoint", "/nonexistent", "--episodes", "2")
    assert proc.returncode == 2 and "--checkpoint='/nonexistent'" in proc.stderr


def _games(root: Path, *splits: str) -> Path:
    """A folder with one (unplayable) game per split: enough for the data path's layout."""
    for split in splits:
        trial = root / split / "pick_and_place_simple-Mug-None-CounterTop-1" / "trial_0"
        trial.mkdir(parents=True)
        (trial / "traj_data.json").write_text(json.dumps({"task_type": "pick_and_place_simple"}))
        (trial / "game.tw-pddl").write_text(json.dumps({"solvable": True}))
    return root


def test_alfworld_held_out_games_never_fall_back_to_training_games(tmp_path):
    from agentrl.config import ConfigError
    from agentrl.envs.alfworld.module import find_data

    train_only = _games(tmp_path / "train_only", "train")
    assert find_data(str(train_only), "train") == train_only / "train"
    with pytest.raises(ConfigError, match=r"env.data_path .*train_only.* has no eval split.*agentrl alfworld-gen"):
        find_data(str(train_only), "eval")
    flat = _games(tmp_path / "flat", "")  # games without splits: they train, but are not held out
    assert find_data(str(flat), "train") == flat
    with pytest.raises(ConfigError, match="has no eval split"):
        find_data(str(flat), "eval")
    eval_only = _games(tmp_path / "eval_only", "valid_unseen")  # the official name
    assert find_data(str(eval_only), "eval") == eval_only / "valid_unseen"
    assert find_data(str(eval_only / "valid_unseen"), "eval") == eval_only / "valid_unseen"  # the split itself
    with pytest.raises(ConfigError, match="has no train split"):  # training must not play the held-out games
        find_data(str(eval_only), "train")
    both = _games(tmp_path / "both", "train", "eval")
    assert (find_data(str(both), "train"), find_data(str(both), "eval")) == (both / "train", both / "eval")


def test_cli_eval_on_alfworld_data_without_an_eval_split_exits_2(tmp_path, tiny_path):
    data = _games(tmp_path / "games", "train")
    proc = _cli("eval", "-c", str(ROOT / "conf/alfworld.yaml"), f"env.data_path={data}", "env.num_envs=1",
                "env.vector=sync", "env.image=none", "trainer.num_threads=1", "--episodes", "1")
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()[-1]
    assert str(data) in err and "no eval split" in err and "agentrl alfworld-gen" in err


def test_alfworld_default_step_limit_lets_the_expert_win_every_default_game(monkeypatch):
    """Held-out (and training) games the expert needs more steps for than the episode has could never be won."""
    pytest.importorskip("alfworld")
    from agentrl.envs.alfworld import AlfworldModule
    from agentrl.envs.alfworld.engine import EXPERT_MAX_STEPS

    monkeypatch.delenv("ALFWORLD_DATA", raising=False)  # the default set (tests elsewhere make it too)
    cfg = load_config(ROOT / "conf/alfworld.yaml", ["env.num_envs=1", "env.vector=sync", "env.image=none"])
    for split in ("train", "eval"):
        module = AlfworldModule(cfg.env, split=split)
        module.close()
        walks = [len(json.loads(Path(g).read_text())["walkthrough"]) for g in module.settings.gamefiles]
        assert len(walks) == 24 and max(walks) <= module.settings.max_steps < EXPERT_MAX_STEPS, (split, sorted(walks))


def test_cli_eval_takes_the_model_settings_from_the_checkpoint(tmp_path, tiny_path):
    """A LoRA checkpoint evaluated with a config that says finetune=full: eval reads the checkpoint's own
    model settings (before: exit 2, "does not fit this config", until model.* were repeated by hand)."""
    from agentrl.commands.sft import sft

    cfg = load_config(ROOT / "conf/sft/numberline.yaml", [*SMALL, "sft.examples=6", "sft.epochs=1", "sft.batch_size=6",
                                                           "sft.perception_epochs=0", "model.finetune=lora",
                                                           "model.lora.r=4", "model.lora.alpha=8",
                                                           f"trainer.out_dir={tmp_path / 'lora'}"])
    ckpt = sft(cfg, argv=["test"])
    proc = _cli("eval", "-c", str(ROOT / "conf/numberline.yaml"), *SMALL, "--checkpoint", str(ckpt),
                "--episodes", "2", "--out", str(tmp_path / "e.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "model settings from" in proc.stderr and "model.finetune=lora" in proc.stderr
    assert json.loads((tmp_path / "e.json").read_text())["episodes"] == 2
