"""Tools shipped with DSPex for ReAct steps (listed in `settings.DSPEX_TOOLS`).

ReAct shows each tool's docstring and argument types to the LM, so the docstrings are
written for the model. Tools return strings, errors included: an exception would only be
turned into an observation by ReAct anyway.
"""

import ast
import math
import operator
from collections.abc import Callable
from datetime import UTC, datetime

MAX_EXPRESSION_LENGTH = 200
MAX_NODES = 100
MAX_RESULT_DIGITS = 1000

_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}


class CalculatorError(ValueError):
    pass


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
        tree = ast.parse(expression.strip(), mode="eval")
        if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
            raise CalculatorError("expression too complex")
        return _format(_evaluate(tree.body))
    except SyntaxError:
        return f"Error: not an arithmetic expression: {expression.strip()}"
    except ZeroDivisionError:
        return "Error: division by zero"
    except (CalculatorError, OverflowError, RecursionError, MemoryError) as exc:
        return f"Error: {exc or 'result too large'}"


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise CalculatorError(f"only numbers are allowed, not {node.value!r}")
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _check_size(_BINARY[type(node.op)](left, right))
    raise CalculatorError("only numbers, + - * / // % ** and parentheses are allowed")


def _check_power(base: float, exponent: float) -> None:
    # Estimate the result's size before computing it: 9 ** 9 ** 9 must fail at once, not hang.
    if abs(base) > 1 and abs(exponent) * math.log10(abs(base)) > MAX_RESULT_DIGITS:
        raise CalculatorError("result too large")
    if isinstance(exponent, float) and base < 0 and not exponent.is_integer():
        raise CalculatorError("fractional power of a negative number")


def _check_size(value: float) -> float:
    if isinstance(value, int) and value.bit_length() > MAX_RESULT_DIGITS * 3.33:
        raise CalculatorError("result too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("result too large")
    return value


def _format(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, float):
        return repr(round(value, 12))
    return str(value)


def clock() -> str:
    """Return the current date and time in UTC as ISO 8601, e.g. 2025-01-31T14:05:09+00:00."""
    return datetime.now(UTC).isoformat(timespec="seconds")
