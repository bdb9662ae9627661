"""Dashboards on a million executions: rollup cost and page times, against raw aggregates.

Creates its own database (`dspex_bench_dash`), inserts N finished executions spread over 30 days
with one SQL statement (generate_series), then measures:
- the backfill of every hour's rollup, and the per-minute beat job (current + previous hour);
- each dashboard page rendered from the rollups (median of several requests, in-process client);
- for comparison, the same "executions per hour by status" and "cost per day by model" computed
  straight from the executions table (with its indexes).
Usage: `python bench/dashboards.py [--n 1000000]`.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB = "dspex_bench_dash"
os.environ["DATABASE_URL"] = f"postgres://localhost:5432/{DB}"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dspex_site.settings")
os.environ.setdefault("DJANGO_DEBUG", "1")
os.environ.setdefault("LOG_LEVEL", "WARNING")

INSERT = """
INSERT INTO cognitive_executions (id, program_id, program_version, input, variables, output, trace, metrics,
    duration_ms, status, error, attempts, priority, use_cache, created_at, started_at, finished_at, errors,
    worker)
SELECT gen_random_uuid(), %(program)s, 1, '{"question": "q"}', '{}', '{"answer": "a"}', '[]',
    jsonb_build_object('lm_calls', 2, 'cache_hits', i %% 3, 'prompt_tokens', 300, 'completion_tokens', 40,
        'cost_usd', 0.0001, 'by_model', jsonb_build_object(
            CASE WHEN i %% 4 = 0 THEN 'openai/gpt-4o-mini' ELSE 'sim/default' END,
            jsonb_build_object('lm_calls', 2, 'cache_hits', i %% 3, 'prompt_tokens', 300,
                'completion_tokens', 40, 'cost_usd', 0.0001, 'saved_cost_usd', 0.00005 * (i %% 3)))),
    20 + (i::bigint * 7919) %% 4000,
    CASE WHEN i %% 50 = 0 THEN 'failed' ELSE 'succeeded' END, NULL, 1, 'normal', true,
    now() - (i %% 720) * interval '1 hour' - (i %% 3600) * interval '1 second',
    now() - (i %% 720) * interval '1 hour' - (i %% 3600) * interval '1 second',
    now() - (i %% 720) * interval '1 hour' - (i %% 3600) * interval '1 second' + interval '1 second',
    '[]', ''
FROM generate_series(1, %(n)s) AS i
"""

RAW_PER_HOUR = """
SELECT date_trunc('hour', finished_at) AS h, status, count(*),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms)
FROM cognitive_executions WHERE finished_at >= now() - interval '7 days' GROUP BY 1, 2
"""
RAW_COST_BY_MODEL = """
SELECT date_trunc('day', finished_at) AS d, m.key, sum((m.value->>'cost_usd')::float)
FROM cognitive_executions, jsonb_each(metrics->'by_model') AS m
WHERE finished_at >= now() - interval '30 days' GROUP BY 1, 2
"""


def timed(fn: object, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def prepare(n: int) -> None:
    import psycopg

    with psycopg.connect("postgres://localhost:5432/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB}"')
        conn.execute(f'CREATE DATABASE "{DB}"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    args = parser.parse_args()
    prepare(args.n)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from monitoring.models import UsageRollup
    from monitoring.rollups import rollup_hours, rollup_recent
    from programs.models import CognitiveProgram

    call_command("migrate", verbosity=0)
    program = CognitiveProgram.objects.create(
        name="bench-dash", pipeline={"signature": "q -> a"}, status="active"
    )
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(INSERT, {"program": program.id, "n": args.n})
        cursor.execute("ANALYZE cognitive_executions")
    insert_s = time.perf_counter() - started

    now = timezone.now()
    started = time.perf_counter()
    rows = rollup_hours(now - timezone.timedelta(hours=h) for h in range(722))
    backfill_s = time.perf_counter() - started
    per_minute_ms = timed(rollup_recent, repeat=3)

    admin = get_user_model().objects.create_superuser("bench-admin", password="bench-admin-pw")
    client = Client()
    client.force_login(admin)
    pages = {}
    for name, query in (
        ("costs", "?start=" + (timezone.localdate() - timezone.timedelta(days=29)).isoformat()),
        ("executions", "?start=" + (timezone.localdate() - timezone.timedelta(days=6)).isoformat()),
        ("cache", ""),
        ("queues", ""),
        ("optimizations", ""),
    ):
        url = f"/admin/dashboards/{name}/{query}"
        assert client.get(url).status_code == 200
        pages[name] = timed(lambda url=url: client.get(url))

    def raw(sql: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            cursor.fetchall()

    raw_hour_ms = timed(lambda: raw(RAW_PER_HOUR), repeat=3)
    raw_cost_ms = timed(lambda: raw(RAW_COST_BY_MODEL), repeat=3)

    rollups = UsageRollup.objects.count()
    print(f"{args.n:,} executions over 30 days (inserted in {insert_s:.1f} s); {rollups:,} rollup rows")
    print(f"rollup backfill of 722 hours: {backfill_s:.1f} s ({rows:,} rows)")
    print(f"per-minute beat job (current + previous hour): {per_minute_ms:.0f} ms")
    for name, ms in pages.items():
        print(f"dashboard {name:<14} {ms:8.1f} ms (median of 5, from rollups)")
    print(f"raw SQL: executions/hour/status + p95 over 7 days {raw_hour_ms:8.1f} ms")
    print(f"raw SQL: cost/day/model over 30 days (jsonb)      {raw_cost_ms:8.1f} ms")


if __name__ == "__main__":
    main()
