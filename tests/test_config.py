"""Strict config loading: unknown keys and wrong types name the key and the source."""

from pathlib import Path

import pytest

from agentrl.config import Config, ConfigError, all_keys, describe_keys, load_config, to_yaml

ROOT = Path(__file__).resolve().parents[1]


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
