"""What a pipeline takes and returns, read from the spec without compiling it."""

from collections.abc import Callable
from typing import Any

from programs.spec.inputs import check_inputs
from programs.spec.references import is_identifier
from programs.spec.validate import analyze


def program_input_fields(pipeline: Any) -> dict[str, str]:
    """Input field -> canonical type (`{"question": "str", "context": "list[str]"}`).

    The inputs are the `$input` names the pipeline uses; each takes the type of the first
    signature field it feeds (`Any` when it only feeds `outputs`).
    """
    plan, _ = analyze(pipeline, None, None)
    return {name: parsed.text for name, parsed in plan.input_types.items()}


def program_output_fields(pipeline: Any) -> list[str]:
    """Names of the program's outputs: the `outputs` mapping, else the last step's outputs."""
    if isinstance(pipeline, dict) and isinstance(pipeline.get("outputs"), dict):
        return [name for name in pipeline["outputs"] if is_identifier(name)]
    plan, _ = analyze(pipeline, None, None)
    return list(plan.outputs)


def validate_inputs(pipeline: Any, inputs: Any) -> dict[str, Any]:
    """An execution's inputs checked against the pipeline (raises ProgramSpecError, paths `input.<field>`)."""
    return input_checker(pipeline)(inputs)


def input_checker(pipeline: Any) -> Callable[[Any], dict[str, Any]]:
    """`validate_inputs` for one pipeline with the spec read once: for callers checking many
    inputs of it (the per-process cache of runnable programs, executions.runner)."""
    plan, _ = analyze(pipeline, None, None)
    types = plan.input_types
    return lambda inputs: check_inputs(types, inputs, allow_extra=False)
