"""Scalar settings a spec may hold (LM settings, `k`, `n`, ...), their kinds and bounds.

The same check runs on a literal at validation time and on a `$var` value at run time,
so an execution's variable overrides can never push a setting out of its bounds.
"""

from dataclasses import dataclass
from typing import Any

from programs.spec.errors import show
from programs.spec.numbers import check_number

KIND_NAMES = {"int": "an integer", "number": "a number", "str": "a string", "bool": "a boolean"}


@dataclass(frozen=True)
class OptionSpec:
    """What one setting accepts. `var=False` means it must be a literal (it shapes the module)."""

    kind: str
    min: float | None = None
    max: float | None = None
    max_length: int = 200
    var: bool = True
    required: bool = False
    default: Any = None


def check_option(spec: OptionSpec, value: Any) -> str | None:
    """Return why `value` does not fit `spec`, or None."""
    if spec.kind in ("int", "number"):
        return check_number(value, integer=spec.kind == "int", low=spec.min, high=spec.max)
    if not isinstance(value, bool if spec.kind == "bool" else str):
        return f"expected {KIND_NAMES[spec.kind]}, got {show(value)}"
    if spec.kind == "str":
        if not value.strip():
            return "must not be empty"
        if len(value) > spec.max_length:
            return f"longer than {spec.max_length} characters"
    return None


SAMPLING: dict[str, OptionSpec] = {
    "temperature": OptionSpec("number", 0, 2),
    "max_tokens": OptionSpec("int", 1, 1_000_000),
    "top_p": OptionSpec("number", 0, 1),
    "n": OptionSpec("int", 1, 20),
    "seed": OptionSpec("int", 0, 2**31 - 1),
}

# Only these keys may appear under `lm`: a spec can never name an endpoint, key or engine.
LM_SETTINGS: dict[str, OptionSpec] = {"model": OptionSpec("str", max_length=200), **SAMPLING}
