"""The one code path that runs an execution, for synchronous (`wait=true`) and queued runs.

`create_execution` validates everything that can be checked before running (program state,
inputs, variable overrides) and writes a `pending` row; `run_execution` claims the row,
compiles the program version (memoised per process), runs it inside a DSPy context with the
gateway LM and a TraceRecorder, and records output, trace, metrics, duration and status.
"""

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import dspy

from executions.models import CognitiveExecution
from executions.tracing import ExecutionCancelled, TraceRecorder, jsonable
from llm import gateway
from llm.errors import Failure, classify
from monitoring import telemetry
from monitoring.logs import log_context
from optimization.models import OptimizationResult
from programs.models import CognitiveProgram, ProgramVersion
from programs.spec import (
    PipelineModule,
    ProgramSpecError,
    compile_program,
    resolve_variables,
    validate_inputs,
)

logger = logging.getLogger(__name__)


class ProgramNotRunnable(Exception):
    """The program exists but cannot run now (archived)."""


@dataclass
class Outcome:
    """What happened to one run, for the task layer's retry policy."""

    execution: CognitiveExecution
    failure: Failure | None = None
    ran: bool = True


def create_execution(
    program: CognitiveProgram,
    input_data: Any,
    variables: Any = None,
    *,
    user: Any = None,
    priority: str = CognitiveExecution.Priority.NORMAL,
    use_cache: bool = True,
    batch: Any = None,
) -> CognitiveExecution:
    """Validate and store a pending execution of the program's current version.

    Raises ProgramNotRunnable (archived) or ProgramSpecError with `input.*` / `variables.*` paths;
    nothing is written unless everything is valid.
    """
    if not program.is_runnable:
        raise ProgramNotRunnable(f"Program '{program.name}' is archived and cannot be executed.")
    errors = program.spec_errors()
    if errors:
        raise ProgramSpecError(errors)
    if variables is not None and not isinstance(variables, dict):
        from programs.spec import SpecError

        raise ProgramSpecError([SpecError("variables", "must be an object of variable overrides")])
    cleaned = validate_inputs(program.pipeline, input_data)
    resolved = resolve_variables(program.variables, variables or {})
    return CognitiveExecution.objects.create(
        program=program,
        program_version=program.version,
        optimization_result_id=program.active_result_id,
        input=cleaned,
        variables=resolved,
        priority=priority,
        use_cache=use_cache,
        batch=batch,
        created_by=user if getattr(user, "is_authenticated", False) else None,
    )


@functools.lru_cache(maxsize=256)
def compiled_program(program_id: UUID, version: int, result_id: UUID | None) -> PipelineModule:
    """Compile a program version once per process, with its optimized state loaded."""
    spec = ProgramVersion.objects.get(program_id=program_id, version=version)
    module = compile_program(spec.pipeline, spec.variables)
    if result_id is not None:
        result = OptimizationResult.objects.filter(id=result_id).first()
        if result is not None:
            module.load_state(result.parameters)
    return module


def _cancel_checker(execution_id: UUID, every_s: float = 1.0) -> Any:
    """A cheap cancellation probe: at most one indexed query per `every_s` during a run.

    The first probe waits `every_s` after the claim: a run that has just been claimed was not
    cancelled, and short runs then cost no extra query at all.
    """
    state = {"at": time.monotonic(), "cancelled": False}

    def check() -> bool:
        now = time.monotonic()
        if not state["cancelled"] and now - state["at"] >= every_s:
            state["at"] = now
            status = (
                CognitiveExecution.objects.filter(id=execution_id).values_list("status", flat=True).first()
            )
            state["cancelled"] = status == CognitiveExecution.Status.CANCELLED
        return state["cancelled"]

    return check


def run_execution(execution: UUID | str | CognitiveExecution) -> Outcome:
    """Claim and run a pending execution (by id, or the row the caller already holds).

    Returns without running if another worker has claimed it.
    """
    execution_id = execution.id if isinstance(execution, CognitiveExecution) else execution
    started_at = CognitiveExecution.objects.claim(execution_id)
    if started_at is None:
        return Outcome(CognitiveExecution.objects.get(id=execution_id), ran=False)
    if isinstance(execution, CognitiveExecution):
        execution.refresh_claimed(started_at)
    else:
        execution = CognitiveExecution.objects.select_related("program").get(id=execution_id)
    meta = {"program": execution.program.name}
    with log_context(execution_id=execution.id, program_id=execution.program_id):
        telemetry.emit("execution.start", {}, meta)
        started = time.perf_counter()
        recorder = TraceRecorder(cancel_check=_cancel_checker(execution.id), telemetry_meta=meta)
        failure: Failure | None = None
        output = None
        try:
            output = _run(execution, recorder)
        except ExecutionCancelled:
            logger.info("execution cancelled while running")
        except Exception as exc:
            failure = classify(exc)
            logger.warning("execution failed: %s: %s", failure.type, failure.message)
        duration_ms = int((time.perf_counter() - started) * 1000)
        _record(execution, recorder, output, failure, duration_ms)
        event = "execution.exception" if failure else "execution.stop"
        telemetry.emit(event, {"duration_ms": duration_ms}, {**meta, "status": execution.status})
    return Outcome(execution, failure)


def _run(execution: CognitiveExecution, recorder: TraceRecorder) -> dict:
    program = compiled_program(
        execution.program_id, execution.program_version, execution.optimization_result_id
    )
    lm_for = functools.partial(gateway.lm_for, cache=execution.use_cache)
    # History off and a trace list of this run's own: DSPy appends every LM call to several
    # history lists and every prediction to `settings.trace`, all of which only grow in a
    # long-lived worker.
    with dspy.context(callbacks=[recorder], disable_history=True, trace=[]):
        return program.run(execution.input, execution.variables, lm_for=lm_for, observer=recorder)


def _record(
    execution: CognitiveExecution,
    recorder: TraceRecorder,
    output: dict | None,
    failure: Failure | None,
    duration_ms: int,
) -> None:
    # Each branch is one UPDATE: atomic on its own, no transaction round trips needed.
    fields = {"trace": recorder.entries, "metrics": recorder.metrics(), "duration_ms": duration_ms}
    if failure is None and output is not None:
        execution.finish(CognitiveExecution.Status.SUCCEEDED, output=jsonable(output), **fields)
    elif failure is not None:
        execution.finish(CognitiveExecution.Status.FAILED, error=failure.as_error(), **fields)
    else:  # cancelled: keep the cancellation, but still save what the run did
        CognitiveExecution.objects.filter(id=execution.id).update(**fields)
        execution.refresh_from_db()
