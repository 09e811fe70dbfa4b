"""The action parsers on a table of model outputs, including hostile ones."""

import json
import random

import pytest

from agentrl.prompting.parsing import AdmissibleCommandParser, JsonActionParser, action_span_start, normalise

NL = ["-", "+"]
PTS = [str(i) for i in range(1, 11)] + ["+", "-", "*", "/", "(", ")", "="]


@pytest.mark.parametrize(
    "text, legal, action, reason",
    [
        ('{"thoughts": "go up", "action": "+"}', NL, "+", ""),
        ('{"current number": 2, "target number": 4, "thoughts": "x", "action": "+"}', NL, "+", ""),
        ('Sure! {"action": "-"} hope that helps', NL, "-", ""),
        ('{"action": "+", ', NL, "+", ""),  # truncated JSON: raw text after the key
        ('{"thoughts": "a", "action": + }', NL, "+", ""),  # unquoted value
        ('{"action": "10"}', PTS, "10", ""),  # "1" must not steal "10"
        ('{"action": 7}', PTS, "7", ""),  # number, not string
        ('{"action": ["="]}', PTS, "=", ""),
        ('{"action": " HIT "}', ["stand", "hit"], "hit", ""),  # case and whitespace
        ('{"action": "hit."}', ["stand", "hit"], "hit", ""),
        ('{"action": "jump"}', NL, None, "no_match"),
        ('{"thoughts": "no decision"}', NL, None, "no_action_key"),
        ("", NL, None, "no_action_key"),
        ('{"action": null}', NL, None, "no_match"),
        ('{"action": {"x": 1}}', NL, None, "no_match"),
        ('{"thoughts": "{nested}", "action": "+"} {"action": "-"}', NL, "+", ""),
    ],
)
def test_json_parser_table(text, legal, action, reason):
    result = JsonActionParser().parse(text, legal)
    assert (result.action, result.reason) == (action, reason)


@pytest.mark.parametrize(
    "value, action",
    [
        ("go to countertop 1", "go to countertop 1"),
        ("Go To  Countertop 1.", "go to countertop 1"),
        ("go to the countertop 1", "go to countertop 1"),  # closest by word overlap
        ("take apple 1 from countertop 1", "take apple 1 from countertop 1"),
        ("fly away", None),
    ],
)
def test_admissible_parser_table(value, action):
    legal = ["go to countertop 1", "go to cabinet 2", "take apple 1 from countertop 1", "look"]
    assert AdmissibleCommandParser().parse(json.dumps({"action": value}), legal).action == action


def test_admissible_parser_refuses_ties():
    legal = ["go to cabinet 1", "go to cabinet 2"]
    assert AdmissibleCommandParser().parse('{"action": "go to cabinet"}', legal).reason == "ambiguous"


def test_parser_never_raises_on_garbage():
    rng = random.Random(0)
    parser = JsonActionParser()
    alphabet = '{}[]":,\\ +-=actionthoughts\x00\u2603\n'
    samples = ["{" * 100_000, '"action":' * 5000, "\ud800", b"\xff\xfe".decode("latin1") * 1000]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200))) for _ in range(2000)]
    for s in samples:
        r = parser.parse(s, NL)
        assert r.action in (None, *NL)


def test_action_span_start_and_normalise():
    text = '{"thoughts": "the action is +", "action" : "+"}'
    assert text[action_span_start(text):].startswith('"action" :')
    assert action_span_start('{"thoughts": "x"}') is None
    assert normalise('  "Go  To X 1." ') == "go to x 1"


@pytest.mark.parametrize(
    "text, action, pair",
    [
        ('{"thoughts": "go up", "action": "+"}', "+", '"action": "+"'),
        # the thoughts mention the key: the executed action is the object's own key
        ('{"thoughts": "the \\"action\\": + is best", "action": "-"}', "-", '"action": "-"'),
        # prose with a key before the JSON object the parser reads
        ('I think "action": maybe. {"thoughts": "..", "action": "+"} ok', "+", '"action": "+"'),
        ('{"a": {"action": "x"}, "action" : "-", "b": 1}', "-", '"action" : "-"'),  # nested key ignored
        ('{"action": "+", "action": "-"}', "-", '"action": "-"'),  # the last duplicate wins, as in json.loads
        ('{"action": "+", ', "+", '"action": "+"'),  # truncated JSON: the raw text after the key
        ('{"thoughts": "a", "action": + }', "+", '"action": + '),
        ('{"action": "jump"}', None, '"action": "jump"'),  # read but no legal match: the text chose it
    ],
)
def test_parse_result_span_is_the_executed_action(text, action, pair):
    result = JsonActionParser().parse(text, NL)
    assert result.action == action
    start, end = result.action_span
    assert text[start:end] == pair


def test_no_action_key_has_no_span():
    assert JsonActionParser().parse('{"thoughts": "x"}', NL).action_span is None


def test_parser_options_come_from_config():
    from agentrl.config import ConfigError, load_config

    cfg = load_config(None, ["parser.options={min_overlap: 0.9}"])
    parser = AdmissibleCommandParser.from_config(cfg.parser)
    assert parser.min_overlap == 0.9
    legal = ["go to countertop 1", "go to cabinet 2"]
    assert parser.parse('{"action": "go to the countertop 1"}', legal).action is None  # 0.8 overlap < 0.9
    with pytest.raises(ConfigError, match="parser.options.*min_overlapp"):
        AdmissibleCommandParser.from_config(load_config(None, ["parser.options={min_overlapp: 0.9}"]).parser)
