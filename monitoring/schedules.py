"""Beat schedules owned by monitoring (django-celery-beat rows, created by a migration)."""

from typing import Any

ROLLUP_TASK_NAME = "dspex: usage rollups"


def ensure_schedules(periodic_task: Any = None, interval: Any = None) -> list[str]:
    """Create or update monitoring's beat schedules (idempotent; historical models accepted)."""
    if periodic_task is None:
        from django_celery_beat.models import IntervalSchedule, PeriodicTask

        periodic_task, interval = PeriodicTask, IntervalSchedule
    every_minute, _ = interval.objects.get_or_create(every=60, period="seconds")
    periodic_task.objects.update_or_create(
        name=ROLLUP_TASK_NAME,
        defaults={"task": "monitoring.rollup", "queue": "cleanup", "enabled": True, "interval": every_minute},
    )
    return [ROLLUP_TASK_NAME]
