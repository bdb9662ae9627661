"""Feedback on executions (README, "Feedback"): record an entry, keep the execution's summary.

Each author counts once: a new entry by the same author supersedes their earlier one (kept, with
`current=False`, as history). The execution's `feedback_count` (current entries) and
`feedback_score` (mean of their scores, entries without a score not counted) are recomputed in
the same transaction, under the execution's row lock, so concurrent entries cannot lose one.
"""

import logging
from typing import Any

from django.db import transaction
from django.db.models import Avg, Count

from dspex_site import celery
from dspex_site.errors import DomainError
from executions.models import CognitiveExecution, Feedback
from monitoring import audit, telemetry
from programs.models import ProgramVersion
from programs.spec import program_output_fields

logger = logging.getLogger(__name__)


class FeedbackRefused(DomainError):
    """Feedback on an execution that has not finished (nothing to judge yet)."""

    code = "not_finished"


def output_fields(execution: CognitiveExecution) -> list[str]:
    """The output fields of the program version the execution ran (the current pipeline if that
    version's snapshot is gone)."""
    pipeline = (
        ProgramVersion.objects.filter(program_id=execution.program_id, version=execution.program_version)
        .values_list("pipeline", flat=True)
        .first()
    )
    if pipeline is None:
        pipeline = execution.program.pipeline
    try:
        return program_output_fields(pipeline)
    except Exception:  # an old invalid pipeline: no field is known
        return []


def corrected_output_problems(execution: CognitiveExecution, corrected: Any) -> list[dict[str, str]]:
    """`{"path", "message"}` for each problem of `corrected_output` (an object whose keys are
    output fields of the version the execution ran; a subset is a partial correction)."""
    if corrected is None:
        return []
    if not isinstance(corrected, dict):
        return [{"path": "corrected_output", "message": "must be an object of output fields, or null"}]
    if not corrected:
        return [{"path": "corrected_output", "message": "must name at least one output field, or be null"}]
    known = output_fields(execution)
    return [
        {
            "path": f"corrected_output.{name}",
            "message": f"not an output field of program version {execution.program_version} "
            f"(its output fields: {', '.join(known) or 'none'})",
        }
        for name in corrected
        if name not in known
    ]


def record(
    execution: CognitiveExecution,
    *,
    user: Any,
    channel: str,
    score: float | None,
    label: str = "",
    corrected_output: dict[str, Any] | None = None,
    comment: str = "",
    request: Any = None,
) -> Feedback:
    """Store one entry (validated by the caller) and refresh the execution's summary; audited."""
    author = user if getattr(user, "is_authenticated", False) else None
    with transaction.atomic():
        locked = CognitiveExecution.objects.select_for_update().only("id", "status").get(pk=execution.pk)
        if locked.status not in CognitiveExecution.FINISHED:
            raise FeedbackRefused(
                f"Execution {execution.id} is {locked.status}: feedback is for finished executions."
            )
        if author is not None:
            Feedback.objects.filter(execution_id=execution.pk, author=author, current=True).update(
                current=False
            )
        entry = Feedback.objects.create(
            execution_id=execution.pk,
            author=author,
            author_name=getattr(author, "username", "") if author else "",
            channel=channel,
            score=score,
            label=label,
            corrected_output=corrected_output,
            comment=comment,
        )
        summary = Feedback.objects.filter(execution_id=execution.pk, current=True).aggregate(
            count=Count("id"), score=Avg("score")
        )
        CognitiveExecution.objects.filter(pk=execution.pk).update(
            feedback_count=summary["count"], feedback_score=summary["score"]
        )
        execution.feedback_count, execution.feedback_score = summary["count"], summary["score"]
        audit.record(
            "feedback",
            execution,
            channel=channel,
            user=author,
            request=request,
            changes={
                "feedback": entry.pk,
                "score": score,
                "label": label,
                "corrected_output": corrected_output,
                "comment": comment,
            },
        )
        program = execution.program.name
        canary_id = CognitiveExecution.objects.filter(pk=execution.pk).values_list("canary_id", flat=True)[0]
        if canary_id is not None:  # a canary's rules may now hold (programs.releases.evaluate)
            transaction.on_commit(lambda: _evaluate_canary(canary_id))
        transaction.on_commit(
            lambda: telemetry.emit(
                "feedback.received",
                {} if score is None else {"score": score},
                {"program": program, "channel": channel},
            )
        )
    return entry


def _evaluate_canary(canary_id: Any) -> None:
    """Publish the canary's evaluation; a broker outage only delays it to the next beat tick."""
    try:
        celery.publish("releases.evaluate_canary", str(canary_id))
    except Exception as exc:
        logger.warning("canary evaluation not published (the beat task will run it): %s", type(exc).__name__)
