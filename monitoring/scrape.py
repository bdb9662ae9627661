"""The `/metrics` endpoint: every process's samples plus gauges computed at scrape time.

Gauges that describe shared state (queue depth, cache hit ratio, breaker state) are computed
here from the source of truth when Prometheus asks, instead of being set by some process that
may have died: a scrape is then correct whichever web worker answers it.
"""

import hmac
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

import prometheus_client
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)


class DefaultRegistry:
    """This process's own registry, as a collector (when not in multiprocess mode)."""

    def collect(self) -> Iterable[Metric]:
        return prometheus_client.REGISTRY.collect()


class Derived:
    """Passes the base metrics through and adds gauges derived from them."""

    def __init__(self, base: Collector):
        self.base = base

    def collect(self) -> Iterator[Metric]:
        hits: dict[str, float] = {}
        misses: dict[str, float] = {}
        for family in self.base.collect():
            yield family
            target = {"dspex_cache_hit": hits, "dspex_cache_miss": misses}.get(family.name)
            if target is None:
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    cache = sample.labels.get("cache", "unknown")
                    target[cache] = target.get(cache, 0.0) + sample.value
        ratio = GaugeMetricFamily(
            "dspex_cache_hit_ratio", "Cache hits / lookups since start", labels=["cache"]
        )
        for cache in sorted(set(hits) | set(misses)):
            lookups = hits.get(cache, 0.0) + misses.get(cache, 0.0)
            ratio.add_metric([cache], hits.get(cache, 0.0) / lookups if lookups else 0.0)
        yield ratio


def queue_depths() -> dict[str, int | None]:
    """Tasks waiting per Celery queue (Redis: each queue is a list; RabbitMQ: a passive declare);
    None when unknown."""
    from dspex_site.celery import Queue, broker_is_amqp

    url = settings.CELERY_BROKER_URL or ""
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return {queue.value: None for queue in Queue}
    if broker_is_amqp(url):
        return _amqp_queue_depths()
    if not url.startswith(("redis", "sentinel://")):
        return {queue.value: None for queue in Queue}
    from dspex_site import redis_ha

    try:
        client = redis_ha.client(url)
        with client.pipeline(transaction=False) as pipe:
            for queue in Queue:
                pipe.llen(queue.value)
            lengths = pipe.execute()
    except Exception as exc:  # a scrape or a dashboard must still answer when the broker is down
        logger.warning("queue depth unavailable: %s", type(exc).__name__)
        return {queue.value: None for queue in Queue}
    return {queue.value: int(length) for queue, length in zip(Queue, lengths, strict=True)}


def _amqp_queue_depths() -> dict[str, int | None]:
    """RabbitMQ: each queue's ready messages, from a passive declare (None for a queue not
    declared yet, or when the broker is unreachable)."""
    from dspex_site.celery import Queue, app

    depths: dict[str, int | None] = {queue.value: None for queue in Queue}
    try:
        with app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1, timeout=1)
            for queue in Queue:
                channel: Any = connection.channel()  # py-amqp's Channel (the stubs know the base)
                try:
                    depths[queue.value] = int(channel.queue_declare(queue.value, passive=True).message_count)
                except Exception:  # not declared yet: the passive declare closed this channel
                    depths[queue.value] = None
                finally:
                    try:
                        channel.close()
                    except Exception:  # already closed by the broker
                        logger.debug("channel of %s already closed", queue.value)
    except Exception as exc:
        logger.warning("queue depth unavailable: %s", type(exc).__name__)
    return depths


class QueueDepth:
    """Scrape-time gauge of the tasks waiting per Celery queue."""

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("dspex_queue_depth", "Tasks waiting per Celery queue", labels=["queue"])
        for queue, depth in queue_depths().items():
            if depth is not None:
                gauge.add_metric([queue], float(depth))
        yield gauge


class Liveness:
    """Scrape-time gauges: live workers per queue group (heartbeats) and beat's last send."""

    def collect(self) -> Iterator[Metric]:
        from monitoring.health import worker_status

        workers = GaugeMetricFamily(
            "dspex_workers_alive", "Live workers serving every queue of a group", labels=["group"]
        )
        try:
            for group, state in worker_status().items():
                hosts = (
                    set.intersection(*(set(h) for h in state["queues"].values()))
                    if state["queues"]
                    else set()
                )
                workers.add_metric([group], float(len(hosts)))
        except Exception as exc:
            logger.warning("worker liveness unavailable: %s", type(exc).__name__)
        yield workers
        beat = GaugeMetricFamily("dspex_beat_heartbeat_timestamp_seconds", "When beat last said it was alive")
        try:
            from monitoring.heartbeat import beat_alive_at

            last = beat_alive_at()
            if last is not None:
                beat.add_metric([], last)
        except Exception as exc:
            logger.warning("beat liveness unavailable: %s", type(exc).__name__)
        yield beat


class DatabasePools:
    """Scrape-time gauges of the database connection pools (`DSPEX_DB_POOL_MAX`): the web
    process answering the scrape, and every worker from its last heartbeat; and of the read
    replica (`DATABASE_REPLICA_URL`) as the answering process finds it."""

    GAUGES = {
        "pool_size": "Connections the pool holds (in use and idle)",
        "pool_available": "Idle connections ready in the pool",
        "requests_waiting": "Threads waiting for a connection from the pool",
        "pool_max": "Most connections the pool may hold",
    }

    def collect(self) -> Iterator[Metric]:
        from dspex_site.db import pool_stats, replica_state
        from monitoring.heartbeat import worker_pools

        families = {
            key: GaugeMetricFamily(f"dspex_db_{key}", text, labels=["process", "alias"])
            for key, text in self.GAUGES.items()
        }
        processes = {f"web:{os.getpid()}": pool_stats()}
        try:
            processes |= worker_pools()
        except Exception as exc:
            logger.warning("worker pool usage unavailable: %s", type(exc).__name__)
        for process, pools in processes.items():
            for alias, stats in pools.items():
                for key, family in families.items():
                    family.add_metric([process, alias], float(stats.get(key, 0)))
        yield from families.values()
        state = replica_state()
        # Declared even without a replica (no sample then), so the alert on it always has a series name.
        serving = GaugeMetricFamily(
            "dspex_db_replica_serving",
            "1: lag-tolerant reads go to the replica; 0: fallen back to the primary",
        )
        lag = GaugeMetricFamily("dspex_db_replica_lag_seconds", "How far the read replica is behind")
        if state is not None:
            serving.add_metric([], 1.0 if state.serving == "replica" else 0.0)
            if state.lag_s is not None:
                lag.add_metric([], state.lag_s)
        yield serving
        yield lag


class RedisMaster:
    """Scrape-time gauges of the Redis this process talks to (dspex_site.redis_ha): whether it
    answers, which master it is (an info gauge labelled with its address) and, with Sentinel,
    the master's config epoch, which grows by one at every failover."""

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("dspex_redis_up", "1: the Redis master answers; 0: it does not")
        master = GaugeMetricFamily(
            "dspex_redis_master_info", "The Redis master this process talks to", labels=["mode", "address"]
        )
        epoch = GaugeMetricFamily(
            "dspex_redis_master_config_epoch",
            "The Sentinel config epoch of the master (grows at every failover)",
        )
        sentinels = GaugeMetricFamily("dspex_redis_sentinels_answering", "Sentinels that answered the scrape")
        if not settings.EMBEDDED:
            from dspex_site import redis_ha

            try:
                state = redis_ha.describe()
            except Exception as exc:
                logger.warning("redis master unknown: %s", type(exc).__name__)
                up.add_metric([], 0.0)
            else:
                up.add_metric([], 1.0)
                master.add_metric([state["mode"], state["address"]], 1.0)
                if "config_epoch" in state:
                    epoch.add_metric([], float(state["config_epoch"]))
                    sentinels.add_metric([], float(state["sentinels_answering"]))
        yield from (up, master, epoch, sentinels)


def registry() -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    base: Collector
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        base = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(base)
    else:
        base = DefaultRegistry()
    reg.register(Derived(base))
    reg.register(QueueDepth())
    reg.register(Liveness())
    reg.register(DatabasePools())
    reg.register(RedisMaster())
    for collector in EXTRA_COLLECTORS:
        reg.register(collector)
    return reg


# Other apps add scrape-time collectors here (e.g. circuit breaker state from llm).
EXTRA_COLLECTORS: list[Collector] = []


def allowed(request: HttpRequest) -> bool:
    """Metrics are open unless DSPEX_METRICS_TOKEN or DSPEX_METRICS_ALLOWED_IPS restrict them."""
    token = settings.DSPEX_METRICS_TOKEN
    allowed_ips = settings.DSPEX_METRICS_ALLOWED_IPS
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return False
    return not allowed_ips or request.META.get("REMOTE_ADDR") in allowed_ips


@require_GET
@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    if not allowed(request):
        return HttpResponse("forbidden\n", status=403, content_type="text/plain")
    return HttpResponse(
        prometheus_client.generate_latest(registry()), content_type=prometheus_client.CONTENT_TYPE_LATEST
    )
