"""The console's operator roles, defined once: group names, the permissions they hold, and the
one function that grants them (used by the `monitoring` data migration and after every migrate).

* **Viewers** see everything in the console and the API but cannot change or run anything.
* **Operators** also run and edit programs and work with executions, optimizations, caches,
  budgets and breakers.
* Users and API tokens stay with superusers: neither group gets an `auth` or `authtoken`
  permission.

The API and the console check the permissions (`READ`, `EDIT`, `RUN`), not group names, so a
site can make other groups with the same permissions (`dspex_site.permissions`).
"""

from typing import Any

OPERATORS = "Operators"
VIEWERS = "Viewers"

# Apps whose models the console shows: viewers may view them all, operators also change them
# (the admin classes keep executions, versions, results and the audit trail read-only anyway).
CONSOLE_APPS = ("programs", "executions", "optimization", "caching", "llm")

RUN_CODENAME = "run_cognitiveprogram"
RUN_NAME = "Can run cognitive program"
READ = "programs.view_cognitiveprogram"
EDIT = "programs.change_cognitiveprogram"
RUN = f"programs.{RUN_CODENAME}"  # the Run page, re-runs, execute, batches, optimize
# Managing a project's members: a project role (admin), never a site group permission.
MANAGE = "projects.manage_members"


def grant_console_roles(group_model: Any, permission_model: Any, content_type_model: Any) -> None:
    """Create the two groups if missing and add their permissions. Only adds, so it is idempotent;
    takes the models as arguments so a migration can pass its historical ones."""
    program_type, _ = content_type_model.objects.get_or_create(app_label="programs", model="cognitiveprogram")
    run, _ = permission_model.objects.get_or_create(
        content_type=program_type, codename=RUN_CODENAME, defaults={"name": RUN_NAME}
    )
    console = permission_model.objects.filter(content_type__app_label__in=CONSOLE_APPS)
    audit_view = permission_model.objects.filter(
        content_type__app_label="monitoring", codename__startswith="view_"
    )
    viewers, _ = group_model.objects.get_or_create(name=VIEWERS)
    viewers.permissions.add(*console.filter(codename__startswith="view_"), *audit_view)
    operators, _ = group_model.objects.get_or_create(name=OPERATORS)
    operators.permissions.add(*console, *audit_view, run)


def sync_console_groups(sender: Any = None, **kwargs: Any) -> None:
    """post_migrate handler: keep the groups in step with the models.

    Runs after every `migrate` (and every test-database flush): the data migration could only
    grant the permissions of models that existed when it was written. A permission removed from
    one of these groups by hand comes back at the next migrate: a site that wants other roles
    makes other groups.
    """
    from django.apps import apps
    from django.contrib.auth.management import create_permissions
    from django.contrib.auth.models import Group, Permission
    from django.contrib.contenttypes.models import ContentType

    configs = list(apps.get_app_configs())
    if sender is not configs[-1]:
        return  # post_migrate is sent once per app: act once, after the last
    for config in configs:  # idempotent; this handler may run before auth's own one
        create_permissions(config, verbosity=0)
    grant_console_roles(Group, Permission, ContentType)


def is_operator(user: Any) -> bool:
    """Superusers, and staff in the Operators group (who may reset breakers; viewers only look)."""
    return bool(
        getattr(user, "is_superuser", False)
        or (getattr(user, "is_staff", False) and user.groups.filter(name=OPERATORS).exists())
    )
