"""Every `/api/v1/` operation through the generic cases of tests/api/cases.py: authentication,
permissions per actor (tests/actors.py), effects, and list query counts.

A new endpoint needs a case here: `test_every_api_operation_has_a_case` compares the classes
below with the operations the URL resolver serves.
"""

import json
from types import SimpleNamespace
from typing import Any, ClassVar

import dspy
import pytest
from drf_spectacular.generators import EndpointEnumerator
from rest_framework.test import APIClient

from executions.models import CognitiveExecution, Feedback, Session
from optimization.models import Dataset, OptimizationResult, OptimizationRun
from programs.models import Canary, ProgramAlias
from projects.models import Membership
from tests.actors import EDIT, MANAGE, OPTIMIZE, READ, ROLES, RUN, stranger
from tests.api.cases import Action, APIViewTestCases, Endpoint
from tests.factories import (
    CHAT_PIPELINE,
    BatchFactory,
    CorpusFactory,
    DatasetFactory,
    ExecutionFactory,
    FeedbackFactory,
    OptimizationResultFactory,
    OptimizationRunFactory,
    OptimizationScheduleFactory,
    ProgramFactory,
    ProjectFactory,
    SessionFactory,
    UserFactory,
    default_project,
)

pytestmark = pytest.mark.django_db

QA = {"signature": "question -> answer"}
EXAMPLE = {"input": {"question": "What is 1 + 1?"}, "output": {"answer": "2"}}


def plain_dspy_state(metadata: bool = True) -> dict[str, Any]:
    """What plain DSPy's `save()` writes for a `question -> answer` program (its step `main`)."""
    state = {"main": dspy.Predict("question -> answer").dump_state()}
    return {**state, "metadata": {"dependency_versions": {"dspy": dspy.__version__}}} if metadata else state


def feedback_stored(execution: Any, score: float, label: str) -> None:
    execution.refresh_from_db()
    assert (execution.feedback_count, execution.feedback_score) == (1, score)
    entry = Feedback.objects.get(execution=execution)
    assert (entry.score, entry.label, entry.current) == (score, label, True)


def status_becomes(expected: str) -> Any:
    def check(case: Any, obj: Any, response: Any) -> None:
        obj.refresh_from_db()
        assert obj.status == expected, obj.status

    return check


class TestPrograms(
    APIViewTestCases.APIViewTestCase, APIViewTestCases.ReplaceObject, APIViewTestCases.Actions
):
    list_path, detail_path = "/api/v1/programs/", "/api/v1/programs/{pk}/"
    factory = ProgramFactory
    create_data = {"name": "created-by-api", "pipeline": QA, "status": "active"}
    update_data = {"description": "edited"}
    actions = [
        Action(
            "execute",
            "POST",
            "/api/v1/programs/{pk}/execute/",
            RUN,
            200,
            body={"input": {"question": "What is 2 + 2?"}, "wait": True},
            check=lambda case, obj, response: CognitiveExecution.objects.get(
                id=response.json()["id"], program=obj, status="succeeded"
            ),
        ),
        Action(
            "optimize",
            "POST",
            "/api/v1/programs/{pk}/optimize/",
            OPTIMIZE,
            202,
            body=lambda case, obj: {
                "optimizer": "LabeledFewShot",
                "dataset": str(DatasetFactory(examples=4).id),
                "metric": "exact_match",
            },
            check=lambda case, obj, response: OptimizationRun.objects.get(
                id=response.json()["id"], program=obj
            ),
        ),
        Action("rollback", "POST", "/api/v1/programs/{pk}/rollback/", EDIT, 200, body={"result": None}),
        Action(
            "import-state",
            "POST",
            "/api/v1/programs/{pk}/import-state/",
            EDIT,
            201,
            body=lambda case, obj: plain_dspy_state(),
            check=lambda case, obj, response: OptimizationResult.objects.get(
                id=response.json()["id"], program=obj, optimizer_type="imported"
            ),
        ),
        Action("aliases", "GET", "/api/v1/programs/{pk}/aliases/", READ, 200),
        Action(
            "set-alias",
            "PUT",
            "/api/v1/programs/{pk}/aliases/{name}/",
            EDIT,
            201,
            body={"version": 1, "optimization_result": None},
            check=lambda case, obj, response: ProgramAlias.objects.get(program=obj, name="stable", version=1),
        ),
        Action(
            "canary",
            "GET",
            "/api/v1/programs/{pk}/canary/",
            READ,
            200,
            target=lambda case: with_canary(case.make_object()),
        ),
        Action(
            "start-canary",
            "POST",
            "/api/v1/programs/{pk}/canary/",
            EDIT,
            201,
            body=lambda case, obj: {
                "candidate": {
                    "version": 1,
                    "optimization_result": str(
                        OptimizationResultFactory(program=obj, parameters=plain_dspy_state(metadata=False)).pk
                    ),
                },
                "percent": 10,
            },
            check=lambda case, obj, response: Canary.objects.get(program=obj, status="running"),
        ),
        Action(
            "promote-canary",
            "POST",
            "/api/v1/programs/{pk}/canary/promote/",
            EDIT,
            200,
            target=lambda case: with_canary(case.make_object()),
            check=lambda case, obj, response: Canary.objects.get(program=obj, status="promoted"),
        ),
        Action(
            "abort-canary",
            "POST",
            "/api/v1/programs/{pk}/canary/abort/",
            EDIT,
            200,
            target=lambda case: with_canary(case.make_object()),
            check=lambda case, obj, response: Canary.objects.get(program=obj, status="aborted"),
        ),
    ]

    def url_kwargs(self, obj: Any) -> dict[str, Any]:
        return {"pk": obj.pk, "name": "stable"}

    def replace_data(self, obj: Any) -> dict[str, Any]:
        return {"name": obj.name, "pipeline": QA, "variables": {}, "status": "active", "description": "put"}


def with_canary(program: Any) -> Any:
    """The program with a running canary of a result of its version 1."""
    from programs import releases

    result = OptimizationResultFactory(program=program, parameters=plain_dspy_state(metadata=False))
    releases.start_canary(program, 1, result.pk, 10, "input", channel="api")
    return program


class TestExecutions(APIViewTestCases.GetObject, APIViewTestCases.ListObjects, APIViewTestCases.Actions):
    list_path, detail_path = "/api/v1/executions/", "/api/v1/executions/{pk}/"

    def make_object(self) -> Any:
        return ExecutionFactory(finished=True, trace=[{"kind": "module", "step": "main"}])

    actions = [
        Action(
            "cancel",
            "POST",
            "/api/v1/executions/{pk}/cancel/",
            RUN,
            200,
            target=lambda case: ExecutionFactory(),
            check=status_becomes("cancelled"),
        ),
        Action(
            "feedback",
            "POST",
            "/api/v1/executions/{pk}/feedback/",
            RUN,
            201,
            body={"score": 0.8, "label": "good", "corrected_output": {"answer": "b"}},
            check=lambda case, obj, response: feedback_stored(obj, 0.8, "good"),
        ),
        Action(
            "feedback list",
            "GET",
            "/api/v1/executions/{pk}/feedback/",
            READ,
            200,
            target=lambda case: FeedbackFactory(score=0.3).execution,
            check=lambda case, obj, response: (
                [e["score"] for e in response.json()] == [0.3] or pytest.fail(response.content.decode())
            ),
        ),
        Action(
            "events",
            "GET",
            "/api/v1/executions/{pk}/events/",
            READ,
            200,
            check=lambda case, obj, response: (
                b"event: done" in b"".join(response.streaming_content) or pytest.fail("no done event")
            ),
        ),
    ]


class TestBatches(APIViewTestCases.GetObject, APIViewTestCases.CreateObject, APIViewTestCases.Actions):
    list_path, detail_path = "/api/v1/batches/", "/api/v1/batches/{pk}/"
    create_kind, create_status = RUN, 202

    @staticmethod
    def create_data(case: Any, obj: Any) -> dict[str, Any]:
        return {"program": str(ProgramFactory().id), "inputs": [{"question": "one"}, {"question": "two"}]}

    def make_object(self) -> Any:
        return BatchFactory(items=2)

    factory = BatchFactory
    actions = [
        Action("results", "GET", "/api/v1/batches/{pk}/results/", READ, 200),
        Action("cancel", "POST", "/api/v1/batches/{pk}/cancel/", RUN, 200),
    ]


class TestSessions(
    APIViewTestCases.GetObject,
    APIViewTestCases.ListObjects,
    APIViewTestCases.CreateObject,
    APIViewTestCases.Actions,
):
    """Opening a session, running a turn and ending one start or end work: RUN, as `execute`."""

    list_path, detail_path = "/api/v1/sessions/", "/api/v1/sessions/{pk}/"
    factory = SessionFactory
    create_kind = RUN

    @staticmethod
    def create_data(case: Any, obj: Any) -> dict[str, Any]:
        return {"program": str(ProgramFactory(pipeline=dict(CHAT_PIPELINE)).id), "metadata": {"user": "u"}}

    actions = [
        Action(
            "turn",
            "POST",
            "/api/v1/sessions/{pk}/turns/",
            RUN,
            200,
            body={"input": {"question": "Hello?"}},
            check=lambda case, obj, response: CognitiveExecution.objects.get(
                id=response.json()["id"], session=obj, turn=1, status="succeeded"
            ),
        ),
        Action(
            "delete",
            "DELETE",
            "/api/v1/sessions/{pk}/",
            RUN,
            204,
            check=lambda case, obj, response: _assert_equal(
                Session.objects.filter(pk=obj.pk).exists(), False
            ),
        ),
    ]


class TestCorpora(APIViewTestCases.APIViewTestCase, APIViewTestCases.Actions):
    list_path, detail_path = "/api/v1/corpora/", "/api/v1/corpora/{pk}/"
    factory = CorpusFactory
    create_data = {"name": "created-corpus"}
    update_data = {"description": "edited"}
    actions = [
        Action(
            "documents",
            "POST",
            "/api/v1/corpora/{pk}/documents/",
            EDIT,
            202,
            body={"documents": [{"id": "faq-1", "text": "Refunds take five days."}]},
            check=lambda case, obj, response: obj.documents.get(external_id="faq-1"),
        ),
        Action("index", "POST", "/api/v1/corpora/{pk}/index/", EDIT, 202),
        Action("search", "GET", "/api/v1/corpora/{pk}/search/", READ, 200, params={"q": "refunds"}),
    ]


class TestDatasets(
    APIViewTestCases.GetObject,
    APIViewTestCases.ListObjects,
    APIViewTestCases.CreateObject,
    APIViewTestCases.Actions,
):
    list_path, detail_path = "/api/v1/datasets/", "/api/v1/datasets/{pk}/"
    create_data = {"name": "created-dataset", "examples": [EXAMPLE]}

    def make_object(self) -> Any:
        return DatasetFactory(examples=2)

    factory = DatasetFactory
    actions = [
        Action(
            "import",
            "POST",
            "/api/v1/datasets/{pk}/import/",
            EDIT,
            200,
            body={"content": json.dumps(EXAMPLE)},
            check=lambda case, obj, response: _assert_equal(obj.examples.count(), 3),
        ),
        Action(
            "from executions",
            "POST",
            "/api/v1/datasets/from-executions/",
            EDIT,
            201,
            # A collection route naming its program in the body: another project's program is a
            # 400 at `program` (as for batches), which tests/feedback checks; the stand-in (not a
            # row) keeps the row-level 404 case away from it.
            target=lambda case: SimpleNamespace(
                pk=None, program_id=ExecutionFactory(finished=True, input={"question": "q1"}).program_id
            ),
            body=lambda case, obj: {"name": "from-production", "program": str(obj.program_id)},
            check=lambda case, obj, response: _assert_equal(
                list(Dataset.objects.get(name="from-production").examples.values_list("input", "output")),
                [({"question": "q1"}, {"answer": "a"})],
            ),
        ),
    ]


class TestOptimizationRuns(
    APIViewTestCases.GetObject, APIViewTestCases.ListObjects, APIViewTestCases.Actions
):
    list_path, detail_path = "/api/v1/optimizations/", "/api/v1/optimizations/{pk}/"
    factory = OptimizationRunFactory
    actions = [
        Action(
            "cancel",
            "POST",
            "/api/v1/optimizations/{pk}/cancel/",
            OPTIMIZE,
            200,
            check=status_becomes("cancelled"),
        )
    ]


class TestOptimizationResults(
    APIViewTestCases.GetObject, APIViewTestCases.ListObjects, APIViewTestCases.Actions
):
    list_path, detail_path = "/api/v1/optimization-results/", "/api/v1/optimization-results/{pk}/"
    factory = OptimizationResultFactory
    actions = [
        Action(
            "apply",
            "POST",
            "/api/v1/optimization-results/{pk}/apply/",
            EDIT,
            200,
            check=lambda case, obj, response: _assert_equal(
                type(obj.program).objects.get(pk=obj.program_id).active_result_id, obj.pk
            ),
        ),
        Action(
            "dspy-state",
            "GET",
            "/api/v1/optimization-results/{pk}/dspy-state/",
            READ,
            200,
            target=lambda case: OptimizationResultFactory(parameters=plain_dspy_state(metadata=False)),
            check=lambda case, obj, response: _assert_equal(sorted(response.json()), ["main", "metadata"]),
        ),
    ]


class TestSchedules(APIViewTestCases.APIViewTestCase, APIViewTestCases.ReplaceObject):
    list_path, detail_path = "/api/v1/schedules/", "/api/v1/schedules/{pk}/"
    factory = OptimizationScheduleFactory
    update_data = {"interval_s": 7200}

    @staticmethod
    def create_data(case: Any, obj: Any) -> dict[str, Any]:
        return {
            "name": "nightly",
            "program": str(ProgramFactory().id),
            "dataset": str(DatasetFactory(examples=4).id),
            "optimizer": "LabeledFewShot",
            "metric": "exact_match",
            "cron": "0 3 * * *",
        }

    def test_a_patch_is_checked_against_the_rest_of_the_schedule(self, api: Any) -> None:
        """Not a 500 (the fields a PATCH leaves out were read from the body) and not a 400 (nor
        judged missing): the schedule the change would make is checked."""
        schedule = self.make_object()
        response = api.patch(self.url(self.detail_path, schedule), {"enabled": False}, format="json")
        assert response.status_code == 200, response.content
        both = api.patch(self.url(self.detail_path, schedule), {"cron": "0 3 * * *"}, format="json")
        assert both.status_code == 400 and both.json()["errors"][0]["path"] == "cron", both.content
        schedule.refresh_from_db()
        assert (schedule.enabled, schedule.cron, schedule.interval_s) == (False, "", 3600)

    def replace_data(self, obj: Any) -> dict[str, Any]:
        return {
            "name": obj.name,
            "program": str(obj.program_id),
            "dataset": str(obj.dataset_id),
            "optimizer": "LabeledFewShot",
            "metric": "exact_match",
            "interval_s": 1800,
        }


class TestProjects(
    APIViewTestCases.GetObject,
    APIViewTestCases.ListObjects,
    APIViewTestCases.CreateObject,
    APIViewTestCases.Actions,
):
    list_path, detail_path = "/api/v1/projects/", "/api/v1/projects/{pk}/"
    factory = ProjectFactory
    create_kind = MANAGE
    create_data = {"name": "team-b"}

    def make_object(self) -> Any:
        """A project the actors belong to with the roles they have in `default`."""
        project = ProjectFactory()
        for member in Membership.objects.filter(project=default_project()):
            Membership.objects.create(user_id=member.user_id, project=project, role=member.role)
        return project

    actions = [
        Action(
            "members",
            "POST",
            "/api/v1/projects/{pk}/members/",
            MANAGE,
            201,
            body=lambda case, obj: {"user": UserFactory().username, "role": "viewer"},
            check=lambda case, obj, response: Membership.objects.get(
                project=obj, user__username=response.json()["user"], role="viewer"
            ),
        )
    ]


class TestKeys(Endpoint):
    """API keys are the caller's own (or their projects' as admin), not rows every member sees, so
    the generic mixins do not fit: this class's own test runs every operation per actor
    (tests/projects/test_keys.py goes deeper: scopes, binding, expiry, revocation, audit)."""

    extra_operations: ClassVar[set[tuple[str, str]]] = {
        ("GET", "/api/v1/keys/"),
        ("POST", "/api/v1/keys/"),
        ("GET", "/api/v1/keys/{pk}/"),
        ("POST", "/api/v1/keys/{pk}/revoke/"),
    }

    def test_every_member_manages_their_own_keys(self, actors: Any, actor_name: str) -> None:
        actor = actors[actor_name]
        if not actor.authenticated:
            actor.assert_refused(actor.client.get("/api/v1/keys/"))
            actor.assert_refused(actor.client.post("/api/v1/keys/", {"name": "x"}, format="json"))
            return
        if actor_name == "outsider":  # in no project: refused everywhere
            actor.assert_refused(actor.client.get("/api/v1/keys/"))
            return
        listed = actor.client.get("/api/v1/keys/")
        if not actor.may(READ):  # a key without `read`
            assert listed.status_code == 403 and listed.json()["code"] == "scope_required"
        else:
            assert listed.status_code == 200 and listed.json()["count"] >= 1
        scopes = list(ROLES[actor_name].scopes or ("read",))  # a key mints only scopes it holds
        made = actor.client.post("/api/v1/keys/", {"name": "mine", "scopes": scopes}, format="json")
        if not actor.may(EDIT) and actor.refused_code == "scope_required":  # a key without `admin`
            assert made.status_code == 403 and made.json()["code"] == "scope_required"
            return
        assert made.status_code == 201, made.content
        body = made.json()
        assert body["key"].startswith(body["prefix"]) and body["user"] == actor.user.username
        fresh = APIClient()
        fresh.credentials(HTTP_AUTHORIZATION=f"Bearer {body['key']}")
        if "read" in scopes:
            assert fresh.get(f"/api/v1/keys/{body['id']}/").json()["prefix"] == body["prefix"]
        revoked = actor.client.post(f"/api/v1/keys/{body['id']}/revoke/")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        assert fresh.get("/api/v1/keys/").json()["code"] == "key_revoked"  # before any scope check
        outsider = stranger()
        assert outsider.client.get(f"/api/v1/keys/{body['id']}/").status_code == 404
        assert outsider.client.post(f"/api/v1/keys/{body['id']}/revoke/").status_code == 404


class TestCacheStats(APIViewTestCases.Actions):
    actions = [Action("stats", "GET", "/api/v1/cache/stats/", READ, 200, target=lambda case: None)]


class TestCachePurge(APIViewTestCases.Actions):
    def url_kwargs(self, obj: Any) -> dict[str, Any]:
        return {"name": obj}

    actions = [Action("purge", "POST", "/api/v1/cache/{name}/purge/", EDIT, 200, target=lambda case: "llm")]


class TestProgramCachePolicy(APIViewTestCases.Actions):
    factory = ProgramFactory

    def url_kwargs(self, obj: Any) -> dict[str, Any]:
        return {"program_id": obj.pk}

    actions = [
        Action("read", "GET", "/api/v1/cache/programs/{program_id}/", READ, 200),
        Action(
            "write",
            "PUT",
            "/api/v1/cache/programs/{program_id}/",
            EDIT,
            200,
            body={"llm_cache": False},
            check=lambda case, obj, response: _assert_equal(response.json()["llm_cache"], False),
        ),
    ]


class TestProviders(APIViewTestCases.Actions):
    actions = [
        Action("overview", "GET", "/api/v1/providers/", READ, 200, target=lambda case: None),
        Action("routing", "GET", "/api/v1/providers/routing/", READ, 200, target=lambda case: None),
    ]


def _assert_equal(actual: Any, expected: Any) -> None:
    assert actual == expected, (actual, expected)


CASES = [
    c
    for c in list(globals().values())
    if isinstance(c, type) and issubclass(c, Endpoint) and c.__name__.startswith("Test")
]


def served_operations() -> set[tuple[str, str]]:
    """(method, path) of every `/api/v1/` operation the URL resolver serves, as DRF sees them."""
    return {
        (method, path)
        for path, _regex, method, _view in EndpointEnumerator().get_api_endpoints()
        if path.startswith("/api/v1/")
    }


def test_every_api_operation_has_a_case():
    covered = set().union(*(case.operations() for case in CASES))
    served = served_operations()
    assert len(served) > 40  # the enumeration itself works
    missing = sorted(served - covered)
    assert not missing, f"operations without a case in {__name__}: {missing}"
    stale = sorted(covered - served)
    assert not stale, f"cases for operations the API no longer serves: {stale}"
