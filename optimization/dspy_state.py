"""Plain DSPy in, plain DSPy out (docs/dspy.md, "Plain DSPy state files").

Import: the JSON that plain DSPy's `module.save("x.json")` writes (`save_program=False`) — one
entry per predictor, keyed by its name in `named_predictors()`, plus DSPy's `metadata` — checked
against the program's current predictors as a whole (every problem named, with its path, before
anything is written) and stored as an optimization result of `optimizer_type` `imported`.
Export: a result's state with that `metadata`, which plain DSPy's `module.load("x.json")` reads.
"""

from typing import Any

import dspy
from django.db import transaction
from dspy.utils.saving import get_dependency_versions

from dspex_site.errors import DomainError
from monitoring import audit
from optimization.models import OptimizationResult
from programs.models import CognitiveProgram
from programs.spec import StateMismatchError, compile_program
from programs.spec.state import clean_predictor_state

IMPORTED = "imported"
# Demo keys DSPy itself adds besides the signature's fields (BootstrapFewShot marks its demos).
DEMO_EXTRA_KEYS = frozenset({"augmented"})


class StateDoesNotFit(DomainError):
    """A DSPy state file that does not fit the program: every problem, located."""

    code = "state_mismatch"

    def __init__(self, problems: list[dict[str, str]]) -> None:
        self._problems = problems
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(
            f"The DSPy state does not fit the program: {first['path']}: {first['message']}{more}; "
            "nothing was stored."
        )

    def problems(self) -> list[dict[str, str]]:
        return self._problems[:200]


def _field_names(predictor: dspy.Predict) -> list[str]:
    return list(predictor.signature.fields)


def _predictor_problems(name: str, entry: Any, predictor: dspy.Predict) -> list[dict[str, str]]:
    try:
        clean_predictor_state(name, entry)
    except StateMismatchError as exc:
        return [{"path": name, "message": str(exc)}]
    problems: list[dict[str, str]] = []
    fields = _field_names(predictor)
    saved = entry["signature"]["fields"]
    if len(saved) != len(fields):
        problems.append(
            {
                "path": f"{name}.signature.fields",
                "message": f"has {len(saved)} field(s); predictor {name!r} has {len(fields)}: "
                f"{', '.join(fields)}",
            }
        )
    for index, field in enumerate(saved):
        if not (isinstance(field.get("prefix"), str) and isinstance(field.get("description"), str)):
            problems.append(
                {
                    "path": f"{name}.signature.fields[{index}]",
                    "message": "needs a `prefix` and a `description` (text)",
                }
            )
    allowed = set(fields) | DEMO_EXTRA_KEYS
    for index, demo in enumerate(entry.get("demos", [])):
        for key in demo:
            if key not in allowed:
                problems.append(
                    {
                        "path": f"{name}.demos[{index}].{key}",
                        "message": f"not a field of predictor {name!r} (its fields: {', '.join(fields)})",
                    }
                )
    return problems


def state_problems(program: CognitiveProgram, state: Any) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The predictors' state (without DSPy's `metadata`) and every problem of it, located."""
    if not isinstance(state, dict):
        return {}, [{"path": "", "message": "must be the JSON object DSPy's module.save() writes"}]
    metadata = state.get("metadata", {})
    if not isinstance(metadata, dict):
        return {}, [{"path": "metadata", "message": "must be an object (DSPy's dependency versions)"}]
    entries = {key: value for key, value in state.items() if key != "metadata"}
    predictors = dict(compile_program(program.pipeline, program.variables).named_predictors())
    known = ", ".join(predictors)
    problems = [
        {"path": name, "message": f"the program has no predictor {name!r} (its predictors: {known})"}
        for name in entries
        if name not in predictors
    ]
    problems += [
        {"path": name, "message": f"missing: the program's predictor {name!r} has no state in the file"}
        for name in predictors
        if name not in entries
    ]
    for name, predictor in predictors.items():
        if name in entries:
            problems += _predictor_problems(name, entries[name], predictor)
    return entries, problems


def import_state(program: CognitiveProgram, state: Any, *, request: Any = None) -> OptimizationResult:
    """Store a plain DSPy state file as a result of the program's current version; all or nothing."""
    entries, problems = state_problems(program, state)
    if problems:
        raise StateDoesNotFit(problems)
    module = compile_program(program.pipeline, program.variables)
    try:
        module.load_state(entries)
    except StateMismatchError as exc:
        raise StateDoesNotFit([{"path": "", "message": str(exc)}]) from exc
    metadata = state.get("metadata") or {}
    with transaction.atomic():
        result = OptimizationResult.objects.create(
            program=program,
            program_version=program.version,
            optimizer_type=IMPORTED,
            parameters=module.dump_state(),
            performance_metrics={
                "imported": {"dependency_versions": metadata.get("dependency_versions", {})}
            },
        )
        audit.record(
            "import_state",
            program,
            channel="api",
            request=request,
            changes={"result": str(result.id), "predictors": sorted(entries)},
        )
    return result


def export_state(result: OptimizationResult) -> dict[str, Any]:
    """What plain DSPy's `module.load(path)` reads: the predictors' state and DSPy's `metadata`."""
    return {**result.parameters, "metadata": {"dependency_versions": get_dependency_versions()}}
