"""`POST/GET /api/v1/executions/{id}/feedback/`, the execution's `feedback` summary, the
`has_feedback`/`min_score` filters, metrics and audit (README, "Feedback")."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from executions.models import CognitiveExecution, Feedback
from executions.serializers import ExecutionSerializer, ExecutionSummarySerializer, execution_data
from monitoring.models import AuditEvent
from tests.factories import (
    ExecutionFactory,
    FeedbackFactory,
    MembershipFactory,
    OperatorFactory,
    ProgramFactory,
    ProjectFactory,
)

pytestmark = pytest.mark.django_db


def url(execution: CognitiveExecution) -> str:
    return f"/api/v1/executions/{execution.pk}/feedback/"


def client_of(user: object) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_feedback_is_stored_audited_and_summarised(api, operator):
    execution = ExecutionFactory(finished=True)
    response = api.post(
        url(execution),
        {"score": 0.25, "label": "wrong", "corrected_output": {"answer": "b"}, "comment": "not a"},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["score"] == 0.25 and body["label"] == "wrong" and body["corrected_output"] == {"answer": "b"}
    assert body["author"] == operator.username and body["current"] is True and body["channel"] == "api"

    detail = api.get(f"/api/v1/executions/{execution.pk}/").json()
    assert detail["feedback"] == {"count": 1, "score": 0.25}
    listed = api.get("/api/v1/executions/").json()["results"]
    assert [row["feedback"] for row in listed if row["id"] == str(execution.pk)] == [
        {"count": 1, "score": 0.25}
    ]

    event = AuditEvent.objects.get(action="feedback", object_id=str(execution.pk))
    assert event.actor == operator and event.channel == "api"
    assert event.changes["score"] == 0.25 and event.changes["corrected_output"] == {"answer": "b"}


def test_each_author_counts_once_with_their_latest_entry(api, operator):
    execution = ExecutionFactory(finished=True)
    assert api.post(url(execution), {"score": 0.2}, format="json").status_code == 201
    assert api.post(url(execution), {"score": 0.6, "label": "better"}, format="json").status_code == 201
    execution.refresh_from_db()
    assert (execution.feedback_count, execution.feedback_score) == (1, 0.6)

    other = client_of(OperatorFactory())
    assert other.post(url(execution), {"score": 1.0}, format="json").status_code == 201
    # A comment without a score counts as an entry but not in the mean.
    third = client_of(OperatorFactory())
    assert third.post(url(execution), {"comment": "slow"}, format="json").status_code == 201
    execution.refresh_from_db()
    assert execution.feedback_count == 3
    assert execution.feedback_score == pytest.approx(0.8)

    history = api.get(url(execution)).json()
    assert [(e["score"], e["current"]) for e in history] == [
        (None, True),
        (1.0, True),
        (0.6, True),
        (0.2, False),
    ]


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"score": 1.5}, "score"),
        ({"score": -0.1}, "score"),
        ({"score": "high"}, "score"),
        ({"corrected_output": {"answer": "b", "confidence": 1}}, "corrected_output.confidence"),
        ({"corrected_output": ["b"]}, "corrected_output"),
        ({"corrected_output": {}}, "corrected_output"),
        ({"label": "x" * 101}, "label"),
        ({"scor": 1}, "scor"),
        ({}, "score"),
    ],
)
def test_bad_feedback_is_a_located_400_and_writes_nothing(api, body, path):
    execution = ExecutionFactory(finished=True)
    response = api.post(url(execution), body, format="json")
    assert response.status_code == 400, response.content
    error = response.json()
    assert error["code"] == "invalid"
    assert path in [e["path"] for e in error["errors"]]
    assert not Feedback.objects.exists() and not AuditEvent.objects.filter(action="feedback").exists()
    execution.refresh_from_db()
    assert execution.feedback_count == 0


def test_corrected_output_follows_the_version_the_execution_ran(api):
    program = ProgramFactory()  # v1: question -> answer
    ran_v1 = ExecutionFactory(finished=True, program=program)
    program.pipeline = {"signature": "question -> summary"}
    program.save()
    ran_v2 = ExecutionFactory(finished=True, program=program)
    assert (ran_v1.program_version, ran_v2.program_version) == (1, 2)

    assert api.post(url(ran_v1), {"corrected_output": {"answer": "x"}}, format="json").status_code == 201
    refused = api.post(url(ran_v2), {"corrected_output": {"answer": "x"}}, format="json")
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["path"] == "corrected_output.answer"
    assert "summary" in refused.json()["errors"][0]["message"]
    assert api.post(url(ran_v2), {"corrected_output": {"summary": "x"}}, format="json").status_code == 201


def test_an_unfinished_execution_takes_no_feedback(api):
    execution = ExecutionFactory()  # pending
    response = api.post(url(execution), {"score": 1}, format="json")
    assert response.status_code == 409 and response.json()["code"] == "not_finished"
    assert not Feedback.objects.exists()


def test_another_projects_execution_is_a_404(db):
    elsewhere = ProjectFactory(name="elsewhere")
    theirs = ExecutionFactory(finished=True, program=ProgramFactory(project=elsewhere))
    mine = OperatorFactory()  # an operator of `default` only
    client = client_of(mine)
    assert client.post(url(theirs), {"score": 1}, format="json").status_code == 404
    assert client.get(url(theirs)).status_code == 404
    assert not Feedback.objects.exists()
    MembershipFactory(user=mine, project=elsewhere, role="operator")
    assert client.post(url(theirs), {"score": 1}, format="json").status_code == 201


def test_filters_by_feedback(api):
    none = ExecutionFactory(finished=True)
    low = FeedbackFactory(score=0.2).execution
    high = FeedbackFactory(score=0.9).execution
    unscored = FeedbackFactory(score=None, label="meh").execution

    def ids(query: str) -> set[str]:
        response = api.get(f"/api/v1/executions/?{query}")
        assert response.status_code == 200, response.content
        return {row["id"] for row in response.json()["results"]}

    assert ids("has_feedback=true") == {str(low.pk), str(high.pk), str(unscored.pk)}
    assert ids("has_feedback=false") == {str(none.pk)}
    assert ids("has_feedback=true&min_score=0.5") == {str(high.pk)}
    assert ids("min_score=0.2&max_score=0.5") == {str(low.pk)}
    bad = api.get("/api/v1/executions/?min_score=lots")
    assert bad.status_code == 400 and bad.json()["errors"][0]["path"] == "min_score"


def test_the_representations_agree_and_a_new_execution_needs_no_query():
    execution = FeedbackFactory(score=0.4).execution
    execution.refresh_from_db()
    assert execution_data(execution) == ExecutionSerializer(execution).data
    assert ExecutionSummarySerializer(execution).data["feedback"] == {"count": 1, "score": 0.4}
    fresh = CognitiveExecution(program=execution.program, program_version=1, input={"question": "q"})
    with CaptureQueriesContext(connection) as queries:
        assert execution_data(fresh)["feedback"] == {"count": 0, "score": None}
    assert len(queries) == 0


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_feedback_counts_into_metrics_by_program_name(api, django_capture_on_commit_callbacks):
    program = ProgramFactory(name="metrics-qa")
    execution = ExecutionFactory(finished=True, program=program)
    labels = {"program": "metrics-qa", "channel": "api"}
    before = _sample("dspex_feedback_total", labels)
    scores_before = _sample("dspex_feedback_score_count", {"program": "metrics-qa"})
    sum_before = _sample("dspex_feedback_score_sum", {"program": "metrics-qa"})
    low_before = _sample("dspex_feedback_score_bucket", {"program": "metrics-qa", "le": "0.5"})
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post(url(execution), {"score": 0.3}, format="json").status_code == 201
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post(url(execution), {"label": "fine"}, format="json").status_code == 201
    assert _sample("dspex_feedback_total", labels) == before + 2
    assert _sample("dspex_feedback_score_count", {"program": "metrics-qa"}) == scores_before + 1
    assert _sample("dspex_feedback_score_sum", {"program": "metrics-qa"}) == pytest.approx(sum_before + 0.3)
    assert _sample("dspex_feedback_score_bucket", {"program": "metrics-qa", "le": "0.5"}) == low_before + 1


@pytest.mark.parametrize("raw", ['{"score": NaN}', '{"score": Infinity}', '{"score": 1e999}'])
def test_non_finite_scores_are_refused(api, raw):
    execution = ExecutionFactory(finished=True)
    response = api.generic("POST", url(execution), raw, content_type="application/json")
    assert response.status_code == 400, response.content
    assert not Feedback.objects.exists()
