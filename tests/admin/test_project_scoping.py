"""The console shows and acts on the user's projects only: lists, search, filters, change and
delete pages, the Run page, actions, dashboards; another project's row is "doesn't exist", as
a missing one. A project's audit trail is its admins'."""

import uuid
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from monitoring import audit
from programs.models import CognitiveProgram
from tests.factories import (
    CorpusFactory,
    ExecutionFactory,
    MembershipFactory,
    OperatorFactory,
    OptimizationRunFactory,
    ProgramFactory,
    ProjectFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


def login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def setup() -> dict[str, Any]:
    mine, theirs = ProjectFactory(name="mine"), ProjectFactory(name="theirs")
    return {
        "client": login(OperatorFactory(username="olga-a", project=mine)),
        "mine": ProgramFactory(name="mine-program", project=mine),
        "theirs": ProgramFactory(name="hidden-program", project=theirs),
        "theirs_project": theirs,
    }


def test_lists_search_and_filters_show_the_users_projects_only(setup: dict[str, Any]) -> None:
    client = setup["client"]
    ExecutionFactory(program=setup["theirs"], finished=True)
    ExecutionFactory(program=setup["mine"], finished=True)
    page = client.get(reverse("admin:programs_cognitiveprogram_changelist")).content.decode()
    assert "mine-program" in page and "hidden-program" not in page
    search = client.get(
        reverse("admin:programs_cognitiveprogram_changelist"), {"q": "hidden"}
    ).content.decode()
    assert "hidden-program" not in search
    executions = client.get(reverse("admin:executions_cognitiveexecution_changelist")).content.decode()
    assert "mine-program" in executions
    assert "hidden-program" not in executions  # neither a row nor a filter choice
    assert "theirs" not in client.get(reverse("admin:programs_corpus_changelist")).content.decode()


def test_another_projects_row_is_answered_as_a_missing_one(setup: dict[str, Any]) -> None:
    client, theirs = setup["client"], setup["theirs"]
    for name in ("change", "delete"):
        real = client.get(reverse(f"admin:programs_cognitiveprogram_{name}", args=[theirs.pk]))
        missing = client.get(reverse(f"admin:programs_cognitiveprogram_{name}", args=[uuid.uuid4()]))
        assert real.status_code == missing.status_code == 302, (name, real.status_code)
        assert real["Location"] == missing["Location"]
    for name in ("programs_run",):
        assert client.get(reverse(f"admin:{name}", args=[theirs.pk])).status_code == 404
    versions = client.get(reverse("admin:programs_programversion_changelist")).content.decode()
    assert "hidden-program" not in versions
    posted = client.post(
        reverse("admin:programs_cognitiveprogram_change", args=[theirs.pk]),
        {"name": "renamed", "pipeline": "{}", "status": "active"},
    )
    assert posted.status_code == 302
    theirs.refresh_from_db()
    assert theirs.name == "hidden-program"


def test_actions_act_on_the_users_rows_only(setup: dict[str, Any]) -> None:
    client, theirs = setup["client"], setup["theirs"]
    response = client.post(
        reverse("admin:programs_cognitiveprogram_changelist"),
        {"action": "delete_selected", "_selected_action": [str(theirs.pk)], "post": "yes"},
    )
    assert response.status_code in (200, 302)
    assert CognitiveProgram.objects.filter(pk=theirs.pk).exists()
    corpus = CorpusFactory(project=setup["theirs_project"])
    client.post(
        reverse("admin:programs_corpus_changelist"),
        {"action": "queue_embedding", "_selected_action": [str(corpus.pk)]},
    )
    corpus.refresh_from_db()
    assert corpus.status == "empty"


def test_a_viewer_role_changes_nothing_whatever_the_group(setup: dict[str, Any]) -> None:
    project = setup["mine"].project
    user = OperatorFactory(username="read-only-olga", project=ProjectFactory(name="elsewhere"))
    MembershipFactory(user=user, project=project, role="viewer")
    client = login(user)
    page = client.get(reverse("admin:programs_cognitiveprogram_change", args=[setup["mine"].pk]))
    assert page.status_code == 200  # may look
    posted = client.post(
        reverse("admin:programs_cognitiveprogram_change", args=[setup["mine"].pk]),
        {"name": "renamed", "pipeline": '{"signature": "q -> a"}', "status": "active"},
    )
    assert posted.status_code == 403
    assert client.get(reverse("admin:programs_run", args=[setup["mine"].pk])).status_code == 403


def test_the_optimizations_dashboard_shows_the_users_projects_only(setup: dict[str, Any]) -> None:
    OptimizationRunFactory(program=setup["theirs"])
    OptimizationRunFactory(program=setup["mine"])
    page = setup["client"].get(reverse("dashboard-optimizations")).content.decode()
    assert "hidden-program" not in page


def test_a_projects_audit_trail_is_its_admins(setup: dict[str, Any]) -> None:
    mine = setup["mine"].project
    audit.record("update", setup["mine"], channel="api", changes={"mine": 1})
    audit.record("update", setup["theirs"], channel="api", changes={"theirs": 1})
    admin = UserFactory(username="ada", groups=["Viewers"])
    MembershipFactory(user=admin, project=mine, role="admin")
    trail = login(admin).get(reverse("admin:monitoring_auditevent_changelist")).content.decode()
    assert "mine-program" in trail and "hidden-program" not in trail
    operator_trail = setup["client"].get(reverse("admin:monitoring_auditevent_changelist")).content.decode()
    assert "mine-program" not in operator_trail  # an operator of the project is not its admin
