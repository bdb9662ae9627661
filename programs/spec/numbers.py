"""The one bounded-number check: spec variables, step/LM settings and optimizer configs use it.

JSON numbers arrive as Python ints and floats, so two traps are closed here once: `bool` is an
`int` subclass (`True` must not pass as 1), and `math.isfinite()` raises OverflowError on a huge
int (only floats can be non-finite; ints beyond `MAX_INT` are out of range instead).
"""

import math
from typing import Any

from programs.spec.errors import show

MAX_INT = 2**63


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return not isinstance(value, float) or math.isfinite(value)


def check_number(
    value: Any, *, integer: bool = False, low: float | None = None, high: float | None = None
) -> str | None:
    """Why `value` is not a number (an integer with `integer`) within [low, high], or None."""
    if not is_number(value) or (integer and not isinstance(value, int)):
        return f"expected {'an integer' if integer else 'a number'}, got {show(value)}"
    if isinstance(value, int) and abs(value) > MAX_INT:
        return f"{show(value)} is out of range"
    if low is not None and value < low:
        return f"{show(value)} is below the minimum {show(low)}"
    if high is not None and value > high:
        return f"{show(value)} is above the maximum {show(high)}"
    return None
