"""The arithmetic parser: exact values for valid formulas, FormulaError (fast) for everything else."""

import time
from fractions import Fraction

import pytest

from agentrl.envs.formula import MAX_CHARS, MAX_DEPTH, FormulaError, evaluate, numbers, tokenize


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("7", 7),
        ("10+2", 12),
        ("2*6", 12),
        ("1+2*3", 7),
        ("(1+2)*3", 9),
        ("8/(3-8/3)", 24),
        ("3/(1-1/4)", 4),
        ("10-3-2", 5),
        ("24/4/3", 2),
        ("1/3", Fraction(1, 3)),
        ("2-5", -3),
        (" ( 10 + 10 ) + 4 ", 24),
        ("((((6))))*4", 24),
        ("0*5", 0),
    ],
)
def test_valid_formulas_evaluate_exactly(text, value):
    assert evaluate(text) == value
    assert isinstance(evaluate(text), Fraction)


def test_token_lists_keep_numbers_apart():
    assert evaluate(["10", "+", "2"]) == 12
    assert evaluate(["8", "/", "(", "3", "-", "8", "/", "3", ")"]) == 24
    with pytest.raises(FormulaError):
        evaluate(["1", "2"])  # two cards in a row is not the number 12


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "+",
        "1+",
        "*3",
        "-3+27",  # no unary signs
        "1++2",
        "2(3)",
        "(1+2",
        "1+2)",
        "()",
        "1/0",
        "4/(2-2)",
        "1 2",
        "2**3",
        "2^3",
        "1.5*16",
        "abs(-24)",
        "__import__('os')",
        "2*x",
        "24=",
        "٣*8",  # non-ASCII digits
    ],
)
def test_malformed_formulas_raise_formula_error(text):
    with pytest.raises(FormulaError):
        evaluate(text)


def test_error_names_the_problem():
    with pytest.raises(FormulaError, match="division by zero"):
        evaluate("1/(3-3)")
    with pytest.raises(FormulaError, match="'x'"):
        evaluate("2*x")


def test_deep_nesting_and_huge_input_are_refused_fast():
    start = time.perf_counter()
    assert evaluate("(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH) == 1
    with pytest.raises(FormulaError, match="nested"):
        evaluate("(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(FormulaError, match="nested"):
        evaluate(["("] * 150 + ["1"])  # within the length limit, far past the depth limit
    with pytest.raises(FormulaError, match="characters"):
        evaluate("(" * 10**6 + "1")
    with pytest.raises(FormulaError, match="tokens"):
        evaluate(["1", "+"] * 10**5 + ["1"])
    with pytest.raises(FormulaError):
        evaluate("9" * (MAX_CHARS + 1))
    assert time.perf_counter() - start < 0.5


def test_tokenize_and_numbers():
    assert tokenize("(10+ 2)*3") == ["(", "10", "+", "2", ")", "*", "3"]
    assert numbers("(10+2)*3") == [10, 2, 3]
    assert numbers(["10", "+", "2", "="]) == [10, 2]
