"""The one bounded-number check (`programs.spec.numbers`): spec variables, step and LM settings
and optimizer configs refuse the same values with the same messages."""

import math

import pytest

from optimization.optimizers import config_errors
from programs.spec.numbers import check_number, is_number
from programs.spec.options import SAMPLING, check_option
from programs.spec.variables import VarDecl, check_variable_value


@pytest.mark.parametrize("value", [True, False, math.nan, math.inf, -math.inf, "1", None, [1], {}])
def test_bools_non_finite_floats_and_non_numbers_are_not_numbers(value: object) -> None:
    assert not is_number(value)
    assert check_number(value) is not None


def test_huge_ints_are_out_of_range_rather_than_an_overflow() -> None:
    assert check_number(10**400) == "a very large integer is out of range"
    assert check_number(10**400, integer=True, low=0) == "a very large integer is out of range"
    assert check_number(2**63) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (2.5, "expected an integer, got 2.5"),
        (True, "expected an integer, got True"),
        (0, "0 is below the minimum 1"),
        (65, "65 is above the maximum 64"),
        (10**30, "a very large integer is out of range"),
        (8, None),
    ],
)
def test_every_caller_gives_the_same_answer(value: object, message: str | None) -> None:
    assert check_number(value, integer=True, low=1, high=64) == message
    variable = VarDecl(name="k", type="int", default=8, min=1, max=64)
    assert check_variable_value(variable, value) == message
    threads = config_errors("BootstrapFewShotWithRandomSearch", {"num_threads": value})
    assert threads == ([{"path": "config.num_threads", "message": message}] if message else [])


def test_settings_use_the_same_check() -> None:
    assert check_option(SAMPLING["temperature"], 2.5) == "2.5 is above the maximum 2"
    assert check_option(SAMPLING["temperature"], math.nan) == "expected a number, got nan"
    assert check_option(SAMPLING["n"], 10**40) == "a very large integer is out of range"
