"""Batches: one program, many inputs, one execution each, at most `concurrency` in flight.

`create_batch` validates every input up front (errors name `inputs[i].<field>`) and writes the
executions `pending` without task messages; `dispatch` publishes the next ones in input order
until `concurrency` are in flight, and every finished item dispatches again, so a 10,000-input
batch never floods the queue or starves other clients. The reaper tops batches up if a
dispatch was lost (broker outage).
"""

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Q
from django.utils import timezone

from dspex_site.errors import DomainError, decode_text
from executions.models import Batch, CognitiveExecution
from executions.runner import RunSettings, prepare_run
from programs.models import CognitiveProgram
from programs.spec import ProgramSpecError, SpecError, input_checker
from projects import keys

if TYPE_CHECKING:
    from programs.releases import Release

logger = logging.getLogger(__name__)
Status = CognitiveExecution.Status
IN_FLIGHT = Q(status=Status.RUNNING) | Q(status=Status.PENDING, queued_at__isnull=False)


class BatchTooLarge(DomainError, ValueError):
    """More inputs than `DSPEX_BATCH_MAX_INPUTS`."""

    code = "batch_too_large"


def parse_jsonl(lines: Iterable[str | bytes]) -> list[Any]:
    """Inputs from JSONL (one JSON object per line; blank lines skipped)."""
    inputs: list[Any] = []
    errors: list[SpecError] = []
    for number, line in enumerate(lines, start=1):
        text = decode_text(line, path=f"inputs[line {number}]") if isinstance(line, bytes) else line
        if not text.strip():
            continue
        try:
            inputs.append(json.loads(text))
        except json.JSONDecodeError as exc:
            errors.append(SpecError(f"inputs[line {number}]", f"not valid JSON: {exc.msg}"))
    if errors:
        raise ProgramSpecError(errors)
    return inputs


def validate_batch_inputs(
    program: CognitiveProgram, inputs: Any, checkers: list[Callable[[Any], dict]] | None = None
) -> list[dict]:
    """Every input checked against the program (or, with `checkers`, item i against
    `checkers[i]`: its release's version), all errors reported with `inputs[i].` paths."""
    items = _input_list(inputs)
    default = input_checker(program.pipeline)
    cleaned, errors = [], []
    for index, item in enumerate(items):
        try:
            cleaned.append((checkers[index] if checkers is not None else default)(item))
        except ProgramSpecError as exc:
            prefix = f"inputs[{index}]"
            errors += [SpecError(prefix + e.path.removeprefix("input"), e.message) for e in exc.errors]
            if len(errors) >= 100:
                break
    if errors:
        raise ProgramSpecError(errors)
    return cleaned


def _input_list(inputs: Any) -> list[Any]:
    if not isinstance(inputs, list) or not inputs:
        raise ProgramSpecError([SpecError("inputs", "must be a non-empty list of input objects")])
    limit = settings.DSPEX_BATCH_MAX_INPUTS
    if len(inputs) > limit:
        raise BatchTooLarge(f"A batch takes at most {limit} inputs; got {len(inputs)}.")
    return inputs


def create_batch(
    program: CognitiveProgram,
    inputs: Any,
    variables: dict | None = None,
    *,
    user: Any = None,
    concurrency: int | None = None,
    priority: str = CognitiveExecution.Priority.NORMAL,
    use_cache: bool = True,
    dispatch_on_commit: bool = True,
    release_for: "Callable[[Any], Release | None] | None" = None,
) -> Batch:
    """Validate and store a batch with one pending execution per input; dispatch on commit
    (unless the caller runs the items itself: `dspex_batch --in-process`).

    `release_for(input)` (programs.releases.chooser) is the release each item runs: an alias's,
    or its canary arm; None, the program's current release. The item is then checked against that
    release's version and runs with that release's variables and tuned values, exactly as one
    `execute` of it would, and its execution records the release."""
    run = prepare_run(program, variables, use_cache, api_key=keys.key_of_user(user))
    items = _input_list(inputs)
    chosen = [None if release_for is None else release_for(item) for item in items]
    current = input_checker(program.pipeline)
    cleaned = validate_batch_inputs(
        program, items, [current if release is None else release.check_input for release in chosen]
    )
    per_release: dict[Any, RunSettings] = {}

    def settings_for(release: "Release | None") -> RunSettings:
        key = None if release is None else tuple(release.fields().items())
        if key not in per_release:
            per_release[key] = run.with_release(release, variables)
        return per_release[key]

    owner = user if getattr(user, "is_authenticated", False) else None
    with transaction.atomic():
        batch = Batch.objects.create(
            program=program,
            created_by=owner,
            api_key=keys.key_of_user(owner),
            total=len(cleaned),
            concurrency=concurrency or settings.DSPEX_BATCH_CONCURRENCY,
            priority=priority,
        )
        CognitiveExecution.objects.bulk_create(
            (
                settings_for(release).execution(
                    item, priority=priority, user=owner, batch=batch, batch_index=index
                )
                for index, (item, release) in enumerate(zip(cleaned, chosen, strict=True))
            ),
            batch_size=1000,
        )
        if dispatch_on_commit:
            transaction.on_commit(lambda: dispatch(batch.id))
    return batch


def _lock(batch_id: Any) -> None:
    """Serialize dispatches of one batch, so finishing items never overshoot `concurrency`."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"batch:{batch_id}"])


def dispatch(batch_id: Any) -> int:
    """Publish the next items of a batch until `concurrency` are in flight; how many were published."""
    with transaction.atomic():
        _lock(batch_id)
        batch = Batch.objects.filter(id=batch_id, cancelled_at__isnull=True).first()
        if batch is None:
            return 0
        items = CognitiveExecution.objects.filter(batch_id=batch_id)
        free = batch.concurrency - items.filter(IN_FLIGHT).count()
        if free <= 0:
            return 0
        chosen = list(
            items.filter(status=Status.PENDING, queued_at__isnull=True)
            .order_by("batch_index")
            .values_list("id", "priority")[:free]
        )
        CognitiveExecution.objects.filter(id__in=[i for i, _ in chosen]).update(queued_at=timezone.now())
    for position, (execution_id, priority) in enumerate(chosen):
        try:
            CognitiveExecution(id=execution_id, priority=priority).publish()
        except Exception:
            # Broker down: give the rest back, so the next dispatch (or the reaper) publishes them.
            rest = [i for i, _ in chosen[position:]]
            CognitiveExecution.objects.filter(id__in=rest, status=Status.PENDING).update(queued_at=None)
            logger.warning("batch %s: could not publish %d items; will retry", batch_id, len(rest))
            return position
    return len(chosen)


def dispatch_next(batch_id: Any) -> int:
    return dispatch(batch_id)


def cancel(batch: Batch) -> int:
    """Cancel the batch: pending items at once, running ones at their next LM call."""
    with transaction.atomic():
        _lock(batch.id)
        Batch.objects.filter(id=batch.id, cancelled_at__isnull=True).update(cancelled_at=timezone.now())
        cancelled = CognitiveExecution.objects.filter(
            batch_id=batch.id, status__in=[Status.PENDING, Status.RUNNING]
        ).update(
            status=Status.CANCELLED,
            finished_at=timezone.now(),
            error={"type": "cancelled", "message": "The batch was cancelled."},
        )
    batch.refresh_from_db()
    return cancelled


def progress(batch: Batch) -> dict:
    """Counts by status, and how far the batch is."""
    rows = CognitiveExecution.objects.filter(batch_id=batch.id).values("status").annotate(n=Count("id"))
    counts = {status: 0 for status in Status.values} | {row["status"]: row["n"] for row in rows}
    finished = sum(counts[s] for s in CognitiveExecution.FINISHED)
    total = batch.total or sum(counts.values())
    state = "finished" if finished >= total else "running"
    if batch.cancelled_at is not None:
        state = "cancelled"
    return {
        "status": state,
        "total": total,
        "counts": counts,
        "finished": finished,
        "progress": round(finished / total, 4) if total else 1.0,
    }


def result_lines(batch_id: Any, chunk: int = 500, using: str = "default") -> Iterator[str]:
    """The batch's results as JSONL, in input order: input, output, status, error.

    Read in pages of `chunk` items by `batch_index` (the batch's index serves each page), one
    short query each: no cursor outlives its statement, so a long download holds no database
    session and works the same through PgBouncer in transaction mode."""
    rows = CognitiveExecution.objects.using(using).filter(batch_id=batch_id).order_by("batch_index")
    after: int | None = -1
    while True:
        page = list(
            rows.filter(batch_index__gt=after).values_list(
                "batch_index", "id", "input", "output", "status", "error"
            )[:chunk]
        )
        if not page:
            return
        after = page[-1][0]
        yield from (_result_line(*row) for row in page)


def _result_line(*row: Any) -> str:
    index, execution_id, input_data, output, status, error = row
    record = {
        "index": index,
        "execution": str(execution_id),
        "input": input_data,
        "output": output,
        "status": status,
        "error": error,
    }
    return json.dumps(record, separators=(",", ":")) + "\n"
