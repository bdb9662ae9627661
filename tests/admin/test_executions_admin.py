"""The executions console: read-only list with figures, filters, id search; the trace timeline."""

import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from tests.admin.support import lm_entry
from tests.factories import ExecutionFactory

pytestmark = pytest.mark.django_db

LIST = "/admin/executions/cognitiveexecution/"


def detail(execution: object) -> str:
    return reverse("admin:executions_cognitiveexecution_change", args=[execution.pk])


def module_entry(step: str = "main", **fields: object) -> dict:
    return {
        "kind": "module",
        "step": step,
        "module": "Predict",
        "inputs": {"question": "Capital of France?"},
        "outputs": {"answer": "Paris"},
        "duration_ms": 5.0,
        "error": None,
        **fields,
    }


def test_the_list_shows_figures_at_a_fixed_number_of_queries(superuser_client, make_program):
    program = make_program("qa")
    ExecutionFactory(finished=True, program=program, trace=[module_entry(), lm_entry()])
    with CaptureQueriesContext(connection) as few:
        superuser_client.get(LIST)
    for n in range(40):
        ExecutionFactory(
            finished=True,
            program=make_program(f"p{n}") if n % 4 == 0 else program,
            trace=[module_entry(), lm_entry()],
        )
    with CaptureQueriesContext(connection) as many:
        page = superuser_client.get(LIST).content.decode()
    assert len(many) == len(few), (len(few), len(many))
    assert "$0.000123" in page and "12 ms" in page and ">128<" in page  # cost, duration, tokens


def test_the_list_never_loads_traces(superuser_client, make_program):
    ExecutionFactory(finished=True, program=make_program("qa"), trace=[lm_entry()])
    with CaptureQueriesContext(connection) as queries:
        superuser_client.get(LIST)
    listing = [q["sql"] for q in queries if 'FROM "cognitive_executions"' in q["sql"]]
    assert listing and all('"cognitive_executions"."trace"' not in sql for sql in listing)


def test_it_filters_by_status_and_program_and_searches_by_id(superuser_client, make_program):
    qa, other = make_program("qa"), make_program("other")
    ok = ExecutionFactory(finished=True, program=qa)
    failed = ExecutionFactory(
        finished=True, program=other, status="failed", error={"type": "provider_error", "message": "boom"}
    )
    page = superuser_client.get(LIST, {"status__exact": "failed"}).content.decode()
    assert str(failed.pk)[:8] in page and str(ok.pk)[:8] not in page
    page = superuser_client.get(LIST, {"program__id__exact": str(qa.pk)}).content.decode()
    assert str(ok.pk)[:8] in page and str(failed.pk)[:8] not in page
    for term in (str(ok.pk), str(ok.pk)[:8]):
        page = superuser_client.get(LIST, {"q": term}).content.decode()
        assert str(ok.pk)[:8] in page and str(failed.pk)[:8] not in page
    page = superuser_client.get(LIST, {"q": "not-an-id"}).content.decode()
    assert str(ok.pk)[:8] not in page


def test_it_filters_by_date(superuser_client, make_program):
    from datetime import timedelta

    from django.utils import timezone

    program = make_program("qa")
    old = ExecutionFactory(finished=True, program=program, created_at=timezone.now() - timedelta(days=3))
    new = ExecutionFactory(finished=True, program=program)
    page = superuser_client.get(
        LIST, {"created_at__gte": (timezone.now() - timedelta(days=1)).isoformat()}
    ).content.decode()
    assert str(new.pk)[:8] in page and str(old.pk)[:8] not in page


def test_the_detail_page_reads_the_trace_as_a_timeline(superuser_client, make_program):
    execution = ExecutionFactory(
        finished=True, program=make_program("qa"), trace=[module_entry(), lm_entry(answer="Paris")]
    )
    page = superuser_client.get(detail(execution)).content.decode()
    assert 'class="dspex-role">system<' in page and 'class="dspex-role">user<' in page
    assert "[[ ## answer ## ]]\nParis" in page
    assert "120 + 8 = 128 tokens" in page and "$0.000123" in page and "4.5 ms" in page
    assert "dspex-module" in page and "Capital of France?" in page


def test_a_retrieve_steps_embedding_call_shows_its_model_tokens_and_cost(superuser_client, make_program):
    embedding = {
        "kind": "embedding",
        "step": "retrieve",
        "model": "openai/text-embedding-3-small",
        "texts": 1,
        "prompt_tokens": 7,
        "completion_tokens": 0,
        "cost_usd": 0.00014,
        "latency_ms": 3.25,
        "cache_hit": False,
        "error": None,
    }
    entries = [module_entry("retrieve", module="Retrieve"), embedding]
    execution = ExecutionFactory(finished=True, program=make_program("qa"), trace=entries)
    page = superuser_client.get(detail(execution)).content.decode()
    assert "dspex-embedding" in page and "embedding call" in page
    assert "openai/text-embedding-3-small" in page and "7 tokens" in page and "$0.000140" in page
    assert "3.25 ms" in page and "1 texts" in page


def test_errors_are_highlighted_and_cache_hits_marked(superuser_client, make_program):
    failing = lm_entry(error={"type": "LMRateLimitError", "message": "429 slow down"}, outputs=None)
    cached = lm_entry(cache_hit=True, prompt_tokens=0, completion_tokens=0, cost_usd=0)
    execution = ExecutionFactory(
        finished=True,
        program=make_program("qa"),
        trace=[cached, failing],
        status="failed",
        error={"type": "rate_limited", "message": "429 slow down"},
    )
    page = superuser_client.get(detail(execution)).content.decode()
    assert "dspex-has-error" in page and "LMRateLimitError" in page
    assert "cache hit" in page


def test_long_messages_are_collapsed(superuser_client, make_program):
    long_text = "Context passage. " * 200
    entry = lm_entry(messages=[{"role": "user", "content": long_text}])
    page = superuser_client.get(
        detail(ExecutionFactory(finished=True, program=make_program("qa"), trace=[entry]))
    ).content.decode()
    assert "<details><summary>Context passage." in page


def test_a_trace_of_fifty_lm_calls_renders_fast_with_few_queries(superuser_client, make_program):
    big_prompt = "Demo: question -> answer. " * 150
    trace = []
    for n in range(50):
        trace.append(module_entry(step=f"s{n}"))
        trace.append(lm_entry(step=f"s{n}", messages=[{"role": "system", "content": big_prompt}]))
    execution = ExecutionFactory(finished=True, program=make_program("qa"), trace=trace)
    superuser_client.get(detail(execution))  # warm template caches
    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        response = superuser_client.get(detail(execution))
        elapsed = time.perf_counter() - started
    assert response.status_code == 200
    assert response.content.decode().count("dspex-entry dspex-lm") == 50
    assert len(queries) <= 12
    assert elapsed < 1.5, f"{elapsed:.2f}s"


def test_executions_are_read_only_even_for_superusers(superuser_client, make_program):
    execution = ExecutionFactory(finished=True, program=make_program("qa"))
    assert superuser_client.get(LIST + "add/").status_code == 403
    assert superuser_client.post(detail(execution), {"status": "failed"}).status_code == 403
    assert (
        superuser_client.post(
            reverse("admin:executions_cognitiveexecution_delete", args=[execution.pk])
        ).status_code
        == 403
    )
    execution.refresh_from_db()
    assert execution.status == "succeeded"
