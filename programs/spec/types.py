"""Type expressions of signature fields, parsed from an allowlist only.

DSPy's own string-signature parser resolves unknown names with `importlib.import_module`
and `getattr` (so `x: os.path -> y` imports a module), which is unacceptable for specs
written by API clients. This parser walks the expression's AST and accepts only:
str, int, float, bool, Any, list[T], dict[str, T], Optional[T] (or `T | None`) and
Literal[...] of strings, numbers and booleans, and `History` (`dspy.History`, a conversation's
earlier turns: only as the whole type of an input field, which is where DSPy's adapters look
for it; sessions fill it, executions.sessions). Nothing is ever looked up by name.
"""

import ast
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional

import dspy

MAX_TYPE_LENGTH = 500
MAX_DEPTH = 6
MAX_LITERAL_VALUES = 100
MAX_LITERAL_STRING = 200

_SCALARS: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": bool, "Any": Any}
_CONTAINERS = {"list": "list", "List": "list", "dict": "dict", "Dict": "dict"}


class TypeExprError(ValueError):
    """The text is not an allowed type expression."""


@dataclass(frozen=True)
class ParsedType:
    """A resolved annotation and its canonical text (`list[str]`, `Literal['a', 'b']`)."""

    annotation: Any
    text: str


STR = ParsedType(str, "str")
ANY = ParsedType(Any, "Any")
HISTORY = ParsedType(dspy.History, "History")


def parse_type(text: object) -> ParsedType:
    """Parse a type expression such as `list[str]` or `Literal['a', 'b']`; raise TypeExprError."""
    if not isinstance(text, str):
        raise TypeExprError("a type must be a string")
    if len(text) > MAX_TYPE_LENGTH:
        raise TypeExprError(f"type expression longer than {MAX_TYPE_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise TypeExprError(f"not a type expression: {text.strip()[:80]!r}") from exc
    if isinstance(tree.body, ast.Name) and tree.body.id == HISTORY.text:
        return HISTORY
    return _parse_node(tree.body, 0)


def is_history(parsed: ParsedType) -> bool:
    """Whether a field holds a conversation's history (`dspy.History`)."""
    return parsed.annotation is dspy.History


def _parse_node(node: ast.AST, depth: int) -> ParsedType:
    if depth > MAX_DEPTH:
        raise TypeExprError(f"type nested deeper than {MAX_DEPTH} levels")
    if isinstance(node, ast.Name):
        return _parse_name(node.id)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        return _parse_subscript(node.value.id, node.slice, depth)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _parse_union(node, depth)
    if isinstance(node, ast.Attribute):
        raise TypeExprError("dotted names are not allowed in types")
    if isinstance(node, ast.Call):
        raise TypeExprError("calls are not allowed in types")
    raise TypeExprError(f"unsupported type syntax {type(node).__name__}")


def _parse_name(name: str) -> ParsedType:
    if name in _SCALARS:
        return ParsedType(_SCALARS[name], name)
    if name in _CONTAINERS:
        return ParsedType(list if _CONTAINERS[name] == "list" else dict, _CONTAINERS[name])
    if name == HISTORY.text:
        # DSPy's adapters recognise a history field by `annotation == History` only: inside
        # Optional[...] or list[...] it would be sent as plain JSON text.
        raise TypeExprError("History must be the whole type of a field (not inside another type)")
    raise TypeExprError(f"unknown type {name[:80]!r} (allowed: {allowed_types_hint()})")


def _parse_subscript(name: str, slice_node: ast.expr, depth: int) -> ParsedType:
    args: list[ast.expr] = slice_node.elts if isinstance(slice_node, ast.Tuple) else [slice_node]
    if name == "Literal":
        return _parse_literal(args)
    if name == "Optional":
        _expect_args(name, args, 1)
        return _optional(_parse_node(args[0], depth + 1))
    kind = _CONTAINERS.get(name)
    if kind == "list":
        _expect_args(name, args, 1)
        item = _parse_node(args[0], depth + 1)
        # `list[X]` with X only known at run time: build the alias the subscript would build.
        return ParsedType(types.GenericAlias(list, item.annotation), f"list[{item.text}]")
    if kind == "dict":
        _expect_args(name, args, 2)
        key = _parse_node(args[0], depth + 1)
        if key.annotation is not str:
            raise TypeExprError("dict keys must be str (JSON objects have string keys)")
        value = _parse_node(args[1], depth + 1)
        return ParsedType(types.GenericAlias(dict, (str, value.annotation)), f"dict[str, {value.text}]")
    raise TypeExprError(f"unknown generic type {name[:80]!r} (allowed: {allowed_types_hint()})")


def _parse_union(node: ast.BinOp, depth: int) -> ParsedType:
    # Only `T | None` (and `None | T`) are accepted: other unions are hard for LMs to fill.
    if _is_none(node.right):
        return _optional(_parse_node(node.left, depth + 1))
    if _is_none(node.left):
        return _optional(_parse_node(node.right, depth + 1))
    raise TypeExprError("unions other than `T | None` are not supported")


def _parse_literal(args: Sequence[ast.AST]) -> ParsedType:
    if not args:
        raise TypeExprError("Literal needs at least one value")
    if len(args) > MAX_LITERAL_VALUES:
        raise TypeExprError(f"Literal has more than {MAX_LITERAL_VALUES} values")
    values: list[Any] = []
    for arg in args:
        value = _literal_value(arg)
        if any(type(value) is type(seen) and value == seen for seen in values):
            raise TypeExprError(f"duplicate Literal value {value!r}")
        values.append(value)
    text = ", ".join(repr(value) for value in values)
    return ParsedType(Literal[tuple(values)], f"Literal[{text}]")


def _literal_value(node: ast.AST) -> Any:
    negative = False
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        negative = True
        node = node.operand
    if not isinstance(node, ast.Constant) or not isinstance(node.value, str | int | float | bool):
        raise TypeExprError("Literal values must be strings, numbers or booleans")
    value = node.value
    if isinstance(value, str) and len(value) > MAX_LITERAL_STRING:
        raise TypeExprError(f"Literal string longer than {MAX_LITERAL_STRING} characters")
    if isinstance(value, float) and not math.isfinite(value):
        raise TypeExprError("Literal numbers must be finite")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63:
        raise TypeExprError("Literal integer out of range")
    if negative:
        if isinstance(value, bool | str):
            raise TypeExprError("only numbers can be negative")
        value = -value
    return value


def _optional(inner: ParsedType) -> ParsedType:
    if inner.text.startswith("Optional["):
        return inner
    return ParsedType(Optional[inner.annotation], f"Optional[{inner.text}]")  # noqa: UP045


def _expect_args(name: str, args: Sequence[ast.AST], count: int) -> None:
    if len(args) != count:
        raise TypeExprError(f"{name} takes {count} type argument{'s' if count > 1 else ''}")


def _is_none(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def allowed_types_hint() -> str:
    return "str, int, float, bool, Any, list[T], dict[str, T], Optional[T], Literal[...], History"


# --- checking values against a parsed annotation ---------------------------------------------


def allows_none(annotation: Any) -> bool:
    """True for Optional[...] only: such a field may be left out."""
    return typing.get_origin(annotation) is typing.Union and type(None) in typing.get_args(annotation)


def check_value(annotation: Any, value: Any) -> str | None:
    """Shallow check of a JSON value against an annotation; returns what was expected, or None if ok."""
    if annotation is Any:
        return None
    if annotation is dspy.History:
        return _check_history(value)
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        if value is None:
            return None
        inner = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
        return check_value(inner, value)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if any(type(value) is type(choice) and value == choice for choice in choices):
            return None
        return "one of " + ", ".join(repr(choice) for choice in choices)
    base = origin or annotation
    return _check_base(base, value)


def _check_base(base: Any, value: Any) -> str | None:
    if base is str:
        return None if isinstance(value, str) else "a string"
    if base is bool:
        return None if isinstance(value, bool) else "a boolean"
    if base is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if base is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else "a number"
    if base is list:
        return None if isinstance(value, list) else "a list"
    if base is dict:
        return None if isinstance(value, dict) else "an object"
    return None


def _check_history(value: Any) -> str | None:
    """A history as JSON (`{"messages": [{field: value, ...}, ...]}`) or already a dspy.History."""
    if isinstance(value, dspy.History):
        return None
    messages = value.get("messages") if isinstance(value, dict) else None
    if not isinstance(value, dict) or value.keys() != {"messages"} or not isinstance(messages, list):
        return 'a history ({"messages": [{<inputs>, <outputs>}, ...]})'
    if not all(isinstance(message, dict) for message in messages):
        return "a history whose messages are objects"
    return None


def as_history(value: Any) -> Any:
    """A JSON history (checked by `check_value`) as the dspy.History DSPy's adapters expect."""
    return dspy.History(messages=value["messages"]) if isinstance(value, dict) else value
