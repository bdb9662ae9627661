"""Checking an execution's inputs against the program's input fields."""

from typing import Any

from programs.spec.errors import Errors, ProgramSpecError, SpecError, join_key, show
from programs.spec.types import ParsedType, allows_none, check_value


def check_inputs(input_types: dict[str, ParsedType], inputs: Any, *, allow_extra: bool) -> dict[str, Any]:
    """Inputs checked shallowly against their declared types; missing Optional fields become None.

    Raises ProgramSpecError with `input.<field>` paths for missing, extra and mistyped fields.
    """
    if not isinstance(inputs, dict):
        raise ProgramSpecError([SpecError("input", "must be an object mapping input fields to values")])
    errors = Errors()
    clean: dict[str, Any] = {}
    for name, parsed in input_types.items():
        path = f"input.{name}"
        if name not in inputs:
            if allows_none(parsed.annotation):
                clean[name] = None
            else:
                errors.add(path, f"missing (expected {parsed.text})")
            continue
        problem = check_value(parsed.annotation, inputs[name])
        if problem:
            errors.add(path, f"expected {problem}, got {show(inputs[name])}")
        clean[name] = inputs[name]
    if not allow_extra:
        for name in inputs:
            if name not in input_types:
                expected = ", ".join(input_types) or "none"
                errors.add(join_key("input", name), f"unexpected field (inputs: {expected})")
    if errors.items:
        raise ProgramSpecError(errors.items)
    return clean
