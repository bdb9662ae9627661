"""Scheduled optimizations on django-celery-beat, and the skip rule for unchanged inputs."""

import json
from typing import Any

from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from dspex_site.beat import save_periodic_task, schedule_fields
from dspex_site.celery import TASKS, Cron, Every
from optimization import datasets, runner
from optimization.models import OptimizationResult, OptimizationRun, OptimizationSchedule

TASK = "optimization.scheduled"


def cron_errors(cron: str) -> list[str]:
    parts = cron.split()
    return [] if len(parts) == 5 else ['must have five fields: "minute hour day month weekday"']


def sync_periodic_task(schedule: OptimizationSchedule) -> PeriodicTask:
    """Create or update the beat entry that fires this schedule (cron or interval); its task and
    queue come from the task table (dspex_site.celery.TASKS), like every other beat row."""
    if schedule.cron:
        minute, hour, day, month, weekday = schedule.cron.split()
        when: Every | Cron = Cron(minute, hour, day, month, weekday)
    else:
        when = Every(schedule.interval_s or 0)
    fields: dict[str, Any] = {
        "task": TASK,
        "args": json.dumps([str(schedule.id)]),
        "enabled": schedule.enabled,
        "queue": TASKS[TASK].queue.value,
        **schedule_fields(when),
    }
    task, _ = save_periodic_task(schedule.periodic_task, f"optimization:{schedule.id}", fields)
    if schedule.periodic_task_id != task.id:
        OptimizationSchedule.objects.filter(id=schedule.id).update(periodic_task=task)
        schedule.periodic_task = task
    return task


def last_result(schedule: OptimizationSchedule) -> OptimizationResult | None:
    run = (
        schedule.runs.filter(status=OptimizationRun.Status.SUCCEEDED, result__isnull=False)
        .select_related("result")
        .order_by("-created_at")
        .first()
    )
    return run.result if run else None


def start_scheduled_run(schedule_id: str) -> OptimizationRun | None:
    """Create this tick's run: pending, or skipped (saying why) when nothing changed since the last result."""
    schedule = (
        OptimizationSchedule.objects.select_related("program", "dataset").filter(id=schedule_id).first()
    )
    if schedule is None:
        return None
    program = schedule.program
    with transaction.atomic():
        run = runner.create_run(
            program,
            schedule.dataset,
            schedule.optimizer,
            schedule.metric,
            config=schedule.config,
            split=schedule.split,
            apply=schedule.apply,
            schedule=schedule,
        )
        previous = last_result(schedule)
        split = datasets.split_rows(datasets.dataset_rows(schedule.dataset), schedule.split)
        if (
            previous is not None
            and previous.program_version == program.version
            and previous.training_data_hash == split.training_data_hash
        ):
            run.status = OptimizationRun.Status.SKIPPED
            run.finished_at = timezone.now()
            run.message = (
                f"Skipped: program version {program.version} and training data "
                f"{split.training_data_hash[:12]} are unchanged since result {previous.id}."
            )
            run.save(update_fields=["status", "finished_at", "message"])
    return run
