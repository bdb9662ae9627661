"""Applying results: which optimization result (if any) a program's executions run with."""

from typing import Any

from django.db import transaction

from dspex_site.errors import DomainError
from monitoring import audit
from optimization.models import OptimizationResult
from programs.models import CognitiveProgram
from programs.spec import StateMismatchError, compile_program


class ResultDoesNotFit(DomainError, ValueError):
    """The result's DSPy state does not load into the program's current version (steps changed)."""

    code = "result_incompatible"


def check_fits(program: CognitiveProgram, result: OptimizationResult) -> None:
    """Executions load the active result into the program's current version: refuse one that cannot."""
    try:
        compile_program(program.pipeline, program.variables).load_state(result.parameters)
    except StateMismatchError as exc:
        raise ResultDoesNotFit(
            f"Result {result.id} (version {result.program_version}) does not fit "
            f"version {program.version}: {exc}"
        ) from exc


def set_active(
    program: CognitiveProgram,
    result: OptimizationResult | None,
    *,
    channel: str,
    request: Any = None,
    user: Any = None,
) -> None:
    """Make `result` (a result of this program) the active parameters, or none. One UPDATE, audited."""
    if result is not None and result.program_id != program.id:
        raise ValueError("a result can only be applied to its own program")
    if result is not None and result.program_version != program.version:
        check_fits(program, result)
    with transaction.atomic():
        before = program.active_result_id
        CognitiveProgram.objects.filter(id=program.id).update(active_result=result)
        program.active_result = result
        audit.record(
            "apply_result" if result else "clear_result",
            program,
            channel=channel,
            request=request,
            user=user,
            changes={"active_result": [str(before) if before else None, str(result.id) if result else None]},
        )
