"""Names are unique per project, not site-wide: two teams may both have a program `qa`; within a
project a second `qa` is a 400 at `name`; a command given an ambiguous name asks for --project."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from optimization.models import Dataset
from programs.models import CognitiveProgram, Corpus
from tests.factories import (
    KeyFactory,
    MembershipFactory,
    OperatorFactory,
    ProgramFactory,
    ProjectFactory,
    default_project,
)
from tests.projects.support import QA, client_for

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("path", "body", "model"),
    [
        ("/api/v1/programs/", {"name": "qa", "pipeline": QA}, CognitiveProgram),
        ("/api/v1/datasets/", {"name": "qa"}, Dataset),
        ("/api/v1/corpora/", {"name": "qa"}, Corpus),
    ],
)
def test_the_same_name_in_two_projects_but_not_twice_in_one(path, body, model):
    user = OperatorFactory(username="two-teams")
    team_b = ProjectFactory(name="team-b")
    MembershipFactory(user=user, project=team_b, role="operator")
    in_a = client_for(KeyFactory(user=user, project=default_project()))
    in_b = client_for(KeyFactory(user=user, project=team_b))
    assert in_a.post(path, body, format="json").status_code == 201
    assert in_b.post(path, body, format="json").status_code == 201
    again = in_b.post(path, body, format="json")
    assert again.status_code == 400, again.content
    assert (
        again.json()["errors"][0]["path"] == "name"
        and "already exists in this project" in again.json()["detail"]
    )
    assert sorted(row.project.name for row in model.objects.filter(name="qa")) == ["default", "team-b"]


def test_renaming_onto_a_name_of_the_same_project_is_refused():
    user = OperatorFactory(username="renamer")
    client = client_for(KeyFactory(user=user))
    ProgramFactory(name="first", pipeline=QA)
    second = ProgramFactory(name="second", pipeline=QA)
    response = client.patch(f"/api/v1/programs/{second.pk}/", {"name": "first"}, format="json")
    assert response.status_code == 400 and response.json()["errors"][0]["path"] == "name"
    assert (
        client.patch(f"/api/v1/programs/{second.pk}/", {"name": "second"}, format="json").status_code == 200
    )


def test_commands_ask_for_the_project_when_a_name_is_in_several():
    team_b = ProjectFactory(name="team-b")
    ProgramFactory(name="qa", pipeline=QA)
    ProgramFactory(name="qa", pipeline=QA, project=team_b)
    with pytest.raises(CommandError, match=r"Several projects have a program named 'qa' \(default, team-b\)"):
        call_command("dspex_export_program", "qa", stdout=StringIO())
    out = StringIO()
    call_command("dspex_export_program", "qa", "--project", "team-b", stdout=out)
    assert '"name": "qa"' in out.getvalue()
