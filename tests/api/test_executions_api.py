"""GET /api/v1/executions/ — list, filters, pagination, detail, cancel."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from executions.models import CognitiveExecution
from tests.factories import ExecutionFactory

pytestmark = pytest.mark.django_db


def test_it_lists_filters_and_paginates(api, make_program):
    first, second = make_program(name="one"), make_program(name="two")
    for _ in range(3):
        ExecutionFactory(program=first, status="succeeded")
    ExecutionFactory(program=second, status="failed")
    old = ExecutionFactory(program=first, status="succeeded")
    CognitiveExecution.objects.filter(id=old.id).update(created_at=timezone.now() - timedelta(days=2))

    body = api.get("/api/v1/executions/?limit=2").json()
    assert body["count"] == 5 and len(body["results"]) == 2 and body["next"]
    assert "trace" not in body["results"][0]

    assert api.get(f"/api/v1/executions/?program={second.id}").json()["count"] == 1
    assert api.get("/api/v1/executions/?status=failed").json()["count"] == 1
    since = (timezone.now() - timedelta(days=1)).isoformat()
    assert api.get("/api/v1/executions/", {"created_after": since}).json()["count"] == 4


def test_bad_filters_are_400_not_500(api):
    response = api.get("/api/v1/executions/?created_after=yesterday&status=exploded")
    assert response.status_code == 400
    paths = {e["path"] for e in response.json()["errors"]}
    assert {"created_after", "status"} <= paths


def test_the_list_makes_a_bounded_number_of_queries(api, make_program):
    program = make_program()
    for _ in range(30):
        ExecutionFactory(program=program, status="succeeded")
    with CaptureQueriesContext(connection) as ctx:
        assert api.get("/api/v1/executions/").status_code == 200
    assert len(ctx) <= 4  # token auth, count, page


def test_detail_includes_the_trace(api, make_program):
    execution = ExecutionFactory(
        program=make_program(), status="succeeded", trace=[{"kind": "module", "step": "main"}]
    )
    body = api.get(f"/api/v1/executions/{execution.id}/").json()
    assert body["trace"] == [{"kind": "module", "step": "main"}]


def test_cancel_a_pending_execution(api, make_program):
    execution = ExecutionFactory(program=make_program(), status="pending")
    response = api.post(f"/api/v1/executions/{execution.id}/cancel/")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    execution.refresh_from_db()
    assert execution.status == "cancelled" and execution.finished_at is not None


def test_cancel_a_finished_execution_is_409(api, make_program):
    execution = ExecutionFactory(program=make_program(), status="succeeded")
    response = api.post(f"/api/v1/executions/{execution.id}/cancel/")
    assert response.status_code == 409
    assert response.json()["code"] == "already_finished"
