"""Tools shipped with DSPex for ReAct steps (listed in `settings.DSPEX_TOOLS`).

ReAct shows each tool's docstring and argument types to the LM, so the docstrings are
written for the model. Tools return strings, errors included: an exception would only be
turned into an observation by ReAct anyway.
"""

from datetime import UTC, datetime

from dspex_site.arithmetic import MAX_EXPRESSION_LENGTH, ArithmeticExpressionError, evaluate


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression and return the result.

    Supports numbers, + - * / // % ** and parentheses, e.g. "(3 + 4) * 2 / 7" or "2 ** 10".
    Use it for any arithmetic instead of computing in your head.
    """
    if not isinstance(expression, str) or not expression.strip():
        return "Error: give an arithmetic expression such as (3 + 4) * 2"
    if len(expression) > MAX_EXPRESSION_LENGTH:
        return f"Error: expression longer than {MAX_EXPRESSION_LENGTH} characters"
    try:
        return _format(evaluate(expression))
    except ArithmeticExpressionError as exc:
        return f"Error: {exc}"


def _format(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, float):
        return repr(round(value, 12))
    return str(value)


def clock() -> str:
    """Return the current date and time in UTC as ISO 8601, e.g. 2025-01-31T14:05:09+00:00."""
    return datetime.now(UTC).isoformat(timespec="seconds")
