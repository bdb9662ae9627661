"""Beat schedules (django-celery-beat rows) synced from the one task table, `dspex_site.celery.TASKS`.

`sync_schedules` is the one path that creates them: it runs after every `migrate` (post_migrate,
connected in `dspex_site.apps`) and on `manage.py dspex_schedules` (e.g. after changing
DSPEX_REAP_INTERVAL_S). It is idempotent: a row that already says what the table says is not
saved again, so beat is not told to reload its schedule for nothing.
"""

from typing import Any

from django.conf import settings
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from dspex_site.celery import TASKS, Cron, Every
from dspex_site.db import session_alias

CREATED, UPDATED, UNCHANGED = "created", "updated", "unchanged"


def schedule_fields(when: Every | Cron) -> dict[str, Any]:
    """The `interval`/`crontab` fields of a PeriodicTask for `when` (its schedule row made if missing)."""
    if isinstance(when, Every):
        seconds = getattr(settings, when.setting) if when.setting else when.seconds
        every, _ = IntervalSchedule.objects.get_or_create(
            every=max(1, int(seconds)), period=IntervalSchedule.SECONDS
        )
        return {"interval": every, "crontab": None}
    crontab, _ = CrontabSchedule.objects.get_or_create(
        minute=when.minute,
        hour=when.hour,
        day_of_month=when.day_of_month,
        month_of_year=when.month_of_year,
        day_of_week=when.day_of_week,
        timezone="UTC",
    )
    return {"crontab": crontab, "interval": None}


def save_periodic_task(
    task: PeriodicTask | None, name: str, fields: dict[str, Any]
) -> tuple[PeriodicTask, str]:
    """Create `name`, or update `task` to `fields` only if something differs."""
    if task is None:
        return PeriodicTask.objects.create(name=name, **fields), CREATED
    changed = [key for key, value in fields.items() if getattr(task, key) != value]
    if not changed:
        return task, UNCHANGED
    for key in changed:
        setattr(task, key, fields[key])
    task.save()
    return task, UPDATED


def sync_schedules() -> dict[str, str]:
    """Create or update the beat row of every scheduled task in `TASKS`; {row name: what happened}."""
    done = {}
    for task_name, wiring in TASKS.items():
        if wiring.schedule is None:
            continue
        fields = {
            "task": task_name,
            "queue": wiring.queue.value,
            "enabled": True,
            **schedule_fields(wiring.schedule),
        }
        existing = PeriodicTask.objects.filter(name=wiring.schedule_name).first()
        _, done[wiring.schedule_name] = save_periodic_task(existing, wiring.schedule_name, fields)
    return done


def sync_after_migrate(sender: Any, **kwargs: Any) -> None:
    """post_migrate is sent once per app: sync once, for django_celery_beat, whose tables it needs
    (and once per database: `migrate` runs on the session alias, `DATABASE_DIRECT_URL` if set)."""
    if sender.label == "django_celery_beat" and kwargs.get("using", "default") == session_alias():
        sync_schedules()
