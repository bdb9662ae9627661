"""Beat schedule for the usage rollups. Created by this migration once; it is now declared in
dspex_site.celery.TASKS and synced after every `migrate` by dspex_site.beat, so this migration
does nothing any more (kept for the migration graph)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("monitoring", "0003_usage_rollups"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(migrations.RunPython.noop, migrations.RunPython.noop)]
