"""Operator roles are defined once (`dspex_site.roles`): the migration, the post_migrate sync,
the API permission class and the console all use the same names and grants."""

import pytest
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType

from dspex_site import permissions, roles


@pytest.mark.django_db
def test_granting_is_idempotent_and_restores_what_was_removed() -> None:
    operators = Group.objects.get(name=roles.OPERATORS)
    before = set(operators.permissions.values_list("pk", flat=True))
    run = Permission.objects.get(codename=roles.RUN_CODENAME)
    operators.permissions.remove(run)
    roles.grant_console_roles(Group, Permission, ContentType)
    roles.grant_console_roles(Group, Permission, ContentType)
    assert set(operators.permissions.values_list("pk", flat=True)) == before
    assert Group.objects.filter(name__in=[roles.OPERATORS, roles.VIEWERS]).count() == 2


@pytest.mark.django_db
def test_viewers_only_view_and_operators_may_run(django_user_model: type) -> None:
    viewer = django_user_model.objects.create_user("v", is_staff=True)
    viewer.groups.add(Group.objects.get(name=roles.VIEWERS))
    operator = django_user_model.objects.create_user("o", is_staff=True)
    operator.groups.add(Group.objects.get(name=roles.OPERATORS))
    assert viewer.has_perm(roles.READ) and not viewer.has_perm(roles.EDIT) and not viewer.has_perm(roles.RUN)
    assert operator.has_perm(roles.READ) and operator.has_perm(roles.EDIT) and operator.has_perm(roles.RUN)
    assert roles.is_operator(operator) and not roles.is_operator(viewer)
    assert (permissions.READ, permissions.EDIT, permissions.RUN) == (roles.READ, roles.EDIT, roles.RUN)
