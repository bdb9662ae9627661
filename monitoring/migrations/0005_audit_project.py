"""Audit events carry the project of their object (empty for site-wide events). Past events are
assigned to `default` when their object is a program, corpus or dataset (all of which were
moved there), and left empty otherwise."""

import django.db.models.deletion
from django.db import migrations, models

PROJECT_TYPES = ("programs.CognitiveProgram", "programs.Corpus", "optimization.Dataset")


def to_default(apps, schema_editor):
    AuditEvent = apps.get_model("monitoring", "AuditEvent")
    if not AuditEvent.objects.exists():
        return
    project, _ = apps.get_model("projects", "Project").objects.get_or_create(name="default")
    AuditEvent.objects.filter(object_type__in=PROJECT_TYPES).update(project=project)


class Migration(migrations.Migration):
    dependencies = [
        ("monitoring", "0004_rollup_schedule"),
        ("projects", "0002_default_project"),
    ]

    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="project",
            field=models.ForeignKey(
                blank=True,
                help_text="The project of the object (empty for site-wide events: caches, providers).",
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="projects.project",
            ),
        ),
        migrations.RunPython(to_default, migrations.RunPython.noop),
    ]
