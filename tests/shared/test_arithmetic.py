"""The one safe arithmetic evaluator (`dspex_site.arithmetic`), shared by the calculator tool
and the simulated provider: same answers, same limits, hostile input refused quickly."""

import time

import pytest

from dspex_site.arithmetic import MAX_EXPRESSION_LENGTH, ArithmeticExpressionError, evaluate
from llm.sim import safe_eval
from programs.tools import calculator


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("1 + 2 * 3", 7),
        ("2 ** 10", 1024),
        ("-3 ** 2", -9),
        ("7 // 2", 3),
        ("2 ** -1", 0.5),
        ("2 ** 100", 2**100),
        ("(" * 99 + "1" + ")" * 99, 1),
    ],
)
def test_it_evaluates_arithmetic(expression: str, value: float) -> None:
    assert evaluate(expression) == value
    assert safe_eval(expression) == value


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("9 ** 9 ** 9", "result too large"),
        ("99999999999 ** 99999999", "result too large"),
        ("10 ** 400 * 10 ** 400 * 10 ** 400", "result too large"),
        ("1e308 * 10", "result too large"),
        ("(-8) ** 0.5", "fractional power"),
        ("1 / 0", "division by zero"),
        ("(" * 150 + "1" + ")" * 150, "longer than"),
        ("((1 + 2", "not an arithmetic expression"),
        ("-" * 150 + "1", "too complex"),  # deep nesting of unary operators
        ("+".join(["1"] * 60), "too complex"),
        ("__import__('os').system('true')", "only numbers"),
        ("x + 1", "only numbers"),
        ("(1).real", "only numbers"),
        ("abs(-1)", "only numbers"),
        ("[1] * 3", "only numbers"),
        ("'a' * 3", "only numbers"),
        ("True + 1", "only numbers"),
        ("lambda: 1", "only numbers"),
        ("1 if 1 else 2", "only numbers"),
        ("", "empty"),
    ],
)
def test_hostile_or_oversized_input_is_refused_with_a_reason(expression: str, reason: str) -> None:
    with pytest.raises(ArithmeticExpressionError, match=reason):
        evaluate(expression)
    with pytest.raises(ValueError, match=reason):
        safe_eval(expression)
    if expression:
        assert calculator(expression).startswith("Error") and reason in calculator(expression)


def test_the_tool_and_the_simulated_provider_share_one_set_of_limits() -> None:
    longest = "1+" * ((MAX_EXPRESSION_LENGTH - 1) // 2) + "1"
    assert len(longest) <= MAX_EXPRESSION_LENGTH
    too_long = longest + "+1"
    for expression in (longest, too_long, "9 ** 400", "9 ** 2000"):
        try:
            expected: object = evaluate(expression)
        except ArithmeticExpressionError as exc:
            expected = type(exc)
        try:
            got: object = safe_eval(expression)
        except ArithmeticExpressionError as exc:
            got = type(exc)
        assert got == expected


def test_hostile_input_fails_fast() -> None:
    started = time.perf_counter()
    for expression in ("9**9**9**9", "2**2**2**2**2**2", "-(2**4000)", "(10**999)**3", "10**999 * 1.5"):
        with pytest.raises(ArithmeticExpressionError):
            evaluate(expression)
    assert time.perf_counter() - started < 0.5
