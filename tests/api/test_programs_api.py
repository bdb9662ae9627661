"""Programs over the REST API: CRUD, validation with paths, versions, audit.

Who may call what: tests/api/test_endpoints.py.
"""

import pytest

from monitoring.models import AuditEvent
from programs.models import CognitiveProgram, ProgramVersion

pytestmark = pytest.mark.django_db

QA = {"signature": "question -> answer"}


def test_it_creates_a_program_and_audits_it(api, operator):
    response = api.post(
        "/api/v1/programs/", {"name": "qa", "pipeline": QA, "status": "active"}, format="json"
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["version"] == 1
    assert body["input_fields"] == {"question": "str"}
    assert body["output_fields"] == ["answer"]
    event = AuditEvent.objects.get(action="create")
    assert event.actor == operator and event.channel == "api"
    assert event.object_id == body["id"]
    assert event.changes["pipeline"] == QA


def test_it_rejects_an_invalid_pipeline_with_every_path(api):
    pipeline = {
        "steps": [
            {
                "name": "a",
                "module": "Predikt",
                "signature": "question -> answer",
                "inputs": {"question": "$input.q"},
            },
            {"name": "b", "module": "Predict", "signature": "x -> y", "inputs": {"x": "$retreive.passages"}},
        ]
    }
    response = api.post("/api/v1/programs/", {"name": "bad", "pipeline": pipeline}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_program"
    paths = {e["path"] for e in body["errors"]}
    assert "pipeline.steps[0].module" in paths
    assert "pipeline.steps[1].inputs.x" in paths
    assert not CognitiveProgram.objects.exists()
    assert not AuditEvent.objects.exists()


def test_it_rejects_variables_out_of_range(api):
    variables = {"temperature": {"type": "float", "default": 5, "min": 0, "max": 2}}
    pipeline = {"lm": {"temperature": "$var.temperature"}, "signature": "question -> answer"}
    response = api.post(
        "/api/v1/programs/", {"name": "v", "pipeline": pipeline, "variables": variables}, format="json"
    )
    assert response.status_code == 400
    assert any(e["path"].startswith("variables.temperature") for e in response.json()["errors"])


def test_it_rejects_malformed_json(api):
    response = api.generic(
        "POST", "/api/v1/programs/", '{"name": "x", "pipeline": ', content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["code"] == "malformed_request"


def test_it_bumps_the_version_when_the_pipeline_changes(api, make_program):
    program = make_program(pipeline=QA)
    url = f"/api/v1/programs/{program.id}/"
    assert api.patch(url, {"description": "only words"}, format="json").json()["version"] == 1
    changed = {"signature": "question -> answer, confidence: float"}
    assert api.patch(url, {"pipeline": changed}, format="json").json()["version"] == 2
    versions = ProgramVersion.objects.filter(program=program).order_by("version")
    assert [v.version for v in versions] == [1, 2]
    assert versions[0].pipeline == QA and versions[1].pipeline == changed
    update = AuditEvent.objects.filter(action="update").latest("id")
    assert update.changes["pipeline"] == {"from": QA, "to": changed}


def test_it_filters_by_name_and_status(api, make_program):
    make_program(name="alpha", status="active")
    make_program(name="beta", status="draft")
    names = [p["name"] for p in api.get("/api/v1/programs/?status=draft").json()["results"]]
    assert names == ["beta"]
    names = [p["name"] for p in api.get("/api/v1/programs/?name=alp").json()["results"]]
    assert names == ["alpha"]


def test_it_deletes_and_audits(api, make_program):
    program = make_program()
    assert api.delete(f"/api/v1/programs/{program.id}/").status_code == 204
    assert not CognitiveProgram.objects.exists()
    assert AuditEvent.objects.filter(action="delete", object_id=str(program.id)).exists()


def test_unknown_program_is_404_not_500(api):
    assert api.get("/api/v1/programs/00000000-0000-0000-0000-000000000000/").status_code == 404
    assert api.get("/api/v1/programs/not-a-uuid/").status_code == 404


def test_duplicate_name_is_a_400_with_the_field(api, make_program):
    make_program(name="taken")
    response = api.post("/api/v1/programs/", {"name": "taken", "pipeline": QA}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["path"] == "name"
