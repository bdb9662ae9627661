"""Operator dashboards in the admin: LLM costs, executions, cache, queues, optimizations.

Costs, executions and cache read the hourly `UsageRollup` table (see monitoring.rollups), so a
page costs a handful of small aggregate queries whatever the number of executions; queues and
workers are read live. Charts are server-side SVG (monitoring.charts).
"""

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from django.contrib import admin
from django.db.models import Sum
from django.db.models.functions import TruncDay, TruncHour
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path
from django.utils import timezone

from caching import operations
from dspex_site.db import read_alias
from monitoring import charts
from monitoring.models import UsageRollup
from monitoring.rollups import DURATION_BUCKETS_MS, percentile
from projects import access

MAX_DAYS = 366
TOP_SERIES = 6


@dataclass
class Range:
    start: date
    end: date  # inclusive
    error: str = ""

    @property
    def start_dt(self) -> datetime:
        return timezone.make_aware(datetime.combine(self.start, time.min))

    @property
    def end_dt(self) -> datetime:
        return timezone.make_aware(datetime.combine(self.end + timedelta(days=1), time.min))

    @property
    def hourly(self) -> bool:
        return (self.end - self.start).days < 3

    def labels(self) -> list[datetime]:
        step = timedelta(hours=1) if self.hourly else timedelta(days=1)
        moments, moment = [], self.start_dt
        while moment < self.end_dt:
            moments.append(moment)
            moment += step
        return moments

    def label(self, moment: datetime) -> str:
        local = timezone.localtime(moment)
        return local.strftime("%d %H:00") if self.hourly else local.strftime("%b %d")


def _rollups(request: HttpRequest) -> Any:
    """The hourly rollups of the user's projects' programs (all of them for superusers)."""
    from programs.models import CognitiveProgram

    alias = read_alias()  # dashboards tolerate the replica's lag
    rows = UsageRollup.objects.using(alias)
    if access.visible_ids(request.user) is None:
        return rows
    programs = access.visible(CognitiveProgram.objects.using(alias), request.user).values("id")
    return rows.filter(program_id__in=programs)


def parse_range(request: HttpRequest, default_days: int = 14) -> Range:
    """`?start=YYYY-MM-DD&end=YYYY-MM-DD`; a bad value falls back to the default and says why."""
    today = timezone.localdate()
    default = Range(today - timedelta(days=default_days - 1), today)
    try:
        start = date.fromisoformat(request.GET.get("start") or default.start.isoformat())
        end = date.fromisoformat(request.GET.get("end") or default.end.isoformat())
    except ValueError:
        return Range(
            default.start, default.end, "Dates must look like 2026-11-27; showing the default range."
        )
    if end < start:
        return Range(
            default.start, default.end, "The end date is before the start date; showing the default range."
        )
    if (end - start).days >= MAX_DAYS:
        return Range(end - timedelta(days=MAX_DAYS - 1), end, f"Ranges are limited to {MAX_DAYS} days.")
    return Range(start, end)


def _bucketed(rows: list[dict], moments: list[datetime], key: str, value: str) -> dict[str, list[float]]:
    """{series name: [value per moment]} keeping the largest series and folding the rest into 'other'."""
    index = {moment: i for i, moment in enumerate(moments)}
    series: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(moments))
    for row in rows:
        if row["bucket"] in index:
            series[row[key] or "(none)"][index[row["bucket"]]] += row[value] or 0
    ranked = sorted(series, key=lambda name: -sum(series[name]))
    kept = {name: series[name] for name in ranked[:TOP_SERIES]}
    if len(ranked) > TOP_SERIES:
        kept["other"] = [sum(series[name][i] for name in ranked[TOP_SERIES:]) for i in range(len(moments))]
    return kept


def _context(request: HttpRequest, title: str, span: Range, **extra: object) -> dict:
    return {
        **admin.site.each_context(request),
        "title": title,
        "range": span,
        "dashboards": DASHBOARDS,
        **extra,
    }


def costs(request: HttpRequest) -> HttpResponse:
    span = parse_range(request)
    trunc = TruncHour if span.hourly else TruncDay
    lm_rows = _rollups(request).filter(hour__gte=span.start_dt, hour__lt=span.end_dt).exclude(model="")
    moments = span.labels()
    by_model = list(
        lm_rows.annotate(bucket=trunc("hour")).values("bucket", "model").annotate(cost=Sum("cost_usd"))
    )
    per_program = list(
        lm_rows.values("program_name")
        .annotate(
            cost=Sum("cost_usd"),
            calls=Sum("lm_calls"),
            tokens=Sum("prompt_tokens") + Sum("completion_tokens"),
        )
        .order_by("-cost")
    )
    per_model = list(
        lm_rows.values("model")
        .annotate(
            cost=Sum("cost_usd"),
            calls=Sum("lm_calls"),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
        )
        .order_by("-cost")
    )
    month_start = timezone.make_aware(datetime.combine(timezone.localdate().replace(day=1), time.min))
    month_to_date = (
        _rollups(request)
        .filter(hour__gte=month_start)
        .exclude(model="")
        .aggregate(total=Sum("cost_usd"))["total"]
        or 0.0
    )
    chart = charts.bar_chart(
        [span.label(m) for m in moments],
        _bucketed(by_model, moments, "model", "cost"),
        title="LLM cost by model",
        unit="$",
    )
    return render(
        request,
        "monitoring/costs.html",
        _context(
            request,
            "LLM costs",
            span,
            chart=chart,
            per_program=per_program,
            per_model=per_model,
            month_to_date=month_to_date,
            range_total=sum(row["cost"] or 0 for row in per_model),
        ),
    )


def executions(request: HttpRequest) -> HttpResponse:
    span = parse_range(request, default_days=2)
    trunc = TruncHour if span.hourly else TruncDay
    rows = list(
        _rollups(request)
        .filter(hour__gte=span.start_dt, hour__lt=span.end_dt, model="")
        .annotate(bucket=trunc("hour"))
        .values("bucket", "status", "executions", "duration_histogram")
    )
    moments = span.labels()
    index = {moment: i for i, moment in enumerate(moments)}
    histograms = [[0] * (len(DURATION_BUCKETS_MS) + 1) for _ in moments]
    counts: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(moments))
    for row in rows:
        i = index.get(row["bucket"])
        if i is None:
            continue
        counts[row["status"]][i] += row["executions"]
        for b, n in enumerate(row["duration_histogram"] or []):
            histograms[i][b] += n
    totals = [sum(series[i] for series in counts.values()) for i in range(len(moments))]
    failed = counts.get("failed", [0.0] * len(moments))
    labels = [span.label(m) for m in moments]
    p50 = [percentile(h, 0.5) for h in histograms]
    p95 = [percentile(h, 0.95) for h in histograms]
    error_rate = [100 * failed[i] / totals[i] if totals[i] else None for i in range(len(moments))]
    all_hist = [sum(h[b] for h in histograms) for b in range(len(DURATION_BUCKETS_MS) + 1)]
    return render(
        request,
        "monitoring/executions.html",
        _context(
            request,
            "Executions",
            span,
            volume_chart=charts.bar_chart(labels, dict(sorted(counts.items())), title="Executions by status"),
            latency_chart=charts.line_chart(labels, {"p50": p50, "p95": p95}, title="Latency", unit=" ms"),
            error_chart=charts.line_chart(labels, {"error rate": error_rate}, title="Error rate", unit="%"),
            total=int(sum(totals)),
            failed=int(sum(failed)),
            p50=percentile(all_hist, 0.5),
            p95=percentile(all_hist, 0.95),
        ),
    )


def cache(request: HttpRequest) -> HttpResponse:
    span = parse_range(request)
    trunc = TruncHour if span.hourly else TruncDay
    rows = list(
        _rollups(request)
        .filter(hour__gte=span.start_dt, hour__lt=span.end_dt)
        .exclude(model="")
        .annotate(bucket=trunc("hour"))
        .values("bucket")
        .annotate(calls=Sum("lm_calls"), hits=Sum("cache_hits"), saved=Sum("saved_cost_usd"))
    )
    moments = span.labels()
    index = {moment: i for i, moment in enumerate(moments)}
    hit_rate: list[float | None] = [None] * len(moments)
    saved = [0.0] * len(moments)
    for row in rows:
        i = index.get(row["bucket"])
        if i is not None:
            hit_rate[i] = 100 * (row["hits"] or 0) / row["calls"] if row["calls"] else None
            saved[i] = row["saved"] or 0.0
    labels = [span.label(m) for m in moments]
    calls, hits = sum(r["calls"] or 0 for r in rows), sum(r["hits"] or 0 for r in rows)
    return render(
        request,
        "monitoring/cache.html",
        _context(
            request,
            "Cache",
            span,
            rate_chart=charts.line_chart(
                labels, {"LLM cache hit rate": hit_rate}, title="Hit rate", unit="%"
            ),
            saved_chart=charts.bar_chart(
                labels, {"saved": saved}, title="Money saved by cache hits", unit="$"
            ),
            hit_rate=100 * hits / calls if calls else None,
            saved_total=sum(saved),
            live_columns=LIVE_CACHE_COLUMNS,
            live_stats=_live_cache_stats(),
        ),
    )


# The columns of the "Caches now" table; a cache whose Redis does not answer leaves its figures blank.
LIVE_CACHE_COLUMNS = ("cache", "backend", "entries", "memory_bytes", "hits", "misses", "hit_ratio", "errors")


def _live_cache_stats() -> list[list[Any]]:
    """One row per named cache, the same columns in every row (the backends report different keys)."""
    try:
        stats = operations.all_stats()
    except Exception:  # the dashboard must render with Redis down
        return []
    return [[row.get(column, "") for column in LIVE_CACHE_COLUMNS] for row in stats]


def queues(request: HttpRequest) -> HttpResponse:
    from monitoring.health import worker_status
    from monitoring.scrape import queue_depths

    return render(
        request,
        "monitoring/queues.html",
        _context(
            request,
            "Queues and workers",
            parse_range(request),
            depths=queue_depths(),
            workers=worker_status(),
        ),
    )


def optimizations(request: HttpRequest) -> HttpResponse:
    """Runs with their live progress, and baseline vs optimized score of each result over time."""
    from optimization.models import OptimizationResult, OptimizationRun

    span = parse_range(request, default_days=30)
    runs = list(
        access.visible(OptimizationRun.objects.all(), request.user, "program__project")
        .select_related("program", "result")
        .filter(created_at__gte=span.start_dt, created_at__lt=span.end_dt)
        .order_by("-created_at")[:100]
    )
    results = list(
        access.visible(OptimizationResult.objects.all(), request.user, "program__project")
        .select_related("program")
        .filter(created_at__gte=span.start_dt, created_at__lt=span.end_dt)
        .order_by("created_at")[:200]
    )
    labels = [f"{timezone.localtime(r.created_at):%b %d %H:%M} {r.program.name[:12]}" for r in results]
    scores = {
        "baseline": [r.performance_metrics.get("baseline_score") for r in results],
        "optimized": [r.performance_metrics.get("optimized_score") for r in results],
    }
    by_status: dict[str, int] = defaultdict(int)
    for run in runs:
        by_status[run.status] += 1
    return render(
        request,
        "monitoring/optimizations.html",
        _context(
            request,
            "Optimizations",
            span,
            runs=runs,
            by_status=dict(by_status),
            score_chart=charts.line_chart(labels, scores, title="Dev score per optimization result"),
        ),
    )


DASHBOARDS = [
    ("costs", "LLM costs"),
    ("executions", "Executions"),
    ("cache", "Cache"),
    ("queues", "Queues and workers"),
    ("optimizations", "Optimizations"),
]


def urls() -> list:
    views = {
        "costs": costs,
        "executions": executions,
        "cache": cache,
        "queues": queues,
        "optimizations": optimizations,
    }
    return [
        path(f"{name}/", admin.site.admin_view(view), name=f"dashboard-{name}")
        for name, view in views.items()
    ]
