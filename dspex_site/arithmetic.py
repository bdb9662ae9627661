"""The one safe arithmetic evaluator: ReAct's `calculator` tool and the simulated provider use it.

Expressions are untrusted (an LM or a prompt wrote them), so nothing is ever `eval`ed: the
expression is parsed with `ast` and only numeric literals, `+ - * / // % **`, unary signs and
parentheses are evaluated. Every limit is checked before the work it bounds, so a hostile
expression fails at once instead of burning CPU or memory:

* at most `MAX_EXPRESSION_LENGTH` characters and `MAX_NODES` syntax nodes;
* a power's result size is estimated before it is computed (`9 ** 9 ** 9` fails at once);
* no intermediate integer beyond about `MAX_RESULT_DIGITS` digits, no infinite float.

Stdlib only: the simulated provider imports this in processes without Django.
"""

import ast
import math
import operator
from collections.abc import Callable

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


class ArithmeticExpressionError(ValueError):
    """The expression is not plain arithmetic, or its evaluation would exceed a limit."""


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic expression; raises ArithmeticExpressionError saying why not."""
    if not isinstance(expression, str) or not expression.strip():
        raise ArithmeticExpressionError("empty expression")
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ArithmeticExpressionError(f"expression longer than {MAX_EXPRESSION_LENGTH} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        # Also what the parser says about too deeply nested parentheses.
        raise ArithmeticExpressionError(f"not an arithmetic expression: {expression.strip()}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ArithmeticExpressionError("expression too complex")
    try:
        return _evaluate(tree.body)
    except ZeroDivisionError:
        raise ArithmeticExpressionError("division by zero") from None
    except (OverflowError, RecursionError, MemoryError):
        raise ArithmeticExpressionError("result too large") from None


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ArithmeticExpressionError(f"only numbers are allowed, not {node.value!r}")
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _check_size(_BINARY[type(node.op)](left, right))
    raise ArithmeticExpressionError("only numbers, + - * / // % ** and parentheses are allowed")


def _check_power(base: float, exponent: float) -> None:
    # Estimate the result's size before computing it: 9 ** 9 ** 9 must fail at once, not hang.
    if abs(base) > 1 and abs(exponent) * math.log10(abs(base)) > MAX_RESULT_DIGITS:
        raise ArithmeticExpressionError("result too large")
    if isinstance(exponent, float) and base < 0 and not exponent.is_integer():
        raise ArithmeticExpressionError("fractional power of a negative number")


def _check_size(value: float) -> float:
    if isinstance(value, int) and value.bit_length() > MAX_RESULT_DIGITS * 3.33:
        raise ArithmeticExpressionError("result too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise ArithmeticExpressionError("result too large")
    return value
