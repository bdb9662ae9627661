"""Program variables: declarations, their defaults and an execution's overrides.

`{"temperature": {"type": "float", "default": 0.0, "min": 0, "max": 2}}` declares a
variable; `$var.temperature` uses it. An execution may override any declared variable
within its constraints; nothing else may be overridden.
"""

from dataclasses import dataclass
from typing import Any

from programs.spec.errors import Errors, ProgramSpecError, SpecError, join, join_key, show
from programs.spec.numbers import check_number, is_number
from programs.spec.references import is_identifier

VAR_TYPES = ("float", "int", "str", "bool", "choice")
MAX_VARIABLES = 100
MAX_CHOICES = 100
MAX_DESCRIPTION = 2000
_KEYS = {
    "float": {"min", "max"},
    "int": {"min", "max"},
    "str": {"max_length"},
    "bool": set(),
    "choice": {"choices"},
}
_COMMON_KEYS = {"type", "default", "description"}


@dataclass(frozen=True)
class VarDecl:
    """A validated variable declaration."""

    name: str
    type: str
    default: Any
    min: float | None = None
    max: float | None = None
    max_length: int | None = None
    choices: tuple[Any, ...] = ()
    description: str = ""

    @property
    def kinds(self) -> frozenset[str]:
        """The setting kinds (see options.py) a value of this variable always satisfies."""
        if self.type == "choice":
            return _choice_kinds(self.choices)
        return {"float": frozenset({"number"}), "int": frozenset({"int", "number"})}.get(
            self.type, frozenset({self.type})
        )


def _choice_kinds(choices: tuple[Any, ...]) -> frozenset[str]:
    if all(isinstance(choice, str) for choice in choices):
        return frozenset({"str"})
    if all(isinstance(choice, bool) for choice in choices):
        return frozenset({"bool"})
    if all(is_number(choice) for choice in choices):
        ints = all(isinstance(choice, int) for choice in choices)
        return frozenset({"int", "number"}) if ints else frozenset({"number"})
    return frozenset()


# --- declarations -----------------------------------------------------------------------------


def check_declarations(variables: Any, errors: Errors, path: str = "variables") -> dict[str, VarDecl]:
    """Validate a `variables` object, adding errors; return the declarations that are valid."""
    if variables is None:
        return {}
    if not isinstance(variables, dict):
        errors.add(path, "must be an object mapping variable names to declarations")
        return {}
    if len(variables) > MAX_VARIABLES:
        errors.add(path, f"more than {MAX_VARIABLES} variables")
        return {}
    declarations = {}
    for name, raw in variables.items():
        var_path = join_key(path, name)
        if not is_identifier(name):
            errors.add(
                var_path, "variable names must be identifiers (letters, digits, _; not starting with _)"
            )
            continue
        before = len(errors)
        decl = _check_declaration(name, raw, errors, var_path)
        if decl is not None and len(errors) == before:
            declarations[name] = decl
    return declarations


def _check_declaration(name: str, raw: Any, errors: Errors, path: str) -> VarDecl | None:
    if not isinstance(raw, dict):
        errors.add(path, 'must be an object like {"type": "float", "default": 0.5}')
        return None
    var_type = raw.get("type")
    if var_type not in VAR_TYPES:
        errors.add(join(path, "type"), f"must be one of {', '.join(VAR_TYPES)}, got {show(var_type)}")
        return None
    for key in raw:
        if key not in _COMMON_KEYS | _KEYS[var_type]:
            errors.add(join_key(path, key), f"unknown key for a {var_type} variable")
    description = raw.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        errors.add(join(path, "description"), f"must be a string of at most {MAX_DESCRIPTION} characters")
    constraints = _check_constraints(var_type, raw, errors, path)
    if constraints is None:
        return None
    if "default" not in raw:
        errors.add(join(path, "default"), "a default value is required")
        return None
    decl = VarDecl(name, var_type, raw["default"], description=str(description), **constraints)
    problem = check_variable_value(decl, raw["default"])
    if problem:
        errors.add(join(path, "default"), problem)
        return None
    return VarDecl(**{**decl.__dict__, "default": coerce_variable_value(decl, raw["default"])})


def _check_constraints(var_type: str, raw: dict, errors: Errors, path: str) -> dict | None:
    if var_type in ("float", "int"):
        return _check_bounds(var_type, raw, errors, path)
    if var_type == "str":
        return _check_max_length(raw, errors, path)
    if var_type == "choice":
        return _check_choices(raw, errors, path)
    return {}


def _check_bounds(var_type: str, raw: dict, errors: Errors, path: str) -> dict | None:
    bounds: dict[str, float | None] = {}
    for key in ("min", "max"):
        value = raw.get(key)
        if value is not None and check_number(value, integer=var_type == "int") is not None:
            errors.add(join(path, key), f"must be {'a number' if var_type == 'float' else 'an integer'}")
            return None
        bounds[key] = value
    if bounds["min"] is not None and bounds["max"] is not None and bounds["min"] > bounds["max"]:
        errors.add(join(path, "min"), f"min {show(bounds['min'])} is above max {show(bounds['max'])}")
        return None
    return bounds


def _check_max_length(raw: dict, errors: Errors, path: str) -> dict | None:
    value = raw.get("max_length")
    if value is None:
        return {}
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1_000_000:
        errors.add(join(path, "max_length"), "must be an integer between 1 and 1000000")
        return None
    return {"max_length": value}


def _check_choices(raw: dict, errors: Errors, path: str) -> dict | None:
    choices = raw.get("choices")
    choices_path = join(path, "choices")
    if not isinstance(choices, list) or not 1 <= len(choices) <= MAX_CHOICES:
        errors.add(choices_path, f"must be a list of 1 to {MAX_CHOICES} values")
        return None
    seen: list[Any] = []
    for index, choice in enumerate(choices):
        if not (isinstance(choice, str | bool) or is_number(choice)) or (
            isinstance(choice, str) and len(choice) > 200
        ):
            errors.add(
                join(choices_path, index),
                "choices must be strings (up to 200 characters), numbers or booleans",
            )
            return None
        if _contains(seen, choice):
            errors.add(join(choices_path, index), f"duplicate choice {show(choice)}")
            return None
        seen.append(choice)
    return {"choices": tuple(seen)}


def _contains(values: Any, value: Any) -> bool:
    # Type-aware membership: in Python `1 in [True]` is True, which must not pass here.
    return any(type(value) is type(item) and value == item for item in values)


# --- values -------------------------------------------------------------------------------------


def check_variable_value(decl: VarDecl, value: Any) -> str | None:
    """Why `value` is not acceptable for `decl`, or None.

    Ints are accepted for floats; bools are never numbers (in Python `True == 1`).
    """
    if decl.type == "choice":
        if _contains(decl.choices, value):
            return None
        return f"{show(value)} is not one of {', '.join(show(choice) for choice in decl.choices)}"
    if decl.type == "bool":
        return None if isinstance(value, bool) else f"expected a boolean, got {show(value)}"
    if decl.type == "str":
        return _check_str(decl, value)
    return _check_number(decl, value)


def _check_str(decl: VarDecl, value: Any) -> str | None:
    if not isinstance(value, str):
        return f"expected a string, got {show(value)}"
    if decl.max_length is not None and len(value) > decl.max_length:
        return f"longer than the maximum length {decl.max_length}"
    return None


def _check_number(decl: VarDecl, value: Any) -> str | None:
    return check_number(value, integer=decl.type == "int", low=decl.min, high=decl.max)


def coerce_variable_value(decl: VarDecl, value: Any) -> Any:
    # 1 and 1.0 must resolve alike: the value ends up in LM settings and cache keys.
    return float(value) if decl.type == "float" else value


def resolve_declared(declarations: dict[str, VarDecl], overrides: Any) -> dict[str, Any]:
    """Defaults plus overrides for already-validated declarations; raise ProgramSpecError."""
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        raise ProgramSpecError([SpecError("variables", "must be an object mapping variable names to values")])
    errors = Errors()
    values = {name: decl.default for name, decl in declarations.items()}
    for name, value in overrides.items():
        path = join_key("variables", name)
        decl = declarations.get(name) if isinstance(name, str) else None
        if decl is None:
            errors.add(path, "unknown variable")
            continue
        problem = check_variable_value(decl, value)
        if problem:
            errors.add(path, problem)
        else:
            values[name] = coerce_variable_value(decl, value)
    if errors.items:
        raise ProgramSpecError(errors.items)
    return values


def resolve_variables(declarations: Any, overrides: Any = None) -> dict[str, Any]:
    """Declared defaults with an execution's overrides applied, type- and range-checked.

    Raises ProgramSpecError (paths like `variables.temperature`) for invalid declarations,
    unknown override names and values of the wrong type or out of range.
    """
    errors = Errors()
    declared = check_declarations(declarations, errors)
    if errors.items:
        raise ProgramSpecError(errors.items)
    return resolve_declared(declared, overrides)
