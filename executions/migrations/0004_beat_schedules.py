"""Housekeeping beat schedules (reap, prune, analyze). Created by this migration once; they are
now declared in dspex_site.celery.TASKS and synced after every `migrate` by dspex_site.beat, so
this migration does nothing any more (kept for the migration graph)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("executions", "0003_background_runs"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(migrations.RunPython.noop, migrations.RunPython.noop)]
