"""Per-project roles in the API: membership-only users, roles per project, the cap of site
groups, the caller's default project on create, members, the cached roles, audit per project."""

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from monitoring.models import AuditEvent
from programs.models import CognitiveProgram
from projects.models import Membership
from tests.factories import (
    MembershipFactory,
    ProgramFactory,
    ProjectFactory,
    TokenFactory,
    UserFactory,
    ViewerFactory,
    default_project,
)

pytestmark = pytest.mark.django_db

QA = {"signature": "question -> answer"}


def client_of(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {TokenFactory(user=user).key}")
    return client


def member(*roles: tuple[Any, str], **fields: Any) -> Any:
    """A user in no site group with the given (project, role) memberships."""
    user = UserFactory(**fields)
    for project, role in roles:
        MembershipFactory(user=user, project=project, role=role)
    return user


def test_a_membership_alone_gives_its_role_in_that_project_only() -> None:
    a, b = ProjectFactory(name="a"), ProjectFactory(name="b")
    client = client_of(member((a, "operator")))
    mine, theirs = ProgramFactory(project=a), ProgramFactory(project=b)
    assert (
        client.patch(f"/api/v1/programs/{mine.id}/", {"description": "x"}, format="json").status_code == 200
    )
    response = client.patch(f"/api/v1/programs/{theirs.id}/", {"description": "x"}, format="json")
    assert response.status_code == 404, response.content
    listed = {row["id"] for row in client.get("/api/v1/programs/").json()["results"]}
    assert listed == {str(mine.id)}


def test_the_role_is_per_project() -> None:
    a, b = ProjectFactory(name="a"), ProjectFactory(name="b")
    client = client_of(member((a, "viewer"), (b, "operator")))
    in_a, in_b = ProgramFactory(project=a), ProgramFactory(project=b)
    assert client.get(f"/api/v1/programs/{in_a.id}/").status_code == 200
    refused = client.patch(f"/api/v1/programs/{in_a.id}/", {"description": "x"}, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "permission_denied"
    assert (
        client.patch(f"/api/v1/programs/{in_b.id}/", {"description": "x"}, format="json").status_code == 200
    )
    run = client.post(f"/api/v1/programs/{in_a.id}/execute/", {"input": {"question": "q"}}, format="json")
    assert run.status_code == 403, run.content
    in_a.refresh_from_db()
    assert in_a.description == ""


def test_site_groups_cap_the_roles_of_their_members() -> None:
    """A Viewers member stays read-only even as a project's operator."""
    user = ViewerFactory()
    Membership.objects.filter(user=user).update(role="operator")
    program = ProgramFactory()
    response = client_of(user).patch(f"/api/v1/programs/{program.id}/", {"description": "x"}, format="json")
    assert response.status_code == 403


def test_a_create_without_project_goes_to_the_callers_project() -> None:
    a, b = ProjectFactory(name="a"), ProjectFactory(name="b")
    only_a = client_of(member((a, "operator")))
    created = only_a.post("/api/v1/programs/", {"name": "p1", "pipeline": QA}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["project"] == a.id
    assert CognitiveProgram.objects.get(name="p1").project == a

    with_default = client_of(member((b, "operator"), (default_project(), "operator")))
    created = with_default.post("/api/v1/programs/", {"name": "p2", "pipeline": QA}, format="json")
    assert created.json()["project"] == default_project().id

    several = client_of(member((a, "operator"), (b, "operator")))
    refused = several.post("/api/v1/datasets/", {"name": "d1"}, format="json")
    assert refused.status_code == 400 and refused.json()["errors"][0]["path"] == "project", refused.content
    chosen = several.post("/api/v1/datasets/", {"name": "d1", "project": b.id}, format="json")
    assert chosen.status_code == 201 and chosen.json()["project"] == b.id


def test_naming_another_project_is_answered_as_naming_none() -> None:
    a, hidden = ProjectFactory(name="a"), ProjectFactory(name="hidden")
    client = client_of(member((a, "operator")))
    other = client.post("/api/v1/corpora/", {"name": "c1", "project": hidden.id}, format="json")
    missing = client.post("/api/v1/corpora/", {"name": "c1", "project": hidden.id + 1000}, format="json")
    assert other.status_code == missing.status_code == 400
    assert other.json()["errors"][0]["path"] == "project"
    assert other.json()["errors"][0]["message"].replace(str(hidden.id), "") == missing.json()["errors"][0][
        "message"
    ].replace(str(hidden.id + 1000), "")


def test_a_viewer_may_not_create_in_its_project() -> None:
    a = ProjectFactory(name="a")
    client = client_of(member((a, "viewer"), (ProjectFactory(name="b"), "operator")))
    refused = client.post("/api/v1/programs/", {"name": "p", "pipeline": QA, "project": a.id}, format="json")
    assert refused.status_code == 403, refused.content
    assert not CognitiveProgram.objects.filter(name="p").exists()


def test_project_admins_manage_members_of_their_projects_only() -> None:
    a, b = ProjectFactory(name="a"), ProjectFactory(name="b")
    admin = client_of(member((a, "admin"), (b, "operator")))
    newcomer = UserFactory()
    added = admin.post(
        f"/api/v1/projects/{a.id}/members/", {"user": newcomer.username, "role": "operator"}, format="json"
    )
    assert added.status_code == 201, added.content
    changed = admin.post(
        f"/api/v1/projects/{a.id}/members/", {"user": newcomer.username, "role": "viewer"}, format="json"
    )
    assert changed.status_code == 200 and Membership.objects.get(user=newcomer, project=a).role == "viewer"
    refused = admin.post(
        f"/api/v1/projects/{b.id}/members/", {"user": newcomer.username, "role": "viewer"}, format="json"
    )
    assert refused.status_code == 403  # an operator of b sees it, but may not manage it
    unknown = admin.post(
        f"/api/v1/projects/{a.id}/members/", {"user": "nobody-at-all", "role": "viewer"}, format="json"
    )
    assert unknown.status_code == 400 and unknown.json()["errors"][0]["path"] == "user"
    bad_role = admin.post(
        f"/api/v1/projects/{a.id}/members/", {"user": newcomer.username, "role": "owner"}, format="json"
    )
    assert bad_role.status_code == 400 and bad_role.json()["errors"][0]["path"] == "role"
    hidden = ProjectFactory(name="hidden")
    assert admin.get(f"/api/v1/projects/{hidden.id}/").status_code == 404
    listed = admin.get("/api/v1/projects/").json()["results"]
    assert {(row["name"], row["role"]) for row in listed} == {("a", "admin"), ("b", "operator")}


def test_creating_a_project_makes_the_creator_its_admin() -> None:
    user = member((ProjectFactory(name="a"), "admin"))
    created = client_of(user).post("/api/v1/projects/", {"name": "team-b"}, format="json")
    assert created.status_code == 201, created.content
    assert Membership.objects.get(user=user, project__name="team-b").role == "admin"
    operator = client_of(member((ProjectFactory(name="c"), "operator")))
    assert operator.post("/api/v1/projects/", {"name": "team-c"}, format="json").status_code == 403


def test_roles_are_cached_and_a_new_membership_is_seen_at_once(settings: Any) -> None:
    settings.DSPEX_LOCAL_CACHE_S = 60
    a, b = ProjectFactory(name="a"), ProjectFactory(name="b")
    user = member((a, "operator"))
    client = client_of(user)
    program = ProgramFactory(project=b)
    assert client.get(f"/api/v1/programs/{program.id}/").status_code == 404
    with CaptureQueriesContext(connection) as warm:
        assert client.get(f"/api/v1/programs/{program.id}/").status_code == 404
    assert not [q for q in warm.captured_queries if "project_memberships" in q["sql"]], warm.captured_queries
    MembershipFactory(user=user, project=b, role="viewer")
    assert client.get(f"/api/v1/programs/{program.id}/").status_code == 200
    Membership.objects.filter(user=user, project=b).delete()
    assert client.get(f"/api/v1/programs/{program.id}/").status_code == 404


def test_audit_events_carry_the_project_of_their_object() -> None:
    a = ProjectFactory(name="a")
    client = client_of(member((a, "operator")))
    created = client.post("/api/v1/programs/", {"name": "audited", "pipeline": QA}, format="json")
    assert created.status_code == 201
    event = AuditEvent.objects.get(action="create", object_id=created.json()["id"])
    assert event.project == a
