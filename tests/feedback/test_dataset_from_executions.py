"""`POST /api/v1/datasets/from-executions/` (optimization.from_executions): which executions
become examples, corrected outputs, the signature check, the content hash, all-or-nothing."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from executions.models import CognitiveExecution
from monitoring.models import AuditEvent
from optimization import datasets, from_executions
from optimization.models import Dataset, Example
from tests.factories import (
    ExecutionFactory,
    FeedbackFactory,
    OperatorFactory,
    ProgramFactory,
    ProjectFactory,
)

pytestmark = pytest.mark.django_db

URL = "/api/v1/datasets/from-executions/"


def ran(program, question: str, answer: str = "a", *, ago_h: float = 0, **fields) -> CognitiveExecution:
    execution = ExecutionFactory(
        finished=True, program=program, input={"question": question}, output={"answer": answer}, **fields
    )
    if ago_h:
        CognitiveExecution.objects.filter(pk=execution.pk).update(
            created_at=timezone.now() - timedelta(hours=ago_h)
        )
    return execution


def examples(name: str) -> list[tuple[dict, dict]]:
    return list(
        Example.objects.filter(dataset__name=name).order_by("position").values_list("input", "output")
    )


def test_succeeded_executions_become_examples_oldest_first(api):
    program = ProgramFactory()
    ran(program, "q2", "a2", ago_h=2)
    ran(program, "q1", "a1", ago_h=3)
    ran(program, "q3", "a3", ago_h=1)
    ExecutionFactory(program=program, status="failed", input={"question": "broken"})
    ran(ProgramFactory(), "other program")

    response = api.post(URL, {"name": "prod", "program": str(program.pk)}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "prod" and body["project"] == program.project_id and body["example_count"] == 3
    assert (body["included"], body["skipped"], body["skipped_total"]) == (3, {}, 0)
    assert examples("prod") == [
        ({"question": "q1"}, {"answer": "a1"}),
        ({"question": "q2"}, {"answer": "a2"}),
        ({"question": "q3"}, {"answer": "a3"}),
    ]
    dataset = Dataset.objects.get(name="prod")
    assert body["content_hash"] == datasets.training_data_hash(datasets.dataset_rows(dataset))
    event = AuditEvent.objects.get(action="create", object_id=str(dataset.pk))
    assert event.changes["included"] == 3 and event.changes["from_executions"]["program"] == str(program.pk)


def test_the_same_executions_give_the_same_hash_and_split(api):
    program = ProgramFactory()
    for n in range(6):
        ran(program, f"q{n}", f"a{n}", ago_h=n + 1)
    first = api.post(URL, {"name": "one", "program": str(program.pk)}, format="json").json()
    second = api.post(URL, {"name": "two", "program": str(program.pk)}, format="json").json()
    assert first["content_hash"] == second["content_hash"]
    splits = [datasets.split_rows(datasets.dataset_rows(Dataset.objects.get(name=n))) for n in ("one", "two")]
    assert splits[0].training_data_hash == splits[1].training_data_hash  # what schedules compare
    ran(program, "q-new", "a-new")  # new content: a new hash
    third = api.post(URL, {"name": "three", "program": str(program.pk)}, format="json").json()
    assert third["content_hash"] != first["content_hash"] and third["included"] == 7


def test_filters_by_score_time_status_and_limit(api):
    program = ProgramFactory()
    ran(program, "old", ago_h=48)
    FeedbackFactory(execution=ran(program, "good", ago_h=5), score=0.9)
    FeedbackFactory(execution=ran(program, "bad", ago_h=4), score=0.1)
    ran(program, "recent", ago_h=1)
    ExecutionFactory(program=program, status="failed", input={"question": "failed"}, output={"answer": "x"})

    def questions(name: str, **body) -> list[str]:
        response = api.post(URL, {"name": name, "program": str(program.pk), **body}, format="json")
        assert response.status_code == 201, response.content
        return [row[0]["question"] for row in examples(name)]

    assert questions("scored", min_score=0.5) == ["good"]
    since = (timezone.now() - timedelta(hours=24)).isoformat()
    until = (timezone.now() - timedelta(hours=2)).isoformat()
    assert questions("window", since=since, until=until) == ["good", "bad"]
    assert questions("newest", limit=2) == ["bad", "recent"]
    assert questions("all", only_succeeded=False) == ["old", "good", "bad", "recent", "failed"]


def test_corrected_outputs_replace_outputs_when_asked(api, operator):
    program = ProgramFactory()
    corrected = ran(program, "q1", "wrong", ago_h=2)
    FeedbackFactory(execution=corrected, corrected_output={"answer": "stale"}, author=operator, current=False)
    FeedbackFactory(execution=corrected, corrected_output={"answer": "right"}, author=operator)
    ran(program, "q2", "fine", ago_h=1)

    plain = api.post(URL, {"name": "plain", "program": str(program.pk)}, format="json").json()
    fixed = api.post(
        URL, {"name": "fixed", "program": str(program.pk), "use_corrected_output": True}, format="json"
    ).json()
    assert [row[1] for row in examples("plain")] == [{"answer": "wrong"}, {"answer": "fine"}]
    assert [row[1] for row in examples("fixed")] == [{"answer": "right"}, {"answer": "fine"}]
    assert (plain["corrected"], fixed["corrected"]) == (0, 1)
    assert plain["content_hash"] != fixed["content_hash"]


def test_executions_that_do_not_fit_the_current_signature_are_skipped_and_counted(api):
    program = ProgramFactory()  # question -> answer
    ran(program, "old shape", ago_h=3)
    ExecutionFactory(
        finished=True, program=program, input={"question": "q", "extra": 1}, output={"answer": "b"}
    )
    program.pipeline = {"signature": "question, context -> answer, confidence"}
    program.save()
    fits = ExecutionFactory(
        finished=True,
        program=program,
        input={"question": "new", "context": "c"},
        output={"answer": "b", "confidence": "high"},
    )
    response = api.post(URL, {"name": "mixed", "program": str(program.pk)}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["included"] == 1 and body["skipped"] == {"input_mismatch": 2} and body["skipped_total"] == 2
    assert {s["reason"] for s in body["skipped_examples"]} == {"input_mismatch"}
    assert all("context" in s["detail"] for s in body["skipped_examples"])
    assert examples("mixed") == [(fits.input, fits.output)]

    ExecutionFactory(
        finished=True, program=program, input={"question": "q", "context": "c"}, output={"answer": "x"}
    )
    body = api.post(URL, {"name": "mixed2", "program": str(program.pk)}, format="json").json()
    assert body["skipped"] == {"input_mismatch": 2, "output_mismatch": 1}
    lacking = next(s for s in body["skipped_examples"] if s["reason"] == "output_mismatch")
    assert "confidence" in lacking["detail"]


def test_no_example_is_a_400_and_writes_nothing(api):
    program = ProgramFactory()
    ran(program, "q")
    response = api.post(URL, {"name": "empty", "program": str(program.pk), "min_score": 0.5}, format="json")
    assert response.status_code == 400 and response.json()["code"] == "no_examples"
    assert response.json()["errors"][0]["path"] == "program"
    assert not Dataset.objects.exists() and not AuditEvent.objects.exists()


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"min_score": 2}, "min_score"),
        ({"limit": 0}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
        ({"colour": "red"}, "colour"),
        ({"program": "not-an-id"}, "program"),
    ],
)
def test_bad_requests_are_located_400s(api, body, path):
    program = ProgramFactory()
    ran(program, "q")
    response = api.post(URL, {"name": "bad", "program": str(program.pk), **body}, format="json")
    assert response.status_code == 400, response.content
    assert path in [e["path"] for e in response.json()["errors"]]
    assert not Dataset.objects.exists()


def test_a_taken_name_is_a_400_at_name(api):
    program = ProgramFactory()
    ran(program, "q")
    assert api.post(URL, {"name": "taken", "program": str(program.pk)}, format="json").status_code == 201
    again = api.post(URL, {"name": "taken", "program": str(program.pk)}, format="json")
    assert again.status_code == 400 and again.json()["errors"][0]["path"] == "name"
    assert Dataset.objects.count() == 1


def test_another_projects_program_is_an_unknown_program(db):
    theirs = ProgramFactory(project=ProjectFactory(name="elsewhere"))
    ran(theirs, "secret")
    client = APIClient()
    client.force_authenticate(OperatorFactory())
    response = client.post(URL, {"name": "steal", "program": str(theirs.pk)}, format="json")
    missing = client.post(
        URL, {"name": "steal", "program": "00000000-0000-0000-0000-000000000000"}, format="json"
    )
    assert response.status_code == missing.status_code == 400
    assert response.json()["errors"] == [{"path": "program", "message": "no such program"}]
    assert not Dataset.objects.exists()


def test_a_failure_while_writing_leaves_nothing(db):
    program = ProgramFactory()
    ran(program, "q1")
    ran(program, "q2")

    def failing_audit(dataset, built):
        raise RuntimeError("audit store down")

    with pytest.raises(RuntimeError):
        from_executions.create_dataset(
            from_executions.Criteria(program=program), name="half", audit_record=failing_audit
        )
    assert not Dataset.objects.exists() and not Example.objects.exists()


def test_filters_by_release_and_names_an_unknown_release(api):
    from tests.releases.test_releases import tuned_result

    program, other = ProgramFactory(), ProgramFactory()
    result = tuned_result(program)
    ran(program, "plain")
    ran(program, "tuned", optimization_result=result)
    ran(program, "tuned too", optimization_result=result)

    def questions(name: str, release) -> list[str]:
        body = {"name": name, "program": str(program.pk), "release": release}
        response = api.post(URL, body, format="json")
        assert response.status_code == 201, response.content
        assert response.json()["included"] == len(examples(name))
        return [row[0]["question"] for row in examples(name)]

    assert questions("tuned", {"version": 1, "optimization_result": str(result.pk)}) == ["tuned", "tuned too"]
    assert questions("plain", {"version": 1, "optimization_result": None}) == ["plain"]
    assert questions("any", None) == ["plain", "tuned", "tuned too"]
    foreign = tuned_result(other)
    for release, path in [
        ({"version": 7}, "release.version"),
        ({"version": 1, "optimization_result": str(foreign.pk)}, "release.optimization_result"),
        ({"version": "one"}, "release.version"),
    ]:
        response = api.post(
            URL, {"name": "bad", "program": str(program.pk), "release": release}, format="json"
        )
        assert response.status_code == 400, response.content
        assert path in [e["path"] for e in response.json()["errors"]]
    assert not Dataset.objects.filter(name="bad").exists()
