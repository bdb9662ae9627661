"""The shipped ReAct tools."""

import time
from datetime import UTC, datetime, timedelta

import dspy
import pytest

from programs.tools import calculator, clock


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("1 + 2", "3"),
        ("(3 + 4) * 2 / 7", "2"),
        ("2 ** 10", "1024"),
        ("-3 ** 2", "-9"),
        ("7 // 2", "3"),
        ("7 % 4", "3"),
        ("1 / 3", "0.333333333333"),
        ("0.1 + 0.2", "0.3"),
        ("2 ** -1", "0.5"),
        ("  +5 ", "5"),
        ("(" * 90 + "1" + ")" * 90, "1"),
    ],
)
def test_the_calculator_does_arithmetic(expression: str, result: str) -> None:
    assert calculator(expression) == result


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("9 ** 9 ** 9", "result too large"),
        ("10 ** 400 * 10 ** 400 * 10 ** 400", "result too large"),
        ("1e308 * 10", "result too large"),
        ("(-8) ** 0.5", "fractional power"),
        ("abs(-1)", "only numbers"),
        ("x + 1", "only numbers"),
        ("'a' * 3", "only numbers"),
        ("True + 1", "only numbers"),
        ("1 +", "not an arithmetic expression"),
        ("", "give an arithmetic expression"),
        ("1+" * 150 + "1", "longer than 200 characters"),
    ],
)
def test_the_calculator_returns_errors_as_messages(expression: str, message: str) -> None:
    result = calculator(expression)
    assert result.startswith("Error") and message in result


def test_the_calculator_is_fast_on_hostile_input() -> None:
    started = time.perf_counter()
    for expression in ("9**9**9**9", "2**2**2**2**2**2", "99999999999**99999999", "-(2**4000)"):
        assert calculator(expression).startswith("Error")
    assert time.perf_counter() - started < 0.5


def test_the_clock_tells_utc_time_in_iso_8601() -> None:
    now = datetime.fromisoformat(clock())
    assert now.utcoffset() == timedelta(0)
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)


def test_tools_describe_themselves_to_react() -> None:
    tool = dspy.Tool(calculator)
    assert "arithmetic" in tool.desc
    assert tool.args == {"expression": {"type": "string"}}
    assert "UTC" in dspy.Tool(clock).desc
