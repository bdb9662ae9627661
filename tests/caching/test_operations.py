"""Operating the caches: the optimization cache, stats, purge (operators only, audited), CLI."""

import io
import json

import pytest
from django.core.management import call_command
from django.test import Client

from caching.optimizations import key_for, optimization_state
from caching.registry import LLM, OPTIMIZATIONS
from monitoring.models import AuditEvent
from optimization.models import OptimizationResult
from tests.factories import OperatorFactory, OptimizationResultFactory, ViewerFactory

pytestmark = pytest.mark.django_db


def console(user: object) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_optimized_state_comes_from_redis_and_falls_back_to_the_database(make_program):
    program = make_program()
    state = {"main.predict": {"demos": [], "signature": {"instructions": "Be brief."}}}
    result = OptimizationResultFactory(program=program, parameters=state)
    assert OPTIMIZATIONS.get(key_for(result.id)) is None
    assert optimization_state(result.id) == state  # from the database, now cached
    OptimizationResult.objects.filter(id=result.id).update(parameters={"changed": True})
    assert optimization_state(result.id) == state  # served by Redis, no database read
    OPTIMIZATIONS.clear()
    assert optimization_state(result.id) == {"changed": True}
    assert optimization_state("00000000-0000-0000-0000-000000000000") is None
    stats = OPTIMIZATIONS.stats()
    assert stats["hits"] == 1 and stats["ttl_s"] == 3600


def test_an_optimized_program_runs_with_its_cached_state(api, make_program):
    program = make_program(pipeline={"signature": "question -> answer"})
    state = {"main": {"demos": [], "signature": {"instructions": "Answer in one word.", "fields": []}}}
    from executions.runner import compiled_program

    result = OptimizationResultFactory(program=program, parameters=state)
    program.active_result = result
    program.save()
    body = api.post(
        f"/api/v1/programs/{program.id}/execute/", {"input": {"question": "hi"}, "wait": True}, format="json"
    ).json()
    assert body["status"] == "succeeded", body
    assert OPTIMIZATIONS.get(key_for(result.id)) is not None
    compiled_program.cache_clear()  # a fresh worker process
    assert OPTIMIZATIONS.stats()["entries"] == 1


def test_stats_list_every_cache(api):
    LLM.set("llm:m:0.0:a", {"x": 1}, cost_usd=0.5, tokens=3)
    LLM.get("llm:m:0.0:a")
    rows = {row["cache"]: row for row in api.get("/api/v1/cache/stats/").json()["caches"]}
    assert set(rows) == {"llm", "answers", "embeddings", "optimizations"}
    assert rows["llm"]["hits"] == 1 and rows["llm"]["entries"] == 1 and rows["llm"]["saved_usd"] == 0.5
    assert rows["llm"]["memory_bytes"] > 0 and rows["llm"]["max_entries"] == 10_000


def test_operators_purge_a_cache_from_the_admin_and_it_is_audited(django_user_model):
    LLM.set("llm:m:0.0:a", {"x": 1})
    operator = console(OperatorFactory(username="olga"))
    page = operator.get("/admin/caching/namedcache/")
    assert page.status_code == 200 and b"Purge the selected caches" in page.content
    response = operator.post(
        "/admin/caching/namedcache/", {"action": "purge", "_selected_action": ["llm"]}, follow=True
    )
    assert response.status_code == 200
    assert LLM.get("llm:m:0.0:a") is None and LLM.stats()["entries"] == 0
    event = AuditEvent.objects.get(action="purge")
    assert (event.object_id, event.actor_name, event.channel) == ("llm", "olga", "admin")


def test_viewers_see_the_stats_but_cannot_purge(django_user_model, api):
    LLM.set("llm:m:0.0:a", {"x": 1})
    viewer = console(ViewerFactory(username="victor"))
    page = viewer.get("/admin/caching/namedcache/")
    assert page.status_code == 200 and b"Purge the selected caches" not in page.content
    viewer.post("/admin/caching/namedcache/", {"action": "purge", "_selected_action": ["llm"]})
    assert LLM.get("llm:m:0.0:a") is not None
    assert not AuditEvent.objects.filter(action="purge").exists()


def test_purge_over_the_api_needs_the_permission(api, actors):
    LLM.set("llm:m:0.0:a", {"x": 1})
    limited = actors["outsider"].client
    assert limited.post("/api/v1/cache/llm/purge/").status_code == 403
    assert api.post("/api/v1/cache/nope/purge/").status_code == 404
    assert api.post("/api/v1/cache/llm/purge/").json() == {"cache": "llm", "removed": 1}
    assert AuditEvent.objects.filter(action="purge", channel="api").count() == 1


def test_the_dspex_cache_command_shows_stats_and_clears():
    LLM.set("llm:m:0.0:a", {"x": 1})
    out = io.StringIO()
    call_command("dspex_cache", "stats", stdout=out)
    assert {row["cache"]: row["entries"] for row in json.loads(out.getvalue())}["llm"] == 1
    out = io.StringIO()
    call_command("dspex_cache", "clear", "llm", stdout=out)
    assert "llm: 1 entries removed" in out.getvalue()
    assert LLM.stats()["entries"] == 0
    assert AuditEvent.objects.filter(action="purge", channel="cli").count() == 1


def test_operators_manage_corpora_in_the_admin(django_user_model, django_capture_on_commit_callbacks):
    from programs.models import Corpus

    operator = console(OperatorFactory(username="olga"))
    assert operator.get("/admin/programs/corpus/").status_code == 200
    assert operator.get("/admin/programs/corpus/add/").status_code == 200
    form = {
        "name": "faq",
        "description": "",
        "embedding_model": "sim/embedding",
        "documents-TOTAL_FORMS": "1",
        "documents-INITIAL_FORMS": "0",
        "documents-0-external_id": "d1",
        "documents-0-text": "Shipping takes three days.",
    }
    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = operator.post("/admin/programs/corpus/add/", form)
    assert response.status_code == 302, response.content[:2000]
    corpus = Corpus.objects.get(name="faq")
    assert corpus.documents.count() == 1 and len(queued) == 1  # embedding queued on commit
    assert AuditEvent.objects.filter(object_type="programs.Corpus", action="create").exists()
