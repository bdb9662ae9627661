"""What a pipeline takes and returns, read from the spec without compiling it."""

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
    plan, _ = analyze(pipeline, None, None)
    return check_inputs(plan.input_types, inputs, allow_extra=False)
