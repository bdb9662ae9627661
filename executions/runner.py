"""The one code path that runs an execution, for synchronous (`wait=true`) and queued runs.

`create_execution` validates everything that can be checked before running (program state,
inputs, variable overrides) and writes a `pending` row; `run_execution` claims the row,
compiles the program version (memoised per process), runs it inside a DSPy context with the
gateway LM and a TraceRecorder, and records output, trace, metrics, duration and status.
"""

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypedDict
from uuid import UUID

import dspy
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from caching.models import ProgramCachePolicy
from caching.optimizations import optimization_state
from dspex_site import db
from dspex_site.errors import DomainError
from dspex_site.jobs import heartbeat
from dspex_site.local_cache import LocalCache
from executions import answers
from executions.models import CognitiveExecution
from executions.tracing import ExecutionCancelled, TraceRecorder
from llm import budgets, gateway, quotas, resilience
from llm.errors import RATE_LIMIT, TRANSIENT, Failure, classify
from monitoring import telemetry
from monitoring.logs import log_context
from programs import retrieval
from programs.models import CognitiveProgram, ProgramVersion
from programs.spec import (
    PipelineModule,
    ProgramSpecError,
    compile_program,
    input_checker,
    resolve_variables,
)
from projects import keys

if TYPE_CHECKING:
    from executions.models import ClaimedExecution
    from executions.sessions import Turn
    from executions.streaming import StreamSink
    from programs.releases import Release

logger = logging.getLogger(__name__)


class ProgramNotRunnable(DomainError):
    """The program exists but cannot run now (archived)."""

    code = "program_archived"


@dataclass
class Outcome:
    """What happened to one run, for the task layer's retry policy."""

    execution: CognitiveExecution
    failure: Failure | None = None
    ran: bool = True
    requeue_in: float | None = None  # set when the retry policy put the execution back to pending


# (failure, attempts so far, execution) -> seconds until the retry, or None to fail now.
RetryPolicy = Callable[[Failure, CognitiveExecution], float | None]


@dataclass(frozen=True)
class RunnableProgram:
    """A program with what every new execution of it needs to know before it is stored, read
    once: its spec's errors, the variable values an applied result tuned, whether its cache
    policy allows the LLM cache, and the providers its runs will call (for the spend limits).

    `runnable_program` serves it from the per-process cache (dspex_site.local_cache): the
    `execute` endpoint's lookup. Any other caller passing a `CognitiveProgram` gets a fresh one.
    """

    program: CognitiveProgram
    spec_errors: tuple
    tuned_variables: dict
    llm_cache: bool
    providers: tuple[str, ...]
    check_input: Callable[[Any], dict]  # validate_inputs for this program's pipeline

    @classmethod
    def of(cls, program: "CognitiveProgram | RunnableProgram") -> "RunnableProgram":
        if isinstance(program, RunnableProgram):
            return program
        tuned = (
            program.active_result.variables if program.active_result_id and program.active_result else None
        )
        return cls(
            program=program,
            spec_errors=tuple(program.spec_errors()),
            tuned_variables=tuned or {},
            llm_cache=ProgramCachePolicy.allows_llm_cache(program.id),
            providers=budgets.program_providers(program),
            check_input=input_checker(program.pipeline),
        )


_runnable: LocalCache[RunnableProgram] = LocalCache("programs")


def runnable_program(program_id: Any) -> RunnableProgram:
    """The program `program_id` for a new execution, from this process's cache (a change made in
    another process is seen within `DSPEX_LOCAL_CACHE_S`). Raises CognitiveProgram.DoesNotExist,
    also for an id that is not a UUID."""
    try:
        key = UUID(str(program_id))
    except ValueError:
        raise CognitiveProgram.DoesNotExist(f"No program {program_id}.") from None
    return _runnable.get(key, lambda: RunnableProgram.of(CognitiveProgram.objects.get(pk=key)))


def forget_program(sender: Any, instance: Any, **kwargs: Any) -> None:
    """Signal receiver (executions.apps): a program or its cache policy changed, or an
    optimization result did (it may be any program's active one: rare, so all are forgotten)."""
    if isinstance(instance, CognitiveProgram):
        _runnable.evict(instance.pk)
    elif isinstance(instance, ProgramCachePolicy):
        _runnable.evict(instance.program_id)
    else:
        _runnable.clear()


Program = CognitiveProgram | RunnableProgram


def create_execution(
    program: Program,
    input_data: Any,
    variables: Any = None,
    *,
    user: Any = None,
    priority: str = CognitiveExecution.Priority.NORMAL,
    use_cache: bool = True,
    batch: Any = None,
    turn: "Turn | None" = None,
    release: "Release | None" = None,
) -> CognitiveExecution:
    """Validate and store a pending execution of the program's current version.

    Raises ProgramNotRunnable (archived) or ProgramSpecError with `input.*` / `variables.*` paths;
    nothing is written unless everything is valid. A session's `turn` (executions.sessions)
    claims its session in the transaction that stores the row (SessionBusy rolls it back).
    """
    execution = _new_execution(
        program, input_data, variables, user, priority, use_cache, release, batch=batch, **_turn_fields(turn)
    )
    if turn is None:
        CognitiveExecution.objects.insert(execution)
        return execution
    with transaction.atomic():
        CognitiveExecution.objects.insert(execution)
        turn.claim(execution)
    return execution


def _turn_fields(turn: "Turn | None") -> dict[str, Any]:
    return {} if turn is None else {"session": turn.session, "turn": turn.number}


def _new_execution(
    program: Program,
    input_data: Any,
    variables: Any,
    user: Any,
    priority: str,
    use_cache: bool,
    release: "Release | None" = None,
    **fields: Any,
) -> CognitiveExecution:
    """A validated, unsaved pending execution (what `create_execution` stores); `release`: the
    version and result to run instead of the current ones (programs.releases)."""
    runnable = RunnableProgram.of(program)
    run = prepare_run(runnable, variables, use_cache, api_key=keys.key_of_user(user), release=release)
    cleaned = (release.check_input if release is not None else runnable.check_input)(input_data)
    return run.execution(cleaned, priority=priority, user=user, queued_at=timezone.now(), **fields)


def run_now(
    program: Program,
    input_data: Any,
    variables: Any = None,
    *,
    user: Any = None,
    priority: str = CognitiveExecution.Priority.NORMAL,
    use_cache: bool = True,
    on_created: Callable[[CognitiveExecution], None] | None = None,
    turn: "Turn | None" = None,
    release: "Release | None" = None,
) -> Outcome:
    """Store and run one execution in the caller's thread: the one path of every "run now" entry
    point (the API's `execute` with `wait=true`, the console's Run page, `manage.py dspex_run`).

    One write stores the row, already claimed (`running`, this process's worker name and
    heartbeat: nobody else may run it, so the pending → running claim of a queued run would be a
    second write for nothing), and one fenced UPDATE finishes it. An identical request answered
    before (executions.answers) is stored finished, in its one INSERT, without running DSPy.
    Someone is waiting for the answer, so the run is `interactive` traffic (served first, may
    use the rate-limit reserve; llm.resilience) whichever entry point started it. Raises what
    `create_execution` raises, with nothing written; `on_created` runs in the transaction that
    stores the row (the console and the command record their audit event there), and so does a
    session's `turn` claiming its session (executions.sessions: SessionBusy rolls the row back).
    """
    started = start_now(
        program,
        input_data,
        variables,
        user=user,
        priority=priority,
        use_cache=use_cache,
        on_created=on_created,
        turn=turn,
        release=release,
    )
    return started.run()


@dataclass
class StartedRun:
    """A stored, claimed execution of `start_now`, to `run()` in this thread or another one:
    finished already when it was answered from a kept answer (`answered`)."""

    execution: CognitiveExecution
    program_name: str
    key: str | None
    answered: bool

    def run(self, sink: "StreamSink | None" = None) -> Outcome:
        if self.answered:
            return Outcome(self.execution)
        with resilience.traffic(resilience.INTERACTIVE):
            return _run_claimed(self.execution, self.program_name, known_key=self.key, sink=sink)


def start_now(
    program: Program,
    input_data: Any,
    variables: Any = None,
    *,
    user: Any = None,
    priority: str = CognitiveExecution.Priority.NORMAL,
    use_cache: bool = True,
    on_created: Callable[[CognitiveExecution], None] | None = None,
    turn: "Turn | None" = None,
    release: "Release | None" = None,
) -> StartedRun:
    """What `run_now` does before it runs the program: validate, store the claimed row (or the
    finished one of a kept answer). Raises, with nothing written, what `create_execution` raises:
    a streamed run (executions.streaming) answers those before its stream starts."""
    now = timezone.now()
    execution = _new_execution(
        program, input_data, variables, user, priority, use_cache, release, **_turn_fields(turn)
    )
    if turn is not None:
        assert on_created is None, "a session turn claims its session in on_created"
        on_created = turn.claim
    for name, value in (CognitiveExecution.claim_values(now) | {"attempts": 1}).items():
        setattr(execution, name, value)
    program_name = RunnableProgram.of(program).program.name
    key = answer_key(execution)
    answer = answers.lookup(key) if key is not None else None
    if answer is not None:
        finished = timezone.now()
        execution.status, execution.finished_at = CognitiveExecution.Status.SUCCEEDED, finished
        execution.output, execution.trace, execution.metrics = (
            answer["output"],
            answer["trace"],
            answer["metrics"],
        )
        execution.duration_ms = duration_ms = int((finished - now).total_seconds() * 1000)
    if on_created is None:
        CognitiveExecution.objects.insert(execution)
    else:
        with transaction.atomic():
            CognitiveExecution.objects.insert(execution)
            on_created(execution)
    if answer is not None:
        meta = {"program": program_name, "traffic": resilience.INTERACTIVE}
        telemetry.emit("execution.start", {}, meta)
        telemetry.emit(
            "execution.stop",
            {"duration_ms": float(duration_ms)},
            {**meta, "status": execution.status},
        )
        return StartedRun(execution, program_name, key, answered=True)
    execution.hold(execution.started_at)
    return StartedRun(execution, program_name, key, answered=False)


def answer_key(execution: CognitiveExecution) -> str | None:
    """The execution answer cache's key for this execution, or None when it may not be answered
    from it (the LLM cache is off for it, or its program is not answerable; executions.answers)."""
    if not execution.use_cache:
        return None
    program = compiled_program(
        execution.program_id, execution.program_version, execution.optimization_result_id
    )
    if not answers.answerable(program.plan):
        return None
    return answers.key_for(
        execution.program_id,
        execution.program_version,
        execution.optimization_result_id,
        execution.input,
        execution.variables,
    )


@dataclass
class RunSettings:
    program: CognitiveProgram
    variables: dict
    use_cache: bool
    release: "Release | None" = None

    def execution(self, input_data: dict, *, priority: str, user: Any, **fields: Any) -> CognitiveExecution:
        """An unsaved pending execution of the program's current version (or the release's),
        with these settings."""
        program = self.program
        release = (
            {"program_version": program.version, "optimization_result_id": program.active_result_id}
            if self.release is None
            else self.release.fields()
        )
        values: dict[str, Any] = dict(
            program=program,
            input=input_data,
            variables=self.variables,
            priority=priority,
            use_cache=self.use_cache,
            created_by=user if getattr(user, "is_authenticated", False) else None,
            api_key=keys.key_of_user(user),
        )
        return CognitiveExecution(**(values | release | fields))

    def with_release(self, release: "Release | None", variables: Any) -> "RunSettings":
        """These settings (checked by `prepare_run`) for `release` of the same program: its
        version's variables with its tuned values and the request's `variables` overrides."""
        if release is None or release is self.release:
            return self
        resolved = resolve_variables(release.variables, {**release.tuned_variables, **(variables or {})})
        return replace(self, variables=resolved, release=release)


def prepare_run(
    program: Program, variables: Any, use_cache: bool, api_key: Any = None, release: "Release | None" = None
) -> RunSettings:
    """What every new execution of a program needs before it is stored, one or a batch of them:
    the program may run now (not archived, a valid spec, within its spend limits), its variable
    values, and whether its policy lets it use the LLM cache."""
    runnable = RunnableProgram.of(program)
    program = runnable.program
    if not program.is_runnable:
        raise ProgramNotRunnable(f"Program '{program.name}' is archived and cannot be executed.")
    if runnable.spec_errors:
        raise ProgramSpecError(list(runnable.spec_errors))
    if variables is not None and not isinstance(variables, dict):
        from programs.spec import SpecError

        raise ProgramSpecError([SpecError("variables", "must be an object of variable overrides")])
    # An applied variable-search result sets the program's variable values; the request's own
    # overrides still win.
    if release is None:
        resolved = resolve_variables(program.variables, {**runnable.tuned_variables, **(variables or {})})
    else:
        resolved = resolve_variables(release.variables, {**release.tuned_variables, **(variables or {})})
    # Spend limits (llm.budgets): refuse new work with `budget_exceeded` (HTTP 402) once reached.
    key_id = api_key.pk if api_key is not None else None
    budgets.check(
        providers=runnable.providers, program_id=program.id, project_id=program.project_id, key_id=key_id
    )
    # The project's and key's per-minute limits (llm.quotas): 429 `rate_limited` once reached.
    quotas.check(program.project_id, key_id)
    return RunSettings(program, resolved, use_cache and runnable.llm_cache, release)


@functools.lru_cache(maxsize=256)
def compiled_program(program_id: UUID, version: int, result_id: UUID | None) -> PipelineModule:
    """Compile a program version once per process, with its optimized state loaded."""
    spec = ProgramVersion.objects.get(program_id=program_id, version=version)
    module = compile_program(spec.pipeline, spec.variables)
    if result_id is not None:
        state = optimization_state(result_id)  # Redis (1 h), then the database
        if state is not None:
            module.load_state(state)
    return module


def _cancel_checker(execution_id: UUID, started_at: Any = None, every_s: float = 1.0) -> Callable[[], bool]:
    """A cheap cancellation probe: at most one indexed query per `every_s` during a run.

    The first probe waits `every_s` after the claim: a run that has just been claimed was not
    cancelled, and short runs then cost no extra query at all.
    """
    probed_at = time.monotonic()
    cancelled = False

    def check() -> bool:
        nonlocal probed_at, cancelled
        now = time.monotonic()
        if not cancelled and now - probed_at >= every_s:
            probed_at = now
            row = (
                CognitiveExecution.objects.filter(id=execution_id).values_list("status", "started_at").first()
            )
            # Cancelled by a user, or failed/re-queued by the reaper (and maybe claimed again by
            # another worker: a new `started_at`): either way this run must stop.
            cancelled = (
                row is None
                or row[0] != CognitiveExecution.Status.RUNNING
                or (started_at is not None and row[1] != started_at)
            )
            db.release()  # back to waiting on LM calls
        return cancelled

    return check


def run_execution(execution: UUID | str | CognitiveExecution, *, retry: RetryPolicy | None = None) -> Outcome:
    """Claim and run a pending execution (by id, or the row the caller already holds).

    Returns without running if another worker has claimed it. With a `retry` policy (the task
    layer's), a failure it wants retried puts the row back to `pending` and the outcome says
    when to run it again; without one (synchronous runs) every failure is final.
    """
    if isinstance(execution, CognitiveExecution):
        started_at = CognitiveExecution.objects.claim(execution.id)
        if started_at is None:
            return Outcome(CognitiveExecution.objects.get(id=execution.id), ran=False)
        execution.refresh_claimed(started_at)
        return _run_claimed(execution, execution.program.name, retry)
    # Annotated: the manager's copy of `claim_row` loses its return type's annotated column
    # in the django-stubs plugin; the queryset method's own type is this.
    claimed: ClaimedExecution | None = CognitiveExecution.objects.claim_row(execution)
    if claimed is None:
        return Outcome(CognitiveExecution.objects.get(id=execution), ran=False)
    return _run_claimed(claimed, claimed.program_name, retry)


_UNSET = object()


def _run_claimed(
    execution: CognitiveExecution,
    program_name: str,
    retry: RetryPolicy | None = None,
    known_key: Any = _UNSET,
    sink: "StreamSink | None" = None,
) -> Outcome:
    """Run an execution this process has claimed (`execution.claim_token` fences its writes):
    from a kept answer when there is one (executions.answers), else by running the program, whose
    answer is then kept if it qualifies. `known_key`: the caller's `answer_key(execution)`."""
    # Traffic class for llm.resilience (rate-limit reserve, bulkhead pool), also on the execution's
    # telemetry: high priority is interactive; so is a run someone waits for (`run_now`).
    interactive = execution.priority == CognitiveExecution.Priority.HIGH
    kind = resilience.INTERACTIVE if interactive else resilience.current_traffic()
    meta = {"program": program_name, "traffic": kind}
    with log_context(execution_id=execution.id, program_id=execution.program_id):
        telemetry.emit("execution.start", {}, meta)
        started = time.perf_counter()
        check = _cancel_checker(execution.id, execution.started_at)
        recorder = TraceRecorder(cancel_check=check, telemetry_meta=meta)
        failure: Failure | None = None
        output = None
        holding = heartbeat.hold(execution)
        answer, key = None, None
        try:
            if known_key is _UNSET:  # queued (run_now's key was checked by this very request)
                keys.check(execution.api_key_id)
            key = known_key if known_key is not _UNSET else answer_key(execution)
            answer = answers.lookup(key) if key is not None else None
            output = answer["output"] if answer is not None else _run(execution, recorder, kind, sink)
        except ExecutionCancelled:
            logger.info("execution stopped while running (cancelled or reaped)")
        except (OperationalError, InterfaceError) as exc:
            failure = Failure(TRANSIENT, "database_unavailable", str(exc)[:1000])
            logger.warning("execution failed: the database was unavailable: %s", exc)
        except Exception as exc:
            failure = classify(exc)
            logger.warning("execution failed: %s: %s", failure.type, failure.message)
        finally:
            heartbeat.release(holding)
        duration_ms = int((time.perf_counter() - started) * 1000)
        delay = retry(failure, execution) if failure is not None and retry is not None else None
        # A database restart must not lose a finished run: the outcome write is retried.
        _with_db_retry(lambda: _record(execution, recorder, output, failure, duration_ms, delay, answer))
        if answer is None and key is not None and execution.status == CognitiveExecution.Status.SUCCEEDED:
            answers.keep(key, output, execution.trace, execution.metrics)
        event = "execution.exception" if failure else "execution.stop"
        telemetry.emit(event, {"duration_ms": duration_ms}, {**meta, "status": execution.status})
    requeued = delay is not None and execution.status == CognitiveExecution.Status.PENDING
    return Outcome(execution, failure, requeue_in=delay if requeued else None)


def _run(
    execution: CognitiveExecution, recorder: TraceRecorder, kind: str, sink: "StreamSink | None" = None
) -> dict:
    program = compiled_program(
        execution.program_id, execution.program_version, execution.optimization_result_id
    )
    lm_for = functools.partial(gateway.lm_for, cache=execution.use_cache)
    # History off and a trace list of this run's own: DSPy appends every LM call to several
    # history lists and every prediction to `settings.trace`, all of which only grow in a
    # long-lived worker. The program is marked for its budget.
    project_id = runnable_program(execution.program_id).program.project_id  # may query: before release
    # With a connection pool, the run's LM calls are waited for without holding a connection.
    db.release()
    with (
        resilience.traffic(
            kind,
            program_id=execution.program_id,
            project_id=project_id,
            key_id=execution.api_key_id,
        ),
        retrieval.for_program(execution.program_id),
        dspy.context(callbacks=[recorder], disable_history=True, trace=[]),
    ):
        if sink is not None:
            from executions.streaming import run_streamed

            return run_streamed(program, execution, lm_for, recorder, sink)
        return program.run(execution.input, execution.variables, lm_for=lm_for, observer=recorder)


def _with_db_retry(write: Callable[[], Any], tries: int = 8) -> Any:
    """Run a database write, reconnecting with backoff (0.5 s doubling to 10 s, ~35 s in all)
    while the database is unreachable: a restarting Postgres is a pause, not a lost result."""
    for attempt in range(tries):
        try:
            return write()
        except (OperationalError, InterfaceError):
            if attempt == tries - 1:
                raise
            logger.warning("database unavailable while recording an execution; retrying")
            connection.close()
            time.sleep(min(0.5 * 2**attempt, 10.0))
    return None


class _RunFields(TypedDict):
    """What every outcome write of a run stores, whatever its status."""

    trace: list[dict]
    metrics: dict
    duration_ms: int


def _record(
    execution: CognitiveExecution,
    recorder: TraceRecorder,
    output: dict | None,
    failure: Failure | None,
    duration_ms: int,
    retry_in: float | None = None,
    answer: dict | None = None,
) -> None:
    # Each branch is one UPDATE: atomic on its own, no transaction round trips needed.
    if answer is not None:  # answered from a kept answer: its trace and metrics
        fields = _RunFields(trace=answer["trace"], metrics=answer["metrics"], duration_ms=duration_ms)
    else:
        fields = _RunFields(trace=recorder.entries, metrics=recorder.metrics(), duration_ms=duration_ms)
    if failure is None and output is not None:
        # `PipelineModule.run` already returns `to_jsonable` output: no second conversion here.
        execution.finish(CognitiveExecution.Status.SUCCEEDED, output=output, **fields)
    elif failure is not None and retry_in is not None:
        execution.requeue_after_failure(
            failure.as_error(), retry_in, spend_attempt=failure.kind != RATE_LIMIT, **fields
        )
    elif failure is not None:
        execution.finish(CognitiveExecution.Status.FAILED, error=failure.as_error(), **fields)
    else:  # cancelled or reaped: keep that status, but still save what this run did
        CognitiveExecution.objects.filter(id=execution.id, started_at=execution.started_at).update(**fields)
        execution.refresh_from_db()
