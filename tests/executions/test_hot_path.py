"""The synchronous `execute` hot path: what it reads and writes, and the per-process caches that
spare it a query per request (dspex_site.local_cache) without serving stale rows for long."""

import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils.functional import lazy
from hypothesis import HealthCheck, example, given
from hypothesis import settings as examples
from hypothesis import strategies as st
from rest_framework import serializers
from rest_framework.renderers import JSONRenderer
from rest_framework.test import APIClient

from dspex_site.api.renderers import ORJSONRenderer
from dspex_site.local_cache import LocalCache
from executions.models import CognitiveExecution
from executions.serializers import ExecutionSerializer, execution_data
from projects import keys
from tests.factories import TokenFactory

pytestmark = pytest.mark.django_db


def execute(client, program, question="What is 2 + 3?", **body):
    body = {"input": {"question": question}, "wait": True, **body}
    return client.post(f"/api/v1/programs/{program.id}/execute/", body, format="json")


def written(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"].split()[0] for q in queries.captured_queries if not q["sql"].startswith("SELECT")]


def test_a_warm_synchronous_execution_is_one_insert_and_one_update(api, make_program, settings):
    settings.DSPEX_LOCAL_CACHE_S = 600  # warm for the whole test, however slow the machine
    program = make_program(pipeline={"signature": "question -> answer"})
    assert execute(api, program, "warm up?").status_code == 200
    with CaptureQueriesContext(connection) as queries:
        response = execute(api, program)
    assert response.status_code == 200, response.json()
    # Token and program come from this process's caches; the row is inserted already claimed
    # (running, this worker, heartbeat) and finished by one fenced UPDATE.
    statements = [q["sql"] for q in queries.captured_queries]
    assert [s.split()[0] for s in statements] == ["INSERT", "UPDATE"], statements
    row = CognitiveExecution.objects.get(id=response.json()["id"])
    assert row.status == "succeeded" and row.attempts == 1 and row.worker and row.queued_at is not None
    assert row.started_at <= row.finished_at and row.heartbeat_at == row.started_at


def test_the_answer_is_the_serializers_representation_field_for_field(api, make_program):
    program = make_program(pipeline={"signature": "question -> answer"})
    body = execute(api, program).json()
    row = CognitiveExecution.objects.get(id=body["id"])

    class Reference(serializers.ModelSerializer):  # DRF's own ModelSerializer of the same fields
        class Meta:
            model = CognitiveExecution
            fields = ExecutionSerializer.Meta.fields

    reference = orjson.loads(JSONRenderer().render(Reference(row).data))
    assert execution_data(row).keys() == reference.keys()
    assert orjson.loads(ORJSONRenderer().render(execution_data(row))) == reference
    assert body == reference  # the API's answer, as a client reads it
    assert ExecutionSerializer(row).data == execution_data(row)
    # Null foreign keys and timestamps come out as null, microseconds as DRF writes them.
    row.finished_at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    row.batch_id, row.started_at = None, None
    assert orjson.loads(JSONRenderer().render(Reference(row).data)) == execution_data(row)


def test_the_renderer_writes_what_drfs_renderer_writes():
    lazy_text = lazy(lambda: "lazy text", str)()
    data = {
        "id": uuid.uuid4(),
        "at": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        "price": Decimal("0.000125"),
        "label": lazy_text,
        "nested": [{"a": 1, "b": None, "c": [1.5, "é"]}],
        7: "an integer key",
    }
    ours, theirs = ORJSONRenderer().render(data), JSONRenderer().render(data)
    assert orjson.loads(ours) == orjson.loads(theirs)
    huge = {"n": 2**70}  # beyond orjson's 64 bits: DRF's encoder takes it
    assert ORJSONRenderer().render(huge) == JSONRenderer().render(huge)
    indented = ORJSONRenderer().render({"a": 1}, "application/json; indent=2", {})
    assert indented == JSONRenderer().render({"a": 1}, "application/json; indent=2", {})


def test_a_revoked_key_fails_at_once_here_and_within_the_cache_interval_elsewhere(operator, settings):
    settings.DSPEX_LOCAL_CACHE_S = 0.5
    client = APIClient()
    token = TokenFactory(user=operator)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get("/api/v1/programs/").status_code == 200
    # Revoked by this process (the ORM's signals): refused on the next request.
    keys.revoke(token)
    assert client.get("/api/v1/programs/").status_code == 401

    other = TokenFactory(user=operator)
    client.credentials(HTTP_AUTHORIZATION=f"Token {other.key}")
    assert client.get("/api/v1/programs/").status_code == 200
    # Revoked by another process (no signal here): this process may serve its copy for at
    # most DSPEX_LOCAL_CACHE_S, never longer.
    with connection.cursor() as cursor:
        cursor.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s", [other.pk])
    deadline = time.monotonic() + 0.5
    while client.get("/api/v1/programs/").status_code == 200:
        assert time.monotonic() < deadline + 0.2, "a revoked token was served past the cache interval"
        time.sleep(0.05)
    assert client.get("/api/v1/programs/").status_code == 401


def test_a_deactivated_user_is_refused_at_once(operator, api):
    assert api.get("/api/v1/programs/").status_code == 200
    operator.is_active = False
    operator.save()
    assert api.get("/api/v1/programs/").status_code == 401


def test_program_changes_reach_execute_at_once_here_and_within_the_interval_elsewhere(
    api, make_program, settings
):
    settings.DSPEX_LOCAL_CACHE_S = 0.5
    program = make_program(pipeline={"signature": "question -> answer"})
    assert execute(api, program).json()["program_version"] == 1
    # A new version saved in this process runs on the next request.
    program.pipeline = {"signature": "question -> answer", "instructions": "Answer briefly."}
    program.save()
    program.refresh_from_db()
    assert program.version == 2
    assert execute(api, program).json()["program_version"] == 2

    # Archived by another process: refused within the interval.
    with connection.cursor() as cursor:
        cursor.execute("UPDATE cognitive_programs SET status = 'archived' WHERE id = %s", [program.id])
    deadline = time.monotonic() + 0.5
    while execute(api, program).status_code == 200:
        assert time.monotonic() < deadline + 0.2, "an archived program ran past the cache interval"
        time.sleep(0.05)
    response = execute(api, program)
    assert response.status_code == 409 and response.json()["code"] == "program_archived"


def test_a_cache_policy_change_applies_to_the_next_execution(api, make_program, http_provider):
    from caching.models import ProgramCachePolicy

    program = make_program(pipeline={"signature": "question -> answer"})
    assert execute(api, program).status_code == 200
    assert execute(api, program).json()["trace"][-1]["cache_hit"] is True
    ProgramCachePolicy.objects.create(program=program, llm_cache=False)
    lm = [e for e in execute(api, program).json()["trace"] if e["kind"] == "lm"]
    assert lm and all(e["cache_hit"] is False for e in lm)


def test_an_unknown_or_malformed_program_id_is_404(api):
    for pk in (uuid.uuid4(), "not-a-uuid"):
        response = api.post(f"/api/v1/programs/{pk}/execute/", {"input": {}, "wait": True}, format="json")
        assert response.status_code == 404, response.content


def test_a_load_raced_by_an_eviction_is_not_kept(settings):
    settings.DSPEX_LOCAL_CACHE_S = 60
    cache: LocalCache[int] = LocalCache("test")
    loads: list[int] = []

    def load() -> int:
        loads.append(1)
        if len(loads) == 1:
            cache.evict("k")  # the row changed while it was read: this value may be stale
        return len(loads)

    assert cache.get("k", load) == 1
    assert cache.get("k", load) == 2  # not served from the raced load
    assert cache.get("k", load) == 2  # this one was kept
    settings.DSPEX_LOCAL_CACHE_S = 0
    assert cache.get("k", load) == 3  # off: every read loads


body_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.sampled_from(["normal", "high", "low", "true", "", "x"]),
    st.dictionaries(st.sampled_from(["question", "tone"]), st.text(max_size=5), max_size=2),
    st.lists(st.integers(), max_size=2),
)


@examples(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.dictionaries(
            st.sampled_from(["input", "variables", "wait", "priority", "cache", "stream", "extra"]),
            body_values,
            max_size=6,
        ),
        body_values,
    )
)
@example({"input": {"question": "q"}, "priority": {}})  # unhashable where a choice belongs: a 400, not a 500
@example({"input": {"question": "q"}, "wait": 1, "cache": "true"})  # not yet booleans: the serializer's
def test_the_execute_body_is_what_the_serializer_validates(body):
    """The fast path of `execute_body` gives the serializer's validated data, or defers to it."""
    from rest_framework.exceptions import ValidationError

    from programs.api import execute_body
    from programs.serializers import ExecuteSerializer

    serializer = ExecuteSerializer(data=body)
    if serializer.is_valid():
        assert execute_body(body) == serializer.validated_data
    else:
        with pytest.raises(ValidationError) as raised:
            execute_body(body)
        assert raised.value.detail == serializer.errors


def test_no_index_of_the_executions_table_repeats_the_start_of_another():
    """Every claim and finish rewrites each index of the table: none may be redundant (a foreign
    key's own index where a composite index already starts with that column)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'cognitive_executions'")
        rows = cursor.fetchall()
    full = {}
    for name, definition in rows:
        if " WHERE " in definition:
            continue  # partial: only the rows it names
        columns = definition.split("(", 1)[1].rsplit(")", 1)[0]
        full[name] = [column.strip().split()[0] for column in columns.split(",")]
    for name, columns in full.items():
        for other, longer in full.items():
            if other != name and "id" not in columns:
                assert longer[: len(columns)] != columns, (
                    f"{name} {columns} repeats the start of {other} {longer}"
                )
    # 11: the 9 of round 1, the sessions' partial `(session, turn)` index (entries for turns only)
    # and the partial `idx_executions_feedback`, which rows without feedback (every insert,
    # claim and finish) never write; and the partial `idx_executions_canary_arm` (canary
    # executions only: a canary's per-arm figures).
    assert len(rows) == 12, [name for name, _ in rows]
