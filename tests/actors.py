"""The shared actors of permission tests: who calls the API, and what each may do.

Every actor is an API client plus the set of access kinds its role grants (`READ`, `RUN`,
`EDIT`, as `dspex_site.permissions.required_permission` classifies requests). Tests ask
`actor.may(kind)` instead of naming roles, so a new kind of caller is one more entry in
`ROLES` (a project-scoped API key with `grants={READ}`, say), and every test parametrized over
`ACTOR_NAMES` covers it at once. The actors with a role are members of the `default` project
(where the factories put rows) with their group's role, as the projects data migration makes
existing users. The dimension that depends on the object as well as the caller is `stranger()`:
an admin of another project, for whom every row of `default` must not exist
(`test_another_project_cannot_read_run_change_or_detect` in tests/api/cases.py).
"""

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import Group, Permission
from rest_framework.test import APIClient

from tests.factories import (
    MembershipFactory,
    OperatorFactory,
    ProjectFactory,
    SuperuserFactory,
    TokenFactory,
    UserFactory,
    ViewerFactory,
)

READ, RUN, EDIT, MANAGE = "read", "run", "edit", "manage"
# Starting (or cancelling) optimizations: RUN for roles, but a scope of its own for API keys.
OPTIMIZE = "optimize"


@dataclass(frozen=True)
class Role:
    make_user: Callable[..., Any] | None  # None: no account (no credentials, or bad ones)
    grants: frozenset[str] = field(default_factory=frozenset)
    credentials: str | None = None  # an Authorization header for an actor without an account
    # A key with only these scopes instead of one with all four.
    scopes: tuple[str, ...] | None = None


def runner(**fields: Any) -> Any:
    """A member of a test-only group that may read and run but not edit: no shipped role has
    exactly that, and without it a request classified as RUN instead of EDIT (or back) would
    pass unnoticed."""
    group, _ = Group.objects.get_or_create(name="Runners (tests)")
    group.permissions.set(
        Permission.objects.filter(
            content_type__app_label="programs", codename__in=["view_cognitiveprogram", "run_cognitiveprogram"]
        )
    )
    user = UserFactory(groups=[group.name], **fields)
    # An operator of the project by role, capped by the group to reading and running.
    MembershipFactory(user=user, role="operator")
    return user


def project_admin(**fields: Any) -> Any:
    """An Operators member who is an admin of the project: also manages its members."""
    user = UserFactory(groups=["Operators"], **fields)
    MembershipFactory(user=user, role="admin")
    return user


def stranger() -> "Actor":
    """A superuser (who sees every project) calling with an API key of another project, of which
    they are also an admin: the key may do every kind of request there, and must see nothing of
    `default`'s."""
    user = SuperuserFactory(username="stranger")
    elsewhere = ProjectFactory(name="elsewhere")
    MembershipFactory(user=user, project=elsewhere, role="admin")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {TokenFactory(user=user, project=elsewhere).key}")
    return Actor("stranger", user, client, frozenset({READ, RUN, OPTIMIZE, EDIT, MANAGE}))


ROLES: dict[str, Role] = {
    "anonymous": Role(None),
    "bad_token": Role(None, credentials="Token not-a-token"),
    # Authenticated, in no group and no project: refused everywhere.
    "outsider": Role(UserFactory),
    # The role actors are members of the `default` project, where the factories put rows, with
    # the role of their group (as the data migration makes them). The API client with limited
    # rights: reads only.
    "viewer": Role(ViewerFactory, frozenset({READ})),
    "runner": Role(runner, frozenset({READ, RUN, OPTIMIZE})),
    "operator": Role(OperatorFactory, frozenset({READ, RUN, OPTIMIZE, EDIT})),
    "project_admin": Role(project_admin, frozenset({READ, RUN, OPTIMIZE, EDIT, MANAGE})),
    "superuser": Role(SuperuserFactory, frozenset({READ, RUN, OPTIMIZE, EDIT, MANAGE})),
    # A project admin's keys with one scope each: each does exactly what its scope says
    # (dspex_site.permissions.required_scope), whatever its user could do. (Keys bound to one
    # project: `stranger()`.)
    "key_read": Role(project_admin, frozenset({READ}), scopes=("read",)),
    "key_execute": Role(project_admin, frozenset({RUN}), scopes=("execute",)),
    "key_optimize": Role(project_admin, frozenset({OPTIMIZE}), scopes=("optimize",)),
    "key_admin": Role(project_admin, frozenset({EDIT, MANAGE}), scopes=("admin",)),
}
ACTOR_NAMES = list(ROLES)
REFUSED_CODES = {"anonymous": "not_authenticated", "bad_token": "authentication_failed"}


@dataclass
class Actor:
    name: str
    user: Any | None
    client: APIClient
    grants: frozenset[str]
    refused_code: str = "permission_denied"

    @property
    def authenticated(self) -> bool:
        return self.user is not None

    def may(self, kind: str) -> bool:
        return kind in self.grants

    def assert_refused(self, response: Any) -> None:
        """As the API refuses today: 401 without valid credentials, 403 `permission_denied` with them
        (`scope_required` for a key lacking the scope)."""
        body = response.content.decode()[:300]
        if not self.authenticated:
            assert response.status_code == 401, (self.name, response.status_code, body)
            assert response.json()["code"] == REFUSED_CODES[self.name], body
            return
        assert response.status_code == 403, (self.name, response.status_code, body)
        assert response.json()["code"] == self.refused_code, body


def make_actor(name: str) -> Actor:
    """The actor `name` of `ROLES`, with a user of that username and a token of its own."""
    role = ROLES[name]
    client = APIClient()
    user = None
    if role.credentials:
        client.credentials(HTTP_AUTHORIZATION=role.credentials)
    if role.make_user is not None:
        user = role.make_user(username=name)
        if role.scopes is None:
            client.credentials(HTTP_AUTHORIZATION=f"Token {TokenFactory(user=user).key}")
        else:
            key = TokenFactory(user=user, scopes=list(role.scopes))
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.key}")
            return Actor(name, user, client, role.grants, refused_code="scope_required")
    return Actor(name, user, client, role.grants)


class Actors(Mapping[str, Actor]):
    """`actors["viewer"]`: each actor is created on first use, so tests pay only for the ones they use."""

    def __init__(self) -> None:
        self._made: dict[str, Actor] = {}

    def __getitem__(self, name: str) -> Actor:
        if name not in self._made:
            self._made[name] = make_actor(name)
        return self._made[name]

    def __iter__(self) -> Iterator[str]:
        return iter(ROLES)

    def __len__(self) -> int:
        return len(ROLES)
