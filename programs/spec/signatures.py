"""Signatures in a spec: DSPy's string form with allowlisted types, or an object form.

String form: `"context: list[str], question -> answer: Literal['a', 'b']"` (untyped fields
are `str`). Object form: `{"inputs": {"question": {"type": "str", "desc": "..."}},
"outputs": {"answer": "str"}}`; `inputs`/`outputs` may also be lists of
`{"name": ..., "type": ..., "desc": ...}`, which keeps field order where the JSON store does
not (Postgres `jsonb` reorders object keys, and field order is part of the prompt and of the
saved DSPy state).
"""

import functools
from dataclasses import dataclass
from typing import Any

import dspy

from programs.spec.errors import Errors, join, join_key, show
from programs.spec.references import is_identifier
from programs.spec.types import STR, ParsedType, TypeExprError, is_history, parse_type

MAX_SIGNATURE_LENGTH = 5000
MAX_FIELDS = 50
MAX_DESC_LENGTH = 2000

# Names DSPy itself passes as keyword arguments next to the inputs (Module.__call__'s
# `self`, the callback wrapper's `instance`, Predict's `config`/`lm`/`demos`/`signature`...)
# or uses as markers in prompts (`completed`): a field with one of them breaks the call.
_CALL_NAMES = {
    "self",
    "instance",
    "config",
    "lm",
    "demos",
    "signature",
    "new_signature",
    "prediction",
    "completed",
    "args",
    "kwargs",
    "model_config",
}


@dataclass(frozen=True)
class FieldSpec:
    """One signature field. `typed` is False when the spec gave no type (DSPy then implies str)."""

    name: str
    type: ParsedType
    desc: str | None = None
    typed: bool = True


@dataclass(frozen=True)
class SignatureSpec:
    inputs: tuple[FieldSpec, ...]
    outputs: tuple[FieldSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [field.name for field in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [field.name for field in self.outputs]

    def field(self, name: str) -> FieldSpec | None:
        return next((field for field in (*self.inputs, *self.outputs) if field.name == name), None)


@functools.cache
def reserved_field_names() -> frozenset[str]:
    """Field names that collide with DSPy/pydantic attributes of a Signature or with call keywords."""
    attributes = {name for name in dir(dspy.Signature) if not name.startswith("_")}
    attributes |= {name for name in dir(type(dspy.Signature)) if not name.startswith("_")}
    return frozenset(attributes | _CALL_NAMES)


def check_field_name(name: Any) -> str | None:
    """Why `name` cannot be a field, input or output name, or None."""
    if not is_identifier(name):
        return f"{show(name)} is not a valid field name (an identifier, not starting with _)"
    if name in reserved_field_names():
        return f"{show(name)} is reserved by DSPy and cannot be a field name"
    return None


# --- parsing ---------------------------------------------------------------------------------


def parse_signature(value: Any, errors: Errors, path: str) -> SignatureSpec | None:
    """Parse a spec signature, adding errors under `path`; None when it is unusable."""
    before = len(errors)
    if isinstance(value, str):
        spec = _parse_string(value, errors, path)
    elif isinstance(value, dict):
        spec = _parse_object(value, errors, path)
    else:
        errors.add(path, 'must be a string like "question -> answer" or an object with inputs and outputs')
        return None
    if spec is None or len(errors) > before:
        return None
    return spec if _check_field_set(spec, errors, path) else None


def _check_field_set(spec: SignatureSpec, errors: Errors, path: str) -> bool:
    if not spec.outputs:
        errors.add(path, "needs at least one output field")
        return False
    if len(spec.inputs) > MAX_FIELDS or len(spec.outputs) > MAX_FIELDS:
        errors.add(path, f"more than {MAX_FIELDS} input or output fields")
        return False
    if any(is_history(field.type) for field in spec.outputs):
        errors.add(path, "History can only be the type of an input field (the conversation so far)")
        return False
    if sum(is_history(field.type) for field in spec.inputs) > 1:
        errors.add(path, "at most one input field can be a History (DSPy formats only the first)")
        return False
    seen: set[str] = set()
    for field in (*spec.inputs, *spec.outputs):
        if field.name in seen:
            errors.add(path, f"field {show(field.name)} appears more than once")
            return False
        seen.add(field.name)
    return True


def _parse_string(text: str, errors: Errors, path: str) -> SignatureSpec | None:
    if len(text) > MAX_SIGNATURE_LENGTH:
        errors.add(path, f"longer than {MAX_SIGNATURE_LENGTH} characters")
        return None
    try:
        sides = split_top_level(text, "->")
    except ValueError as exc:
        errors.add(path, str(exc))
        return None
    if len(sides) != 2:
        errors.add(path, 'must contain exactly one "->" between inputs and outputs')
        return None
    inputs = _parse_string_side(sides[0], errors, path)
    outputs = _parse_string_side(sides[1], errors, path)
    if inputs is None or outputs is None:
        return None
    return SignatureSpec(tuple(inputs), tuple(outputs))


def _parse_string_side(text: str, errors: Errors, path: str) -> list[FieldSpec] | None:
    items = split_top_level(text, ",")
    if items and not items[-1].strip():
        items = items[:-1]  # tolerate a trailing comma, as Python does
    if len(items) == 1 and not items[0].strip():
        return []
    fields = []
    for item in items:
        name, colon, type_text = item.partition(":")
        name = name.strip()
        problem = check_field_name(name) if name else "empty field name"
        if problem:
            errors.add(path, problem)
            return None
        parsed = _parse_field_type(type_text if colon else None, errors, path, name)
        if parsed is None:
            return None
        fields.append(FieldSpec(name, parsed, typed=bool(colon)))
    return fields


def _parse_field_type(type_text: str | None, errors: Errors, path: str, name: str) -> ParsedType | None:
    if type_text is None:
        return STR
    try:
        return parse_type(type_text)
    except TypeExprError as exc:
        errors.add(path, f"bad type for field {show(name)}: {exc}")
        return None


def split_top_level(text: str, separator: str) -> list[str]:
    """Split on `separator` outside brackets and quotes (so `Literal['a,b']` stays whole)."""
    parts, depth, quote, start, index = [], 0, "", 0, 0
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and text.startswith(separator, index):
            parts.append(text[start:index])
            index += len(separator)
            start = index
            continue
        index += 1
    if quote or depth != 0:
        raise ValueError("unbalanced quotes or brackets")
    parts.append(text[start:])
    return parts


def _parse_object(value: dict, errors: Errors, path: str) -> SignatureSpec | None:
    for key in value:
        if key not in ("inputs", "outputs"):
            errors.add(join_key(path, key), "unknown key (a signature object has inputs and outputs)")
    inputs = _parse_object_side(value.get("inputs", {}), errors, join(path, "inputs"))
    outputs = _parse_object_side(value.get("outputs"), errors, join(path, "outputs"))
    if inputs is None or outputs is None:
        return None
    return SignatureSpec(tuple(inputs), tuple(outputs))


def _parse_object_side(value: Any, errors: Errors, path: str) -> list[FieldSpec] | None:
    if isinstance(value, dict):
        entries = [(join_key(path, name), name, raw) for name, raw in value.items()]
    elif isinstance(value, list):
        entries = [_list_entry(item, join(path, index)) for index, item in enumerate(value)]
    else:
        errors.add(path, "must be an object (or a list) of fields")
        return None
    if len(entries) > MAX_FIELDS:
        errors.add(path, f"more than {MAX_FIELDS} fields")
        return None
    fields = [_parse_object_field(entry, errors) for entry in entries]
    parsed = [field for field in fields if field is not None]
    return parsed if len(parsed) == len(fields) else None


def _list_entry(item: Any, path: str) -> tuple[str, Any, Any]:
    if isinstance(item, dict):
        return path, item.get("name"), {key: value for key, value in item.items() if key != "name"}
    return path, None, item


def _parse_object_field(entry: tuple[str, Any, Any], errors: Errors) -> FieldSpec | None:
    path, name, raw = entry
    problem = check_field_name(name)
    if problem:
        errors.add(path, problem)
        return None
    if raw is None or isinstance(raw, str):
        raw = {} if raw is None else {"type": raw}
    if not isinstance(raw, dict):
        errors.add(path, 'must be an object like {"type": "str", "desc": "..."} or a type string')
        return None
    for key in raw:
        if key not in ("type", "desc"):
            errors.add(join_key(path, key), "unknown key (a field has type and desc)")
    desc = raw.get("desc")
    if desc is not None and (not isinstance(desc, str) or len(desc) > MAX_DESC_LENGTH):
        errors.add(join(path, "desc"), f"must be a string of at most {MAX_DESC_LENGTH} characters")
        return None
    if "type" not in raw:
        return FieldSpec(name, STR, desc, typed=False)
    try:
        return FieldSpec(name, parse_type(raw["type"]), desc)
    except TypeExprError as exc:
        errors.add(join(path, "type"), str(exc))
        return None


# --- building ----------------------------------------------------------------------------------


def build_signature(spec: SignatureSpec, instructions: str | None = None) -> type[dspy.Signature]:
    """A dspy.Signature from resolved types; DSPy's string parser is never involved.

    Fields are declared the way DSPy's string parser declares them (an untyped input is
    marked as such), so a program compiled from a spec and the same program written in
    plain DSPy produce the same prompts and the same saved state.
    """
    fields: dict[str, tuple[Any, Any]] = {}
    for field in spec.inputs:
        extra = {"desc": field.desc} if field.desc else {}
        fields[field.name] = (
            field.type.annotation,
            dspy.InputField(IS_TYPE_UNDEFINED=not field.typed, **extra),
        )
    for field in spec.outputs:
        extra = {"desc": field.desc} if field.desc else {}
        fields[field.name] = (field.type.annotation, dspy.OutputField(**extra))
    return dspy.Signature(fields, instructions or None)
