"""Hourly usage rollups: the dashboards read these instead of scanning executions.

`rollup_hours(hours)` recomputes whole hours from the executions that finished in them and
replaces their rows in one transaction: idempotent, so the beat task can simply redo the current
and previous hour every minute, and a backfill can redo any range.
"""

import bisect
from collections.abc import Iterable
from datetime import datetime, timedelta
from uuid import UUID

from django.db import transaction
from django.utils import timezone

from dspex_site.db import session_alias
from executions.models import CognitiveExecution
from monitoring.models import UsageRollup

# Upper bounds (ms) of the duration histogram buckets; the last bucket is open.
DURATION_BUCKETS_MS = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000)
LM_FIELDS = ("lm_calls", "cache_hits", "prompt_tokens", "completion_tokens", "cost_usd", "saved_cost_usd")


def hour_floor(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _bucket(duration_ms: int | None) -> int:
    return bisect.bisect_left(DURATION_BUCKETS_MS, duration_ms or 0)


def _rows_for_hour(hour: datetime) -> list[UsageRollup]:
    # An hour of executions, streamed through a server-side cursor: on the session alias, since
    # behind PgBouncer in transaction mode the default alias has no server-side cursors.
    executions = (
        CognitiveExecution.objects.using(session_alias())
        .filter(finished_at__gte=hour, finished_at__lt=hour + timedelta(hours=1))
        .values_list("program_id", "program__name", "status", "duration_ms", "metrics")
        .iterator(chunk_size=2000)
    )
    rows: dict[tuple, UsageRollup] = {}

    def row(program_id: UUID, name: str, status: str, model: str) -> UsageRollup:
        key = (program_id, status, model)
        if key not in rows:
            rows[key] = UsageRollup(
                hour=hour,
                program_id=program_id,
                program_name=name,
                status=status,
                model=model,
                duration_histogram=[0] * (len(DURATION_BUCKETS_MS) + 1) if model == "" else [],
            )
        return rows[key]

    for program_id, name, status, duration_ms, metrics in executions:
        total = row(program_id, name, status, "")
        total.executions += 1
        total.duration_ms_sum += duration_ms or 0
        total.duration_histogram[_bucket(duration_ms)] += 1
        for model, sums in ((metrics or {}).get("by_model") or {}).items():
            per_model = row(program_id, name, status, model[:200])
            for field in LM_FIELDS:
                setattr(per_model, field, getattr(per_model, field) + (sums.get(field) or 0))
    return list(rows.values())


def rollup_hours(hours: Iterable[datetime]) -> int:
    """Recompute the given hours; returns how many rollup rows were written."""
    written = 0
    for hour in sorted({hour_floor(h) for h in hours}):
        rows = _rows_for_hour(hour)
        with transaction.atomic():
            UsageRollup.objects.filter(hour=hour).delete()
            UsageRollup.objects.bulk_create(rows, batch_size=1000)
        written += len(rows)
    return written


def rollup_recent(now: datetime | None = None) -> int:
    """The beat task's unit of work: the current hour and the one before."""
    now = now or timezone.now()
    return rollup_hours([now, now - timedelta(hours=1)])


def percentile(histogram: list[int], q: float) -> float | None:
    """Approximate percentile (ms) from merged histogram counts, interpolating inside a bucket."""
    total = sum(histogram)
    if not total:
        return None
    target, seen = q * total, 0
    for index, count in enumerate(histogram):
        if count and seen + count >= target:
            low = DURATION_BUCKETS_MS[index - 1] if index else 0
            high = DURATION_BUCKETS_MS[index] if index < len(DURATION_BUCKETS_MS) else low * 2
            return low + (high - low) * (target - seen) / count
        seen += count
    return float(DURATION_BUCKETS_MS[-1])
