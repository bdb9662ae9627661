"""The console's two roles as Django groups; what they are and hold is `dspex_site.roles`."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

from dspex_site.roles import OPERATORS, RUN_CODENAME, VIEWERS, grant_console_roles


def ensure_permissions(apps):
    """Create the default model permissions now: on a fresh database Django only creates them
    in post_migrate, after every migration has run."""
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None


def grant_groups(apps, schema_editor):
    ensure_permissions(apps)
    grant_console_roles(
        apps.get_model("auth", "Group"), apps.get_model("auth", "Permission"), apps.get_model("contenttypes", "ContentType")
    )


def remove_groups(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=[OPERATORS, VIEWERS]).delete()
    apps.get_model("auth", "Permission").objects.filter(codename=RUN_CODENAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("monitoring", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("programs", "0001_initial"),
        ("executions", "0002_initial"),
        ("optimization", "0002_initial"),
    ]

    operations = [migrations.RunPython(grant_groups, remove_groups)]
