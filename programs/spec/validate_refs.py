"""Validation of references: step input mappings, `$input`, `$var` and `$<step>` uses."""

from typing import Any

from programs.spec.errors import Errors, join, join_key, listing, show
from programs.spec.plan import ProgramPlan, StepPlan
from programs.spec.references import Ref, is_reference, literal, parse_reference
from programs.spec.signatures import SignatureSpec, check_field_name
from programs.spec.types import ANY, ParsedType, allows_none, check_value

MAX_MAPPING = 50


class ReferenceChecks:
    """Mixin of the analyzer (validate.py) for references; adds errors and returns what is valid."""

    errors: Errors
    plan: ProgramPlan
    declared_names: set[str]
    input_origins: dict[str, str]
    steps_by_name: dict[str, StepPlan]
    step_indexes: dict[str, int]
    current: tuple[int, str | None]

    def _bindings(self, path: str, raw: dict, signature: SignatureSpec | None) -> dict[str, Any]:
        inputs_path = join(path, "inputs")
        if "inputs" not in raw:
            if signature is None:
                return {}
            for field in signature.inputs:
                self._record_input(field.name, field.type, inputs_path)
            return {field.name: Ref("input", field.name) for field in signature.inputs}
        mapping = raw["inputs"]
        if not isinstance(mapping, dict) or len(mapping) > MAX_MAPPING:
            self.errors.add(
                inputs_path, f"must be an object mapping input fields to values (at most {MAX_MAPPING})"
            )
            return {}
        bindings = {}
        for key, value in mapping.items():
            key_path = join_key(inputs_path, key)
            key_field = signature.field(key) if signature is not None and isinstance(key, str) else None
            if signature is not None and (key_field is None or key not in signature.input_names):
                self.errors.add(
                    key_path,
                    f"not an input field of the signature (inputs: {listing(signature.input_names)})",
                )
                continue
            binding = self._binding(value, key_path, key_field.type if key_field else ANY)
            if binding is not None:
                bindings[key] = binding
        self._check_missing(inputs_path, mapping, signature)
        return bindings

    def _check_missing(self, path: str, mapping: dict, signature: SignatureSpec | None) -> None:
        for field in signature.inputs if signature else ():
            if field.name not in mapping and not allows_none(field.type.annotation):
                self.errors.add(
                    path, f'input field {show(field.name)} is not mapped (e.g. "$input.{field.name}")'
                )

    def _binding(self, value: Any, path: str, wanted: ParsedType) -> Any:
        if not is_reference(value):
            problem = check_value(wanted.annotation, literal(value))
            if problem:
                self.errors.add(path, f"expected {problem}, got {show(literal(value))}")
                return None
            return literal(value)
        ref = parse_ref_or_error(value, path, self.errors)
        if ref is None:
            return None
        if ref.scope == "input":
            return ref if self._record_input(ref.name, wanted, path) else None
        if ref.scope == "var":
            return ref if self._check_var_ref(ref, path) else None
        return ref if self._check_step_ref(ref, path) else None

    def _check_var_ref(self, ref: Ref, path: str) -> bool:
        if ref.name in self.plan.variables:
            return True
        if ref.name not in self.declared_names:
            self.errors.add(path, f"undeclared variable {show(ref.name)}")
        return False

    def _check_step_ref(self, ref: Ref, path: str) -> bool:
        index, current = self.current
        target = self.steps_by_name.get(ref.scope)
        if ref.scope == current:
            self.errors.add(path, f"step {show(ref.scope)} cannot use its own outputs")
        elif target is None and self.step_indexes.get(ref.scope, -1) > index:
            self.errors.add(
                path, f"step {show(ref.scope)} runs after this one; only earlier steps can be used"
            )
        elif target is None and ref.scope not in self.step_indexes:
            self.errors.add(path, f"unknown step {show(ref.scope)}")
        elif target is not None and target.outputs is not None and ref.name not in target.outputs:
            outputs = listing(target.outputs)
            self.errors.add(
                path, f"step {show(ref.scope)} has no output {show(ref.name)} (outputs: {outputs})"
            )
        else:
            return target is not None
        return False

    def _record_input(self, name: str, wanted: ParsedType, path: str) -> bool:
        problem = check_field_name(name)
        if problem:
            self.errors.add(path, f"bad program input name: {problem}")
            return False
        known = self.plan.input_types.get(name)
        if known is None or known is ANY:
            self.plan.input_types[name] = wanted
            self.input_origins[name] = path
        elif wanted is not ANY and wanted.text != known.text:
            origin = self.input_origins[name]
            self.errors.add(
                path, f"input {show(name)} is used as {wanted.text} here but as {known.text} at {origin}"
            )
            return False
        return True


def parse_ref_or_error(value: str, path: str, errors: Errors) -> Ref | None:
    try:
        return parse_reference(value)
    except ValueError as exc:
        errors.add(path, str(exc))
        return None
