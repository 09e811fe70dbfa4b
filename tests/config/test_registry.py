"""Components by name or dotted path, each built from its own config section by one resolver."""

import sys
import types

import pytest

from agentrl.algorithms.advantage import GAE, AdvantageEstimator
from agentrl.config import ConfigError, load_config
from agentrl.config.registry import Components
from agentrl.data.rollout import RolloutDataModule
from agentrl.policy.module import PolicyModule
from agentrl.prompting.parsing import AdmissibleCommandParser, JsonActionParser, ParseResult
from agentrl.prompting.templates import GymCardsTemplate


class PrefixParser(JsonActionParser):
    """A user's parser with an option of its own."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def read(self, text, legal):
        action = self.prefix + text
        return ParseResult(action, "", (0, len(text))) if action in legal else ParseResult(None, "no_match")


class NotAParser:
    pass


class NoFromConfig(AdvantageEstimator):
    """A user's estimator whose from_config returns nothing."""

    @classmethod
    def from_config(cls, cfg):
        return None

    def __call__(self, rollout):
        raise AssertionError("never called")


@pytest.fixture
def user_module():
    mod = types.ModuleType("user_components")
    mod.PrefixParser, mod.NotAParser, mod.NoFromConfig = PrefixParser, NotAParser, NoFromConfig
    sys.modules["user_components"] = mod
    yield "user_components"
    del sys.modules["user_components"]


def test_defaults_resolve_every_axis():
    parts = Components.resolve(load_config(None))
    assert parts.template is GymCardsTemplate and parts.parser is JsonActionParser
    assert parts.policy is PolicyModule and parts.data is RolloutDataModule and parts.estimator is GAE
    assert Components.resolve(load_config(None, ["env.name=alfworld"])).parser is AdmissibleCommandParser


def test_a_users_class_gets_its_config_section(user_module):
    cfg = load_config(None, [f"parser.name={user_module}:PrefixParser", "parser.options={prefix: 'go '}"])
    parser = Components.resolve(cfg).make_parser(cfg)
    assert isinstance(parser, PrefixParser) and parser.prefix == "go "
    assert parser.parse("north", ["go north"]).action == "go north"


def test_the_config_builds_template_and_estimator():
    cfg = load_config(None, ["prompt.cot=false", "prompt.text_state=true", "ppo.gamma=0.5", "ppo.gae_lambda=0.25"])
    parts = Components.resolve(cfg)
    template, estimator = parts.make_template(cfg), parts.make_estimator(cfg)
    assert not template.cot and template.text_state
    assert (estimator.gamma, estimator.lam) == (0.5, 0.25)


@pytest.mark.parametrize("override, message", [
    ("advantage.estimator=grpoo", "advantage.estimator: unknown advantage estimator 'grpoo'; known: gae"),
    ("rollout.name=offline", "rollout.name: unknown data module 'offline'"),
    ("policy.name=actor", "policy.name: unknown policy 'actor'"),
    ("parser.name=user_components:NotAParser", "must be a subclass of agentrl.prompting.parsing.ActionParser"),
    ("parser.options={min_overlapp: 0.5}", "parser.options"),
    ("parser.name=:NoModule", "parser.name: importing '' for parser ':NoModule' failed"),
    ("advantage.estimator=user_components:NoFromConfig", "NoFromConfig.from_config returned"),
])
def test_bad_components_name_the_key(user_module, override, message):
    cfg = load_config(None, ["env.name=numberline", override] + (
        ["parser.name=admissible"] if "options" in override else []))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parts = Components.resolve(cfg)
        parts.make_parser(cfg)
        parts.make_estimator(cfg)

