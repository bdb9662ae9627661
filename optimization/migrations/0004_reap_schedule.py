"""Beat schedule for `optimization.reap_stale`: runs whose worker went silent are re-queued."""

from django.db import migrations


def create_schedule(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    every, _ = IntervalSchedule.objects.get_or_create(every=30, period="seconds")
    PeriodicTask.objects.get_or_create(
        name="optimization: re-queue runs of lost workers",
        # On the cleanup queue: it must run even when every optimization worker is busy or dead.
        defaults={"task": "optimization.reap_stale", "interval": every, "enabled": True, "queue": "cleanup"},
    )


def remove_schedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(
        name="optimization: re-queue runs of lost workers"
    ).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("optimization", "0003_datasets_runs_schedules"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_schedule, remove_schedule)]
