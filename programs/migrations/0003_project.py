"""Every cognitiveprogram and corpus belongs to a project: existing rows move into `default`."""

import django.db.models.deletion
from django.db import migrations, models

import projects.models


def to_default(apps, schema_editor):
    project, _ = apps.get_model("projects", "Project").objects.get_or_create(name="default")
    apps.get_model("programs", "CognitiveProgram").objects.filter(project=None).update(project=project)
    apps.get_model("programs", "Corpus").objects.filter(project=None).update(project=project)


class Migration(migrations.Migration):
    dependencies = [
        ("programs", "0002_corpus_document"),
        ("projects", "0002_default_project"),
    ]

    operations = [
        migrations.AddField(
            model_name="cognitiveprogram",
            name="project",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="programs",
                to="projects.project",
            ),
        ),
        migrations.AddField(
            model_name="corpus",
            name="project",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="corpora",
                to="projects.project",
            ),
        ),
        migrations.RunPython(to_default, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="cognitiveprogram",
            name="project",
            field=models.ForeignKey(
                default=projects.models.default_project_id,
                help_text='The project it belongs to (README, "Projects").',
                on_delete=django.db.models.deletion.PROTECT,
                related_name="programs",
                to="projects.project",
            ),
        ),
        migrations.AlterField(
            model_name="corpus",
            name="project",
            field=models.ForeignKey(
                default=projects.models.default_project_id,
                help_text='The project it belongs to (README, "Projects").',
                on_delete=django.db.models.deletion.PROTECT,
                related_name="corpora",
                to="projects.project",
            ),
        ),
    ]
