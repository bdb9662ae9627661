"""Housekeeping run by beat on the `cleanup` queue: reap stuck runs, prune old ones, ANALYZE.

Reaping is what makes a killed worker harmless. Every process running executions refreshes
their `heartbeat_at` (dspex_site.jobs.heartbeat); a `running` row whose heartbeat is older than
DSPEX_HEARTBEAT_STALE_S lost its worker, and is put back to `pending` and published again (or
failed once its attempts are used up): the generic reaper of dspex_site.jobs. The broker's own
redelivery (after the 5 h visibility timeout) then finds the row finished and does nothing: the
claim is a conditional UPDATE. The beat schedules are declared in dspex_site.celery.TASKS.
"""

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, models
from django.utils import timezone

from dspex_site import jobs
from executions import batches
from executions.models import Batch, CognitiveExecution

logger = logging.getLogger(__name__)
Status = CognitiveExecution.Status
BIG_TABLES = ("cognitive_executions", "execution_batches", "audit_events", "optimization_runs")


def reap(now: Any = None) -> dict:
    """Recover rows nobody is working on; returns counts per action (for logs and tests)."""
    now = now or timezone.now()
    return {
        "requeued_lost": jobs.reap_lost(CognitiveExecution, now),
        "failed_time_limit": jobs.fail_overdue(CognitiveExecution, now),
        "republished": _republish_stale_pending(now),
        "batches_topped_up": _top_up_batches(),
    }


def _republish_stale_pending(now: Any, limit: int = 1000) -> int:
    """Pending rows whose message was due long ago (lost while the broker was down) are
    published again; a duplicate message is harmless, the claim lets one run."""
    cutoff = now - timedelta(seconds=settings.DSPEX_PENDING_STALE_S)
    stale = list(
        CognitiveExecution.objects.filter(status=Status.PENDING, queued_at__lt=cutoff).only("id", "priority")[
            :limit
        ]
    )
    published = 0
    for execution in stale:
        try:
            execution.publish()
        except Exception:
            logger.warning("reaper: broker still unavailable; %d pending rows wait", len(stale) - published)
            break
        CognitiveExecution.objects.filter(id=execution.id, status=Status.PENDING).update(queued_at=now)
        published += 1
    return published


def _top_up_batches() -> int:
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
    """Delete finished executions older than the retention (not turns of a live session), one
    bounded chunk per call.

    Returns (deleted, more_left). Chunks keep each DELETE short, so it never holds locks or
    bloats WAL the way one huge DELETE would.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.DSPEX_EXECUTION_RETENTION_DAYS)
    size = settings.DSPEX_PRUNE_BATCH_SIZE
    # A live session's turns are its history: kept while it lives (executions.sessions.prune
    # deletes expired sessions, which sets their turns' `session` to null, and they go then).
    old = prunable_queryset(now)
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


def prunable_queryset(now: Any = None) -> Any:
    """Finished executions older than the retention that are not a live session's turns: what
    `prune` deletes."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.DSPEX_EXECUTION_RETENTION_DAYS)
    return CognitiveExecution.objects.filter(
        created_at__lt=cutoff, status__in=CognitiveExecution.FINISHED, session__isnull=True
    )


class StorageCollector:
    """Scrape-time gauges of storage growth: the database's size, the retention, and when the
    oldest execution `prune` should already have deleted was created (none while pruning keeps
    up). docs/operations.md, "Disk and database growth"."""

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        size = GaugeMetricFamily("dspex_db_size_bytes", "Size of the database on disk (pg_database_size)")
        retention = GaugeMetricFamily(
            "dspex_execution_retention_seconds", "DSPEX_EXECUTION_RETENTION_DAYS, in seconds"
        )
        overdue = GaugeMetricFamily(
            "dspex_execution_prune_overdue_oldest_timestamp_seconds",
            "Creation time of the oldest finished execution older than the retention (absent: none)",
        )
        retention.add_metric([], settings.DSPEX_EXECUTION_RETENTION_DAYS * 86400.0)
        try:
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_database_size(current_database())")
                    size.add_metric([], float(cursor.fetchone()[0]))
            oldest = prunable_queryset().order_by("created_at").values_list("created_at", flat=True).first()
            if oldest is not None:
                overdue.add_metric([], oldest.timestamp())
        except Exception as exc:
            logger.warning("storage gauges unavailable: %s", type(exc).__name__)
        yield size
        yield retention
        yield overdue
