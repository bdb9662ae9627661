"""Beat runs the usage rollup every minute (monitoring.schedules)."""

from django.db import migrations


def create_schedule(apps, schema_editor):
    from monitoring.schedules import ensure_schedules

    ensure_schedules(
        apps.get_model("django_celery_beat", "PeriodicTask"), apps.get_model("django_celery_beat", "IntervalSchedule")
    )


def remove_schedule(apps, schema_editor):
    from monitoring.schedules import ROLLUP_TASK_NAME

    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=ROLLUP_TASK_NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("monitoring", "0003_usage_rollups"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_schedule, remove_schedule)]
