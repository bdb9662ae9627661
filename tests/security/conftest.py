"""One shared set of actors for permission tests: an operator, a viewer and an outsider, each
with an API token, plus anonymous. Roles come from the real groups made by monitoring/0002."""

from dataclasses import dataclass

import pytest
from django.contrib.auth.models import Group
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient


@dataclass
class Actor:
    name: str
    user: object
    client: APIClient


def _actor(django_user_model: type, name: str, group: str | None) -> Actor:
    user = django_user_model.objects.create_user(username=name, password=f"pw-{name}-123456", is_staff=True)
    if group:
        user.groups.add(Group.objects.get(name=group))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return Actor(name, user, client)


@pytest.fixture
def actors(db: None, django_user_model: type) -> dict[str, Actor]:
    return {
        "operator": _actor(django_user_model, "operator", "Operators"),
        "viewer": _actor(django_user_model, "viewer", "Viewers"),
        "outsider": _actor(django_user_model, "outsider", None),
    }
