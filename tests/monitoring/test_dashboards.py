"""Dashboards: hourly rollups feed admin pages with server-side SVG charts."""

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from monitoring.dashboards import LIVE_CACHE_COLUMNS
from monitoring.models import UsageRollup
from monitoring.rollups import DURATION_BUCKETS_MS, percentile, rollup_hours
from tests.factories import (
    DatasetFactory,
    ExecutionFactory,
    OptimizationResultFactory,
    OptimizationRunFactory,
    usage_metrics,
)

pytestmark = pytest.mark.django_db


def finished(program, hours_ago, status="succeeded", duration_ms=120, model="sim/default", cost=0.01, hits=0):
    at = timezone.now() - timedelta(hours=hours_ago)
    metrics = usage_metrics(
        model,
        lm_calls=1,
        cache_hits=hits,
        prompt_tokens=100,
        completion_tokens=20,
        cost_usd=cost,
        saved_cost_usd=0.005 * hits,
    )
    return ExecutionFactory(
        program=program,
        status=status,
        duration_ms=duration_ms,
        created_at=at,
        finished_at=at,
        metrics=metrics,
    )


@pytest.fixture
def usage(make_program):
    qa, other = make_program(name="qa"), make_program(name="other")
    for i in range(10):
        finished(qa, 1, duration_ms=100 + i)
    finished(qa, 1, status="failed", duration_ms=5000)
    finished(other, 2, model="openai/gpt-4o-mini", cost=0.5, hits=1)
    now = timezone.now()
    rollup_hours([now - timedelta(hours=h) for h in range(4)])
    return qa, other


def test_rollups_sum_executions_and_models(usage):
    totals = UsageRollup.objects.filter(program_name="qa", model="")
    assert sum(r.executions for r in totals) == 11
    assert sum(r.executions for r in totals.filter(status="failed")) == 1
    cost = sum(r.cost_usd for r in UsageRollup.objects.exclude(model=""))
    assert cost == pytest.approx(11 * 0.01 + 0.5)


def test_rollups_are_idempotent(usage):
    before = sorted(
        UsageRollup.objects.values_list("program_name", "status", "model", "executions", "lm_calls")
    )
    now = timezone.now()
    rollup_hours([now - timedelta(hours=h) for h in range(4)])
    after = sorted(
        UsageRollup.objects.values_list("program_name", "status", "model", "executions", "lm_calls")
    )
    assert before == after


def test_percentiles_from_histograms():
    histogram = [0] * (len(DURATION_BUCKETS_MS) + 1)
    histogram[3] = 50  # 50-100 ms
    histogram[5] = 50  # 250-500 ms
    assert 50 <= percentile(histogram, 0.5) <= 100
    assert 250 <= percentile(histogram, 0.95) <= 500
    assert percentile([0] * len(histogram), 0.5) is None


def test_costs_dashboard_shows_totals_and_a_chart(admin_client, usage):
    response = admin_client.get("/admin/dashboards/costs/")
    html = response.content.decode()
    assert response.status_code == 200
    assert "<svg" in html and "LLM cost by model" in html
    assert "openai/gpt-4o-mini" in html and "sim/default" in html
    month_to_date = float(re.search(r'id="month-to-date">\$([\d.]+)<', html).group(1))
    assert month_to_date == pytest.approx(0.61, abs=1e-3) or timezone.now().day == 1


def test_executions_dashboard_shows_status_latency_and_errors(admin_client, usage):
    html = admin_client.get("/admin/dashboards/executions/").content.decode()
    assert "Executions by status" in html and "Latency" in html and "Error rate" in html
    assert html.count('<svg class="dspex-chart"') == 3
    assert ">12<" in html  # executions in the default range


def test_cache_dashboard_values_hits(admin_client, usage):
    html = admin_client.get("/admin/dashboards/cache/").content.decode()
    assert "Money saved by cache hits" in html and "$0.0050" in html


def test_cache_dashboard_lists_every_cache_now_with_the_same_columns(admin_client):
    from caching.registry import CACHES

    html = admin_client.get("/admin/dashboards/cache/").content.decode()
    assert "Caches now" in html
    table = html[html.index("Caches now") :]
    table = table[: table.index("</table>")]
    header = table[: table.index("</thead>")]
    assert header.count("<th>") == len(LIVE_CACHE_COLUMNS)
    rows = table.split("<tr>")[2:]  # after the header row
    assert len(rows) == len(CACHES)
    for name, row in zip(CACHES, rows, strict=True):
        assert f"<td>{name}</td>" in row and row.count("<td>") == len(LIVE_CACHE_COLUMNS)


def test_queues_dashboard_renders(admin_client):
    response = admin_client.get("/admin/dashboards/queues/")
    assert response.status_code == 200
    assert "llm_calls" in response.content.decode()


def test_a_bad_range_is_explained_not_a_500(admin_client):
    response = admin_client.get("/admin/dashboards/costs/?start=yesterday&end=2026-01-01")
    assert response.status_code == 200
    assert "Dates must look like" in response.content.decode()
    response = admin_client.get("/admin/dashboards/costs/?start=2026-02-01&end=2026-01-01")
    assert "end date is before" in response.content.decode()


def test_dashboards_need_staff(client, django_user_model):
    assert client.get("/admin/dashboards/costs/").status_code == 302
    django_user_model.objects.create_user("plain", password="pw-123456789")
    client.login(username="plain", password="pw-123456789")
    assert client.get("/admin/dashboards/costs/").status_code == 302


def test_dashboard_queries_do_not_grow_with_data(admin_client, make_program):
    program = make_program(name="many")
    for i in range(40):
        finished(program, i % 5)
    rollup_hours([timezone.now() - timedelta(hours=h) for h in range(6)])
    with CaptureQueriesContext(connection) as small:
        admin_client.get("/admin/dashboards/costs/")
    for i in range(200):
        finished(program, i % 30)
    rollup_hours([timezone.now() - timedelta(hours=h) for h in range(31)])
    with CaptureQueriesContext(connection) as large:
        admin_client.get("/admin/dashboards/costs/")
    assert len(large) == len(small) <= 8


def test_optimizations_dashboard_shows_progress_and_scores(admin_client, make_program):
    program = make_program(name="tuned")
    dataset = DatasetFactory(name="tickets")
    result = OptimizationResultFactory(
        program=program,
        optimizer_type="BootstrapFewShot",
        parameters={},
        performance_metrics={"baseline_score": 0.325, "optimized_score": 0.45},
    )
    OptimizationRunFactory(
        program=program,
        dataset=dataset,
        optimizer="BootstrapFewShot",
        metric="exact_match",
        status="running",
        progress={
            "phase": "compile",
            "trials_done": 3,
            "trials_total": 8,
            "best_score": 0.41,
            "lm_calls": 57,
            "cost_usd": 0.0123,
        },
    )
    OptimizationRunFactory(
        program=program,
        dataset=dataset,
        optimizer="BootstrapFewShot",
        metric="exact_match",
        status="succeeded",
        result=result,
    )
    html = admin_client.get("/admin/dashboards/optimizations/").content.decode()
    assert "compile" in html and "3 / 8" in html and "0.41" in html and "57" in html
    assert "0.325 → 0.45" in html
    assert html.count('<svg class="dspex-chart"') == 1


def test_the_console_links_to_every_dashboard(admin_client):
    html = admin_client.get("/admin/").content.decode()
    for name in ("costs", "executions", "cache", "queues", "optimizations"):
        assert f'href="/admin/dashboards/{name}/"' in html
