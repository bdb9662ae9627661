"""Housekeeping run by beat on the `cleanup` queue: reap stuck runs, prune old ones, ANALYZE.

Reaping is what makes a killed worker harmless. Every process running executions refreshes
their `heartbeat_at` (executions.runner.Heartbeat); a `running` row whose heartbeat is older than
DSPEX_HEARTBEAT_STALE_S lost its worker, and is put back to `pending` and published again (or
failed once its attempts are used up). The broker's own redelivery (after the 5 h visibility
timeout) then finds the row finished and does nothing: the claim is a conditional UPDATE.
"""

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, models
from django.utils import timezone

from executions.models import Batch, CognitiveExecution

logger = logging.getLogger(__name__)
Status = CognitiveExecution.Status
BIG_TABLES = ("cognitive_executions", "execution_batches", "audit_events", "optimization_runs")


def reap(now: Any = None) -> dict:
    """Recover rows nobody is working on; returns counts per action (for logs and tests)."""
    now = now or timezone.now()
    return {
        "requeued_lost": _requeue_lost(now),
        "failed_time_limit": _fail_overdue(now),
        "republished": _republish_stale_pending(now),
        "batches_topped_up": _top_up_batches(),
    }


def _requeue_lost(now: Any) -> int:
    """Running rows whose worker stopped heartbeating: retry if attempts remain, else fail."""
    from executions.tasks import enqueue_execution

    cutoff = now - timedelta(seconds=settings.DSPEX_HEARTBEAT_STALE_S)
    lost = CognitiveExecution.objects.filter(status=Status.RUNNING, heartbeat_at__lt=cutoff)
    count = 0
    for execution in lost.only("id", "attempts", "errors", "started_at", "priority", "worker"):
        error = {
            "type": "worker_lost",
            "message": f"The worker running this execution ({execution.worker or 'unknown'}) stopped "
            f"responding (no heartbeat for {settings.DSPEX_HEARTBEAT_STALE_S:.0f} s).",
        }
        if execution.attempts >= settings.DSPEX_MAX_ATTEMPTS:
            execution.finish(Status.FAILED, error=error)
        elif execution.requeue_after_failure(error, 0, spend_attempt=True):
            try:
                enqueue_execution(execution)
            except Exception:
                logger.warning("reaper could not publish %s; it stays pending", execution.id)
            count += 1
    if count:
        logger.warning("reaper re-queued %d executions whose worker was lost", count)
    return count


def _fail_overdue(now: Any) -> int:
    """Running rows past their time limit (the thread pool cannot enforce it) fail for good:
    an execution that ran out of time once would most likely do so again."""
    limit = settings.DSPEX_EXECUTION_TIME_LIMIT_S
    overdue = CognitiveExecution.objects.filter(
        status=Status.RUNNING, started_at__lt=now - timedelta(seconds=limit + 60)
    )
    count = 0
    for execution in overdue.only("id", "errors", "started_at"):
        message = f"The execution ran longer than its {limit} s time limit."
        error = {"type": "time_limit_exceeded", "message": message}
        execution.finish(Status.FAILED, error=error)
        count += execution.status == Status.FAILED
    return count


def _republish_stale_pending(now: Any, limit: int = 1000) -> int:
    """Pending rows whose message was due long ago (lost while the broker was down) are
    published again; a duplicate message is harmless, the claim lets one run."""
    from executions.tasks import enqueue_execution

    cutoff = now - timedelta(seconds=settings.DSPEX_PENDING_STALE_S)
    stale = list(
        CognitiveExecution.objects.filter(status=Status.PENDING, queued_at__lt=cutoff).only("id", "priority")[
            :limit
        ]
    )
    published = 0
    for execution in stale:
        try:
            enqueue_execution(execution)
        except Exception:
            logger.warning("reaper: broker still unavailable; %d pending rows wait", len(stale) - published)
            break
        CognitiveExecution.objects.filter(id=execution.id, status=Status.PENDING).update(queued_at=now)
        published += 1
    return published


def _top_up_batches() -> int:
    from executions import batches

    active = (
        CognitiveExecution.objects.filter(
            status=Status.PENDING, queued_at__isnull=True, batch__cancelled_at__isnull=True
        )
        .exclude(batch=None)
        .values_list("batch_id", flat=True)
        .distinct()
    )
    return sum(batches.dispatch(batch_id) for batch_id in list(active[:100]))


def prune(now: Any = None) -> tuple[int, bool]:
    """Delete finished executions older than the retention, one bounded chunk per call.

    Returns (deleted, more_left). Chunks keep each DELETE short, so it never holds locks or
    bloats WAL the way one huge DELETE would.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.DSPEX_EXECUTION_RETENTION_DAYS)
    size = settings.DSPEX_PRUNE_BATCH_SIZE
    old = CognitiveExecution.objects.filter(created_at__lt=cutoff, status__in=CognitiveExecution.FINISHED)
    ids = list(old.order_by("created_at").values_list("id", flat=True)[:size])
    deleted = CognitiveExecution.objects.filter(id__in=ids).delete()[0] if ids else 0
    if len(ids) < size:
        Batch.objects.filter(created_at__lt=cutoff).annotate(n=models.Count("executions")).filter(
            n=0
        ).delete()
    return deleted, len(ids) == size


def analyze() -> list[str]:
    """Refresh planner statistics of the big tables (Postgres only; a no-op elsewhere)."""
    if connection.vendor != "postgresql":
        return []
    done = []
    with connection.cursor() as cursor:
        for table in BIG_TABLES:
            cursor.execute("SELECT to_regclass(%s)", [table])
            if cursor.fetchone()[0] is not None:
                cursor.execute(f'ANALYZE "{table}"')
                done.append(table)
    return done


# name -> (task, schedule): interval seconds (float) or a crontab dict.
SCHEDULES = {
    "dspex: reap stuck executions": ("executions.reap", "reap"),
    "dspex: prune old executions": ("executions.prune", {"minute": "17", "hour": "*"}),
    "dspex: analyze big tables": ("executions.analyze", {"minute": "40", "hour": "3"}),
}


def ensure_schedules(periodic_task: Any = None, interval: Any = None, crontab: Any = None) -> list[str]:
    """Create or update the beat schedules (idempotent). Model classes may be passed in by a
    migration (historical models); by default the real ones are used."""
    if periodic_task is None:
        from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

        periodic_task, interval, crontab = PeriodicTask, IntervalSchedule, CrontabSchedule
    names = []
    for name, (task, when) in SCHEDULES.items():
        if when == "reap":
            every = max(1, int(settings.DSPEX_REAP_INTERVAL_S))
            schedule, _ = interval.objects.get_or_create(every=every, period="seconds")
            kind = {"interval": schedule, "crontab": None}
        else:
            schedule, _ = crontab.objects.get_or_create(
                minute=when["minute"],
                hour=when["hour"],
                day_of_week="*",
                day_of_month="*",
                month_of_year="*",
                timezone="UTC",
            )
            kind = {"crontab": schedule, "interval": None}
        periodic_task.objects.update_or_create(
            name=name, defaults={"task": task, "queue": "cleanup", "enabled": True, **kind}
        )
        names.append(name)
    return names
