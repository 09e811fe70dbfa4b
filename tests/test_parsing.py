"""The action parsers on a table of model outputs, including hostile ones."""

import json
import random

import pytest

from agentrl.parsing import AdmissibleCommandParser, JsonActionParser, action_span_start, normalise

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
