"""Beat schedule for `optimization.reap_stale`. Created by this migration once; it is now declared
in dspex_site.celery.TASKS and synced after every `migrate` by dspex_site.beat, so this migration
does nothing any more (kept for the migration graph)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("optimization", "0003_datasets_runs_schedules"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(migrations.RunPython.noop, migrations.RunPython.noop)]
