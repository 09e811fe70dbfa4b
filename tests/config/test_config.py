"""Strict config loading: unknown keys and wrong types name the key and the source."""

import re
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from agentrl.cli import _parse_args, main
from agentrl.config import Config, ConfigError, all_keys, describe_keys, load_config, to_yaml

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_validate():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.policy.thought_coef == 0.5 and cfg.ppo.clip == 0.1


def test_override_typo_names_the_key_and_suggests():
    with pytest.raises(ConfigError, match=r"override 'ppo.clpi=0.1'.*unknown key 'ppo.clpi'.*'ppo.clip'"):
        load_config(None, ["ppo.clpi=0.1"])


def test_yaml_typo_names_the_file(tmp_path):
    f = write(tmp_path / "x.yaml", "ppo:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"x\.yaml: unknown key 'ppo.epochz'"):
        load_config(f)


@pytest.mark.parametrize("override", ["ppo.clip=abc", "ppo.epochs=1.5", "prompt.cot=maybe", "env.num_envs=[1]"])
def test_wrong_type_names_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"bad value for '{key}'"):
        load_config(None, [override])


def test_base_inheritance_and_precedence(tmp_path):
    write(tmp_path / "base.yaml", "seed: 1\nppo:\n  clip: 0.3\n  epochs: 2\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\nppo:\n  clip: 0.2\n")
    cfg = load_config(child)
    assert (cfg.seed, cfg.ppo.clip, cfg.ppo.epochs) == (1, 0.2, 2)  # child beats base, base beats schema
    cfg = load_config(child, ["ppo.clip=0.05", "prompt.cot=false"])
    assert (cfg.ppo.clip, cfg.prompt.cot) == (0.05, False)  # overrides beat files


def test_base_loop_and_missing_file(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "override, key",
    [
        ("policy.thought_coef=1.5", "policy.thought_coef"),
        ("rollout.steps_per_update=30", "rollout.steps_per_update"),  # not a multiple of 4 envs
        ("ppo.micro_batch_size=5", "ppo.minibatch_size"),
        ("model.dtype=float8", "model.dtype"),
        ("env.vector=threads", "env.vector"),
    ],
)
def test_cross_field_checks_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_every_yaml_under_conf_validates():
    files = sorted((ROOT / "conf").rglob("*.yaml"))
    assert len(files) >= 6, files  # base + one per env at least
    for f in files:
        load_config(f)


def test_help_documents_every_key():
    rows = describe_keys()
    assert {r[0] for r in rows} == set(all_keys())
    undocumented = [key for key, _, doc in rows if not doc]
    assert not undocumented
    assert "ppo.clip" in to_yaml(load_config()) or "clip:" in to_yaml(load_config())


# ---------------------------------------------------------------- ranges of numeric keys


def _numeric_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, annotation) of every int and float leaf of the schema (annotations are strings here)."""
    keys = []
    for f in fields(cls):
        if is_dataclass(f.default_factory if f.default_factory is not MISSING else None):
            keys += _numeric_keys(f.default_factory, f"{prefix}{f.name}.")
        elif str(f.type).split(" |")[0] in ("int", "float"):
            keys.append((f"{prefix}{f.name}", str(f.type)))
    return keys


@pytest.mark.parametrize(
    "override",
    [
        # reproduced: trained with exit 0, or were accepted, or ended in raw tracebacks
        "ppo.max_grad_norm=-1", "ppo.lr=-1", "policy.value_hidden=[0]", "trainer.success_window=0",
        "trainer.max_updates=-5", "ppo.minibatch_size=0", "rollout.max_new_tokens=0", "trainer.devices=0",
        "rollout.steps_per_update=-4", "rollout.steps_per_update=0",
        # the rest of the ranges
        "ppo.lr=0", "ppo.min_lr=-1e-9", "ppo.value_lr=0", "ppo.max_grad_norm=0", "ppo.vf_coef=-0.5",
        "ppo.value_clip=0", "ppo.target_kl=-1", "ppo.micro_batch_size=0", "ppo.epochs=0", "ppo.gamma=1.5",
        "model.image_size=0", "model.lora.r=0", "model.lora.alpha=0", "model.lora.dropout=1", "model.lora.dropout=-0.1",
        "env.num_envs=0", "env.max_episode_steps=0", "prompt.history=-1", "policy.kl_coef=-1",
        "policy.entropy_coef=-0.1", "policy.value_hidden=[256,-1]", "rollout.temperature=0", "rollout.top_p=0",
        "trainer.num_nodes=0", "trainer.log_every=0", "trainer.image_log_every=-1", "trainer.max_bad_steps=0",
        "trainer.checkpoint_every=-1", "trainer.num_threads=0", "trainer.startup_timeout_s=0",
        "sft.lr=0", "sft.vision_lr=-1", "sft.max_grad_norm=0", "sft.max_examples=0", "sft.perception_epochs=-1",
        "sft.batch_size=0", "seed=-1", "seed=99999999999999999999",
        # NaN and infinities pass no range
        "ppo.lr=nan", "ppo.clip=inf", "ppo.max_grad_norm=.inf", "rollout.temperature=1e400", "ppo.gamma=nan",
        "parser.failure_penalty=nan", "parser.failure_penalty=-inf", "trainer.collective_timeout_s=inf",
    ],
)
def test_out_of_range_values_name_the_key_and_what_is_allowed(override):
    key = override.split("=", 1)[0]
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)} must be (>|>=|in|None or|a) .+, got \S+"):
        load_config(ROOT / "conf/numberline.yaml", [override])


@pytest.mark.parametrize(
    "override, message",
    [("ppo.max_grad_norm=-1", "ppo.max_grad_norm must be > 0, got -1.0"),
     ("ppo.lr=-1", "ppo.lr must be > 0, got -1.0"),
     ("policy.value_hidden=[0]", "policy.value_hidden must be a list of integers each >= 1, got [0]"),
     ("trainer.success_window=0", "trainer.success_window must be >= 1, got 0"),
     ("trainer.max_updates=-5", "trainer.max_updates must be >= 1, got -5"),
     ("ppo.value_lr=0", "ppo.value_lr must be None or > 0, got 0.0"),
     ("model.lora.dropout=1", "model.lora.dropout must be in [0, 1), got 1.0"),
     ("parser.failure_penalty=nan", "parser.failure_penalty must be a finite number, got nan"),
     ("seed=-1", "seed must be in [0, 4294967295], got -1"),
     ("trainer.startup_timeout_s=0", "trainer.startup_timeout_s must be > 0 seconds, got 0.0"),
     ("policy.thought_coef=1.5", "policy.thought_coef must be in [0, 1], got 1.5")],  # the messages from before
)
def test_range_messages(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value) == message


def test_every_numeric_key_is_range_checked():
    keys = _numeric_keys()
    assert len(keys) > 40 and ("seed", "int") in keys and ("ppo.value_lr", "float | None") in keys
    for key, kind in keys:
        value = "nan" if kind.startswith("float") else "-99999999999999999999"
        with pytest.raises(ConfigError, match=re.escape(key)):
            load_config(None, [f"{key}={value}"])
    with pytest.raises(ConfigError, match=r"policy\.value_hidden"):
        load_config(None, ["policy.value_hidden=[-99999999999999999999]"])


@pytest.mark.parametrize(
    "override",
    ["trainer.checkpoint_every=0", "trainer.image_log_every=0", "ppo.value_lr=null", "ppo.value_clip=null",
     "ppo.target_kl=null", "model.image_size=null", "model.image_size=64", "policy.value_hidden=[]",
     "prompt.history=0", "ppo.min_lr=0", "policy.kl_coef=0", "model.lora.dropout=0", "rollout.top_p=1",
     "ppo.gamma=0", "ppo.gamma=1", "parser.failure_penalty=-1", "trainer.num_threads=null", "seed=0",
     "seed=4294967295", "sft.max_examples=null", "env.max_episode_steps=1"],
)
def test_edge_values_inside_the_ranges_are_accepted(override):
    load_config(ROOT / "conf/numberline.yaml", [override])


# ---------------------------------------------------------------- trainer.out_dir


def test_out_dir_with_a_component_over_255_bytes_is_refused():
    with pytest.raises(ConfigError, match=r"trainer\.out_dir .*255 bytes.*256 bytes"):
        load_config(None, [f"trainer.out_dir=runs/{'x' * 256}/a"])
    with pytest.raises(ConfigError, match=r"trainer\.out_dir"):
        load_config(None, [f"trainer.out_dir=runs/{'é' * 128}"])  # 128 characters, 256 bytes
    with pytest.raises(ConfigError, match=r"trainer\.out_dir"):  # the default runs/${env.name}, resolved first
        load_config(None, [f"env.name=pkg.module:{'X' * 300}"])
    cfg = load_config(None, [f"trainer.out_dir={'/'.join(['x' * 255] * 20)}"])  # long, but each part fits
    assert len(cfg.trainer.out_dir) > 5000
    assert load_config().trainer.out_dir == "runs/numberline"


# ---------------------------------------------------------------- malformed overrides and YAML shapes


@pytest.mark.parametrize(
    "override",
    ["ppo.clip=[1,", "ppo.clip={", "ppo.clip=}", "ppo.clip=[", "env.options={a: ${oops}}", "seed=${oops",
     "seed=${", "model.path='x", 'model.path="x', "env.options={[1]: 2}", "model.path=\x00", "model.path=\udc80"],
)
def test_malformed_override_syntax_names_the_override(override):
    with pytest.raises(ConfigError, match=rf"^override {re.escape(repr(override))}: cannot parse the value of "
                                          rf"'{re.escape(override.split('=')[0])}'"):
        load_config(None, [override])


@pytest.mark.parametrize(
    "override, key",
    [("model.lora=", "model.lora"), ("model.lora=5", "model.lora"), ("ppo=3", "ppo"), ("ppo=[1]", "ppo"),
     ("policy.value_hidden={a: 1}", "policy.value_hidden"), ("policy.value_hidden=3", "policy.value_hidden"),
     ("policy.value_hidden=[[1]]", "policy.value_hidden"), ("env.options=3", "env.options"),
     ("trainer.out_dir=${oops}", "trainer.out_dir"), ("env.options.x=???", "env.options.x")],
)
def test_values_of_the_wrong_shape_name_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(None, [override])


@pytest.mark.parametrize(
    "text, key",
    [("ppo: 3\n", "ppo"), ("ppo: [1]\n", "ppo"), ("policy:\n  value_hidden: {a: 1}\n", "policy.value_hidden"),
     ("env:\n  options: 3\n", "env.options"), ("model:\n  lora: 5\n", "model.lora"), ("ppo:\n  lr: -1\n", "ppo.lr")],
)
def test_yaml_values_of_the_wrong_shape_name_the_key(tmp_path, text, key):
    f = write(tmp_path / "shape.yaml", text)
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(f)


def test_a_changed_file_is_read_afresh(tmp_path):
    f = write(tmp_path / "x.yaml", "ppo:\n  clip: 0.2\n")
    assert load_config(f).ppo.clip == 0.2
    write(f, "ppo:\n  clip: 0.3\n")
    assert load_config(f).ppo.clip == 0.3
    assert load_config(f, ["ppo.clip=0.4"]).ppo.clip == 0.4 and load_config(f).ppo.clip == 0.3  # nothing leaks


# ---------------------------------------------------------------- the command line


def test_overrides_may_sit_anywhere_among_the_options(capsys):
    config = str(ROOT / "conf/numberline.yaml")
    assert main(["fit", "-c", config, "ppo.clip=0.3", "--print-config", "ppo.epochs=2"]) == 0
    out = OmegaConf.create(capsys.readouterr().out)
    assert (out.ppo.clip, out.ppo.epochs) == (0.3, 2)

    assert main(["eval", "-c", config, "ppo.clip=0.25", "--checkpoint", "some/dir", "seed=7", "--episodes", "3",
                 "--print-config", "prompt.cot=false"]) == 0
    out = OmegaConf.create(capsys.readouterr().out)
    assert (out.ppo.clip, out.seed, out.prompt.cot) == (0.25, 7, False)

    assert main(["sft", "seed=1", "-c", config, "sft.epochs=1", "--print-config"]) == 0
    out = OmegaConf.create(capsys.readouterr().out)
    assert (out.seed, out.sft.epochs, out.env.num_envs) == (1, 1, 8)


def test_sweep_grid_options_and_overrides_interleave():
    args = _parse_args(["sweep", "-c", "x.yaml", "a=1", "--grid", "ppo.lr=1e-4,1e-5", "b=2",
                        "--grid", "policy.value_hidden=[256],[128,64]", "--seeds", "0,1", "c=3"])
    assert args.command == "sweep" and args.overrides == ["a=1", "b=2", "c=3"]
    assert args.grid == ["ppo.lr=1e-4,1e-5", "policy.value_hidden=[256],[128,64]"] and args.seeds == "0,1"
    assert _parse_args(["play", "numberline", "--option", "max_position=3"]).option == ["max_position=3"]


def test_cli_config_errors_exit_2_naming_the_override(capsys):
    config = str(ROOT / "conf/numberline.yaml")
    assert main(["fit", "-c", config, "ppo.clip=[1,", "--print-config"]) == 2
    assert "override 'ppo.clip=[1,'" in capsys.readouterr().err
    assert main(["eval", "-c", config, "--checkpoint", "d", "ppo.max_grad_norm=-1", "--print-config"]) == 2
    assert "ppo.max_grad_norm must be > 0, got -1.0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["fit", "-c", config, "--no-such-option", "ppo.clip=0.2"])
    assert e.value.code == 2
