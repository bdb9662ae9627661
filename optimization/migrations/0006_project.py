"""Every dataset belongs to a project: existing rows move into `default`."""

import django.db.models.deletion
from django.db import migrations, models

import projects.models


def to_default(apps, schema_editor):
    project, _ = apps.get_model("projects", "Project").objects.get_or_create(name="default")
    apps.get_model("optimization", "Dataset").objects.filter(project=None).update(project=project)


class Migration(migrations.Migration):
    dependencies = [
        ("optimization", "0005_job_lifecycle_worker"),
        ("projects", "0002_default_project"),
    ]

    operations = [
        migrations.AddField(
            model_name="dataset",
            name="project",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="datasets",
                to="projects.project",
            ),
        ),
        migrations.RunPython(to_default, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="dataset",
            name="project",
            field=models.ForeignKey(
                default=projects.models.default_project_id,
                help_text='The project it belongs to (README, "Projects").',
                on_delete=django.db.models.deletion.PROTECT,
                related_name="datasets",
                to="projects.project",
            ),
        ),
    ]
