"""One generic test base for the REST API, after NetBox's `utilities/testing/api.py`.

An endpoint's test class combines the mixins of `APIViewTestCases` for what the endpoint
offers and declares its paths, the factory of its rows and the bodies of its writes:

    class TestPrograms(APIViewTestCases.APIViewTestCase, APIViewTestCases.Actions):
        list_path, detail_path = "/api/v1/programs/", "/api/v1/programs/{pk}/"
        factory = ProgramFactory
        create_data = {"name": "created-by-api", "pipeline": {"signature": "question -> answer"}}
        update_data = {"description": "edited"}
        actions = [Action("execute", "POST", "/api/v1/programs/{pk}/execute/", RUN, 200, body=...)]

Adding an actor (a scoped API key, say) is one entry in `tests.actors.ROLES`; every test here
then runs for it too.

Every test a mixin contributes runs once per actor of tests/actors.py (the `actor_name`
parameter, generated in tests/conftest.py): an actor whose role grants the operation's kind
gets the success status and its effect; any other is refused as the API refuses today (401
without credentials, 403 `permission_denied` with them) and nothing in the database changes.
List endpoints also check that their number of queries does not grow with their rows (N+1).

Every class also runs `test_another_project_cannot_read_run_change_or_detect`: an operator of
another project (`tests.actors.stranger`) gets, for each operation the class covers on a row of
the `default` project, exactly the answer an id that does not exist gets (404; for a create
whose body references the row, the same 400), lists without the row, and nothing changed.

`operations()` says which (method, path) pairs a class covers; tests/api/test_endpoints.py
fails when the URL resolver has an `/api/v1/` operation that no class covers.
"""

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from django.apps import apps
from django.db import connection
from django.forms.models import model_to_dict
from django.test.utils import CaptureQueriesContext

from tests.actors import EDIT, READ, Actor, stranger

# Apps whose rows a refused request must leave untouched (plus beat entries, which schedules write).
WATCHED_APPS = (
    "projects",
    "programs",
    "executions",
    "optimization",
    "caching",
    "monitoring",
    "django_celery_beat",
)

Body = dict[str, Any] | Callable[[Any, Any], dict[str, Any] | None] | None


@dataclass(frozen=True)
class Action:
    """A route beyond CRUD: `POST /api/v1/programs/{pk}/execute/` and the like.

    `body(case, obj)` builds the request body for the target `obj` (made by `case.make_object`
    unless `target` says otherwise); `check(case, obj, response)` asserts the effect.
    """

    name: str
    method: str
    path: str
    kind: str
    ok: int
    body: Body = None
    format: str = "json"
    target: Callable[[Any], Any] | None = None
    check: Callable[[Any, Any, Any], None] | None = None
    params: dict[str, Any] = field(default_factory=dict)


def database_state(obj: Any = None) -> tuple[dict[str, int], dict[str, Any] | None]:
    """Row counts of the watched apps and, if given, `obj`'s current fields (None once deleted)."""
    counts = {
        model._meta.label: model._default_manager.count()
        for app in WATCHED_APPS
        for model in apps.get_app_config(app).get_models()
    }
    current = None
    if hasattr(obj, "_meta"):  # a row (some targets are plain names, e.g. a cache)
        row = type(obj)._default_manager.filter(pk=obj.pk).first()
        current = model_to_dict(row) if row is not None else None
    return counts, current


def send(
    client: Any, method: str, path: str, body: dict | None = None, fmt: str = "json", **params: Any
) -> Any:
    call = getattr(client, method.lower())
    if method.upper() in {"GET", "DELETE"}:
        return call(path, params or None)
    return call(path, body, format=fmt)


class Endpoint:
    """What every case declares; the mixins below add tests."""

    list_path: ClassVar[str] = ""
    detail_path: ClassVar[str] = ""
    factory: ClassVar[Any] = None
    actions: ClassVar[list[Action]] = []
    # Operations this class covers beyond its mixins' (for a hand-written test of the class).
    extra_operations: ClassVar[set[tuple[str, str]]] = set()

    def make_object(self) -> Any:
        return self.factory()

    def url_kwargs(self, obj: Any) -> dict[str, Any]:
        return {"pk": obj.pk}

    def url(self, template: str, obj: Any = None) -> str:
        return template.format(**self.url_kwargs(obj)) if obj is not None else template

    @classmethod
    def operations(cls) -> set[tuple[str, str]]:
        covered = set(cls.extra_operations)
        for klass in cls.__mro__:
            covered |= {(m, getattr(cls, p)) for m, p in vars(klass).get("covers", ())}
        covered |= {(a.method, a.path) for a in cls.actions}
        return covered

    def test_another_project_cannot_read_run_change_or_detect(self) -> None:
        outsider = stranger()
        for method, path, body_of, target in self._row_operations():
            obj = target(self)
            if not _has_project(obj):
                continue  # site-wide (caches, providers): nothing of a project's to hide
            body = body_of(self, obj) if callable(body_of) else body_of
            missing = _missing_like(obj)
            before = database_state(obj)
            real = send(outsider.client, method, self.url(path, obj), body, "json", **self._params(path))
            absent = send(
                outsider.client, method, self.url(path, missing), body, "json", **self._params(path)
            )
            label = f"{method} {path}"
            assert real.status_code == 404, (label, real.status_code, real.content[:300])
            assert _text(real, str(obj.pk)) == _text(absent, str(missing.pk)), (label, real.content[:300])
            assert database_state(obj) == before, f"{label} by another project changed rows"
        if isinstance(self, APIViewTestCases.ListObjects):
            made = str(self.make_object().pk)
            response = outsider.client.get(self.list_path)
            assert response.status_code == 200, response.content
            assert made not in {str(row["id"]) for row in response.json()["results"]}
        if isinstance(self, APIViewTestCases.CreateObject):
            self._create_as_stranger(outsider)

    def _params(self, path: str) -> dict[str, Any]:
        return next((a.params for a in self.actions if a.path == path), {})

    def _row_operations(self) -> list[tuple[str, str, Body, Callable[[Any], Any]]]:
        """(method, path, body, target) of every covered operation on one row."""
        make = type(self).make_object
        rows: list[tuple[str, str, Body, Callable[[Any], Any]]] = []
        if isinstance(self, APIViewTestCases.GetObject):
            rows.append(("GET", self.detail_path, None, make))
        if isinstance(self, APIViewTestCases.UpdateObject):
            rows.append(("PATCH", self.detail_path, dict(self.update_data), make))
        if isinstance(self, APIViewTestCases.ReplaceObject):
            rows.append(("PUT", self.detail_path, lambda case, obj: case.replace_data(obj), make))
        if isinstance(self, APIViewTestCases.DeleteObject):
            rows.append(("DELETE", self.detail_path, None, make))
        for action in self.actions:
            rows.append((action.method, action.path, action.body, action.target or make))
        return rows

    def _create_as_stranger(self, outsider: Actor) -> None:
        """A create whose body names rows of `default` answers as if they did not exist; one that
        names none creates in the stranger's own project."""
        assert isinstance(self, APIViewTestCases.CreateObject)
        body = self.creation_body()
        swapped, replaced = _swap_row_ids(body)
        before = database_state()
        if replaced:
            absent = outsider.client.post(self.list_path, swapped, format="json")
            real = outsider.client.post(self.list_path, body, format="json")
            assert real.status_code == absent.status_code == 400, (real.content[:300], absent.content[:300])
            text = real.content.decode()
            for real_id, fake_id in replaced.items():
                text = text.replace(real_id, fake_id)
            assert json.loads(text) == absent.json(), (real.content[:300], absent.content[:300])
            assert database_state() == before, "a create naming another project's rows changed rows"
            return
        response = outsider.client.post(self.list_path, body, format="json")
        if response.status_code < 300:
            model = self.factory._meta.model
            row = model._default_manager.get(pk=response.json()["id"])
            assert _project_id(row) in {m.project_id for m in outsider.user.memberships.all()}

    @staticmethod
    def assert_refused_and_unchanged(actor: Actor, response: Any, obj: Any, before: tuple) -> None:
        actor.assert_refused(response)
        assert database_state(obj) == before, "a refused request changed rows"


def _project_id(obj: Any) -> Any:
    from projects.access import project_id_of

    return project_id_of(obj)


def _has_project(obj: Any) -> bool:
    return hasattr(obj, "_meta") and _project_id(obj) is not None


class _Missing:
    """A stand-in for a row that does not exist: the same kind of id, no row."""

    def __init__(self, pk: Any) -> None:
        self.pk = pk


def _missing_like(obj: Any) -> _Missing:
    if isinstance(obj.pk, int):
        return _Missing(
            type(obj)._default_manager.order_by("-pk").values_list("pk", flat=True).first() + 1000
        )
    return _Missing(uuid.uuid4())


def _text(response: Any, pk: str) -> tuple[int, Any]:
    """Status and body, with the requested id taken out (a 404 may name what it did not find)."""
    text = response.content.decode().replace(pk, "<id>")
    try:
        return response.status_code, json.loads(text)
    except ValueError:
        return response.status_code, text


def _swap_row_ids(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """`body` with every top-level value that is the id of a row of a watched app replaced by a
    fresh id, and {real: fake} of the replacements."""
    swapped, replaced = dict(body), {}
    for key, value in body.items():
        if not isinstance(value, str):
            continue
        try:
            uuid.UUID(value)
        except ValueError:
            continue
        for app in WATCHED_APPS:
            if any(m._default_manager.filter(pk=value).exists() for m in _uuid_models(app)):
                fake = str(uuid.uuid4())
                swapped[key], replaced[value] = fake, fake
                break
    return swapped, replaced


def _uuid_models(app: str) -> list[Any]:
    from django.db import models

    return [m for m in apps.get_app_config(app).get_models() if isinstance(m._meta.pk, models.UUIDField)]


class APIViewTestCases:
    """The mixins; combine the ones an endpoint supports (APIViewTestCase has all five)."""

    class GetObject(Endpoint):
        covers: ClassVar = [("GET", "detail_path")]

        def test_get_object(self, actors: Any, actor_name: str) -> None:
            actor, obj = actors[actor_name], self.make_object()
            response = actor.client.get(self.url(self.detail_path, obj))
            if actor.may(READ):
                assert response.status_code == 200, response.content
                assert str(response.json()["id"]) == str(obj.pk)
            else:
                actor.assert_refused(response)

    class ListObjects(Endpoint):
        covers: ClassVar = [("GET", "list_path")]
        # Queries of one list page, whatever its length: auth, permissions, count, page.
        max_list_queries: ClassVar[int] = 6

        def test_list_objects(self, actors: Any, actor_name: str) -> None:
            actor = actors[actor_name]
            made = {str(self.make_object().pk) for _ in range(2)}
            response = actor.client.get(self.list_path)
            if actor.may(READ):
                assert response.status_code == 200, response.content
                listed = {str(row["id"]) for row in response.json()["results"]}
                assert made <= listed, (made, listed)
            else:
                actor.assert_refused(response)

        def test_list_queries_do_not_grow_with_rows(self, actors: Any, settings: Any) -> None:
            client = actors["operator"].client  # a role member: its permission checks are queries too
            # The token stays in this process's cache for the whole test (it expires after 1 s by
            # default, which a loaded machine can take between the two counts).
            settings.DSPEX_LOCAL_CACHE_S = 600
            self.make_object()
            assert client.get(self.list_path).status_code == 200  # warm per-process caches
            with CaptureQueriesContext(connection) as few:
                assert client.get(self.list_path).status_code == 200
            for _ in range(10):
                self.make_object()
            # Warm again: making rows may evict per-process caches (a new project's memberships
            # evict its members' roles), which is their job, not a query per row.
            assert client.get(self.list_path).status_code == 200
            with CaptureQueriesContext(connection) as many:
                assert client.get(self.list_path).status_code == 200
            assert len(many) == len(few), f"{len(few)} queries for 2 rows, {len(many)} for 12:\n" + "\n".join(
                q["sql"][:200] for q in many.captured_queries
            )
            assert len(many) <= self.max_list_queries, [q["sql"][:200] for q in many.captured_queries]

    class CreateObject(Endpoint):
        covers: ClassVar = [("POST", "list_path")]
        create_data: ClassVar[Body] = None
        create_status: ClassVar[int] = 201
        create_kind: ClassVar[str] = EDIT  # batches: creating one starts work (RUN)

        def creation_body(self) -> dict[str, Any]:
            data = self.create_data
            return data(self, None) if callable(data) else dict(data or {})

        def test_create_object(self, actors: Any, actor_name: str) -> None:
            actor, body = actors[actor_name], self.creation_body()
            model = self.factory._meta.model
            before = database_state()
            response = actor.client.post(self.list_path, body, format="json")
            if actor.may(self.create_kind):
                assert response.status_code == self.create_status, response.content
                assert model._default_manager.filter(pk=response.json()["id"]).exists()
                assert model._default_manager.count() == before[0][model._meta.label] + 1
            else:
                self.assert_refused_and_unchanged(actor, response, None, before)

    class UpdateObject(Endpoint):
        covers: ClassVar = [("PATCH", "detail_path")]
        update_data: ClassVar[dict[str, Any]] = {}

        def test_update_object(self, actors: Any, actor_name: str) -> None:
            actor, obj = actors[actor_name], self.make_object()
            before = database_state(obj)
            response = actor.client.patch(self.url(self.detail_path, obj), self.update_data, format="json")
            if actor.may(EDIT):
                assert response.status_code == 200, response.content
                obj.refresh_from_db()
                for name, value in self.update_data.items():
                    assert getattr(obj, name) == value, name
            else:
                self.assert_refused_and_unchanged(actor, response, obj, before)

    class ReplaceObject(Endpoint):
        """PUT: the whole object (`replace_data(obj)`)."""

        covers: ClassVar = [("PUT", "detail_path")]

        def replace_data(self, obj: Any) -> dict[str, Any]:
            raise NotImplementedError

        def test_replace_object(self, actors: Any, actor_name: str) -> None:
            actor, obj = actors[actor_name], self.make_object()
            body = self.replace_data(obj)
            before = database_state(obj)
            response = actor.client.put(self.url(self.detail_path, obj), body, format="json")
            if actor.may(EDIT):
                assert response.status_code == 200, response.content
            else:
                self.assert_refused_and_unchanged(actor, response, obj, before)

    class DeleteObject(Endpoint):
        covers: ClassVar = [("DELETE", "detail_path")]

        def test_delete_object(self, actors: Any, actor_name: str) -> None:
            actor, obj = actors[actor_name], self.make_object()
            before = database_state(obj)
            response = actor.client.delete(self.url(self.detail_path, obj))
            if actor.may(EDIT):
                assert response.status_code == 204, response.content
                assert not type(obj)._default_manager.filter(pk=obj.pk).exists()
            else:
                self.assert_refused_and_unchanged(actor, response, obj, before)

    class Actions(Endpoint):
        """The class's `actions`, each run per actor (`endpoint_action`, generated in tests/conftest.py)."""

        actions: ClassVar[list[Action]]

        def test_action(self, actors: Any, actor_name: str, endpoint_action: Action) -> None:
            action, actor = endpoint_action, actors[actor_name]
            obj = action.target(self) if action.target else self.make_object()
            body = action.body(self, obj) if callable(action.body) else action.body
            before = database_state(obj)
            response = send(
                actor.client, action.method, self.url(action.path, obj), body, action.format, **action.params
            )
            if actor.may(action.kind):
                assert response.status_code == action.ok, response.content[:500]
                if action.check:
                    action.check(self, obj, response)
            else:
                self.assert_refused_and_unchanged(actor, response, obj, before)

    class APIViewTestCase(GetObject, ListObjects, CreateObject, UpdateObject, DeleteObject):
        """Full CRUD; add `Actions` (and `ReplaceObject` for PUT) when the endpoint has them."""
