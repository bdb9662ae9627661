"""Liveness and readiness endpoints.

`/health/live` only says the process answers. `/health/ready` checks each dependency with a
short timeout and reports each one, so a load balancer stops sending traffic when the
database, cache or broker is gone, and an operator sees which one.
"""

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

import kombu
from django.conf import settings
from django.core.cache import caches
from django.db import connection, connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from dspex_site import db


@require_GET
@never_cache
def live(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def check_database() -> dict:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    result: dict = {"vendor": connection.vendor}
    if connection.vendor == "postgresql":
        result |= db.describe()
        # This process's pool (the one answering); workers publish theirs with their heartbeat.
        pools = db.pool_stats()
        if pools:
            result["pool_usage"] = pools
        from monitoring.heartbeat import worker_pools

        try:
            workers = worker_pools()
        except Exception as exc:  # Redis has its own check: the database is not down for it
            result["worker_pools"] = f"unavailable: {type(exc).__name__}"
        else:
            if workers:
                result["worker_pools"] = workers
    return result


def check_replica() -> dict:
    """Where lag-tolerant reads go (DATABASE_REPLICA_URL): an error while they fall back to the
    primary (the replica is down, lagging or promoted), which degrades the service but keeps web
    in rotation: the primary serves every read meanwhile."""
    state = db.replica_state()
    if state is None:
        return {"configured": False}
    if state.serving != "replica":
        raise RuntimeError(f"reads fall back to the primary: {state.reason} (lag_s={state.lag_s})")
    return state.as_dict()


def check_cache() -> dict:
    cache = caches["default"]
    cache.set("health:probe", "1", timeout=10)
    if cache.get("health:probe") != "1":
        raise RuntimeError("cache did not return the value just written")
    return {"backend": cache.__class__.__name__}


def check_redis() -> dict:
    """Which Redis this process talks to: REDIS_URL's server, or the master the sentinels name
    now (its address, the config epoch that grows at every failover, the sentinels answering).
    Not critical: everything but queueing fails open without Redis, and the cache and broker
    checks say when that matters."""
    if settings.EMBEDDED:
        return {"mode": "in-process cache (embedded mode)"}
    from dspex_site import redis_ha

    return redis_ha.describe()


def check_broker() -> dict:
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return {"mode": "in-process tasks (embedded mode)"}
    with kombu.Connection(settings.CELERY_BROKER_URL, connect_timeout=1) as conn:
        conn.ensure_connection(max_retries=0, timeout=1)
        transport = conn.transport_cls
    return {"transport": str(transport)}


# Queue groups as the Procfile runs them: readiness reports whether each has a live worker.
QUEUE_GROUPS = {
    "llm": ["llm_calls"],
    "priority": ["priority"],
    "background": ["default", "embeddings", "cleanup"],
    "optimization": ["optimization"],
}


def worker_status() -> dict[str, dict]:
    """{group: {"queues": {queue: [live workers]}, "alive": bool}} from worker heartbeats."""
    from monitoring.heartbeat import alive

    queues = [q for group in QUEUE_GROUPS.values() for q in group]
    live = alive(queues)
    return {
        group: {"queues": {q: live[q] for q in members}, "alive": all(live[q] for q in members)}
        for group, members in QUEUE_GROUPS.items()
    }


def check_workers() -> dict:
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return {"mode": "in-process tasks (embedded mode)"}
    groups = worker_status()
    missing = [group for group, state in groups.items() if not state["alive"]]
    if missing:
        raise RuntimeError(f"no live worker for queue group(s): {', '.join(missing)}")
    return {"groups": {group: state["queues"] for group, state in groups.items()}}


def check_beat() -> dict:
    """Beat is alive when its own heartbeat (monitoring.heartbeat) is fresh."""
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return {"mode": "no beat in embedded mode"}
    from monitoring.heartbeat import BEAT_STALE_S, beat_alive_at

    last = beat_alive_at()
    if last is None:
        raise RuntimeError("beat has never sent a heartbeat")
    age = time.time() - last
    if age > BEAT_STALE_S:
        raise RuntimeError(f"beat's last heartbeat was {age:.0f} s ago")
    return {"last_heartbeat_s_ago": round(age, 1)}


# Critical checks make /health/ready answer 503 (take this web process out of rotation);
# the others report a degraded service without pulling web traffic.
CHECKS: dict[str, tuple[Callable[[], dict], bool]] = {
    "database": (check_database, True),
    "replica": (check_replica, False),
    "cache": (check_cache, True),
    "redis": (check_redis, False),
    "broker": (check_broker, True),
    "workers": (check_workers, False),
    "beat": (check_beat, False),
}
READY_TIMEOUT_S = 0.8
_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="health")


def run_check(check: Callable[[], dict]) -> dict:
    started = time.perf_counter()
    try:
        result = {"status": "ok", **check()}
    except Exception as exc:
        result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:300]}
    finally:
        if threading.current_thread() is not threading.main_thread():
            connections.close_all()  # checks run in pool threads: do not leak their DB connections
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def run_checks() -> dict[str, dict]:
    """Run every check concurrently; one that hangs is reported as timed out, not waited for."""
    futures = {name: _pool.submit(run_check, check) for name, (check, _critical) in CHECKS.items()}
    wait(futures.values(), timeout=READY_TIMEOUT_S)
    results = {}
    for name, future in futures.items():
        if future.done():
            results[name] = future.result()
        else:
            results[name] = {"status": "error", "error": f"timed out after {READY_TIMEOUT_S} s"}
        results[name]["critical"] = CHECKS[name][1]
    return results


@require_GET
@never_cache
def ready(request: HttpRequest) -> JsonResponse:
    checks = run_checks()
    critical_ok = all(c["status"] == "ok" for c in checks.values() if c["critical"])
    all_ok = all(c["status"] == "ok" for c in checks.values())
    body = {
        "status": "ok" if all_ok else ("degraded" if critical_ok else "error"),
        "mode": "embedded" if settings.EMBEDDED else "standard",
        "checks": checks,
    }
    if settings.EMBEDDED:
        body["warning"] = (
            "Embedded single-process mode: SQLite, in-process cache and tasks. "
            "Not for production; start Postgres and Redis for the standard mode."
        )
    return JsonResponse(body, status=200 if critical_ok else 503)
