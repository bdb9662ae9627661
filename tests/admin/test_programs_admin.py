"""The programs console: list, JSON editing with path errors, versions, restore, audit."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from monitoring.models import AuditEvent
from programs.models import CognitiveProgram, ProgramVersion
from tests.factories import ExecutionFactory

pytestmark = pytest.mark.django_db

LIST = "/admin/programs/cognitiveprogram/"
ADD = LIST + "add/"
BAD_PIPELINE = """{
  "steps": [
    {"name": "answer", "module": "Predikt", "signature": "question -> answer",
     "inputs": {"question": "$retreive.passages"}}
  ]
}"""


def change_url(program: CognitiveProgram) -> str:
    return reverse("admin:programs_cognitiveprogram_change", args=[program.pk])


def form(name: str = "qa", pipeline: str = '{"signature": "question -> answer"}', **fields: str) -> dict:
    return {
        "name": name,
        "description": "",
        "status": "active",
        "pipeline": pipeline,
        "variables": "{}",
        **fields,
    }


def list_queries(client: object) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(LIST)
    assert response.status_code == 200
    return len(queries)


def test_the_list_shows_activity_and_stays_at_a_fixed_number_of_queries(superuser_client, make_program):
    first = make_program("p0")
    ExecutionFactory(finished=True, program=first)
    ExecutionFactory(finished=True, program=first)
    few = list_queries(superuser_client)
    for n in range(1, 30):
        program = make_program(f"p{n}")
        for _ in range(3):
            ExecutionFactory(finished=True, program=program)
    many = list_queries(superuser_client)
    assert many == few, f"{few} queries for 1 program, {many} for 30"
    page = superuser_client.get(LIST).content.decode().lower()
    assert "executions (24 h)" in page and "last execution" in page and "active optimization" in page
    assert ">3<" in page  # p1..p29 each ran three times in the last day


def test_the_list_searches_by_name_and_filters_by_status(superuser_client, make_program):
    make_program("alpha-qa")
    make_program("beta-classifier", status="draft")
    page = superuser_client.get(LIST, {"q": "alpha"}).content.decode()
    assert "alpha-qa" in page and "beta-classifier" not in page
    page = superuser_client.get(LIST, {"status__exact": "draft"}).content.decode()
    assert "beta-classifier" in page and "alpha-qa" not in page


def test_the_editor_shows_pipeline_json_indented(superuser_client, make_program):
    program = make_program("qa", pipeline={"signature": "question -> answer"})
    page = superuser_client.get(change_url(program)).content.decode()
    assert "{\n  &quot;signature&quot;: &quot;question -&gt; answer&quot;\n}" in page


def test_an_invalid_pipeline_is_shown_with_its_paths_and_not_saved(superuser_client):
    response = superuser_client.post(ADD, form(pipeline=BAD_PIPELINE))
    assert response.status_code == 200
    page = response.content.decode()
    assert "pipeline.steps[0].module" in page
    assert "pipeline.steps[0].inputs.question" in page
    assert not CognitiveProgram.objects.exists()
    assert not AuditEvent.objects.exists()


def test_broken_json_says_where_it_breaks(superuser_client):
    response = superuser_client.post(ADD, form(pipeline='{"signature": "question -> answer",\n}'))
    assert response.status_code == 200
    assert "Not valid JSON" in response.content.decode()
    assert "line 2" in response.content.decode()
    assert not CognitiveProgram.objects.exists()


def test_invalid_variables_are_reported_on_the_variables_field(superuser_client):
    variables = '{"temperature": {"type": "float", "default": 5, "min": 0, "max": 2}}'
    pipeline = '{"lm": {"temperature": "$var.temperature"}, "signature": "question -> answer"}'
    response = superuser_client.post(ADD, form(pipeline=pipeline, variables=variables))
    assert response.status_code == 200
    assert "variables.temperature" in response.content.decode()
    assert not CognitiveProgram.objects.exists()


def test_an_invalid_edit_leaves_the_saved_program_alone(superuser_client, make_program):
    program = make_program("qa")
    response = superuser_client.post(change_url(program), form(pipeline=BAD_PIPELINE))
    assert response.status_code == 200
    program.refresh_from_db()
    assert program.pipeline == {"signature": "question -> answer"}
    assert program.version == 1


def test_saving_a_change_bumps_the_version_records_who_and_audits_it(
    superuser_client, operator, make_program
):
    program = make_program("qa")
    response = superuser_client.post(change_url(program), form(pipeline='{"signature": "question -> reply"}'))
    assert response.status_code == 302
    program.refresh_from_db()
    assert program.version == 2
    assert ProgramVersion.objects.get(program=program, version=2).created_by == operator
    event = AuditEvent.objects.get(action="update")
    assert event.channel == "admin" and event.actor == operator and event.ip == "127.0.0.1"
    assert event.changes["pipeline"]["to"] == {"signature": "question -> reply"}


def test_the_history_diffs_versions_and_restores_one_as_a_new_version(superuser_client, make_program):
    program = make_program("qa", pipeline={"signature": "question -> answer"})
    program.pipeline = {"signature": "question -> reply"}
    program.save()
    page = superuser_client.get(change_url(program)).content.decode()
    assert "Version history" in page and "Restore this version" in page

    diff = superuser_client.get(reverse("admin:programs_version", args=[program.pk, 2])).content.decode()
    assert '<div class="del">-    &quot;signature&quot;: &quot;question -&gt; answer&quot;</div>' in diff
    assert '<div class="add">+    &quot;signature&quot;: &quot;question -&gt; reply&quot;</div>' in diff

    response = superuser_client.post(reverse("admin:programs_restore", args=[program.pk, 1]))
    assert response.status_code == 302
    program.refresh_from_db()
    assert program.version == 3
    assert program.pipeline == {"signature": "question -> answer"}
    assert ProgramVersion.objects.filter(program=program).count() == 3
    event = AuditEvent.objects.get(action="restore")
    assert event.changes["restored_version"] == 1 and event.channel == "admin"


def test_restore_needs_a_post(superuser_client, make_program):
    program = make_program("qa")
    response = superuser_client.get(reverse("admin:programs_restore", args=[program.pk, 1]))
    assert response.status_code == 405


def test_a_version_that_no_longer_validates_is_not_restored(superuser_client, make_program):
    program = make_program("qa")
    ProgramVersion.objects.filter(program=program, version=1).update(
        pipeline={"steps": [{"name": "a", "module": "Nope"}]}
    )
    program.pipeline = {"signature": "question -> reply"}
    program.save()
    response = superuser_client.post(reverse("admin:programs_restore", args=[program.pk, 1]), follow=True)
    assert "does not validate" in response.content.decode()
    program.refresh_from_db()
    assert program.pipeline == {"signature": "question -> reply"}


def test_operators_cannot_set_optimizing_but_can_save_a_program_that_is(superuser_client, make_program):
    program = make_program("qa")
    response = superuser_client.post(change_url(program), form(status="optimizing"))
    assert response.status_code == 200
    assert "set by the service while an optimization runs" in response.content.decode()
    program.refresh_from_db()
    assert program.status == "active"
    # A program the service marked `optimizing` can still be edited with its status unchanged.
    CognitiveProgram.objects.filter(id=program.id).update(status="optimizing")
    response = superuser_client.post(change_url(program), form(status="optimizing", description="edited"))
    assert response.status_code == 302
    program.refresh_from_db()
    assert (program.status, program.description) == ("optimizing", "edited")
