"""The `default` project, and every existing user a member of it with the role their groups give:
Operators → operator, Viewers → viewer (Operators wins when both). Superusers need no
membership; users in neither group get none. Reversible: going back deletes the memberships the
forward step made (the project stays, the rows of other apps point to it until their own
migrations are reversed)."""

from django.db import migrations

DEFAULT = "default"
ROLE_OF_GROUP = (("Operators", "operator"), ("Viewers", "viewer"))


def forward(apps, schema_editor):
    Project = apps.get_model("projects", "Project")
    Membership = apps.get_model("projects", "Membership")
    User = apps.get_model("auth", "User")
    project, _ = Project.objects.get_or_create(name=DEFAULT)
    for user in User.objects.filter(is_superuser=False).prefetch_related("groups"):
        names = {group.name for group in user.groups.all()}
        role = next((role for group, role in ROLE_OF_GROUP if group in names), None)
        if role is not None:
            Membership.objects.get_or_create(user=user, project=project, defaults={"role": role})


def backward(apps, schema_editor):
    apps.get_model("projects", "Membership").objects.filter(project__name=DEFAULT).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("projects", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("monitoring", "0002_operator_groups"),  # the groups exist
    ]

    operations = [migrations.RunPython(forward, backward)]
