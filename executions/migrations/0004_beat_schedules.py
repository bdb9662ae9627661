"""Create the housekeeping beat schedules (reap, prune, analyze); `manage.py dspex_schedules`
does the same idempotently (e.g. after a test database flush or a settings change)."""

from django.db import migrations


def create_schedules(apps, schema_editor):
    from executions.housekeeping import ensure_schedules

    ensure_schedules(
        apps.get_model("django_celery_beat", "PeriodicTask"),
        apps.get_model("django_celery_beat", "IntervalSchedule"),
        apps.get_model("django_celery_beat", "CrontabSchedule"),
    )


class Migration(migrations.Migration):
    dependencies = [
        ("executions", "0003_background_runs"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_schedules, migrations.RunPython.noop)]
