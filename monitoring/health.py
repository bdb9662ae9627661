"""Liveness and readiness endpoints.

`/health/live` only says the process answers. `/health/ready` checks each dependency with a
short timeout and reports each one, so a load balancer stops sending traffic when the
database, cache or broker is gone, and an operator sees which one.
"""

import time
from collections.abc import Callable

import kombu
from django.conf import settings
from django.core.cache import caches
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET


@require_GET
@never_cache
def live(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def check_database() -> dict:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {"vendor": connection.vendor}


def check_cache() -> dict:
    cache = caches["default"]
    cache.set("health:probe", "1", timeout=10)
    if cache.get("health:probe") != "1":
        raise RuntimeError("cache did not return the value just written")
    return {"backend": cache.__class__.__name__}


def check_broker() -> dict:
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return {"mode": "in-process tasks (embedded mode)"}
    with kombu.Connection(settings.CELERY_BROKER_URL, connect_timeout=1) as conn:
        conn.ensure_connection(max_retries=0, timeout=1)
        transport = conn.transport_cls
    return {"transport": str(transport)}


CHECKS: dict[str, Callable[[], dict]] = {
    "database": check_database,
    "cache": check_cache,
    "broker": check_broker,
}


def run_check(check: Callable[[], dict]) -> dict:
    started = time.perf_counter()
    try:
        result = {"status": "ok", **check()}
    except Exception as exc:
        result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:300]}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


@require_GET
@never_cache
def ready(request: HttpRequest) -> JsonResponse:
    checks = {name: run_check(check) for name, check in CHECKS.items()}
    healthy = all(c["status"] == "ok" for c in checks.values())
    body = {
        "status": "ok" if healthy else "error",
        "mode": "embedded" if settings.EMBEDDED else "standard",
        "checks": checks,
    }
    if settings.EMBEDDED:
        body["warning"] = (
            "Embedded single-process mode: SQLite, in-process cache and tasks. "
            "Not for production; start Postgres and Redis for the standard mode."
        )
    return JsonResponse(body, status=200 if healthy else 503)
