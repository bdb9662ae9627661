"""The console's two roles as Django groups.

Viewers see everything in the console but cannot change or run anything. Operators run and
edit programs and work with executions and optimizations. Users and API tokens stay with
superusers: neither group gets any `auth` or `authtoken` permission.

`programs.run_cognitiveprogram` is the permission the admin's "Run" page checks.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

OPERATORS = "Operators"
VIEWERS = "Viewers"
# Apps whose models the console shows. Viewers may view all of them; operators may also
# change them (the admin itself keeps executions, versions and the audit trail read-only).
CONSOLE_APPS = ("programs", "executions", "optimization", "caching")
RUN = ("programs", "cognitiveprogram", "run_cognitiveprogram", "Can run cognitive program")


def ensure_permissions(apps):
    """Create the default model permissions now: on a fresh database Django only creates them
    in post_migrate, after every migration has run."""
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None


def grant_groups(apps, schema_editor):
    ensure_permissions(apps)
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    app_label, model, codename, name = RUN
    content_type, _ = ContentType.objects.get_or_create(app_label=app_label, model=model)
    run, _ = Permission.objects.get_or_create(content_type=content_type, codename=codename, defaults={"name": name})
    console = Permission.objects.filter(content_type__app_label__in=CONSOLE_APPS)
    audit_view = Permission.objects.filter(content_type__app_label="monitoring", codename__startswith="view_")

    viewers, _ = Group.objects.get_or_create(name=VIEWERS)
    viewers.permissions.add(*console.filter(codename__startswith="view_"), *audit_view)
    operators, _ = Group.objects.get_or_create(name=OPERATORS)
    operators.permissions.add(*console, *audit_view, run)


def remove_groups(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=[OPERATORS, VIEWERS]).delete()
    apps.get_model("auth", "Permission").objects.filter(codename=RUN[2]).delete()


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
